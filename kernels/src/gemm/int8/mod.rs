//! Int8 GEMM for dynamically quantized linear layers, `C = act(x·Wᵀ + b)`, as ONNX Runtime
//! (`DynamicQuantizeLinear` + `MatMulInteger`) and PyTorch (`quantize_dynamic`) do it:
//!
//! - weights `W [n, k]` (PyTorch `Linear` layout) are quantized once, per output channel and
//!   symmetric: `sw[j] = max_k |W[j,k]| / 127`, `qw = round(W / sw)` in [-127, 127] (i8);
//! - activations `x [m, k]` are centred and quantized at every call: `μ[k] = Σ_i x[i,k] / m`
//!   (the mean over the call's rows, summed in a fixed order), and the rows `y = x − μ` are quantized
//!   per row (token) and asymmetric (u8 with a zero point):
//!   `sx[i] = (max(0, max_k y[i,k]) − min(0, min_k y[i,k])) / 255`, `zx[i] = round(−min/sx)`,
//!   `qx = clamp(round(y / sx) + zx, 0, 255)`;
//! - the dot products are exact in i32, `acc[i,j] = Σ_k qx[i,k]·qw[j,k]`, and the result is
//!   `(acc − zx[i]·Σ_k qw[j,k]) · (sx[i]·sw[j]) + t[j]` in f32, where `t[j] = Σ_k μ[k]·W[j,k]`
//!   is the mean's product with the unquantized weights (f32), followed by the [`Epilogue`]
//!   (bias, residual, exact GELU).
//!
//! Centring is this module's addition to the ONNX Runtime / PyTorch scheme. What the tokens
//! share (the mean) goes through the f32 weights exactly; only the per-token deviations are
//! quantized, with a narrower range, so a finer step. It also removes the weight quantization
//! error along the mean, which is the same for every token and so does not average out. On the
//! full ViT-B parity model (`tests/models/vit_b_parity.rs`) it cut the low-res logits' mean error
//! against f32 by 2.3× with the unquantized layers in f32, 1.9× with them in bf16. The cost is
//! one pass over x and an `n × k` matrix-vector product per call. A row's result depends on the
//! other rows of the call (through μ), deterministically.
//!
//! Rounding is to nearest, ties to even (`nearbyint`, as ONNX Runtime). A row or weight channel
//! of zeros gets scale 1; a row with a non-finite value gets scale NaN, so its outputs are NaN
//! (as an f32 GEMM would give NaN or ±inf there); a non-finite value anywhere in x turns
//! centring off for the call (μ = 0), so that it spoils only its own row.
//!
//! Because the integer part is exact and the f32 steps are the same operations in the same
//! order, every kernel's result equals [`reference::linear`] bit for bit up to the epilogue (a
//! GELU epilogue uses the vectorised erf, which differs from the reference's in the last bits).
//!
//! Kernels ([`Int8Kernel`]): `vpdpbusd` (u8 × i8, four adjacent products summed into each i32
//! lane) on zmm (AVX512-VNNI) or ymm (AVX-VNNI), and a portable loop. Weights are packed once
//! ([`Int8Weights`]) into 32-column panels `[panel][k/4][32 columns][4 k]`: one k quad of a panel
//! is exactly two zmm B operands. Activations are quantized into rows padded to a multiple of 4
//! in k (with zeros, which meet zero weights) and of the kernel's MR in m.

#[cfg(target_arch = "x86_64")]
mod x86;

use super::{check_epilogue, Epilogue, GemmDims};
use crate::activation::simd::{reduce16, simd_dispatch};
use rayon::prelude::*;

/// Columns per packed weight panel (and per micro-kernel tile).
pub const NR: usize = 32;

/// The largest k: keeps `|acc − zx·Σqw| ≤ 2·255·127·k` inside i32.
pub const MAX_K: usize = 1 << 15;

/// Rows of C per task (rounded to whole micro-panels) and weight panels per task.
const MC: usize = 96;
const PANELS_PER_TASK: usize = 8;

/// Below this many multiply-adds a call runs on the calling thread (rayon fork/join costs a few
/// microseconds).
const PAR_MIN_MACS: usize = 1 << 20;

/// An int8 micro-kernel family. [`linear`] picks the best available; [`linear_with`] forces one
/// so that every path can be tested on a machine that would pick a faster one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Kernel {
    /// Portable Rust over a 4×32 tile of i32.
    Scalar,
    /// AVX-VNNI `vpdpbusd` on ymm, 6×16 tiles (a 32-wide panel in two passes).
    AvxVnni,
    /// AVX512-VNNI `vpdpbusd` on zmm, 12×32 tile.
    Avx512Vnni,
}

impl Int8Kernel {
    /// Every kernel family, fastest last.
    pub const ALL: [Int8Kernel; 3] = [
        Int8Kernel::Scalar,
        Int8Kernel::AvxVnni,
        Int8Kernel::Avx512Vnni,
    ];

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        let f = crate::cpu::features();
        match self {
            Int8Kernel::Scalar => true,
            Int8Kernel::AvxVnni => f.avx_vnni,
            Int8Kernel::Avx512Vnni => f.avx512vnni,
        }
    }

    /// The fastest available kernel on this machine.
    pub fn best() -> Int8Kernel {
        Int8Kernel::ALL
            .iter()
            .rev()
            .copied()
            .find(|k| k.is_available())
            .unwrap_or(Int8Kernel::Scalar)
    }

    /// True if the kernel uses dot-product instructions (without them the portable loop is
    /// slower than the f32 GEMM, and int8 only costs accuracy).
    pub fn is_vnni(self) -> bool {
        self != Int8Kernel::Scalar
    }
}

/// `out[0..MR, 0..32] = Σ_q a[q][row][0..4] · b[q][col][0..4]` over `kq` k quads: `a` points at
/// one packed panel of MR quantized rows (`[kq][MR][4]` u8, so each broadcast is one i32 at a
/// constant offset), `b` at one packed weight panel, `out` is MR×32 i32 row-major.
pub(crate) type Int8MicroKernel = unsafe fn(kq: usize, a: *const u8, b: *const i8, out: *mut i32);

/// A kernel and its row count.
#[derive(Clone, Copy)]
struct Micro {
    mr: usize,
    func: Int8MicroKernel,
}

/// Largest MR of any kernel.
const MAX_MR: usize = 12;

fn micro(kernel: Int8Kernel) -> Micro {
    assert!(
        kernel.is_available(),
        "int8 GEMM kernel {kernel:?} is not available on this CPU"
    );
    match kernel {
        Int8Kernel::Scalar => Micro {
            mr: SCALAR_MR,
            func: ukr_scalar,
        },
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::AvxVnni => Micro {
            mr: x86::AVX_VNNI_MR,
            func: x86::ukr_avx_vnni,
        },
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx512Vnni => Micro {
            mr: x86::AVX512_VNNI_MR,
            func: x86::ukr_avx512_vnni,
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("is_available() is false off x86_64"),
    }
}

const SCALAR_MR: usize = 4;

/// # Safety
/// `a` holds `kq·SCALAR_MR·4` bytes, `b` `kq·128` bytes; `out` holds SCALAR_MR×32 i32.
unsafe fn ukr_scalar(kq: usize, a: *const u8, b: *const i8, out: *mut i32) {
    let a = std::slice::from_raw_parts(a, kq * 4 * SCALAR_MR);
    let b = std::slice::from_raw_parts(b, kq * 4 * NR);
    let mut acc = [[0i32; NR]; SCALAR_MR];
    for (aq, bq) in a.chunks_exact(4 * SCALAR_MR).zip(b.chunks_exact(4 * NR)) {
        for (acc_row, aq) in acc.iter_mut().zip(aq.chunks_exact(4)) {
            for (acc, bj) in acc_row.iter_mut().zip(bq.chunks_exact(4)) {
                *acc += aq[0] as i32 * bj[0] as i32
                    + aq[1] as i32 * bj[1] as i32
                    + aq[2] as i32 * bj[2] as i32
                    + aq[3] as i32 * bj[3] as i32;
            }
        }
    }
    std::ptr::copy_nonoverlapping(acc.as_ptr() as *const i32, out, SCALAR_MR * NR);
}

/// A linear layer's weight `[n, k]`, quantized per output channel and packed for the kernels.
#[derive(Clone, Debug)]
pub struct Int8Weights {
    n: usize,
    k: usize,
    /// k quads (k rounded up to a multiple of 4, divided by 4).
    kq: usize,
    /// `sw[j]`, padded with zeros to whole panels.
    scales: Vec<f32>,
    /// `Σ_k qw[j,k]`, padded with zeros to whole panels.
    col_sums: Vec<i32>,
    /// `[panel][kq][32][4]` i8.
    packed: Vec<i8>,
}

impl Int8Weights {
    /// Quantizes and packs a row-major `[n, k]` weight (`w[j*k + p]`, PyTorch `Linear.weight`).
    /// Panics if `w` is shorter than `n·k` or `k > MAX_K`.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Int8Weights {
        assert!(w.len() >= n * k, "int8 weights: slice shorter than {n}×{k}");
        assert!(k <= MAX_K, "int8 weights: k = {k} exceeds {MAX_K}");
        let mut q = vec![0i8; n * k];
        let mut sw = vec![0.0f32; n];
        if k > 0 {
            q.par_chunks_mut(k)
                .zip(sw.par_iter_mut())
                .enumerate()
                .for_each(|(j, (q, s))| quantize_weight_row(&w[j * k..(j + 1) * k], q, s));
        }
        let kq = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut packed = vec![0i8; panels * kq * 4 * NR];
        let mut scales = vec![0.0f32; panels * NR];
        let mut col_sums = vec![0i32; panels * NR];
        scales[..n].copy_from_slice(&sw);
        col_sums[..n]
            .par_iter_mut()
            .zip(q.par_chunks(k.max(1)))
            .for_each(|(sum, row)| *sum = row.iter().map(|&v| v as i32).sum());
        // One task per panel, each writing its own contiguous `[kq][32][4]` block in order
        // (row by row, the stores strode across the whole array: most of a first int8 call's
        // extra time on ViT-B). Padding rows and k beyond `k` stay zero.
        if k > 0 {
            packed
                .par_chunks_mut(kq * 4 * NR)
                .enumerate()
                .for_each(|(panel, dst)| {
                    let rows = q[panel * NR * k..].chunks(k).take(NR);
                    for (col, row) in rows.enumerate() {
                        for (quad, four) in row.chunks(4).enumerate() {
                            dst[quad * 4 * NR + col * 4..][..four.len()].copy_from_slice(four);
                        }
                    }
                });
        }
        Int8Weights {
            n,
            k,
            kq,
            scales,
            col_sums,
            packed,
        }
    }

    /// Output features (rows of W, columns of C).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Per-output-channel scales `sw`.
    pub fn scales(&self) -> &[f32] {
        &self.scales[..self.n]
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.packed.len() + 4 * (self.scales.len() + self.col_sums.len())
    }

    fn panel(&self, p: usize) -> *const i8 {
        self.packed[p * self.kq * 4 * NR..].as_ptr()
    }
}

/// Quantizes one weight row (output channel) symmetric into `out`; returns `sw`. Shared by the
/// reference and [`Int8Weights::quantize`], and written for the auto-vectoriser like
/// [`quantize_row_body`] (lane-split maximum, non-finite values tracked as a sum of `v · 0`,
/// an unchecked conversion of values already clamped to the i8 range).
#[inline(always)]
fn quantize_weight_row_body(row: &[f32], out: &mut [i8]) -> f32 {
    let (mut max, mut bad) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut scan = |xs: &[f32]| {
        for l in 0..xs.len() {
            let a = xs[l].abs();
            max[l] = if a > max[l] { a } else { max[l] };
            bad[l] += xs[l] * 0.0;
        }
    };
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    chunks.for_each(&mut scan);
    scan(tail);
    let max = max.iter().fold(0.0f32, |a, &b| a.max(b));
    out[..row.len()].fill(0);
    if bad.iter().any(|b| b.is_nan()) {
        return f32::NAN;
    }
    if max == 0.0 {
        return 1.0;
    }
    let scale = max / 127.0;
    for (o, &v) in out.iter_mut().zip(row) {
        let q = (v / scale).round_ties_even().clamp(-127.0, 127.0);
        // SAFETY: `q` is finite (the row is) and in [-127, 127], so the conversion is exact.
        *o = unsafe { q.to_int_unchecked::<i32>() } as i8;
    }
    scale
}

simd_dispatch! {
    fn quantize_weight_row(row: &[f32], out: &mut [i8], scale: &mut f32) {
        *scale = quantize_weight_row_body(row, out);
    }
}

/// Activations quantized per row, packed in panels of MR rows, `[panel][kq][MR][4]` u8 (zero
/// rows/columns past the data).
struct QuantRows {
    /// Bytes per panel, `kq·MR·4`.
    panel_bytes: usize,
    data: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

/// Quantizes one row centred on `mu` (`x − mu`); returns `(sx, zx)`. Shared by the reference
/// and the fast path, so the two see the same u8 values.
///
/// Written for the auto-vectoriser: the extrema are kept in [`LANES`] independent lanes (a
/// compare-and-select, which is exactly `min`/`max` for the non-NaN values that matter), and
/// finiteness is tracked as a running sum of `v · 0` (0 for a finite `v`, NaN for ±inf or NaN),
/// because `f32::min`'s NaN rule and an early-out flag keep LLVM from vectorising the scan.
/// The extrema of a row do not depend on the order they are found in, so the result is the
/// same as a plain scan's.
#[inline(always)]
fn quantize_row_body(x: &[f32], mu: &[f32], out: &mut [u8]) -> (f32, i32) {
    let mu = &mu[..x.len()];
    let (mut lo, mut hi, mut bad) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    let mut scan = |xs: &[f32], us: &[f32]| {
        for l in 0..xs.len() {
            let v = xs[l] - us[l];
            lo[l] = if v < lo[l] { v } else { lo[l] };
            hi[l] = if v > hi[l] { v } else { hi[l] };
            bad[l] += v * 0.0;
        }
    };
    let (xc, uc) = (x.chunks_exact(LANES), mu.chunks_exact(LANES));
    let (xt, ut) = (xc.remainder(), uc.remainder());
    for (xs, us) in xc.zip(uc) {
        scan(xs, us);
    }
    scan(xt, ut);
    let lo = lo.iter().fold(0.0f32, |a, &b| a.min(b));
    let hi = hi.iter().fold(0.0f32, |a, &b| a.max(b));
    let range = hi - lo;
    if bad.iter().any(|b| b.is_nan()) || !range.is_finite() {
        out[..x.len()].fill(0);
        return (f32::NAN, 0);
    }
    if range == 0.0 {
        out[..x.len()].fill(0);
        return (1.0, 0);
    }
    let scale = range / 255.0;
    let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    for ((o, &v), &u) in out.iter_mut().zip(x).zip(mu) {
        let q = (((v - u) / scale).round_ties_even() + zero).clamp(0.0, 255.0);
        // SAFETY: `q` is finite and in [0, 255] (the row is finite, `|v − u| ≤ range`), so the
        // unchecked conversion is exact; the checked `as` casts do not vectorise.
        *o = unsafe { q.to_int_unchecked::<i32>() } as u8;
    }
    (scale, zero as i32)
}

/// Independent lanes of [`quantize_row_body`]'s scan (one zmm of f32).
const LANES: usize = 16;

simd_dispatch! {
    fn quantize_row(x: &[f32], mu: &[f32], out: &mut [u8], params: &mut (f32, i32)) {
        *params = quantize_row_body(x, mu, out);
    }
}

/// Rows of x per partial sum of [`column_means`]: fixed, so the sums do not depend on the
/// thread count.
const MEAN_ROWS: usize = 256;

/// `μ`: the mean of rows `0..m` of `x` (row stride `ldx`, `k` columns); all zeros if any mean
/// is not finite (see the module doc). Each block of [`MEAN_ROWS`] rows is summed in row order
/// into its own partial sums (rows read front to back, one pass over memory), then the partial
/// sums are added in block order — the same bits for any number of threads.
fn column_means(x: &[f32], ldx: usize, m: usize, k: usize, parallel: bool) -> Vec<f32> {
    let blocks = m.div_ceil(MEAN_ROWS);
    let mut partial = vec![0.0f32; blocks * k];
    let block = |(b, out): (usize, &mut [f32])| {
        let rows = x.chunks(ldx.max(1)).skip(b * MEAN_ROWS);
        for row in rows.take(MEAN_ROWS.min(m - b * MEAN_ROWS)) {
            for (a, &v) in out.iter_mut().zip(&row[..k]) {
                *a += v;
            }
        }
    };
    if k > 0 {
        if parallel {
            partial.par_chunks_mut(k).enumerate().for_each(block);
        } else {
            partial.chunks_mut(k).enumerate().for_each(block);
        }
    }
    let mut mu = vec![0.0f32; k];
    for p in partial.chunks(k.max(1)) {
        for (a, &v) in mu.iter_mut().zip(p) {
            *a += v;
        }
    }
    let count = m.max(1) as f32;
    for a in mu.iter_mut() {
        *a /= count;
    }
    if !mu.iter().all(|v| v.is_finite()) {
        mu.fill(0.0);
    }
    mu
}

/// `Σ_p a[p]·b[p]` in f32 over 16 interleaved partial sums, added up in a fixed order.
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let mut tail = 0.0f32;
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        tail += x * y;
    }
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    reduce16(acc) + tail
}

simd_dispatch! {
    fn dot(a: &[f32], b: &[f32], out: &mut f32) {
        *out = dot_body(a, b);
    }
}

simd_dispatch! {
    /// `out[j] = dot(a, rows[j·k..][..k])` for every `j < out.len()`: [`dot`] row by row in one
    /// dispatched call.
    fn dot_rows(a: &[f32], rows: &[f32], k: usize, out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(k)) {
            *o = dot_body(a, row);
        }
    }
}

/// Output channels per task of [`mean_term`].
const MEAN_TERM_ROWS: usize = 64;

/// `t[j] = Σ_p μ[p]·W[j,p]` for the `[n, k]` f32 weights `w`, padded with zeros to `len`.
fn mean_term(mu: &[f32], w: &[f32], n: usize, k: usize, len: usize, parallel: bool) -> Vec<f32> {
    let mut t = vec![0.0f32; len];
    if k == 0 {
        return t;
    }
    let one = |(b, o): (usize, &mut [f32])| {
        let j0 = b * MEAN_TERM_ROWS;
        dot_rows(mu, &w[j0 * k..(j0 + o.len()) * k], k, o)
    };
    if parallel {
        t[..n]
            .par_chunks_mut(MEAN_TERM_ROWS)
            .enumerate()
            .for_each(one);
    } else {
        t[..n].chunks_mut(MEAN_TERM_ROWS).enumerate().for_each(one);
    }
    t
}

/// One task of [`quantize_rows`]: a panel's bytes and its rows' `(scale, zero point)`.
type RowPanel<'a> = (&'a mut [u8], &'a mut [(f32, i32)]);

/// Quantizes rows `0..m` of `x` (row stride `ldx`, `k` used columns) centred on `mu` into
/// panels of `mr` rows covering `rows ≥ m` rows, `kq` k quads each.
#[allow(clippy::too_many_arguments)]
fn quantize_rows(
    x: &[f32],
    mu: &[f32],
    ldx: usize,
    m: usize,
    k: usize,
    rows: usize,
    mr: usize,
    kq: usize,
    parallel: bool,
) -> QuantRows {
    let panel_bytes = kq * mr * 4;
    let mut data = vec![0u8; rows / mr * panel_bytes];
    let mut params = vec![(0.0f32, 0i32); rows];
    let one = |(pi, (panel, p)): (usize, RowPanel)| {
        let mut row = vec![0u8; kq * 4];
        for (r, pr) in p.iter_mut().enumerate() {
            let i = pi * mr + r;
            if i >= m {
                break;
            }
            quantize_row(&x[i * ldx..i * ldx + k], mu, &mut row, pr);
            for (quad, dst) in row.chunks_exact(4).zip(panel.chunks_exact_mut(mr * 4)) {
                dst[r * 4..r * 4 + 4].copy_from_slice(quad);
            }
        }
    };
    if parallel {
        data.par_chunks_mut(panel_bytes)
            .zip(params.par_chunks_mut(mr))
            .enumerate()
            .for_each(one);
    } else {
        data.chunks_mut(panel_bytes)
            .zip(params.chunks_mut(mr))
            .enumerate()
            .for_each(one);
    }
    QuantRows {
        panel_bytes,
        data,
        scale: params.iter().map(|p| p.0).collect(),
        zero: params.iter().map(|p| p.1).collect(),
    }
}

/// `out[j] = (acc[j] − zx·col_sum[j]) · (sx·sw[j]) + t[j]`.
#[inline(always)]
fn dequant_row(
    acc: &[i32],
    zx: i32,
    sx: f32,
    col_sum: &[i32],
    sw: &[f32],
    t: &[f32],
    out: &mut [f32],
) {
    for ((((o, &a), &s), &w), &t) in out.iter_mut().zip(acc).zip(col_sum).zip(sw).zip(t) {
        *o = (a - zx * s) as f32 * (sx * w) + t;
    }
}

/// One finished `MR × NR` tile for [`dequant_tile`]: its rows' `(zero point, scale)` and the
/// columns' `(Σ qw, sw, t)`, all sliced to the tile.
struct TileParams<'a> {
    zx: &'a [i32],
    sx: &'a [f32],
    col_sum: &'a [i32],
    sw: &'a [f32],
    t: &'a [f32],
}

simd_dispatch! {
    /// [`dequant_row`] for the first `p.zx.len()` rows of a tile (row stride [`NR`]) into C at
    /// `c` (row stride `ldc`), `p.sw.len()` columns: one dispatched call per tile, not per row.
    fn dequant_tile(tile: &[i32], p: &TileParams, c: CPtr, ldc: usize) {
        let cols = p.sw.len();
        for (r, (&zx, &sx)) in p.zx.iter().zip(p.sx).enumerate() {
            // SAFETY: the caller hands over a tile of C it owns: rows·ldc, cols inside C.
            let out = unsafe { std::slice::from_raw_parts_mut(c.get().add(r * ldc), cols) };
            dequant_row(&tile[r * NR..r * NR + cols], zx, sx, p.col_sum, p.sw, p.t, out);
        }
    }
}

/// A raw pointer to C shared by tasks that write disjoint rows × column ranges.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of C (row blocks × panel groups).
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `C = act(x·Wᵀ + b)` in int8 with dynamic centred per-row activation quantization: `x` is
/// `m × k` with row stride `ldx`, `w` the quantized weights and `exact` the `[n, k]` row-major
/// f32 weights they were quantized from (for the mean's product, see the module doc), C is
/// `m × n` with row stride `ldc` (overwritten). Uses the best kernel for this CPU. Panics if a
/// slice is too short, a stride is smaller than its row, or an epilogue operand does not fit
/// (see [`super::gemm_fused`]).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &Int8Weights,
    exact: &[f32],
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue,
) {
    linear_with(Int8Kernel::best(), x, ldx, m, w, exact, c, ldc, epilogue)
}

/// [`linear`] with an explicitly chosen kernel. Panics if it is not available on this CPU.
#[allow(clippy::too_many_arguments)]
pub fn linear_with(
    kernel: Int8Kernel,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &Int8Weights,
    exact: &[f32],
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
) {
    let (n, k) = (w.n, w.k);
    let uk = micro(kernel);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldx >= k && ldc >= n,
        "int8 linear: row stride shorter than a row"
    );
    assert!(
        x.len() >= (m - 1) * ldx + k,
        "int8 linear: x (len {}) too short for {m}×{k}",
        x.len()
    );
    assert!(
        c.len() >= (m - 1) * ldc + n,
        "int8 linear: C (len {}) too short for {m}×{n}",
        c.len()
    );
    assert!(
        exact.len() >= n * k,
        "int8 linear: exact weights (len {}) shorter than {n}×{k}",
        exact.len()
    );
    check_epilogue(GemmDims { batch: 1, m, n, k }, &ep);
    let parallel = rayon::current_num_threads() > 1 && m * n * k >= PAR_MIN_MACS;
    let mr = uk.mr;
    let rows = m.div_ceil(mr) * mr;
    let mu = column_means(x, ldx, m, k, parallel);
    // Both need only μ: run side by side rather than one after the other (a join instead of
    // two waits for the slower thread at MedSAM2's m = 1024 shapes).
    let mean_term = || mean_term(&mu, exact, n, k, w.scales.len(), parallel);
    let quantize = || quantize_rows(x, &mu, ldx, m, k, rows, mr, w.kq, parallel);
    let (mean, q) = if parallel {
        rayon::join(mean_term, quantize)
    } else {
        (mean_term(), quantize())
    };

    let mc = (MC / mr).max(1) * mr;
    let mblocks = rows.div_ceil(mc);
    let panels = n.div_ceil(NR);
    let nblocks = panels.div_ceil(PANELS_PER_TASK);
    let cptr = CPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let (ib, jb) = (t / nblocks, t % nblocks);
        let (r0, r1) = (ib * mc, ((ib + 1) * mc).min(m));
        let (p0, p1) = (
            jb * PANELS_PER_TASK,
            ((jb + 1) * PANELS_PER_TASK).min(panels),
        );
        let mut tile = [0i32; MAX_MR * NR];
        for p in p0..p1 {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            let bp = w.panel(p);
            for i0 in (r0..r1).step_by(mr) {
                let ap = q.data[i0 / mr * q.panel_bytes..].as_ptr();
                // SAFETY: the row panel holds kq·mr·4 bytes (rows is a multiple of mr), the
                // weight panel kq·128 bytes, the tile MAX_MR·32 i32.
                unsafe { (uk.func)(w.kq, ap, bp, tile.as_mut_ptr()) };
                let i1 = (i0 + mr).min(r1);
                let params = TileParams {
                    zx: &q.zero[i0..i1],
                    sx: &q.scale[i0..i1],
                    col_sum: &w.col_sums[j0..j0 + cols],
                    sw: &w.scales[j0..j0 + cols],
                    t: &mean[j0..j0 + cols],
                };
                // Rows i0..i1 < m and columns j0..j0+cols ≤ n lie inside C (checked above) and
                // inside this task's disjoint rows × panels.
                dequant_tile(
                    &tile,
                    &params,
                    CPtr(cptr.get().wrapping_add(i0 * ldc + j0)),
                    ldc,
                );
            }
        }
        if !ep.is_identity() {
            let (c0, c1) = (p0 * NR, (p1 * NR).min(n));
            for i in r0..r1 {
                // SAFETY: as above.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(cptr.get().add(i * ldc + c0), c1 - c0)
                };
                ep.apply(row, i, c0);
            }
        }
    };
    let ntasks = mblocks * nblocks;
    if parallel && ntasks > 1 {
        (0..ntasks).into_par_iter().for_each(task);
    } else {
        (0..ntasks).for_each(task);
    }
}

pub mod reference {
    //! The obviously correct int8 linear: quantize, triple loop in i32, dequantize, epilogue.

    use super::super::Epilogue;

    /// Per-output-channel symmetric quantization of a row-major `[n, k]` weight: `(qw, sw)`
    /// with `qw` row-major `[n, k]`.
    pub fn quantize_weights(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
        let mut q = vec![0i8; n * k];
        let mut scales = vec![0.0f32; n];
        for j in 0..n {
            scales[j] = super::quantize_weight_row_body(&w[j * k..(j + 1) * k], &mut q[j * k..]);
        }
        (q, scales)
    }

    /// Per-row asymmetric u8 quantization of `m × k` activations (uncentred): `(qx, sx, zx)`.
    pub fn quantize_rows(x: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>, Vec<i32>) {
        let mut q = vec![0u8; m * k];
        let mut s = vec![0.0; m];
        let mut z = vec![0; m];
        let zeros = vec![0.0f32; k];
        for i in 0..m {
            (s[i], z[i]) =
                super::quantize_row_body(&x[i * k..(i + 1) * k], &zeros, &mut q[i * k..]);
        }
        (q, s, z)
    }

    /// `μ`, the mean of the `m` rows of dense `x` (zeros if one is not finite).
    pub fn column_means(x: &[f32], m: usize, k: usize) -> Vec<f32> {
        super::column_means(x, k, m, k, false)
    }

    /// `C = act(quant(x − μ)·quant(W)ᵀ + μ·Wᵀ + b)`: `x` dense `m × k`, `w` dense `[n, k]`, C
    /// dense `m × n`.
    pub fn linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, c: &mut [f32], ep: Epilogue) {
        let (qw, sw) = quantize_weights(w, n, k);
        let mu = column_means(x, m, k);
        let centred: Vec<f32> = x[..m * k]
            .chunks(k.max(1))
            .flat_map(|row| row.iter().zip(&mu).map(|(v, u)| v - u))
            .collect();
        let (qx, sx, zx) = quantize_rows(&centred, m, k);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0i32;
                let mut col_sum = 0i32;
                for p in 0..k {
                    acc += qx[i * k + p] as i32 * qw[j * k + p] as i32;
                    col_sum += qw[j * k + p] as i32;
                }
                let mut t = 0.0f32;
                super::dot(&mu, &w[j * k..(j + 1) * k], &mut t);
                let v = (acc - zx[i] * col_sum) as f32 * (sx[i] * sw[j]) + t;
                c[i * n + j] = crate::gemm::reference::epilogue_at(&ep, v, i, j);
            }
        }
    }
}
