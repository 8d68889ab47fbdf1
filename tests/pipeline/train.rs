//! Training end to end on a small synthetic data set in the npy layout: the loss falls and the
//! held-out DSC rises well above its starting value; resuming is bit-identical to uninterrupted
//! training; gradient accumulation matches one big batch; bad data stops with a clear error.

use crate::common::train_config;
use medsam::dist::SingleProcess;
use medsam::eval::{evaluate, EvalConfig};
use medsam::model::{Sam, SamConfig};
use medsam::rng::Rng;
use medsam::train::{train, TrainConfig};
use medsam::Device;
use std::path::{Path, PathBuf};
use train_config::train_config_in;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` slices of `s×s`: a bright ellipse (label 1) and sometimes a dimmer square (label 2) on noise.
fn synth(dir: &Path, n: usize, s: usize, seed: u64) {
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    std::fs::create_dir_all(dir.join("gts")).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let mut img = vec![0.0f64; s * s * 3];
        let mut gt = vec![0u8; s * s];
        let (cx, cy) = (
            8.0 + rng.uniform() * (s as f64 - 16.0),
            8.0 + rng.uniform() * (s as f64 - 16.0),
        );
        let (rx, ry) = (3.0 + rng.uniform() * 5.0, 3.0 + rng.uniform() * 5.0);
        let square = rng.uniform() < 0.5;
        let (qx, qy) = (rng.int_inclusive(s - 8), rng.int_inclusive(s - 8));
        for y in 0..s {
            for x in 0..s {
                let mut v = 0.2 + 0.1 * rng.uniform();
                let inside = ((x as f64 - cx) / rx).powi(2) + ((y as f64 - cy) / ry).powi(2) <= 1.0;
                if square && x >= qx && x < qx + 6 && y >= qy && y < qy + 6 {
                    v = 0.5 + 0.1 * rng.uniform();
                    gt[y * s + x] = 2;
                }
                if inside {
                    v = 0.8 + 0.1 * rng.uniform();
                    gt[y * s + x] = 1;
                }
                for c in 0..3 {
                    img[(y * s + x) * 3 + c] = v;
                }
            }
        }
        let name = format!("SYN_{i:03}.npy");
        medsam::npy::write_npy_f64(dir.join("imgs").join(&name), &[s, s, 3], &img).unwrap();
        medsam::npy::write_npy_u8(dir.join("gts").join(&name), &[s, s], &gt).unwrap();
    }
}

fn tiny_config(s: usize) -> SamConfig {
    let mut c = SamConfig::demo(s);
    c.image_encoder.patch_size = 8;
    c.image_encoder.embed_dim = 32;
    c.image_encoder.depth = 2;
    c.image_encoder.num_heads = 2;
    c.image_encoder.window_size = 2;
    c.image_encoder.global_attn_indexes = vec![1];
    c.image_encoder.out_chans = 32;
    c.prompt_encoder.embed_dim = 32;
    c.prompt_encoder.mask_in_chans = 8;
    c.mask_decoder.transformer_dim = 32;
    c.mask_decoder.transformer_mlp_dim = 64;
    c.mask_decoder.transformer_num_heads = 2;
    c.mask_decoder.iou_head_hidden_dim = 32;
    c
}

fn base_config(data: &Path, run: &Path) -> TrainConfig {
    TrainConfig {
        task_name: "t".into(),
        batch_size: 4,
        num_workers: 2,
        bbox_shift: 2,
        ..train_config_in(data, run)
    }
}

fn weights(model: &mut Sam) -> Vec<Vec<f32>> {
    model
        .trainable_parameters()
        .iter()
        .map(|(_, p)| p.to_vec().unwrap())
        .collect()
}

#[test]
fn loss_falls_and_heldout_dsc_rises() {
    let d = tmp("learn");
    synth(&d.join("train"), 32, 32, 1);
    synth(&d.join("test"), 8, 32, 2);
    let mut model = Sam::new(&tiny_config(32), 7, Device::Cpu).unwrap();
    let ecfg = |w: &str| EvalConfig {
        data_path: d.join("test"),
        work_dir: d.join(w),
        ..EvalConfig::default()
    };
    let before = evaluate(&model, &ecfg("eval0"), &SingleProcess, &mut |_, _| {})
        .unwrap()
        .summary;
    let cfg = TrainConfig {
        num_epochs: 40,
        max_steps: Some(240),
        ..base_config(&d.join("train"), &d.join("run"))
    };
    let out = train(&cfg, &mut model, &SingleProcess, &mut |_| {}).unwrap();
    let after = evaluate(&model, &ecfg("eval1"), &SingleProcess, &mut |_, _| {})
        .unwrap()
        .summary;
    let first: f32 = out.step_losses[..20].iter().sum::<f32>() / 20.0;
    let last: f32 = out.step_losses[out.step_losses.len() - 20..]
        .iter()
        .sum::<f32>()
        / 20.0;
    let (b, a) = (before.dsc.unwrap(), after.dsc.unwrap());
    println!(
        "loss {first:.3} -> {last:.3}; held-out DSC {b:.3} -> {a:.3} (box baseline {:?})",
        after.box_baseline.dsc
    );
    assert!(last < 0.7 * first, "loss did not fall: {first} -> {last}");
    assert!(a > b + 0.2, "held-out DSC did not rise: {b} -> {a}");
    for f in [
        "medsam_model_latest.pth",
        "train_log.jsonl",
        "t_train_loss.png",
    ] {
        assert!(d.join("run").join(f).is_file(), "{f} missing");
    }
}

#[test]
fn resume_is_bit_identical_to_uninterrupted_training() {
    let d = tmp("resume");
    synth(&d.join("data"), 12, 32, 3);
    let mut full = Sam::new(&tiny_config(32), 5, Device::Cpu).unwrap();
    let cfg = TrainConfig {
        num_epochs: 2,
        ..base_config(&d.join("data"), &d.join("full"))
    };
    train(&cfg, &mut full, &SingleProcess, &mut |_| {}).unwrap();

    let mut first = Sam::new(&tiny_config(32), 5, Device::Cpu).unwrap();
    let cfg1 = TrainConfig {
        num_epochs: 1,
        ..base_config(&d.join("data"), &d.join("part"))
    };
    let out1 = train(&cfg1, &mut first, &SingleProcess, &mut |_| {}).unwrap();
    let mut resumed = Sam::new(&tiny_config(32), 99, Device::Cpu).unwrap();
    let cfg2 = TrainConfig {
        num_epochs: 2,
        resume: Some(out1.latest_checkpoint),
        ..base_config(&d.join("data"), &d.join("part2"))
    };
    let out2 = train(&cfg2, &mut resumed, &SingleProcess, &mut |_| {}).unwrap();
    assert_eq!(
        out2.epochs_completed, 1,
        "resume should run only the remaining epoch"
    );
    assert!(
        weights(&mut full) == weights(&mut resumed),
        "resumed weights differ from uninterrupted training"
    );
}

#[test]
fn gradient_accumulation_matches_a_larger_batch() {
    // Dice is a per-image mean and BCE a per-pixel mean, so two micro-batches of 2 with the loss
    // divided by 2 give the gradient of one batch of 4 (up to f32 rounding).
    let d = tmp("accum");
    synth(&d.join("data"), 4, 32, 4);
    let ds = medsam::data::NpyDataset::open(&d.join("data"), 2).unwrap();
    let grads = |batch: usize, k: usize| {
        let mut model = Sam::new(&tiny_config(32), 3, Device::Cpu).unwrap();
        model.enable_training();
        for b in medsam::data::load_batches(&ds, vec![0, 1, 2, 3], batch, 1, 0, 1) {
            medsam::train::forward_backward(&model, &b.unwrap(), k, false).unwrap();
        }
        model
            .trainable_parameters()
            .iter()
            .map(|(n, p)| (n.clone(), p.grad().map(|g| g.to_vec().unwrap())))
            .collect::<Vec<_>>()
    };
    let (one, acc) = (grads(4, 1), grads(2, 2));
    let scale = one
        .iter()
        .filter_map(|(_, g)| g.as_ref())
        .flatten()
        .fold(0.0f32, |m, x| m.max(x.abs()));
    for ((name, a), (_, b)) in one.iter().zip(&acc) {
        let (Some(a), Some(b)) = (a, b) else {
            assert_eq!(a.is_some(), b.is_some(), "{name}");
            continue;
        };
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-5 * scale,
            "{name}: accumulated gradient differs by {diff} (scale {scale})"
        );
    }
}

/// The error of training the tiny 32-px model (seed 1) with `cfg`.
fn train_error(cfg: &TrainConfig) -> String {
    let mut model = Sam::new(&tiny_config(32), 1, Device::Cpu).unwrap();
    train(cfg, &mut model, &SingleProcess, &mut |_| {})
        .expect_err("training should fail")
        .to_string()
}

/// [`train_error`] for one epoch of batches of 1 of the slices in `data`.
fn one_epoch_error(data: &Path, run: &Path) -> String {
    train_error(&TrainConfig {
        num_epochs: 1,
        batch_size: 1,
        ..base_config(data, run)
    })
}

#[test]
fn nan_in_data_stops_with_the_step_and_file() {
    let d = tmp("nan");
    synth(&d.join("data"), 4, 32, 5);
    let p = d.join("data/imgs/SYN_002.npy");
    let mut img = medsam::npy::read_npy(&p).unwrap().to_f32();
    img[100] = f32::NAN;
    let img: Vec<f64> = img.into_iter().map(|v| v as f64).collect();
    medsam::npy::write_npy_f64(&p, &[32, 32, 3], &img).unwrap();
    let e = one_epoch_error(&d.join("data"), &d.join("run"));
    // Refused when the image is read (before any loss), naming the file.
    assert!(
        (e.contains("non-finite loss") || e.contains("NaN")) && e.contains("SYN_002.npy"),
        "{e}"
    );
}

#[test]
fn empty_label_map_is_named() {
    let d = tmp("empty");
    synth(&d.join("data"), 2, 32, 6);
    medsam::npy::write_npy_u8(d.join("data/gts/SYN_001.npy"), &[32, 32], &[0u8; 32 * 32]).unwrap();
    let e = one_epoch_error(&d.join("data"), &d.join("run"));
    assert!(e.contains("SYN_001.npy") && e.contains("empty"), "{e}");
}

#[test]
fn missing_data_dir_is_named() {
    let d = tmp("missing");
    let e = train_error(&base_config(&d.join("nope"), &d.join("run")));
    assert!(e.contains("nope"), "{e}");
}
