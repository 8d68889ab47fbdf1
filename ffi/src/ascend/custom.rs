//! The hand-written Ascend C kernels of `kernels/ascend/` (`rel_pos_attention`,
//! `layer_norm2d`) behind a safe API: locating and loading the device binary, computing the
//! tiling and the argument block through the C++ launch glue (`ffi/src/launch.cc`, bridged
//! with `cxx`), and launching with [`KernelFunction::launch`] (`aclrtKernelArgs*` +
//! `aclrtLaunchKernelWithConfig`, or an uploaded block + `aclrtLaunchKernel`).
//!
//! Kernel parameters (all `GM_ADDR`, in this order; the last one points at the tiling struct
//! of `kernels/ascend/tiling.h`, uploaded once per distinct shape and cached):
//! * `rel_pos_attention(q, k, v, rel_h, rel_w, out, lse, tiling)` (`rel_h`/`rel_w` are 0
//!   without a relative-position bias);
//! * `layer_norm2d(x, gamma, beta, y, mean, rstd, tiling)`.
//!
//! Where the binary comes from ([`CustomKernels::locate`]): `$MEDSAM_ASCEND_KERNELS` at run
//! time (`off` disables), else the path `ffi/build.rs` compiled when it found a CANN toolchain.
//! On real hardware this path is **unverified** (no NPU and no Ascend C compiler were
//! available); it is exercised against the test-only stand-in, which decodes the same argument
//! block and runs the host reference of the same tiled algorithm.

use super::alloc::DeviceBuffer;
use super::error::{AscendError, Result};
use super::kernel::{KernelArgs, KernelBinary};
use super::runtime::{Device, Stream};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[allow(missing_docs)]
#[cxx::bridge(namespace = "medsam::ascend_launch")]
mod bridge {
    /// Attention problem size.
    struct AttnShape {
        bh: u32,
        nq: u32,
        nk: u32,
        d: u32,
        dv: u32,
        kh: u32,
        kw: u32,
        has_rel: bool,
        scale: f32,
    }
    /// LayerNorm2d problem size.
    struct Ln2dShape {
        n: u32,
        c: u32,
        hw: u32,
        eps: f32,
    }
    /// Per-core Unified Buffer bytes and the number of vector cores to spread work over.
    struct Hardware {
        ub_bytes: u32,
        cores: u32,
    }
    /// What the glue computed: cores to launch, the main tile sizes (attention: queries, keys;
    /// layer_norm2d: pixels, 0) and the tiling struct's bytes.
    struct LaunchPlan {
        block_dim: u32,
        tile_a: u32,
        tile_b: u32,
        tiling: Vec<u8>,
    }
    unsafe extern "C++" {
        include!("medsam-ffi/src/launch.h");
        fn plan_rel_pos_attention(shape: &AttnShape, hw: &Hardware) -> Result<LaunchPlan>;
        fn plan_layer_norm2d(shape: &Ln2dShape, hw: &Hardware) -> Result<LaunchPlan>;
        fn pack_gm_args(addrs: &[u64]) -> Vec<u8>;
    }
}

pub use bridge::{AttnShape, Hardware, LaunchPlan, Ln2dShape};

/// Kernel names in the device binary.
pub const KERNEL_NAMES: [&str; 2] = ["rel_pos_attention", "layer_norm2d"];

/// Environment variable naming the kernel binary (`off` disables the custom kernels).
pub const KERNELS_ENV: &str = "MEDSAM_ASCEND_KERNELS";

/// Default per-core UB size (Ascend 910B, `dav-c220` vector core: 192 KiB).
pub const DEFAULT_UB_BYTES: u32 = 192 * 1024;
/// Default number of vector cores work is spread over (Ascend 910B: 40 AIV).
pub const DEFAULT_CORES: u32 = 40;

impl Hardware {
    /// Defaults, overridden by `MEDSAM_ASCEND_UB_BYTES` / `MEDSAM_ASCEND_VECTOR_CORES`.
    pub fn from_env() -> Self {
        let get = |k: &str, d: u32| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&v: &u32| v > 0)
                .unwrap_or(d)
        };
        Hardware {
            ub_bytes: get("MEDSAM_ASCEND_UB_BYTES", DEFAULT_UB_BYTES),
            cores: get("MEDSAM_ASCEND_VECTOR_CORES", DEFAULT_CORES),
        }
    }
}

/// Tiling of `rel_pos_attention` (computed by the C++ glue).
pub fn plan_rel_pos_attention(shape: &AttnShape, hw: &Hardware) -> Result<LaunchPlan> {
    bridge::plan_rel_pos_attention(shape, hw)
        .map_err(|e| AscendError::Invalid(format!("custom kernel tiling: {}", e.what())))
}

/// Tiling of `layer_norm2d` (computed by the C++ glue).
pub fn plan_layer_norm2d(shape: &Ln2dShape, hw: &Hardware) -> Result<LaunchPlan> {
    bridge::plan_layer_norm2d(shape, hw)
        .map_err(|e| AscendError::Invalid(format!("custom kernel tiling: {}", e.what())))
}

/// The argument block of a kernel whose parameters are all `GM_ADDR` (C++ glue).
pub fn pack_gm_args(addrs: &[u64]) -> KernelArgs {
    KernelArgs::from_bytes(bridge::pack_gm_args(addrs))
}

/// The loaded kernel binary of one device, with its per-shape tiling buffers.
pub struct CustomKernels {
    bin: KernelBinary,
    path: PathBuf,
    hw: Hardware,
    tilings: Mutex<HashMap<Vec<u8>, DeviceBuffer>>,
    launches: AtomicU64,
}

/// Device operands of [`CustomKernels::rel_pos_attention`].
pub struct AttnOperands<'a> {
    /// `[bh, nq, d]`
    pub q: &'a DeviceBuffer,
    /// `[bh, nk, d]`
    pub k: &'a DeviceBuffer,
    /// `[bh, nk, dv]`
    pub v: &'a DeviceBuffer,
    /// `(rel_h [bh, nq, kh], rel_w [bh, nq, kw])`
    pub rel: Option<(&'a DeviceBuffer, &'a DeviceBuffer)>,
}

fn need(what: &str, buf: &DeviceBuffer, elems: usize) -> Result<u64> {
    let bytes = elems * 4;
    if buf.len() < bytes {
        return Err(AscendError::Invalid(format!(
            "custom kernel operand {what}: {}-byte buffer, needs {bytes}",
            buf.len()
        )));
    }
    Ok(buf.as_ptr() as u64)
}

impl CustomKernels {
    /// Where the kernel binary is: `$MEDSAM_ASCEND_KERNELS` (run time; `off` or empty →
    /// `None`), else the binary `ffi/build.rs` compiled (build time). `None` also when the
    /// named file does not exist.
    pub fn locate() -> Option<PathBuf> {
        let p = match std::env::var_os(KERNELS_ENV) {
            Some(v) if v.is_empty() || v == "off" || v == "0" => return None,
            Some(v) => PathBuf::from(v),
            None => PathBuf::from(option_env!("MEDSAM_ASCEND_KERNELS")?),
        };
        p.is_file().then_some(p)
    }

    /// Loads the binary and checks that it has both kernels.
    pub fn load(dev: &Device, path: &Path) -> Result<Self> {
        let bin = KernelBinary::load_file(dev, path)?;
        for n in KERNEL_NAMES {
            bin.function(n)?;
        }
        Ok(CustomKernels {
            bin,
            path: path.to_path_buf(),
            hw: Hardware::from_env(),
            tilings: Mutex::new(HashMap::new()),
            launches: AtomicU64::new(0),
        })
    }

    /// Number of kernels launched so far (both kernels).
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// The file this binary was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device address of the cached tiling buffer for `bytes` (uploaded on first use, after
    /// draining `stream`, since the synchronous copy must not race queued work on a reused block).
    fn tiling(&self, bytes: &[u8], stream: &Stream) -> Result<u64> {
        let mut g = self.tilings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = g.get(bytes) {
            return Ok(b.as_ptr() as u64);
        }
        stream.synchronize()?;
        let b = stream.device().upload(bytes)?;
        let p = b.as_ptr() as u64;
        g.insert(bytes.to_vec(), b);
        Ok(p)
    }

    /// Enqueues `rel_pos_attention` on `stream`: `out [bh, nq, dv]` and the log-sum-exp
    /// `lse [bh, nq]` of `softmax(scale·q·kᵀ + rel_h + rel_w)·v`.
    pub fn rel_pos_attention(
        &self,
        stream: &Stream,
        shape: &AttnShape,
        x: &AttnOperands,
        out: &mut DeviceBuffer,
        lse: &mut DeviceBuffer,
    ) -> Result<LaunchPlan> {
        let s = shape;
        let (bh, nq, nk) = (s.bh as usize, s.nq as usize, s.nk as usize);
        let (d, dv) = (s.d as usize, s.dv as usize);
        if s.has_rel != x.rel.is_some() {
            return Err(AscendError::Invalid(
                "rel_pos_attention: has_rel does not match the operands".into(),
            ));
        }
        let plan = plan_rel_pos_attention(s, &self.hw)?;
        let (rh, rw) = match x.rel {
            Some((h, w)) => (
                need("rel_h", h, bh * nq * s.kh as usize)?,
                need("rel_w", w, bh * nq * s.kw as usize)?,
            ),
            None => (0, 0),
        };
        let addrs = [
            need("q", x.q, bh * nq * d)?,
            need("k", x.k, bh * nk * d)?,
            need("v", x.v, bh * nk * dv)?,
            rh,
            rw,
            need("out", out, bh * nq * dv)?,
            need("lse", lse, bh * nq)?,
            self.tiling(&plan.tiling, stream)?,
        ];
        self.launch("rel_pos_attention", plan, &addrs, stream)
    }

    /// Enqueues `layer_norm2d` on `stream`: x `[n, c, hw]` normalised over `c`;
    /// `mean`/`rstd` are `[n, hw]`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm2d(
        &self,
        stream: &Stream,
        shape: &Ln2dShape,
        x: &DeviceBuffer,
        gamma: &DeviceBuffer,
        beta: &DeviceBuffer,
        y: &mut DeviceBuffer,
        mean: &mut DeviceBuffer,
        rstd: &mut DeviceBuffer,
    ) -> Result<LaunchPlan> {
        let (n, c, hw) = (shape.n as usize, shape.c as usize, shape.hw as usize);
        let plan = plan_layer_norm2d(shape, &self.hw)?;
        let addrs = [
            need("x", x, n * c * hw)?,
            need("gamma", gamma, c)?,
            need("beta", beta, c)?,
            need("y", y, n * c * hw)?,
            need("mean", mean, n * hw)?,
            need("rstd", rstd, n * hw)?,
            self.tiling(&plan.tiling, stream)?,
        ];
        self.launch("layer_norm2d", plan, &addrs, stream)
    }

    /// Enqueues kernel `name` of the binary with its global-memory arguments `addrs`, as `plan`
    /// tiles it; returns the plan.
    fn launch(
        &self,
        name: &str,
        plan: LaunchPlan,
        addrs: &[u64],
        stream: &Stream,
    ) -> Result<LaunchPlan> {
        let args = pack_gm_args(addrs);
        (self.bin.function(name)?).launch(plan.block_dim, &args, stream)?;
        self.launches.fetch_add(1, Ordering::Relaxed);
        Ok(plan)
    }
}
