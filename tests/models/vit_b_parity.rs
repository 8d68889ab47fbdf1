//! Full-size ViT-B (1024²) parity with the official PyTorch model on seeded random weights,
//! loaded through our `.pth` reader. Long (model build + two encodes): `#[ignore]`d for CI.
//!
//!     MEDSAM_PYTHON=/path/to/venv/bin/python cargo test --release --test models vit_b_parity:: -- --ignored
//!
//! Tolerance: 1e-3 absolute on the embedding (12 blocks of f32 GEMMs with k up to 3072 and a
//! different summation order) and on the low-res logits.

use medsam::{Device, Tensor};
use std::path::PathBuf;
use std::process::Command;

fn load_npy(p: &std::path::Path) -> Tensor {
    let a = medsam::npy::read_npy(p).unwrap();
    Tensor::from_vec(a.to_f32(), &a.shape).unwrap()
}

#[test]
#[ignore = "full-size model: minutes and ~3 GB; run with --ignored and MEDSAM_PYTHON set"]
fn vit_b_1024_matches_pytorch() {
    let Some((sam, x, dir)) = parity_model_and_input() else {
        return;
    };
    let emb = medsam::autograd::no_grad(|| sam.image_encoder.forward(&x)).unwrap();
    let want = load_npy(&dir.join("embedding.npy"));
    let err = max_abs_err(&emb, &want);
    println!("vit_b embedding max abs error: {err}");
    assert!(err <= 1e-3, "embedding error {err}");
    let pe = sam.prompt_encoder.get_dense_pe().unwrap();
    let (sp, de) = sam
        .prompt_encoder
        .forward(None, Some(&[[200.0, 300.0, 700.0, 800.0]]), None)
        .unwrap();
    let (low, _) =
        medsam::autograd::no_grad(|| sam.mask_decoder.forward(&emb, &pe, &sp, &de, false)).unwrap();
    let want = load_npy(&dir.join("low_res_logits.npy"));
    let err = max_abs_err(&low, &want);
    println!("vit_b low-res logits max abs error: {err}");
    assert!(err <= 1e-3, "logits error {err}");
}

/// `--precision bf16` against f32 on the same full-size model and input: the mask (logits > 0)
/// of one box keeps IoU ≥ 0.99 with the f32 mask (issue #20's accuracy bar); the errors are
/// printed. On a CPU where bf16 does not pay it runs f32 and the IoU is 1.
#[test]
#[ignore = "full-size model: minutes and ~3 GB; run with --ignored and MEDSAM_PYTHON set"]
fn vit_b_bf16_mask_matches_f32() {
    reduced_precision_mask_matches_f32("bf16", |f| medsam::ops::linalg::autocast_bf16(true, f));
}

/// The same bar for `--precision int8`. On these random weights (|logit| ≤ 0.3, so a small error
/// moves the mask boundary) it holds only because the int8 kernel centres the activations
/// (`medsam_kernels::gemm::int8`): IoU 0.9941 with every layer kind quantized, 0.9916 with qkv
/// and fc1 only (AMD Zen 4), against 0.984 for qkv and fc1 without centring.
#[test]
#[ignore = "full-size model: minutes and ~3 GB; run with --ignored and MEDSAM_PYTHON set"]
fn vit_b_int8_mask_matches_f32() {
    reduced_precision_mask_matches_f32("int8", |f| medsam::ops::quant::autocast_int8(true, f));
}

/// Encodes the parity input in f32 and under `autocast`, decodes one box from each and checks
/// the masks' IoU ≥ 0.99.
fn reduced_precision_mask_matches_f32(name: &str, autocast: fn(&dyn Fn() -> Tensor) -> Tensor) {
    let Some((sam, x, _)) = parity_model_and_input() else {
        return;
    };
    let pe = sam.prompt_encoder.get_dense_pe().unwrap();
    let (sp, de) = sam
        .prompt_encoder
        .forward(None, Some(&[[200.0, 300.0, 700.0, 800.0]]), None)
        .unwrap();
    let logits = |emb: &Tensor| {
        let (low, _) =
            medsam::autograd::no_grad(|| sam.mask_decoder.forward(emb, &pe, &sp, &de, false))
                .unwrap();
        low
    };
    let encode = || medsam::autograd::no_grad(|| sam.image_encoder.forward(&x)).unwrap();
    let emb32 = encode();
    let low32 = logits(&emb32);
    let emb = autocast(&encode);
    let low = logits(&emb);
    let iou = mask_iou(&low, &low32);
    println!(
        "vit_b {name} vs f32: embedding max abs error {:.3e}, low-res logits max abs error \
         {:.3e}, mask IoU {iou:.4}",
        max_abs_err(&emb, &emb32),
        max_abs_err(&low, &low32)
    );
    assert!(iou >= 0.99, "{name} mask IoU {iou} < 0.99");
}

/// Runs the fixture script (official segment_anything, seeded random ViT-B weights) and loads
/// its checkpoint and input; None (after a SKIPPED line) without MEDSAM_PYTHON.
fn parity_model_and_input() -> Option<(medsam::model::Sam, Tensor, PathBuf)> {
    let Ok(python) = std::env::var("MEDSAM_PYTHON") else {
        println!("SKIPPED: set MEDSAM_PYTHON to a Python with torch and segment-anything");
        return None;
    };
    let dir = std::env::temp_dir().join("medsam-vit-b-parity");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_b_parity.py");
    // Once per process: the tests run in parallel and load the checkpoint memory-mapped, so a
    // second run of the script rewriting it under a live mapping kills the process (SIGBUS).
    static WRITTEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let written = *WRITTEN.get_or_init(|| {
        let st = Command::new(python).arg(&script).arg(&dir).status();
        st.is_ok_and(|s| s.success())
    });
    assert!(written, "fixture script failed");
    let (sam, _) = medsam::weights::load_model(
        &dir.join("vit_b_random.pth"),
        Some(medsam::model::ModelType::VitB),
        None,
        Device::Cpu,
    )
    .unwrap();
    let x = load_npy(&dir.join("input.npy"));
    Some((sam, x, dir))
}

/// IoU of the masks `logits > 0` of two logit maps of the same shape.
fn mask_iou(a: &Tensor, b: &Tensor) -> f64 {
    crate::common::labels::logits_iou(&a.to_vec().unwrap(), &b.to_vec().unwrap())
}

/// Largest `|got − want|` over all elements.
fn max_abs_err(got: &Tensor, want: &Tensor) -> f32 {
    got.to_vec()
        .unwrap()
        .iter()
        .zip(want.to_vec().unwrap())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}
