//! Flags shared by several subcommands, and their translation into library values.

use medsam::model::{ModelType, Sam};
use medsam::{Device, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint: .pth (bare state dict or training checkpoint) or .safetensors.
    #[arg(short = 'c', long = "checkpoint")]
    pub checkpoint: PathBuf,
    /// vit_b | vit_l | vit_h (optional; checked against the checkpoint).
    #[arg(long = "model-type", value_enum)]
    pub model_type: Option<ModelType>,
    /// JSON file with SAM's constructor arguments (otherwise inferred from the checkpoint).
    #[arg(long = "model-config")]
    pub model_config: Option<PathBuf>,
    /// cpu or npu:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn parse_device(s: &str) -> Result<Device> {
    let d: Device = s.parse()?;
    if let Device::Npu(_) = d {
        medsam::backend::backend(d)?;
    }
    Ok(d)
}

pub fn load_model(a: &ModelArgs) -> Result<Sam> {
    let device = parse_device(&a.device)?;
    let (sam, _report) = medsam::weights::load_model(
        &a.checkpoint,
        a.model_type,
        a.model_config.as_deref(),
        device,
    )?;
    Ok(sam)
}

/// `path` shown relative to the working directory when possible.
pub fn show(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    cwd.and_then(|c| path.strip_prefix(c).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}
