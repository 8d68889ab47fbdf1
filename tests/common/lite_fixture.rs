//! The deterministic parameters of the tiny LiteMedSAM fixtures, as
//! `tests/fixtures/make_lite_fixtures.py` computes them: every tensor is a function of its
//! state-dict name (a SplitMix64 stream seeded by the name's FNV-1a hash, f32 in [-1, 1) with
//! 24-bit steps, scaled by the kind of tensor), so Rust and Python build the same network.
#![allow(dead_code)] // each test binary uses a part

use medsam::io::checkpoint::{save_pth, TensorData, Value};
use medsam::models::lite::{LiteConfig, LiteMedSam};
use medsam::Device;
use medsam_kernels::testing::Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// `n` values in [-1, 1) for the tensor `name`.
fn uniform(name: &str, n: usize) -> Vec<f32> {
    Rng(fnv1a64(name)).vec(n, 1.0)
}

/// The value of the tensor `name` of `shape`, as the fixture script sets it.
pub fn det_value(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform(name, n);
    let map = |f: &dyn Fn(f32) -> f32| u.iter().map(|&v| f(v)).collect();
    if name.ends_with("num_batches_tracked") {
        vec![0.0; n]
    } else if name.ends_with("running_var") {
        map(&|v| 1.0 + 0.5 * v)
    } else if name.ends_with("running_mean") {
        map(&|v| 0.1 * v)
    } else if name.ends_with("attention_biases") {
        map(&|v| 0.5 * v)
    } else if name.ends_with("positional_encoding_gaussian_matrix") {
        u
    } else if shape.len() <= 1 && name.ends_with("weight") {
        map(&|v| 1.0 + 0.2 * v)
    } else if shape.len() <= 1 {
        map(&|v| 0.1 * v)
    } else {
        let fan: usize = shape[1..].iter().product();
        let s = 1.0f32 / (fan as f32).sqrt();
        map(&|v| v * s)
    }
}

/// The tiny TinyViT configuration of the fixtures.
pub fn tiny_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite/tiny_lite_config.json")
}

/// Writes the tiny LiteMedSAM checkpoint (deterministic parameters) into `dir` and returns its
/// path.
pub fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let cfg = LiteConfig::from_json_file(&tiny_config()).unwrap();
    let mut m = LiteMedSam::new(&cfg, 0, Device::Cpu).unwrap();
    let sd: Vec<(String, TensorData)> = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            let v = det_value(&k, t.shape());
            (k, TensorData::from_f32(t.shape().to_vec(), &v))
        })
        .collect();
    let path = dir.join("tiny_lite.pth");
    save_pth(&path, &Value::from_state_dict(sd)).unwrap();
    path
}

/// Runs the `medsam` binary with `args`, then each `(flag, path)` pair.
pub fn run_medsam(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medsam"));
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}
