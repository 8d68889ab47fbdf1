//! Flags shared by several subcommands, and their translation into library values.

use medsam::models::ModelType;
use medsam::{Device, Result};
use std::path::{Path, PathBuf};

pub fn parse_device(s: &str) -> Result<Device> {
    let d: Device = s.parse()?;
    if let Device::Npu(_) = d {
        medsam::backend::backend(d)?;
    }
    Ok(d)
}

/// `path` shown relative to the working directory when possible.
pub fn show(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    cwd.and_then(|c| path.strip_prefix(c).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}

/// `--model-type` for commands that accept either model family: SAM's variants or `lite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyModelType {
    /// A SAM variant: `vit_b`, `vit_l` or `vit_h`.
    Sam(ModelType),
    /// LiteMedSAM (TinyViT image encoder).
    Lite,
    /// SAM 2.1 / MedSAM2 (Hiera image encoder, memory bank): 3D volumes via `medsam infer`.
    Medsam2,
}

impl clap::ValueEnum for AnyModelType {
    fn value_variants<'a>() -> &'a [Self] {
        use AnyModelType::*;
        &[
            Sam(ModelType::VitB),
            Sam(ModelType::VitL),
            Sam(ModelType::VitH),
            Lite,
            Medsam2,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            AnyModelType::Sam(t) => t.to_possible_value()?,
            AnyModelType::Lite => {
                PossibleValue::new("lite").help("LiteMedSAM (TinyViT image encoder).")
            }
            AnyModelType::Medsam2 => PossibleValue::new("medsam2").help(
                "SAM 2.1 / MedSAM2 (Hiera image encoder, memory bank): 3D volumes via `medsam infer`.",
            ),
        })
    }
}

impl AnyModelType {
    /// The SAM variant, or `None` for `lite` and `medsam2`.
    pub fn sam(self) -> Option<ModelType> {
        match self {
            AnyModelType::Sam(t) => Some(t),
            AnyModelType::Lite | AnyModelType::Medsam2 => None,
        }
    }
}

/// Model flags for commands that take SAM/MedSAM or LiteMedSAM checkpoints (recognised from their
/// keys).
#[derive(clap::Args, Debug, Clone)]
pub struct AnyModelArgs {
    /// Checkpoint: .pth (bare state dict or training checkpoint) or .safetensors; SAM/MedSAM (ViT)
    /// or LiteMedSAM (TinyViT), told apart by its keys.
    #[arg(short = 'c', long = "checkpoint")]
    pub checkpoint: PathBuf,
    /// vit_b | vit_l | vit_h | lite (optional; checked against the checkpoint).
    #[arg(long = "model-type", value_enum)]
    pub model_type: Option<AnyModelType>,
    /// JSON file with the model's constructor arguments (SAM's, or LiteMedSAM's for a TinyViT
    /// checkpoint); otherwise inferred from the checkpoint.
    #[arg(long = "model-config")]
    pub model_config: Option<PathBuf>,
    /// cpu or npu:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Loads a SAM/MedSAM or LiteMedSAM model; `--model-type` must agree with the checkpoint.
pub fn load_any_model(a: &AnyModelArgs) -> Result<medsam::models::AnyModel> {
    use medsam::models::AnyModel;
    let device = parse_device(&a.device)?;
    if a.model_type == Some(AnyModelType::Medsam2) {
        return Err(medsam::Error::arg(
            "--model-type",
            "medsam2 models are supported by `medsam infer` on volumes only",
        ));
    }
    let sam_type = a.model_type.and_then(AnyModelType::sam);
    let (model, _report) = medsam::models::load::load_any_model(
        &a.checkpoint,
        sam_type,
        a.model_config.as_deref(),
        device,
    )?;
    if a.model_type == Some(AnyModelType::Lite) {
        if let AnyModel::Sam(_) = model {
            return Err(medsam::Error::arg(
                "--model-type",
                format!(
                    "lite does not match {}, which holds a SAM/MedSAM (ViT) model",
                    a.checkpoint.display()
                ),
            ));
        }
    }
    Ok(model)
}
