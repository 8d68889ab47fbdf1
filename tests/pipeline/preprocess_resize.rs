//! Parity of `medsam::preprocess::resize` with scikit-image's `transform.resize`
//! (fixtures from `tests/fixtures/make_preprocess_fixtures.py`).
//!
//! Tolerance for order 3: 1e-9 absolute on data of magnitude <= 255. Our implementation follows
//! SciPy's arithmetic step by step (same kernel, same prefilter recursion, same coordinates and
//! weights), but it sums the 4x4 taps of each channel plane on its own whereas SciPy also runs the
//! spline along the channel axis (an identity up to rounding) and `exp` may differ by an ulp, so
//! results agree to ~1e-13, not bit for bit. Order 0 must be identical.

use medsam::npy::{read_npy, NpyData};
use medsam::preprocess::resize::{resize_cubic_aa, resize_nearest_u8};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess/resize")
        .join(name)
}

fn check_cubic(name: &str) {
    let inp = read_npy(fixture(&format!("{name}_in.npy"))).unwrap();
    let exp = read_npy(fixture(&format!("{name}_out.npy"))).unwrap();
    let (h, w, c) = (inp.shape[0], inp.shape[1], inp.shape[2]);
    let (oh, ow) = (exp.shape[0], exp.shape[1]);
    assert_eq!(exp.shape[2], c);
    let got = resize_cubic_aa(&inp.to_f64(), h, w, c, oh, ow);
    let want = exp.to_f64();
    assert_eq!(got.len(), want.len());
    let mut max = 0.0f64;
    for (g, e) in got.iter().zip(&want) {
        max = max.max((g - e).abs());
    }
    eprintln!("{name}: max |diff| = {max:e}");
    assert!(max < 1e-9, "{name}: max |diff| {max:e} exceeds 1e-9");
}

#[test]
fn cubic_upscale_u8_three_channels() {
    check_cubic("up_u8_3c");
}

#[test]
fn cubic_downscale_with_antialias() {
    check_cubic("down_u8_1c");
}

#[test]
fn cubic_mixed_up_and_down_float() {
    check_cubic("mixed_f_3c");
}

#[test]
fn cubic_clip_range_excluding_zero() {
    check_cubic("down_offset_1c");
}

fn check_nearest(name: &str) {
    let inp = read_npy(fixture(&format!("{name}_in.npy"))).unwrap();
    let exp = read_npy(fixture(&format!("{name}_out.npy"))).unwrap();
    let (NpyData::U8(src), NpyData::U8(want)) = (&inp.data, &exp.data) else {
        panic!("{name}: fixtures must be uint8");
    };
    let got = resize_nearest_u8(
        src,
        inp.shape[0],
        inp.shape[1],
        1,
        exp.shape[0],
        exp.shape[1],
    );
    assert_eq!(&got, want, "{name}: nearest resize differs from skimage");
}

#[test]
fn nearest_labels_upscale() {
    check_nearest("lab_up");
}

#[test]
fn nearest_labels_downscale() {
    check_nearest("lab_down");
}

/// 512x512x3 -> 1024x1024 (the inference path). Generous bound for shared CI cores; typical
/// time is reported on stderr.
#[test]
fn cubic_512_to_1024_is_fast() {
    let src: Vec<f64> = (0..512 * 512 * 3)
        .map(|i| ((i * 37) % 256) as f64)
        .collect();
    let t = std::time::Instant::now();
    let out = resize_cubic_aa(&src, 512, 512, 3, 1024, 1024);
    let dt = t.elapsed();
    eprintln!("512x512x3 -> 1024x1024: {dt:?}");
    assert_eq!(out.len(), 1024 * 1024 * 3);
    assert!(out.iter().all(|v| (0.0..=255.0).contains(v)));
    assert!(dt.as_secs_f64() < 5.0, "resize took {dt:?}");
}
