//! `medsam train`: the seed's training script as a subcommand, for SAM/MedSAM (ViT) and
//! LiteMedSAM (`--model-type lite`, or recognised from `--checkpoint`/`--resume`).

use super::common::{parse_device, show, AnyModelType};
use indicatif::{ProgressBar, ProgressStyle};
use medsam::dist::Communicator;
use medsam::models::AnyModel;
use medsam::models::{LiteConfig, LiteMedSam};
use medsam::models::{ModelType, Sam, SamConfig};
use medsam::optim::AdamWConfig;
use medsam::pipeline::train::{train, TrainConfig, TrainEvent};
use medsam::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training data in the npy layout (imgs/, gts/).
    #[arg(short = 'i', long = "tr-npy-path", default_value = "data/npy/CT_Abd")]
    pub tr_npy_path: PathBuf,
    #[arg(long = "task-name", default_value = "MedSAM-ViT-B")]
    pub task_name: String,
    /// vit_b | vit_l | vit_h | lite. Default: the checkpoint's family (from --checkpoint, else
    /// --resume), else vit_b.
    #[arg(long = "model-type", value_enum)]
    pub model_type: Option<AnyModelType>,
    /// JSON model configuration (SAM's, or LiteMedSAM's with lite; overrides --model-type's preset).
    #[arg(long = "model-config")]
    pub model_config: Option<PathBuf>,
    /// SAM/MedSAM or LiteMedSAM checkpoint to start from (omit for random initialisation).
    #[arg(long = "checkpoint")]
    pub checkpoint: Option<PathBuf>,
    #[arg(long = "work-dir", default_value = "./work_dir")]
    pub work_dir: PathBuf,
    #[arg(long = "num-epochs", default_value_t = 1000)]
    pub num_epochs: usize,
    #[arg(long = "batch-size", default_value_t = 2)]
    pub batch_size: usize,
    #[arg(long = "grad-acc-steps", default_value_t = 1)]
    pub grad_acc_steps: usize,
    #[arg(long = "num-workers", default_value_t = 0)]
    pub num_workers: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[arg(long = "weight-decay", default_value_t = 0.01)]
    pub weight_decay: f64,
    /// bf16 autocast for matmul/conv/attention (f32 master weights).
    #[arg(long = "use-amp")]
    pub use_amp: bool,
    /// Resume from a training checkpoint (model, optimizer, epoch).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long, default_value_t = 2023)]
    pub seed: u64,
    /// Largest random widening of each box side, in pixels of the npy data (MedSAM's 20 at 1024²;
    /// LiteMedSAM's boxes, scaled by 256/1024, get upstream's 5).
    #[arg(long = "bbox-shift", default_value_t = 20)]
    pub bbox_shift: usize,
    /// Stop after this many optimizer steps.
    #[arg(long = "max-steps")]
    pub max_steps: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// DDP gradient bucket size in MB.
    #[arg(long = "bucket-cap-mb", default_value_t = 25)]
    pub bucket_cap_mb: usize,
    /// Seconds before a hung collective fails the run.
    #[arg(long = "dist-timeout", default_value_t = 600)]
    pub dist_timeout: u64,
}

impl TrainArgs {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            tr_npy_path: self.tr_npy_path.clone(),
            task_name: self.task_name.clone(),
            work_dir: self.work_dir.clone(),
            num_epochs: self.num_epochs,
            batch_size: self.batch_size,
            grad_acc_steps: self.grad_acc_steps,
            num_workers: self.num_workers,
            adamw: AdamWConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            },
            use_amp: self.use_amp,
            resume: self.resume.clone(),
            seed: self.seed,
            bbox_shift: self.bbox_shift,
            max_steps: self.max_steps,
            bucket_cap_mb: self.bucket_cap_mb,
            ..TrainConfig::default()
        }
    }

    /// The model to train: loaded from `--checkpoint` (either family, told apart by its keys), or
    /// freshly initialised for `--model-type` (a `--resume` checkpoint's family when not given).
    pub fn build_model(&self) -> Result<AnyModel> {
        let device = parse_device(&self.device)?;
        let config = self.model_config.as_deref();
        if let Some(path) = &self.checkpoint {
            let (model, _) = medsam::models::load::load_any_model(path, None, config, device)?;
            check_family(self.model_type, &model, path)?;
            return Ok(model);
        }
        let lite = match (self.model_type, &self.resume) {
            (Some(t), _) => t == AnyModelType::Lite,
            (None, Some(path)) => is_lite_checkpoint(path)?,
            (None, None) => false,
        };
        if lite {
            let cfg = match config {
                Some(p) => LiteConfig::from_json_file(p)?,
                None => LiteConfig::lite_medsam(),
            };
            return Ok(AnyModel::Lite(Box::new(LiteMedSam::new(
                &cfg, self.seed, device,
            )?)));
        }
        let cfg = match config {
            Some(p) => SamConfig::from_json_file(p)?,
            None => SamConfig::preset(
                self.model_type
                    .and_then(AnyModelType::sam)
                    .unwrap_or(ModelType::VitB),
            ),
        };
        Ok(AnyModel::Sam(Box::new(Sam::new(&cfg, self.seed, device)?)))
    }
}

/// Whether a checkpoint holds LiteMedSAM weights (TinyViT encoder keys).
fn is_lite_checkpoint(path: &std::path::Path) -> Result<bool> {
    let value = medsam::models::load::read_checkpoint(path)?;
    let weights = medsam::models::load::state_dict(path, &value)?;
    Ok(LiteConfig::is_lite_state_dict(weights.keys()))
}

/// `--model-type` given explicitly must name the checkpoint's family (SAM variants are checked
/// by shape when the config is resolved).
fn check_family(t: Option<AnyModelType>, model: &AnyModel, path: &std::path::Path) -> Result<()> {
    let mismatch = match (t, model) {
        (Some(AnyModelType::Lite), AnyModel::Sam(_)) => Some("holds a SAM/MedSAM (ViT) model"),
        (Some(t), AnyModel::Lite(_)) if t != AnyModelType::Lite => {
            Some("holds a LiteMedSAM (TinyViT) model")
        }
        _ => None,
    };
    match mismatch {
        Some(what) => Err(medsam::Error::arg(
            "--model-type",
            format!("{t:?} does not match {}, which {what}", path.display()),
        )),
        None => Ok(()),
    }
}

/// Runs training with a progress bar on rank 0; returns the outcome.
pub fn run_with(
    a: &TrainArgs,
    comm: &dyn Communicator,
) -> Result<medsam::pipeline::train::TrainOutcome> {
    let model = a.build_model()?;
    let bar = if comm.is_root() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec}").expect("template"),
    );
    let mut on_event = |e: TrainEvent| match e {
        TrainEvent::Started {
            run_dir,
            samples,
            batches_per_epoch,
            start_epoch,
        } => {
            bar.println(format!("run dir {}: {samples} samples, {batches_per_epoch} batches/epoch, from epoch {start_epoch}", show(&run_dir)));
        }
        TrainEvent::Step { epoch, loss, .. } => {
            bar.set_message(format!("epoch {epoch} loss {loss:.4}"));
            bar.inc(1);
        }
        TrainEvent::EpochEnd {
            epoch,
            mean_loss,
            improved,
        } => {
            bar.println(format!(
                "epoch {epoch}: mean loss {mean_loss:.4}{}",
                if improved { " (best)" } else { "" }
            ));
        }
        TrainEvent::Saved { .. } => {}
    };
    let total = a.max_steps.unwrap_or(usize::MAX).min(1 << 40);
    if total < (1 << 40) {
        bar.set_length(total as u64);
    }
    let cfg = a.config();
    let outcome = match model {
        AnyModel::Sam(mut m) => train(&cfg, &mut *m, comm, &mut on_event)?,
        AnyModel::Lite(mut m) => train(&cfg, &mut *m, comm, &mut on_event)?,
    };
    bar.finish_and_clear();
    Ok(outcome)
}
