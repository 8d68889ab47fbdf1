//! Label maps of the 2D challenge `.npz` for tests: upstream's composition of per-box masks
//! (`MedSAM_infer_npz_2D`: `segs[mask > 0] = idx`, idx = 1, 2, … in box order), and reading the
//! outputs to compare (binary PNG masks, the `segs` member of an `.npz`); the IoU of two masks
//! given as logit maps.
#![allow(dead_code)] // each test binary uses a part

use std::io::Read;
use std::path::Path;

/// IoU of the masks `logits > 0` of two logit maps of the same length (1 when both are empty).
pub fn logits_iou(a: &[f32], b: &[f32]) -> f64 {
    let inter = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x > 0.0 && **y > 0.0)
        .count();
    let union = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x > 0.0 || **y > 0.0)
        .count();
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// The label map of `masks` taken in order: mask `k` (from 0) sets label `k + 1` wherever it is
/// on, so a later mask overwrites an earlier one.
pub fn compose_masks(masks: &[Vec<bool>]) -> Vec<u8> {
    let n = masks.first().map_or(0, Vec::len);
    let mut segs = vec![0u8; n];
    for (k, m) in masks.iter().enumerate() {
        assert_eq!(m.len(), n, "mask {k} has another size");
        for (s, _) in segs.iter_mut().zip(m).filter(|(_, &on)| on) {
            *s = u8::try_from(k + 1).unwrap();
        }
    }
    segs
}

/// Pixels on in more than one of `masks` (where the box order decides the label).
pub fn overlapping_pixels(masks: &[Vec<bool>]) -> usize {
    let n = masks.first().map_or(0, Vec::len);
    (0..n)
        .filter(|&i| masks.iter().filter(|m| m[i]).count() > 1)
        .count()
}

/// A mask PNG (`medsam infer`'s `seg_<name>.png`, 0 or 255) as booleans, row-major.
pub fn png_mask(path: &Path) -> Vec<bool> {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    let raw = img.into_raw();
    assert!(
        raw.iter().all(|&p| p == 0 || p == 255),
        "{}: mask PNG is not binary",
        path.display()
    );
    raw.iter().map(|&p| p == 255).collect()
}

/// The shape and values of the one member `segs` (uint8) of an `.npz`.
pub fn npz_segs(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let names: Vec<String> = z.file_names().map(String::from).collect();
    assert_eq!(names, ["segs.npy"], "{}", path.display());
    let mut bytes = Vec::new();
    z.by_name("segs.npy")
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let a = medsam::npy::parse_npy(&bytes, path).unwrap();
    assert!(a.is_u8(), "{}: segs is not uint8", path.display());
    (a.shape.clone(), a.to_u8().unwrap())
}

/// Asserts that every label `1..=labels` of `segs` is present and that `log` (the output of
/// `medsam infer`) reports its pixel count as `label k: N pixels`.
pub fn assert_labels_reported(segs: &[u8], labels: u8, log: &str, what: &str) {
    for label in 1..=labels {
        let n = segs.iter().filter(|&&s| s == label).count();
        assert!(n > 0, "{what}: label {label} is empty");
        assert!(
            log.contains(&format!("label {label}: {n} pixels")),
            "{what}: {log}"
        );
    }
}

/// Asserts that `segs` (a 2D challenge `.npz` result) equals the single-box `masks` composed in
/// box order (later boxes overwrite earlier ones; the masks must overlap, or the order is not
/// tested) and that `log` reports every label's pixel count.
pub fn assert_composed_in_box_order(segs: &[u8], masks: &[Vec<bool>], log: &str, what: &str) {
    assert!(
        overlapping_pixels(masks) > 0,
        "{what}: the masks must overlap to test the order"
    );
    let want = compose_masks(masks);
    assert_eq!(
        segs, want,
        "{what}: segs differ from the single-box masks composed in box order"
    );
    assert_labels_reported(&want, masks.len() as u8, log, what);
}
