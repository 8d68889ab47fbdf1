//! `medsam`: MedSAM preprocessing, training, conversion, evaluation and inference.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
    /// Segment an image with box prompts (MedSAM_Inference.py).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let comm = medsam::dist::SingleProcess;
    let result = match &cli.command {
        Command::Demo(a) => cli::demo::run_demo(a),
        Command::Infer(a) => cli::infer::run(a),
        Command::Preprocess(a) => cli::preprocess::run(a)
            .map(|_| ())
            .map_err(|e| medsam::Error::Other(e.to_string())),
        Command::Phantom(a) => cli::phantom::run(a)
            .map(|_| ())
            .map_err(|e| medsam::Error::Other(e.to_string())),
        Command::Train(a) => cli::train::run_with(a, &comm).map(|o| {
            println!(
                "latest checkpoint: {}",
                cli::common::show(&o.latest_checkpoint)
            );
        }),
        Command::Eval(a) => cli::eval::run_with(a, &comm).map(|_| ()),
        Command::Convert(a) => cli::convert::run(a)
            .map(|summary| println!("{summary}"))
            .map_err(|e| medsam::Error::Other(e.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
