//! `convert`: MedSAM training checkpoint → SAM-format weights
//! (`utils/ckpt_convert.py` of bowang-lab/MedSAM).

use std::path::PathBuf;

use medsam::io::checkpoint::CheckpointError;
use medsam::pipeline::convert::{convert, OutputFormat};

/// Output format on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Pth,
    Safetensors,
}

impl From<FormatArg> for OutputFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Pth => OutputFormat::Pth,
            FormatArg::Safetensors => OutputFormat::Safetensors,
        }
    }
}

/// Arguments of the `convert` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// Original SAM checkpoint (e.g. sam_vit_b_01ec64.pth); defines the keys
    /// and their order.
    #[arg(long)]
    pub sam_ckpt_path: PathBuf,
    /// MedSAM training checkpoint ({"model": ..., "optimizer": ..., "epoch": ...}
    /// or a bare state dict; a DDP `module.` prefix is stripped).
    #[arg(long)]
    pub medsam_ckpt_path: PathBuf,
    /// Where to write the converted weights.
    #[arg(long)]
    pub save_path: PathBuf,
    /// Output format; default: from the extension of --save-path
    /// (`.safetensors` → safetensors, otherwise pth).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
}

/// Runs the conversion and returns a one-line summary (nothing is printed).
pub fn run(args: &ConvertArgs) -> Result<String, CheckpointError> {
    let format = args
        .format
        .map(OutputFormat::from)
        .unwrap_or_else(|| OutputFormat::from_path(&args.save_path));
    let report = convert(
        &args.sam_ckpt_path,
        &args.medsam_ckpt_path,
        &args.save_path,
        format,
    )?;
    Ok(report.to_string())
}
