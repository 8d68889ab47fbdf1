//! Times MedSAM2's image encoder (Hiera t512 trunk and FPN neck, random weights) piece by piece:
//! patch embedding, position embedding, each block, the neck, and the whole encoder, in each
//! precision, rounds interleaved. Prints one line per piece: median ms per precision.
//!
//!     cargo run --release --example bench_hiera -- [ROUNDS] [f32,bf16,int8]

use medsam::autograd::no_grad;
use medsam::models::sam2::{Sam2Base, Sam2Config};
use medsam::ops::linalg::autocast_bf16;
use medsam::ops::quant::autocast_int8;
use medsam::{Device, Result, Tensor};
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|r| r.parse().ok()).unwrap_or(3);
    let precisions: Vec<String> = args
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or("f32,bf16,int8")
        .split(',')
        .map(str::to_string)
        .collect();
    let cfg = Sam2Config::medsam2_t512();
    let model = Sam2Base::new(&cfg, 0, Device::Cpu)?;
    let enc = &model.image_encoder;
    let trunk = &enc.trunk;
    let s = cfg.image_size;
    let img: Vec<f32> = (0..3 * s * s)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    let img = Tensor::from_slice(&img, &[1, 3, s, s], Device::Cpu)?;
    let names: Vec<String> = ["patch_embed+pos", "neck", "encoder"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..trunk.blocks.len()).map(|i| format!("block {i}")))
        .collect();
    // times[precision][piece] = samples
    let mut times = vec![vec![Vec::new(); names.len()]; precisions.len()];
    let run = |p: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        no_grad(|| autocast_bf16(p == "bf16", || autocast_int8(p == "int8", f)))
    };
    for round in 0..=rounds {
        for (pi, p) in precisions.iter().enumerate() {
            run(p, &mut || {
                let t = Instant::now();
                enc.forward(&img)?;
                let whole = t.elapsed().as_secs_f64() * 1e3;
                // Pieces: the trunk's own forward, block by block.
                let t = Instant::now();
                let xs = trunk.forward_embed(&img)?;
                let mut piece = vec![t.elapsed().as_secs_f64() * 1e3];
                let mut x = xs;
                let mut outs = Vec::new();
                let mut blocks = Vec::new();
                for (i, blk) in trunk.blocks.iter().enumerate() {
                    let t = Instant::now();
                    x = blk.forward(&x)?;
                    blocks.push(t.elapsed().as_secs_f64() * 1e3);
                    if trunk.stage_ends.contains(&i) {
                        outs.push(x.permute(&[0, 3, 1, 2])?.contiguous()?);
                    }
                }
                let t = Instant::now();
                enc.neck.forward(&outs)?;
                piece.push(t.elapsed().as_secs_f64() * 1e3);
                piece.push(whole);
                piece.extend(blocks);
                if round > 0 {
                    for (k, v) in piece.into_iter().enumerate() {
                        times[pi][k].push(v);
                    }
                }
                Ok(())
            })?;
        }
    }
    print!("{:<16}", "piece");
    for p in &precisions {
        print!("{p:>10}");
    }
    println!();
    for (k, n) in names.iter().enumerate() {
        print!("{n:<16}");
        for t in times.iter_mut() {
            print!("{:>10.1}", median(&mut t[k]));
        }
        println!();
    }
    Ok(())
}
