//! The deterministic parameters of the tiny LiteMedSAM fixtures, as
//! `tests/fixtures/make_lite_fixtures.py` computes them: every tensor is a function of its
//! state-dict name (a SplitMix64 stream seeded by the name's FNV-1a hash, f32 in [-1, 1) with
//! 24-bit steps, scaled by the kind of tensor), so Rust and Python build the same network.

use medsam_kernels::testing::Rng;

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

/// Writes the tiny LiteMedSAM checkpoint (config `tests/fixtures/lite/tiny_lite_config.json`,
/// parameters from [`det_value`]) into `dir` as `tiny_lite.pth` and returns its path.
#[allow(dead_code)] // not every test binary that includes this file writes checkpoints
pub fn tiny_lite_checkpoint(dir: &std::path::Path) -> std::path::PathBuf {
    use medsam::checkpoint::{save_pth, TensorData, Value};
    use medsam::model::lite::{LiteConfig, LiteMedSam};
    let cfg = LiteConfig::from_json_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lite/tiny_lite_config.json"),
    )
    .unwrap();
    let mut m = LiteMedSam::new(&cfg, 0, medsam::Device::Cpu).unwrap();
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
