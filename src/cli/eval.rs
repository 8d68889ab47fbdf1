//! `medsam eval`: DSC, IoU, NSD and the fill-the-box baseline over the npy layout, for
//! SAM/MedSAM and LiteMedSAM checkpoints (told apart by their keys); on 3D volumes (challenge
//! `.npz`, NIfTI or DICOM with labels) 3D DSC and NSD per volume and label for LiteMedSAM or
//! MedSAM2 beside the fill-the-box baseline ([`medsam::pipeline::eval3d`]).

use super::common::{load_any_model, parse_device, show, AnyModelArgs, AnyModelType};
use medsam::dist::Communicator;
use medsam::models::sam2::{licence_note, load_sam2, VideoPredictor};
use medsam::models::AnyModel;
use medsam::pipeline::eval::{evaluate, format_table, EvalConfig};
use medsam::pipeline::eval3d::{
    evaluate_volumes, format_table_3d, is_volume_input, list_volume_pairs, lite_segmenter,
    medsam2_segmenter, Eval3dConfig,
};
use medsam::pipeline::infer::sam::InferPrecision;
use medsam::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Data in the npy layout (imgs/, gts/); or 3D volumes: a challenge .npz (imgs, gts, spacing)
    /// or a folder of them, NIfTI/.npz/DICOM-series image and label folders (DIR/imgs + DIR/gts,
    /// or --label-path), a NIfTI file or DICOM series folder with --label-path FILE.
    #[arg(long = "data-path")]
    pub data_path: PathBuf,
    /// 3D: label maps (NIfTI or .npz `gts`), a file or a folder matched by name.
    #[arg(long = "label-path")]
    pub label_path: Option<PathBuf>,
    /// 3D: the DICOM series to read when a folder holds several.
    #[arg(long)]
    pub series: Option<String>,
    /// 3D: evaluate at most this many volumes.
    #[arg(long = "max-volumes")]
    pub max_volumes: Option<usize>,
    #[command(flatten)]
    pub model: AnyModelArgs,
    #[arg(long = "work-dir", default_value = "./eval_out")]
    pub work_dir: PathBuf,
    /// Compute threads (0 = all cores).
    #[arg(long = "num-workers", default_value_t = 0)]
    pub num_workers: usize,
    #[arg(long = "max-slices")]
    pub max_slices: Option<usize>,
    /// NSD tolerance: pixels on 2D slices, mm on 3D volumes.
    #[arg(long = "nsd-tolerance", default_value_t = 2.0)]
    pub nsd_tolerance: f64,
    /// Image-encoder precision (2D slices and 3D volumes, every model).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: InferPrecision,
    /// Seconds before a hung collective fails the run (multi-process evaluation).
    #[arg(long = "dist-timeout", default_value_t = 600)]
    pub dist_timeout: u64,
}

pub fn run_with(a: &EvalArgs, comm: &dyn Communicator) -> Result<()> {
    if a.num_workers > 0 {
        // Ignore the error of a pool that already exists: the first setting stays in force.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(a.num_workers)
            .build_global();
    }
    if is_volume_input(&a.data_path, a.label_path.as_deref()) {
        return run_volumes(a, comm);
    }
    for (flag, set) in [
        ("--label-path", a.label_path.is_some()),
        ("--series", a.series.is_some()),
        ("--max-volumes", a.max_volumes.is_some()),
    ] {
        if set {
            return Err(medsam::Error::arg(flag, "applies to 3D volumes only"));
        }
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
    let bar = progress_bar(comm);
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
    Ok(())
}

/// A progress bar shown on rank 0 only.
fn progress_bar(comm: &dyn Communicator) -> indicatif::ProgressBar {
    if comm.is_root() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// 3D volumes: LiteMedSAM (slice-by-slice box propagation) or MedSAM2 (`--model-type medsam2`).
fn run_volumes(a: &EvalArgs, comm: &dyn Communicator) -> Result<()> {
    let cfg = Eval3dConfig {
        data_path: a.data_path.clone(),
        label_path: a.label_path.clone(),
        work_dir: a.work_dir.clone(),
        nsd_tolerance: a.nsd_tolerance,
        max_volumes: a.max_volumes.or(a.max_slices),
        series: a.series.clone(),
    };
    // Name a data problem before the (slow) model load.
    list_volume_pairs(&cfg.data_path, cfg.label_path.as_deref())?;
    let bar = progress_bar(comm);
    let mut on_volume = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let out = if a.model.model_type == Some(AnyModelType::Medsam2) {
        let device = parse_device(&a.model.device)?;
        let (model, _report) = load_sam2(
            &a.model.checkpoint,
            a.model.model_config.as_deref(),
            None,
            device,
        )?;
        if let (Some(note), true) = (licence_note(&a.model.checkpoint), comm.is_root()) {
            println!("licence: {note}");
        }
        let mut predictor = VideoPredictor::new(model);
        predictor.fill_hole_area = 8;
        predictor.precision = a.precision;
        let mut seg = medsam2_segmenter(&predictor, None);
        evaluate_volumes(&cfg, "medsam2", &mut seg, comm, &mut on_volume)?
    } else {
        match load_any_model(&a.model)? {
            AnyModel::Lite(m) => {
                super::infer::note_lite_volume_precision(a.precision);
                let mut seg = lite_segmenter(&m, a.precision);
                evaluate_volumes(&cfg, "lite", &mut seg, comm, &mut on_volume)?
            }
            AnyModel::Sam(_) => {
                return Err(medsam::Error::arg(
                    "--checkpoint",
                    format!(
                        "{} holds a SAM/MedSAM (ViT) model, which has no 3D propagation here; evaluate volumes with LiteMedSAM or --model-type medsam2, or SAM on 2D slices (npy layout)",
                        a.model.checkpoint.display()
                    ),
                ))
            }
        }
    };
    bar.finish_and_clear();
    if comm.is_root() {
        for n in &out.notes {
            eprintln!("note: {n}");
        }
        println!(
            "{} volume(s), NSD at {} mm, model {} ({:.2} s segmenting)",
            out.summary.volumes,
            out.summary.nsd_tolerance_mm,
            out.summary.model,
            out.summary.seconds
        );
        print!("{}", format_table_3d(&out.summary));
        println!("metrics: {} and {}", show(&out.csv), show(&out.json));
    }
    Ok(())
}
