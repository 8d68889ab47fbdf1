//! Whole-model training parity with PyTorch autograd (fixtures: make_train_fixtures.py): the
//! MedSAM loss, the gradient of every trainable parameter after one backward, and parameters and
//! AdamW moments after two optimizer steps.
//!
//! Tolerance: gradients ≤ 1e-4 relative to each tensor's largest magnitude (f32, different
//! summation orders), plus an absolute floor of 1e-10 for the attention key biases, whose exact
//! gradient is zero (softmax is invariant to a shift shared by all keys) so both sides hold only
//! rounding noise of ~1e-12; updated parameters ≤ 1e-5 absolute (lr 1e-3 moves them ~1e-3).

use crate::common::fixtures;
use medsam::data::Batch;
use medsam::model::{Sam, SamConfig};
use medsam::optim::{AdamW, AdamWConfig};
use medsam::train::forward_backward;
use medsam::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam")
}

fn load() -> BTreeMap<String, Tensor> {
    fixtures::read_tensors("sam/tiny_train.safetensors", "make_train_fixtures.py")
}

/// Max abs difference over `1e-10 + max |want|`.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_vec().unwrap(), want.to_vec().unwrap());
    let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    g.iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / (scale + 1e-10 / 1e-4)
}

fn setup() -> (BTreeMap<String, Tensor>, Sam, Batch) {
    let fx = load();
    let cfg = SamConfig::from_json_file(&dir().join("tiny_sam_config.json")).unwrap();
    let mut sam = Sam::new(&cfg, 0, Device::Cpu).unwrap();
    let w: BTreeMap<String, Tensor> = fx
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("w.").map(|k| (k.to_string(), v.clone())))
        .collect();
    sam.load_state_dict(&w).unwrap().into_result().unwrap();
    sam.enable_training();
    let b = fx["in.boxes"].to_vec().unwrap();
    let batch = Batch {
        images: fx["in.images"].clone(),
        masks: fx["in.masks"].clone(),
        boxes: b.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
        names: vec!["a".into(), "b".into()],
    };
    (fx, sam, batch)
}

#[test]
fn parameter_order_matches_torch_parameters() {
    let (_, mut sam, _) = setup();
    let want = std::fs::read_to_string(dir().join("train_param_order.txt")).unwrap();
    let got: Vec<String> = sam
        .trainable_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(got, want.lines().collect::<Vec<_>>());
}

#[test]
fn loss_and_every_gradient_match_pytorch() {
    let (fx, mut sam, batch) = setup();
    let loss = forward_backward(&sam, &batch, 1, false).unwrap();
    let want = fx["step0.loss"].to_vec().unwrap()[0];
    assert!(
        (loss - want).abs() <= 1e-5 * want.abs(),
        "loss {loss} vs {want}"
    );
    let mut checked = 0;
    for (name, p) in sam.trainable_parameters() {
        match (fx.get(&format!("grad.{name}")), p.grad()) {
            (Some(w), Some(g)) => {
                let e = rel_err(&g, w);
                assert!(e <= 1e-4, "grad of {name}: relative error {e}");
                checked += 1;
            }
            (None, None) => {}
            (w, g) => panic!(
                "{name}: torch grad present {}, ours present {}",
                w.is_some(),
                g.is_some()
            ),
        }
    }
    assert!(checked > 50, "only {checked} gradients compared");
}

#[test]
fn two_adamw_steps_match_pytorch() {
    let (fx, mut sam, batch) = setup();
    let n = sam.trainable_parameters().len();
    let mut opt = AdamW::new(
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
        n,
    );
    for step in 0..2 {
        let loss = forward_backward(&sam, &batch, 1, false).unwrap();
        let want = fx[&format!("step{step}.loss")].to_vec().unwrap()[0];
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "step {step}: loss {loss} vs {want}"
        );
        let mut params = sam.trainable_parameters();
        opt.step(&mut params).unwrap();
        AdamW::zero_grad(&mut params);
    }
    for ((name, p), st) in sam.trainable_parameters().into_iter().zip(&opt.state) {
        let after = &fx[&format!("after.{name}")];
        let d = p
            .to_vec()
            .unwrap()
            .iter()
            .zip(after.to_vec().unwrap())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-5, "{name}: updated parameter off by {d}");
        match (st, fx.get(&format!("exp_avg.{name}"))) {
            (Some(st), Some(m)) => {
                assert_eq!(st.step, 2, "{name}");
                assert!(rel_err(&st.exp_avg, m) <= 1e-4, "{name}: exp_avg");
                assert!(
                    rel_err(&st.exp_avg_sq, &fx[&format!("exp_avg_sq.{name}")]) <= 2e-4,
                    "{name}: exp_avg_sq"
                );
            }
            (None, None) => {}
            (s, m) => panic!(
                "{name}: our state {}, torch state {}",
                s.is_some(),
                m.is_some()
            ),
        }
    }
}
