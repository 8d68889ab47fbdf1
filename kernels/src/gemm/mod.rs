//! GEMM: `C[b] (+)= A[b] · B[b]` for a batch of strided matrices.
//!
//! Transposed operands are expressed through strides (`row_stride`/`col_stride`), so `A·Bᵀ` needs no
//! copy. The fast path packs panels of A and B and runs a register-blocked micro-kernel per ISA.
//!
//! Structure (BLIS-style, see `driver.rs`): for each `NC`-wide column block of C and each
//! `KC`-deep slice of k, B is packed once into `NR`-wide micro-panels shared by all threads; then
//! independent tasks (an `MC`-row block of A, optionally split further along n) pack their A
//! block into `MR`-row micro-panels and run the micro-kernel over every `MR×NR` tile. Packing
//! reads any strides, so transposed operands cost the same as dense ones, and it is also where
//! `Precision::Bf16` rounds operands to bf16. The f32 AVX-512 kernel wants A as `[row][k]`,
//! which a row-major A already is: it reads such an A in place (only a partial last panel of
//! rows is packed), since for the small k of many model GEMMs the copy costs a noticeable
//! share of the arithmetic.

#[cfg(target_arch = "x86_64")]
mod amx;
mod driver;
pub mod int8;
mod pack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Where element `(b, i, j)` of a batched matrix lives: `b*batch_stride + i*row_stride + j*col_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub batch_stride: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Layout {
    /// A dense row-major `rows × cols` matrix, batches stored back to back.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Layout {
            batch_stride: rows * cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of a dense row-major `rows × cols` matrix, seen as `cols × rows`.
    pub fn transposed(rows: usize, cols: usize) -> Self {
        Layout {
            batch_stride: rows * cols,
            row_stride: 1,
            col_stride: cols,
        }
    }
}

/// Arithmetic used inside the GEMM. Inputs and outputs are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 multiply, f32 accumulate.
    #[default]
    F32,
    /// Operands rounded to bf16 while packing, products accumulated in f32 (AVX512-BF16 / AMX).
    /// A request, not a promise: [`gemm`] runs f32 where bf16 would not be faster
    /// ([`bf16_plan`]); [`gemm_with`] always rounds.
    Bf16,
}

/// The problem size of one (batched) GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Work applied to each element of C once its dot product is complete, while the tile is still
/// in cache: `C[b,i,j] = act(A·B + col_bias[j] + row_bias[i])`. The same biases serve every batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// One value per column of C (a `Linear` bias, `x·Wᵀ + b`); length `n`.
    pub col_bias: Option<&'a [f32]>,
    /// One value per row of C (the bias of a 1×1 convolution as `W·X`); length `m`.
    pub row_bias: Option<&'a [f32]>,
    /// A matrix added after the biases (a residual connection): row-major `m × n` with the
    /// given row stride, batch 1 only.
    pub residual: Option<(&'a [f32], usize)>,
    /// Exact (erf) GELU after the biases and residual.
    pub gelu: bool,
}

impl Epilogue<'_> {
    /// True if it changes nothing (a plain GEMM).
    pub fn is_identity(&self) -> bool {
        self.col_bias.is_none() && self.row_bias.is_none() && self.residual.is_none() && !self.gelu
    }

    /// Applies the epilogue to `c[row][j0..j0+len]` (row `i` of C).
    pub(crate) fn apply(&self, row: &mut [f32], i: usize, j0: usize) {
        let cb = self.col_bias.map(|b| &b[j0..j0 + row.len()]);
        let rb = self.row_bias.map_or(0.0, |b| b[i]);
        let res = self
            .residual
            .map(|(r, ld)| &r[i * ld + j0..i * ld + j0 + row.len()]);
        crate::activation::bias_act_row(row, cb, rb, res, self.gelu);
    }
}

/// A micro-kernel family. [`gemm`] picks the best available one; [`gemm_with`] forces one, so
/// every path can be tested on a machine that would normally pick a faster one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, no explicit SIMD. With `Precision::Bf16` it multiplies bf16-rounded values
    /// in f32.
    Scalar,
    /// AVX2 + FMA, 6×16 tile of f32 (bf16 precision: f32 FMA on bf16-rounded values).
    Avx2,
    /// AVX-512F, 12×32 tile of f32 (bf16 precision: f32 FMA on bf16-rounded values).
    Avx512,
    /// AVX512-BF16 `vdpbf16ps`, 12×32 tile, pairs of bf16 along k. `Precision::Bf16` only.
    Avx512Bf16,
    /// AMX `tdpbf16ps`, 32×32 tile made of 2×2 16×16 tiles. `Precision::Bf16` only.
    Amx,
}

impl Kernel {
    /// Every kernel family, fastest last.
    pub const ALL: [Kernel; 5] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Avx512Bf16,
        Kernel::Amx,
    ];

    /// Whether this CPU (and, for AMX, the OS) can run the kernel.
    pub fn is_available(self) -> bool {
        let f = crate::cpu::features();
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => f.avx2_fma,
            Kernel::Avx512 => f.avx512f,
            Kernel::Avx512Bf16 => f.avx512bf16,
            Kernel::Amx => f.amx_bf16,
        }
    }

    /// Whether the kernel implements `precision` (the bf16-only kernels cannot do f32).
    pub fn supports(self, precision: Precision) -> bool {
        match self {
            Kernel::Scalar | Kernel::Avx2 | Kernel::Avx512 => true,
            Kernel::Avx512Bf16 | Kernel::Amx => precision == Precision::Bf16,
        }
    }

    /// The fastest available kernel for `precision` on this machine.
    pub fn best(precision: Precision) -> Kernel {
        Kernel::ALL
            .iter()
            .rev()
            .copied()
            .filter(|&k| k != Kernel::Amx || amx_self_check())
            .find(|k| k.is_available() && k.supports(precision))
            .unwrap_or(Kernel::Scalar)
    }
}

/// How `Precision::Bf16` is carried out on this CPU by [`gemm`], [`gemm_fused`] and
/// [`gemm_fused_serial`]: which kernel, and at which precision.
///
/// bf16 is only worth its rounding error where it is faster, which depends on the CPU:
/// AMX `tdpbf16ps` is many times the f32 FMA rate; on AMD Zen 4/5 `vdpbf16ps` does twice the
/// multiply-adds of an f32 FMA per cycle; on Intel cores without AMX it does not (measured on
/// a Xeon with AVX512-BF16 and AMX disabled: bf16 GEMM 129 vs f32 193 GFLOP/s, PyTorch's own
/// 151 vs 225), so there the plain f32 kernel runs instead — as fast as f32 and more accurate.
/// Chosen from this table rather than a start-up timing so that results do not depend on the
/// machine's load. `MEDSAM_BF16_KERNEL=f32|native` overrides the table (`native`: the fastest
/// bf16 kernel available).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bf16Plan {
    pub kernel: Kernel,
    /// `Precision::Bf16`, or `Precision::F32` where bf16 would not be faster.
    pub precision: Precision,
    /// Why, in a few words (for `--verbose` output and bench reports).
    pub reason: &'static str,
}

/// The plan for this process (decided once).
pub fn bf16_plan() -> Bf16Plan {
    use std::sync::OnceLock;
    static P: OnceLock<Bf16Plan> = OnceLock::new();
    *P.get_or_init(|| {
        let env = std::env::var("MEDSAM_BF16_KERNEL").ok();
        let amx_ok = amx_self_check();
        choose_bf16(crate::cpu::features(), amx_ok, env.as_deref())
    })
}

/// The table behind [`bf16_plan`], as a pure function of the CPU (for tests).
#[doc(hidden)]
pub fn choose_bf16(f: crate::cpu::CpuFeatures, amx_ok: bool, env: Option<&str>) -> Bf16Plan {
    let f32_kernel = if f.avx512f {
        Kernel::Avx512
    } else if f.avx2_fma {
        Kernel::Avx2
    } else {
        Kernel::Scalar
    };
    let f32_plan = |reason| Bf16Plan {
        kernel: f32_kernel,
        precision: Precision::F32,
        reason,
    };
    let native = if f.amx_bf16 && amx_ok {
        Some(Bf16Plan {
            kernel: Kernel::Amx,
            precision: Precision::Bf16,
            reason: "AMX tdpbf16ps (self-check passed)",
        })
    } else if f.avx512bf16 {
        Some(Bf16Plan {
            kernel: Kernel::Avx512Bf16,
            precision: Precision::Bf16,
            reason: "AVX512-BF16 vdpbf16ps (2x the f32 FMA rate on AMD Zen 4/5)",
        })
    } else {
        None
    };
    match (env, native) {
        (Some("f32"), _) => f32_plan("f32 kernel (MEDSAM_BF16_KERNEL=f32)"),
        (Some("native"), Some(p)) => p,
        (_, Some(p)) if p.kernel == Kernel::Amx || f.amd => p,
        (_, Some(_)) => f32_plan(
            "f32 kernel: vdpbf16ps is not faster than f32 FMA on this (non-AMD, no AMX) CPU",
        ),
        (_, None) => f32_plan("f32 kernel: no bf16 dot-product instructions on this CPU"),
    }
}

/// One line saying how the reduced precisions run on this CPU (for `--precision` notes and
/// benchmark reports).
pub fn precision_summary() -> String {
    let b = bf16_plan();
    let i = int8::Int8Kernel::best();
    let int8 = if i.is_vnni() {
        format!("{i:?} vpdpbusd")
    } else {
        "f32 kernel (no VNNI dot-product instructions: int8 would be slower than f32)".into()
    };
    format!(
        "bf16: {:?} kernel at {:?} ({}); int8 linear layers: {int8}",
        b.kernel, b.precision, b.reason
    )
}

/// The kernel and precision [`gemm`] runs for a requested precision.
fn resolve(precision: Precision) -> (Kernel, Precision) {
    match precision {
        Precision::F32 => (Kernel::best(Precision::F32), Precision::F32),
        Precision::Bf16 => {
            let p = bf16_plan();
            (p.kernel, p.precision)
        }
    }
}

/// AMX is picked automatically only once it has reproduced the reference on a small problem in
/// this process. The tile kernel was written on a machine without AMX (AMD Zen 4), so its first
/// run on real hardware is otherwise unverified; a wrong result here falls back to AVX512-BF16
/// instead of silently corrupting every matmul. (`gemm_with(Kernel::Amx, ..)` skips the check,
/// which is what the property tests use.)
fn amx_self_check() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !Kernel::Amx.is_available() {
            return false;
        }
        // Odd sizes: edge tiles in m and n, and a k that is not a multiple of the 32-deep tile.
        let (m, n, k) = (45, 37, 83);
        let val = |i: usize| ((i * 37 + 11) % 23) as f32 / 8.0 - 1.25;
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let b: Vec<f32> = (0..k * n).map(|i| val(i + 5)).collect();
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect()
        };
        let dims = GemmDims { batch: 1, m, n, k };
        let (la, lb, lc) = (
            Layout::row_major(m, k),
            Layout::row_major(k, n),
            Layout::row_major(m, n),
        );
        let mut want = vec![0.0; m * n];
        reference::gemm(dims, &round(&a), la, &round(&b), lb, &mut want, lc, false);
        let mut got = vec![f32::NAN; m * n];
        let ukr = driver::micro_kernel(Kernel::Amx, Precision::Bf16);
        let job = driver::Job::plain(ukr.blocking, dims, false);
        driver::run_gemm(&ukr, job, (&a, la), (&b, lb), (&mut got, lc));
        // Values are multiples of 1/8 with |x| <= 1.5: every product and partial sum is exact
        // in f32, so any correct summation order gives the identical result.
        got == want
    })
}

/// `C (+)= A·B` with A `m×k`, B `k×n`, C `m×n` per batch. `accumulate=false` overwrites C.
/// C's `col_stride` must be 1. Chooses the fastest micro-kernel for this CPU at run time
/// (for `Precision::Bf16`, see [`bf16_plan`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    accumulate: bool,
    precision: Precision,
) {
    let (kernel, precision) = resolve(precision);
    gemm_with(kernel, dims, a, la, b, lb, c, lc, accumulate, precision)
}

/// [`gemm`] with an explicitly chosen micro-kernel family.
///
/// Panics if `kernel` is not available on this CPU or does not support `precision`, if C's
/// `col_stride` is not 1, or if a slice is too short for its layout.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    kernel: Kernel,
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    accumulate: bool,
    precision: Precision,
) {
    let ukr = driver::micro_kernel(kernel, precision);
    let job = driver::Job::plain(ukr.blocking, dims, accumulate);
    driver::run_gemm(&ukr, job, (a, la), (b, lb), (c, lc))
}

/// `C = act(A·B + bias)` (overwriting C) with the [`Epilogue`] fused into the GEMM: each tile
/// gets its bias and activation right after its last k slice, instead of in extra passes over C.
/// Panics if a bias is shorter than its axis.
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused(
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    precision: Precision,
    epilogue: Epilogue,
) {
    let (kernel, precision) = resolve(precision);
    gemm_fused_with(kernel, dims, a, la, b, lb, c, lc, precision, epilogue)
}

/// [`gemm_fused`] on the calling thread only: for callers that already run one task per core
/// (e.g. a fused block working through row bands in parallel), where a nested fork/join per
/// small GEMM would cost more than it gains.
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused_serial(
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    precision: Precision,
    epilogue: Epilogue,
) {
    let (kernel, precision) = resolve(precision);
    check_epilogue(dims, &epilogue);
    let ukr = driver::micro_kernel(kernel, precision);
    let job = driver::Job::fused(ukr.blocking, dims, epilogue, false);
    driver::run_gemm(&ukr, job, (a, la), (b, lb), (c, lc))
}

fn check_epilogue(dims: GemmDims, epilogue: &Epilogue) {
    if let Some(cb) = epilogue.col_bias {
        assert!(cb.len() >= dims.n, "gemm_fused: column bias shorter than n");
    }
    if let Some(rb) = epilogue.row_bias {
        assert!(rb.len() >= dims.m, "gemm_fused: row bias shorter than m");
    }
    if let Some((r, ld)) = epilogue.residual {
        assert!(
            dims.batch == 1
                && ld >= dims.n
                && dims.m > 0
                && r.len() > (dims.m - 1) * ld + dims.n - 1
                || dims.m == 0
                || dims.n == 0,
            "gemm_fused: residual must be one m×n matrix"
        );
    }
}

/// [`gemm_fused`] with an explicitly chosen micro-kernel family (for tests).
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused_with(
    kernel: Kernel,
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    precision: Precision,
    epilogue: Epilogue,
) {
    let blocking = default_blocking(kernel, precision);
    gemm_fused_tuned(
        kernel, blocking, dims, a, la, b, lb, c, lc, precision, epilogue,
    )
}

/// [`gemm_fused_with`] with explicit cache blocking (e.g. `force_pack_a`), for tests and tuning.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused_tuned(
    kernel: Kernel,
    blocking: Blocking,
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    precision: Precision,
    epilogue: Epilogue,
) {
    check_epilogue(dims, &epilogue);
    let ukr = driver::micro_kernel(kernel, precision);
    let job = driver::Job::fused(blocking, dims, epilogue, true);
    driver::run_gemm(&ukr, job, (a, la), (b, lb), (c, lc))
}

/// Cache-blocking parameters (in elements of k / rows / columns). Exposed so the benchmarks can
/// tune them; the defaults per kernel come from measurements on the target CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// Depth of one packed k slice (A micro-panel `MR×KC` should stay in L1).
    pub kc: usize,
    /// Rows of A packed per task (rounded to a multiple of MR).
    pub mc: usize,
    /// Columns of B packed and shared per outer iteration (rounded to a multiple of NR).
    pub nc: usize,
    /// Columns of the packed B block one task sweeps per A micro-panel (`KC×NL2` should stay in L2).
    pub nl2: usize,
    /// Pack A even where the micro-kernel could read it in place (f32 AVX-512 with A's k
    /// contiguous, see the driver's `direct_a`). `false` in every default blocking; tests and
    /// benchmarks set it to compare the two paths, which give bit-identical results.
    pub force_pack_a: bool,
}

/// The blocking [`gemm_with`] uses for `kernel` at `precision`.
pub fn default_blocking(kernel: Kernel, precision: Precision) -> Blocking {
    driver::micro_kernel(kernel, precision).blocking
}

/// [`gemm_with`] with explicit cache blocking, for tuning.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_tuned(
    kernel: Kernel,
    blocking: Blocking,
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    accumulate: bool,
    precision: Precision,
) {
    let ukr = driver::micro_kernel(kernel, precision);
    let job = driver::Job::plain(blocking, dims, accumulate);
    driver::run_gemm(&ukr, job, (a, la), (b, lb), (c, lc))
}

pub mod reference {
    use super::{GemmDims, Layout};

    /// Triple loop in f64-free f32 with a straightforward k-inner sum; the oracle for tests.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        dims: GemmDims,
        a: &[f32],
        la: Layout,
        b: &[f32],
        lb: Layout,
        c: &mut [f32],
        lc: Layout,
        accumulate: bool,
    ) {
        for bi in 0..dims.batch {
            for i in 0..dims.m {
                for j in 0..dims.n {
                    let mut acc = 0.0f32;
                    for p in 0..dims.k {
                        acc += a[bi * la.batch_stride + i * la.row_stride + p * la.col_stride]
                            * b[bi * lb.batch_stride + p * lb.row_stride + j * lb.col_stride];
                    }
                    let ci = bi * lc.batch_stride + i * lc.row_stride + j * lc.col_stride;
                    c[ci] = if accumulate { c[ci] + acc } else { acc };
                }
            }
        }
    }

    /// The oracle of [`super::gemm_fused`]: the plain GEMM, then bias and GELU (in f64) per
    /// element.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_fused(
        dims: GemmDims,
        a: &[f32],
        la: Layout,
        b: &[f32],
        lb: Layout,
        c: &mut [f32],
        lc: Layout,
        epilogue: super::Epilogue,
    ) {
        gemm(dims, a, la, b, lb, c, lc, false);
        for bi in 0..dims.batch {
            for i in 0..dims.m {
                for j in 0..dims.n {
                    let ci = bi * lc.batch_stride + i * lc.row_stride + j * lc.col_stride;
                    c[ci] = epilogue_at(&epilogue, c[ci], i, j);
                }
            }
        }
    }

    /// The [`super::Epilogue`] applied to one element `v` at row `i`, column `j` of C, one
    /// step at a time (shared by the GEMM oracles).
    pub(crate) fn epilogue_at(epilogue: &super::Epilogue, mut v: f32, i: usize, j: usize) -> f32 {
        if let Some(cb) = epilogue.col_bias {
            v += cb[j];
        }
        if let Some(rb) = epilogue.row_bias {
            v += rb[i];
        }
        if let Some((r, ld)) = epilogue.residual {
            v += r[i * ld + j];
        }
        if epilogue.gelu {
            let mut y = [0.0f32];
            crate::activation::reference::gelu_forward(&[v], &mut y);
            v = y[0];
        }
        v
    }
}
