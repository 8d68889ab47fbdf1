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

/// Run on a real NPU instead of the stand-in (`MEDSAM_NPU_TESTS=1`).
pub fn on_npu() -> bool {
    std::env::var("MEDSAM_NPU_TESTS").as_deref() == Ok("1")
}

/// Whether a test of the stand-in's own model should run: not on an NPU, where it says it is
/// skipped (`checks` names what of the stand-in it reads).
pub fn standin_only(test: &str, checks: &str) -> bool {
    if on_npu() {
        // Written to the real stderr handle, so the harness does not swallow it.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{test}: SKIPPED on an NPU (stand-in only: {checks})"
        );
        return false;
    }
    true
}

/// The directory [`link_standin`] makes for `name`, made on first use (once per test binary).
pub fn standin_dir(name: &str) -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| link_standin(name))
}

/// The stand-in runtime in `dir`, opened and initialised for the rest of the process.
pub fn open_standin(dir: &Path) -> &'static medsam_ffi::ascend::AscendRuntime {
    medsam_ffi::ascend::AscendRuntime::open_dir(dir)
        .expect("open stand-in")
        .into_static()
        .expect("aclInit")
}

/// A contiguous layout of `dims`.
pub fn l(dims: &[i64]) -> medsam_ffi::ascend::Layout {
    medsam_ffi::ascend::Layout::contiguous(dims)
}

/// An f32 input view of `buf` with the contiguous layout of `dims`.
pub fn f32_in<'a>(
    buf: &'a medsam_ffi::ascend::DeviceBuffer,
    dims: &[i64],
) -> medsam_ffi::ascend::TensorArg<'a> {
    medsam_ffi::ascend::TensorArg::input::<f32>(buf, l(dims)).unwrap()
}

/// An f32 output view of `buf` with the contiguous layout of `dims`.
pub fn f32_out<'a>(
    buf: &'a mut medsam_ffi::ascend::DeviceBuffer,
    dims: &[i64],
) -> medsam_ffi::ascend::TensorArg<'a> {
    medsam_ffi::ascend::TensorArg::output::<f32>(buf, l(dims)).unwrap()
}

/// `aclnnConvolution` of a `[1, 1, 4, 4]` input with itself as the kernel (a 1×1 output, Σ x²):
/// `(got, want)`.
pub fn conv_self(stream: &medsam_ffi::ascend::Stream) -> medsam_ffi::ascend::Result<(f32, f32)> {
    use medsam_ffi::ascend::Ops;
    let dev = stream.device();
    let xh = data(16, 2);
    let x = dev.upload(&xh).unwrap();
    let mut y = dev.alloc_elems::<f32>(1).unwrap();
    let xv = || f32_in(&x, &[1, 1, 4, 4]);
    let out = f32_out(&mut y, &[1, 1, 1, 1]);
    (Ops::new(stream)).conv2d(&xv(), &xv(), None, [1, 1], [0, 0], [1, 1], 1, &out)?;
    let got = y.read::<f32>(stream, 1)?[0];
    Ok((got, xh.iter().map(|v| v * v).sum()))
}

/// One step of the 64-bit LCG (Knuth's MMIX constants) the stand-in tests draw data from.
pub fn lcg(s: u64) -> u64 {
    const MUL: u64 = 6364136223846793005;
    const INC: u64 = 1442695040888963407;
    s.wrapping_mul(MUL).wrapping_add(INC)
}

/// Deterministic pseudo-random data in [-1, 1).
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = lcg(seed);
    (0..n)
        .map(|_| {
            s = lcg(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Small deterministic generator for random shapes (no external randomness needed for
/// reproducible failures).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = lcg(self.0);
        self.0 >> 33
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() % 20001) as f32 / 10000.0 - 1.0)
            .collect()
    }
}

/// [`close`] on the first `want.len()` elements of `buf`, read after synchronising `stream`.
pub fn read_close(
    what: &str,
    buf: &medsam_ffi::ascend::DeviceBuffer,
    stream: &medsam_ffi::ascend::Stream,
    want: &[f32],
    tol: f32,
) {
    close(
        what,
        &buf.read::<f32>(stream, want.len()).unwrap(),
        want,
        tol,
    );
}

/// NPU result `got` against CPU `want`: error relative to `1 + |want|` at most `tol`.
pub fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|g| !g.is_finite()) {
        panic!("{what}[{i}]: npu {}, cpu {}", got[i], want[i]);
    }
    let rel = |i: usize| (got[i] - want[i]).abs() / (1.0 + want[i].abs());
    if let Some(i) = (0..got.len()).max_by(|&a, &b| rel(a).total_cmp(&rel(b))) {
        let (g, w) = (got[i], want[i]);
        assert!(
            rel(i) <= tol,
            "{what}: worst error {} at {i} (npu {g}, cpu {w})",
            rel(i)
        );
    }
}
