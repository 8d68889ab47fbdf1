//! Reading the committed parity fixtures (`tests/fixtures/**.safetensors`, written by the
//! scripts in `tests/fixtures/`) and comparing against them. Each test binary uses a part.
#![allow(dead_code)]

use medsam::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arrays by name: shape and values (f32; u8 arrays widened).
pub type Arrays = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// `tests/fixtures/<rel>`.
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The arrays of a safetensors file, or `None` when it cannot be read.
pub fn try_read_arrays(path: &Path) -> Option<Arrays> {
    let bytes = std::fs::read(path).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let arrays = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let data = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::U8 => v.data().iter().map(|&b| b as f32).collect(),
                d => panic!("{k}: unexpected dtype {d:?}"),
            };
            (k, (v.shape().to_vec(), data))
        })
        .collect();
    Some(arrays)
}

/// The arrays of `tests/fixtures/<rel>`; a missing file names `script`, which writes it.
pub fn read_arrays(rel: &str, script: &str) -> Arrays {
    let path = fixture_path(rel);
    try_read_arrays(&path).unwrap_or_else(|| {
        panic!(
            "{}: cannot read — regenerate with tests/fixtures/{script}",
            path.display()
        )
    })
}

/// [`read_arrays`] as CPU tensors.
pub fn read_tensors(rel: &str, script: &str) -> BTreeMap<String, Tensor> {
    read_arrays(rel, script)
        .into_iter()
        .map(|(k, (s, d))| (k, Tensor::from_vec(d, &s).unwrap()))
        .collect()
}

/// Panics unless every `|got − want|` is finite and at most `tol`, naming the worst element.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (a - b).abs();
        assert!(d.is_finite(), "{name}[{i}]: {a} vs {b}");
        if d > worst.0 {
            worst = (d, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{name}: max abs error {} at {} (got {}, want {})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}
