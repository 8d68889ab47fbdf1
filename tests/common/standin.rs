//! Shared by the test binaries that run on the stand-in runtime (`tests/ascend_standin/`):
//! building it, linking it under the CANN library names, and comparing NPU with CPU results.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The libraries the backend loads; all are the one stand-in.
pub const LIB_NAMES: [&str; 4] = [
    "libascendcl.so",
    "libnnopbase.so",
    "libopapi.so",
    "libhccl.so",
];

/// The stand-in shared library: `$MEDSAM_STANDIN_LIB`, else built (offline) into
/// `target/ascend-standin`.
pub fn standin_so() -> PathBuf {
    if let Some(p) = std::env::var_os("MEDSAM_STANDIN_LIB") {
        return PathBuf::from(p);
    }
    // The workspace root (this file is also used by medsam-ffi's tests, one level down).
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .find(|d| d.join("tests/ascend_standin/Cargo.toml").is_file())
        .expect("workspace root with tests/ascend_standin");
    let target = root.join("target").join("ascend-standin");
    let st = std::process::Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(root.join("tests/ascend_standin/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo to build the stand-in");
    assert!(st.success(), "building tests/ascend_standin failed");
    target.join("debug").join("libascend_standin.so")
}

/// A directory `<tmp>/<name>-<pid>` holding the stand-in under every CANN library name.
/// Symlinks to one file: the dynamic loader maps it once, so its state is shared.
pub fn link_standin(name: &str) -> PathBuf {
    link_standin_as(name, &LIB_NAMES)
}

/// As [`link_standin`], under the given library names only.
pub fn link_standin_as(name: &str, names: &[&str]) -> PathBuf {
    let so = standin_so();
    assert!(so.is_file(), "stand-in library missing: {}", so.display());
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in names {
        let link = dir.join(n);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link).unwrap();
    }
    dir
}

/// Deterministic pseudo-random data in [-1, 1).
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// NPU result `got` against CPU `want`: error relative to `1 + |want|` at most `tol`.
pub fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}]: npu {g}, cpu {w}");
        let d = (g - w).abs() / (1.0 + w.abs());
        if d > worst.0 {
            worst = (d, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: worst error {} at {} (npu {}, cpu {})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}
