//! `medsam eval`: DSC, IoU, NSD and the fill-the-box baseline over the npy layout, for
//! SAM/MedSAM and LiteMedSAM checkpoints (told apart by their keys).

use super::common::{load_any_model, show, AnyModelArgs};
use medsam::dist::Communicator;
use medsam::models::AnyModel;
use medsam::pipeline::eval::{evaluate, format_table, EvalConfig};
use medsam::pipeline::infer::sam::InferPrecision;
use medsam::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Data in the npy layout (imgs/, gts/).
    #[arg(long = "data-path")]
    pub data_path: PathBuf,
    #[command(flatten)]
    pub model: AnyModelArgs,
    #[arg(long = "work-dir", default_value = "./eval_out")]
    pub work_dir: PathBuf,
    /// Compute threads (0 = all cores).
    #[arg(long = "num-workers", default_value_t = 0)]
    pub num_workers: usize,
    #[arg(long = "max-slices")]
    pub max_slices: Option<usize>,
    /// NSD tolerance in pixels.
    #[arg(long = "nsd-tolerance", default_value_t = 2.0)]
    pub nsd_tolerance: f64,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: InferPrecision,
    /// Seconds before a hung collective fails the run (multi-process evaluation).
    #[arg(long = "dist-timeout", default_value_t = 600)]
    pub dist_timeout: u64,
}

pub fn run_with(
    a: &EvalArgs,
    comm: &dyn Communicator,
) -> Result<medsam::pipeline::eval::EvalOutcome> {
    if a.num_workers > 0 {
        // Ignore the error of a pool that already exists: the first setting stays in force.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(a.num_workers)
            .build_global();
    }
    let model = load_any_model(&a.model)?;
    let cfg = EvalConfig {
        data_path: a.data_path.clone(),
        work_dir: a.work_dir.clone(),
        max_slices: a.max_slices,
        nsd_tolerance: a.nsd_tolerance,
        precision: a.precision,
        ..EvalConfig::default()
    };
    let bar = if comm.is_root() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut on_slice = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let out = match &model {
        AnyModel::Sam(m) => evaluate(&**m, &cfg, comm, &mut on_slice)?,
        AnyModel::Lite(m) => evaluate(&**m, &cfg, comm, &mut on_slice)?,
    };
    bar.finish_and_clear();
    if comm.is_root() {
        print!("{}", format_table(&out.summary));
        println!("metrics: {} and {}", show(&out.csv), show(&out.json));
        if let Some(f) = &out.figure {
            println!("figure:  {}", show(f));
        }
    }
    Ok(out)
}
