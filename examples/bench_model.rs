//! Times whole-model work at real sizes with random weights; prints one `RESULT` line per
//! measurement for `benches/model_vs_torch.py`, which runs PyTorch on the same shapes beside it.
//!
//!     cargo run --release --example bench_model -- encode  [vit_b] [f32|bf16|int8] [REPEATS]
//!     cargo run --release --example bench_model -- train   [vit_b] [f32|bf16] [REPEATS]

use medsam::autograd::no_grad;
use medsam::data::Batch;
use medsam::model::{ModelType, Sam, SamConfig};
use medsam::ops::linalg::autocast_bf16;
use medsam::ops::quant::autocast_int8;
use medsam::optim::{AdamW, AdamWConfig};
use medsam::train::forward_backward;
use medsam::{Device, Result, Tensor};
use std::time::Instant;

/// Peak resident set size of this process in MB (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("encode");
    let model_type = match args.get(1).map(String::as_str).unwrap_or("vit_b") {
        "vit_l" => ModelType::VitL,
        "vit_h" => ModelType::VitH,
        _ => ModelType::VitB,
    };
    let precision = args.get(2).map(String::as_str).unwrap_or("f32");
    let (bf16, int8) = (precision == "bf16", precision == "int8");
    let repeats: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(2);
    let cfg = SamConfig::preset(model_type);
    let mut sam = Sam::new(&cfg, 0, Device::Cpu)?;
    let s = cfg.image_encoder.img_size;
    let image = Tensor::from_vec(
        (0..3 * s * s)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect(),
        &[1, 3, s, s],
    )?;
    let mut times = Vec::new();
    match mode {
        "encode" => {
            for _ in 0..repeats + 1 {
                let t0 = Instant::now();
                let emb = no_grad(|| {
                    autocast_bf16(bf16, || {
                        autocast_int8(int8, || sam.image_encoder.forward(&image))
                    })
                })?;
                times.push(t0.elapsed().as_secs_f64());
                std::hint::black_box(emb);
            }
        }
        "train" => {
            sam.enable_training();
            let mut opt = AdamW::new(AdamWConfig::default(), sam.trainable_parameters().len());
            let mut mask = vec![0.0f32; s * s];
            for y in 300..600 {
                for x in 350..700 {
                    mask[y * s + x] = 1.0;
                }
            }
            let batch = Batch {
                images: image.clone(),
                masks: Tensor::from_vec(mask, &[1, 1, s, s])?,
                boxes: vec![[340.0, 290.0, 710.0, 610.0]],
                names: vec!["bench".into()],
            };
            for _ in 0..repeats + 1 {
                let t0 = Instant::now();
                forward_backward(&sam, &batch, 1, bf16)?;
                let mut params = sam.trainable_parameters();
                opt.step(&mut params)?;
                AdamW::zero_grad(&mut params);
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        other => panic!("unknown mode {other}: use encode or train"),
    }
    let warm = &times[1..];
    let best = warm.iter().cloned().fold(f64::INFINITY, f64::min);
    let median = {
        let mut w = warm.to_vec();
        w.sort_by(|a, b| a.partial_cmp(b).unwrap());
        w[w.len() / 2]
    };
    println!(
        "RESULT impl=rust mode={mode} model={model_type:?} precision={} first_s={:.3} best_s={best:.3} median_s={median:.3} peak_rss_mb={:.0} threads={}",
        if bf16 || int8 { precision } else { "f32" },
        times[0],
        peak_rss_mb(),
        rayon::current_num_threads()
    );
    Ok(())
}
