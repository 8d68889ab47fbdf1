//! `medsam train`: the seed's training script as a subcommand.

use super::common::{parse_device, show};
use indicatif::{ProgressBar, ProgressStyle};
use medsam::dist::Communicator;
use medsam::model::{ModelType, Sam, SamConfig};
use medsam::optim::AdamWConfig;
use medsam::train::{train, TrainConfig, TrainEvent};
use medsam::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training data in the npy layout (imgs/, gts/).
    #[arg(short = 'i', long = "tr-npy-path", default_value = "data/npy/CT_Abd")]
    pub tr_npy_path: PathBuf,
    #[arg(long = "task-name", default_value = "MedSAM-ViT-B")]
    pub task_name: String,
    #[arg(long = "model-type", value_enum, default_value = "vit_b")]
    pub model_type: ModelType,
    /// JSON model configuration (overrides --model-type).
    #[arg(long = "model-config")]
    pub model_config: Option<PathBuf>,
    /// SAM checkpoint to start from (omit for random initialisation).
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

    pub fn build_model(&self) -> Result<Sam> {
        let device = parse_device(&self.device)?;
        match &self.checkpoint {
            Some(path) => {
                Ok(
                    medsam::weights::load_model(path, None, self.model_config.as_deref(), device)?
                        .0,
                )
            }
            None => {
                let cfg = match &self.model_config {
                    Some(p) => SamConfig::from_json_file(p)?,
                    None => SamConfig::preset(self.model_type),
                };
                Sam::new(&cfg, self.seed, device)
            }
        }
    }
}

/// Runs training with a progress bar on rank 0; returns the outcome.
pub fn run_with(a: &TrainArgs, comm: &dyn Communicator) -> Result<medsam::train::TrainOutcome> {
    let mut model = a.build_model()?;
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
    let outcome = train(&a.config(), &mut model, comm, &mut on_event)?;
    bar.finish_and_clear();
    Ok(outcome)
}
