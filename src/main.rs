//! `medsam`: MedSAM preprocessing, training, conversion, evaluation and inference.

mod cli;

use clap::{Parser, Subcommand};
use medsam::dist::Communicator;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "medsam",
    version,
    about = "MedSAM (Segment Anything for medical images) in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole workflow on a generated CT phantom: preprocess, train, convert, evaluate.
    Demo(cli::demo::DemoArgs),
    /// Segment an image (MedSAM_Inference.py) or, with a LiteMedSAM checkpoint, a 3D volume, from box prompts.
    Infer(cli::infer::InferArgs),
    /// Preprocess NIfTI CT/MR volumes into MedSAM's npy slices (utils/pre_CT_MR.py).
    Preprocess(cli::preprocess::PreprocessArgs),
    /// Write synthetic abdominal-CT phantoms in the FLARE22 layout.
    Phantom(cli::phantom::PhantomArgs),
    /// Train MedSAM from a SAM checkpoint (train_one_gpu.py / train_multi_gpus.py).
    Train(cli::train::TrainArgs),
    /// Convert a MedSAM training checkpoint to SAM format (utils/ckpt_convert.py).
    Convert(cli::convert::ConvertArgs),
    /// Score a checkpoint on npy data: DSC, IoU, NSD, box baseline, comparison figure.
    Eval(cli::eval::EvalArgs),
    /// List the series of a DICOM folder; read one (geometry, values, time); convert it to NIfTI.
    Dicom(cli::dicom::DicomArgs),
    /// Per-image latency of each model and precision on this machine (a Markdown table), optionally beside PyTorch.
    Bench(cli::bench::BenchArgs),
    /// Serve a model over HTTP: a web page, the nnInteractive v2 protocol, SlicerNNInteractive.
    Serve(cli::serve::ServeArgs),
}

/// Runs `f` with the communicator the launcher set up (MPI under mpirun/srun when built with
/// `--features mpi`, otherwise a single process) and this rank's device (`npu` → the rank's own
/// NPU); ranks on Ascend NPUs exchange gradients through HCCL, bootstrapped over that
/// communicator. A failed run under several ranks aborts them all rather than leaving the
/// others waiting in a collective.
fn distributed(
    timeout_s: u64,
    device: &str,
    f: impl FnOnce(&dyn Communicator, String) -> medsam::Result<()>,
) -> medsam::Result<()> {
    let comm = medsam::dist::communicator_from_env(Duration::from_secs(timeout_s))?;
    let device = medsam::dist::rank_device(device, comm.as_ref());
    let result = device
        .parse()
        .and_then(|d| medsam::dist::with_device_collective(comm.as_ref(), d, |c| f(c, device)));
    if let Err(e) = &result {
        if comm.world_size() > 1 {
            eprintln!("error on rank {}: {e}", comm.rank());
            comm.abort(1);
        }
    }
    result
}

/// Exit status of a panic: a bug in this program, never the user's input.
const EXIT_INTERNAL: u8 = 70;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic is a bug: say so in one line (with where), never as a bare backtrace dump.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "internal error (a bug, please report it): {what}{at}; the input may be malformed in a way that is not yet checked"
        );
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&cli)));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(EXIT_INTERNAL),
    }
}

/// Runs a subcommand with one top-level caller and no locks shared with other threads on the
/// compute pool's threads ([`medsam::backend::cpu::on_compute_pool`]). The pool's threads get the
/// main thread's usual 8 MiB stack (rayon's default is 2 MiB), so moving the work there does not
/// lower how deeply a parser may recurse on an input.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when the pool already exists (then its settings stay); nothing to report.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    medsam::backend::cpu::on_compute_pool(f)
}

fn run(cli: &Cli) -> medsam::Result<()> {
    // A malformed MEDSAM_MAX_* variable is reported before any file is read.
    medsam::io::limits::Limits::current()?;
    match &cli.command {
        Command::Demo(a) => cli::demo::run_demo(a),
        Command::Infer(a) => on_pool(|| cli::infer::run(a)),
        Command::Preprocess(a) => cli::preprocess::run(a)
            .map(|_| ())
            .map_err(medsam::Error::from),
        Command::Phantom(a) => cli::phantom::run(a)
            .map(|_| ())
            .map_err(medsam::Error::from),
        Command::Train(a) => distributed(a.dist_timeout, &a.device, |comm, device| {
            let a = cli::train::TrainArgs {
                device,
                ..a.clone()
            };
            cli::train::run_with(&a, comm).map(|o| {
                if comm.is_root() {
                    println!(
                        "latest checkpoint: {}",
                        cli::common::show(&o.latest_checkpoint)
                    );
                }
            })
        }),
        Command::Eval(a) => distributed(a.dist_timeout, &a.model.device, |comm, device| {
            let mut a = a.clone();
            a.model.device = device;
            cli::eval::run_with(&a, comm).map(|_| ())
        }),
        Command::Dicom(a) => on_pool(|| cli::dicom::run(a)),
        Command::Serve(a) => cli::serve::run(a),
        Command::Bench(a) => on_pool(|| cli::bench::run(a)),
        Command::Convert(a) => cli::convert::run(a).map(|summary| println!("{summary}")),
    }
}
