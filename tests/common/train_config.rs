//! The training configuration the training tests start from.

use medsam::train::TrainConfig;
use std::path::Path;

/// Trains on the slices in `data`, writing into `run` (work and run directory), AdamW at
/// learning rate 1e-3; everything else at its default.
pub fn train_config_in(data: &Path, run: &Path) -> TrainConfig {
    TrainConfig {
        tr_npy_path: data.to_path_buf(),
        work_dir: run.to_path_buf(),
        run_dir: Some(run.to_path_buf()),
        adamw: medsam::optim::AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        ..TrainConfig::default()
    }
}
