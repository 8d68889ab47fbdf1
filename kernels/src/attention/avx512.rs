//! AVX-512 attention. One task = (batch·head, block of up to `BQ` query rows); it walks the keys in
//! blocks of up to `BK` and keeps a `rows × BK` score block in L2:
//!
//! 1. `S = (q·scale)·Kᵀ` with an 8-row × 48-key register tile (micro-kernel [`ka`]) over K packed
//!    once per call into 16-key panels `[nk/16][d][16]`;
//! 2. the rel-pos bias is added segment by segment (`rel_h[i, jh]` broadcast + a `rel_w[i, ·]`
//!    vector), then one online-softmax step with a vectorised polynomial `exp`;
//! 3. `O = α·O + P·V` with a 6-row × 64-column register tile (micro-kernel [`kb`]).
//!
//! The backward recomputes `S`, `P = exp(S − lse)` and `dP = dO·Vᵀ` per block with [`ka`], forms
//! `dS = P ⊙ (dP − D)`, and accumulates `dQ += dS·K`, `dK += dSᵀ·(q·scale)`, `dV += Pᵀ·dO` with
//! [`kb`] (transposed operands through strides) and `drel_h`/`drel_w` as row sums of `dS`
//! segments. Query blocks of a head are split into a number of groups that depends only on the
//! shape; each group owns a private dK/dV accumulator and the groups are summed in a fixed order,
//! so results are bit-identical whatever the thread count or scheduling.

#![allow(clippy::too_many_arguments)]

use super::{AttnDims, Backward, BiasTable, Forward, HeadRows, RelPosBias};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Lanes per vector.
pub(super) const L: usize = 16;
/// Rows of the score micro-tile.
pub(super) const MA: usize = 8;
/// Maximum query rows per task.
const BQ: usize = 128;
/// Maximum keys per score block (forward / backward).
pub(super) const BK_F: usize = 512;
const BK_B: usize = 256;
/// Query blocks per forward task.
pub(super) const FWD_GROUP: usize = 4;
/// Keys per accumulation chunk of `P·V`-style products: each chunk is summed from zero in
/// registers and then added to the output, so a 4096-key row is a sum of 64 short sums rather
/// than one 4096-term chain (the long chain cost SAM's token→image attention ~10× PyTorch's
/// rounding error, visible in LiteMedSAM's logits).
pub(super) const KC: usize = 64;

pub(super) use crate::scratch::{scratch, scratch_overwritten, Scratch};

pub(super) fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Query-block size for `nq` rows: the fewest blocks of at most `BQ` rows, balanced, multiple of MA.
pub(super) fn q_block(nq: usize) -> usize {
    let nb = nq.div_ceil(BQ).max(1);
    round_up(nq.div_ceil(nb), MA).max(MA)
}

/// One head's 16-key panels: `src [n, w]` → `[n16/16][w][16]` (zero-padded keys).
fn pack_panels(n: usize, w: usize, src: &[f32]) -> Scratch {
    pack_panels_rows(n, w, src, w)
}

/// [`pack_panels`] for rows `row_stride` apart in `src`.
fn pack_panels_rows(n: usize, w: usize, src: &[f32], row_stride: usize) -> Scratch {
    if w > 0 && n > 0 {
        assert!(
            (n - 1) * row_stride + w <= src.len(),
            "attention: {n} rows of {w} (stride {row_stride}) do not fit in {} values",
            src.len()
        );
    }
    pack_panels_with(n, w, |j| &src[j * row_stride..j * row_stride + w])
}

/// [`pack_panels`] for rows given one at a time (`row(j)`: key `j`'s `w` values).
fn pack_panels_with<'r>(n: usize, w: usize, row: impl Fn(usize) -> &'r [f32]) -> Scratch {
    let np = n.div_ceil(L);
    // Every element is written below (padding keys as zeros), so stale contents are fine.
    let mut out = scratch_overwritten(np * w * L);
    if w == 0 || n == 0 {
        return out;
    }
    // SAFETY: this module runs only when AVX-512F is available (checked by the dispatcher);
    // `pack_panels_avx512` reads at most `w` values of each row it is given (checked there) and
    // `out` holds np·w·L values.
    unsafe { pack_panels_avx512(n, w, row, &mut out) };
    out
}

/// Transposes 16 rows of up to 16 values at a time: rows (keys) `16p..16p+16` of columns
/// `c0..c0+16` become columns `c0..` of panel `p` (`[w][16]`), keys past `n` zero.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panels_avx512<'r>(
    n: usize,
    w: usize,
    row: impl Fn(usize) -> &'r [f32],
    out: &mut [f32],
) {
    let op = out.as_mut_ptr();
    for p in 0..n.div_ceil(L) {
        let j0 = p * L;
        let keys = L.min(n - j0);
        let rows = panel_rows(j0, keys, w, &row);
        for c0 in (0..w).step_by(L) {
            let cols = L.min(w - c0);
            let mask = tail_mask(cols);
            let mut t = [_mm512_setzero_ps(); L];
            for (r, tr) in t.iter_mut().enumerate().take(keys) {
                *tr = _mm512_maskz_loadu_ps(mask, rows[r].add(c0));
            }
            transpose16(&mut t);
            for (c, tc) in t.iter().enumerate().take(cols) {
                _mm512_storeu_ps(op.add((p * w + c0 + c) * L), *tc);
            }
        }
    }
}

/// Where keys `j0..j0 + keys` start (`row(j)`, each checked to hold at least `w` values; null
/// past `keys`): the rows of one 16-key panel, read through raw pointers by the packers.
pub(super) fn panel_rows<'r>(
    j0: usize,
    keys: usize,
    w: usize,
    row: &impl Fn(usize) -> &'r [f32],
) -> [*const f32; L] {
    std::array::from_fn(|r| {
        if r < keys {
            let s = row(j0 + r);
            assert!(s.len() >= w, "attention: a key row shorter than {w}");
            s.as_ptr()
        } else {
            std::ptr::null()
        }
    })
}

/// In-register 16×16 transpose: `t[c][r] ← t[r][c]` (also used by the GEMM's small-m path).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(t: &mut [__m512; L]) {
    // 32-bit interleave within 128-bit lanes, then 64-bit, then 128-bit blocks twice.
    let mut a = [_mm512_setzero_ps(); L];
    for i in 0..L / 2 {
        a[2 * i] = _mm512_unpacklo_ps(t[2 * i], t[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(t[2 * i], t[2 * i + 1]);
    }
    let mut b = [_mm512_setzero_ps(); L];
    for i in 0..L / 4 {
        for h in 0..2 {
            let (x, y) = (
                _mm512_castps_pd(a[4 * i + h]),
                _mm512_castps_pd(a[4 * i + 2 + h]),
            );
            b[4 * i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            b[4 * i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        }
    }
    // b[4i + q] holds, in each 128-bit lane l, column 4l + q of rows 4i..4i+4.
    let mut c = [_mm512_setzero_ps(); L];
    for i in 0..L / 8 {
        for q in 0..4 {
            let (x, y) = (b[8 * i + q], b[8 * i + 4 + q]);
            c[8 * i + q] = _mm512_shuffle_f32x4::<0x88>(x, y);
            c[8 * i + 4 + q] = _mm512_shuffle_f32x4::<0xDD>(x, y);
        }
    }
    for q in 0..8 {
        t[q] = _mm512_shuffle_f32x4::<0x88>(c[q], c[8 + q]);
        t[8 + q] = _mm512_shuffle_f32x4::<0xDD>(c[q], c[8 + q]);
    }
}

/// `src [rows, w]` → `[rows_pad, wp]`, scaled, zero-padded.
fn pad_rows(src: &[f32], rows: usize, w: usize, rows_pad: usize, wp: usize, scale: f32) -> Scratch {
    pad_rows_strided(src, w, rows, w, rows_pad, wp, scale)
}

/// [`pad_rows`] for rows `row_stride` apart in `src`.
fn pad_rows_strided(
    src: &[f32],
    row_stride: usize,
    rows: usize,
    w: usize,
    rows_pad: usize,
    wp: usize,
    scale: f32,
) -> Scratch {
    pad_rows_with(rows, w, rows_pad, wp, scale, |i| {
        &src[i * row_stride..i * row_stride + w]
    })
}

/// [`pad_rows`] for rows given one at a time (`row(i)`: row `i`'s `w` values).
fn pad_rows_with<'r>(
    rows: usize,
    w: usize,
    rows_pad: usize,
    wp: usize,
    scale: f32,
    row: impl Fn(usize) -> &'r [f32],
) -> Scratch {
    // Every element is written: the rows' values, then zeros for the padding columns and rows.
    let mut out = scratch_overwritten(rows_pad * wp);
    for (i, o) in out.chunks_exact_mut(wp.max(1)).enumerate().take(rows_pad) {
        if i < rows && w > 0 {
            let s = &row(i)[..w];
            o[..w].iter_mut().zip(s).for_each(|(o, &s)| *o = s * scale);
            o[w..].fill(0.0);
        } else {
            o.fill(0.0);
        }
    }
    out
}

/// Row-major `[n, w]` with rows padded to `wp` columns (borrowed when `w == wp`).
fn padded_cols(src: &[f32], w: usize, wp: usize) -> Rows<'_> {
    if w == wp {
        return Rows::Borrowed(src);
    }
    let rows = src.len() / w;
    Rows::Owned(pad_rows(src, rows, w, rows, wp, 1.0))
}

/// Either the caller's rows or a padded copy.
enum Rows<'a> {
    Borrowed(&'a [f32]),
    Owned(Scratch),
}

impl std::ops::Deref for Rows<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Rows::Borrowed(s) => s,
            Rows::Owned(v) => v,
        }
    }
}

pub(super) fn tail_mask(n: usize) -> __mmask16 {
    if n >= L {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// `e^x` for 16 lanes: Cody–Waite reduction, Cephes degree-5 polynomial (rel. error ~1.5e-7),
/// `scalef` for the power of two. Inputs are clamped to [-88, 88] (so `-inf` gives ~6e-39).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn exp512(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-88.0)),
        _mm512_set1_ps(88.0),
    );
    let n =
        _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166_666_65));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
    let r2 = _mm512_mul_ps(r, r);
    let y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    _mm512_scalef_ps(y, n)
}

/// One 32-bit unit of a product operand along the summed dimension: an f32 (products by FMA),
/// or a pair of bf16 values (products by `vdpbf16ps`, [`super::avx512bf16`]). The products
/// below ([`tiled_scores`], [`tiled_mm_acc`]) are written once over it and compiled into each
/// ISA's `#[target_feature]` entry points ([`tile_entry_points`]).
pub(super) trait Unit: Copy {
    /// Values of the summed dimension per unit.
    const PER_UNIT: usize;
    /// The 16 units at `p`.
    unsafe fn load(p: *const Self) -> __m512;
    /// The unit at `p` in every lane.
    unsafe fn splat(p: *const Self) -> __m512;
    /// `acc + a·b` per lane (summed over the unit's values).
    unsafe fn madd(acc: __m512, a: __m512, b: __m512) -> __m512;
}

impl Unit for f32 {
    const PER_UNIT: usize = 1;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        _mm512_set1_ps(*p)
    }
    #[inline(always)]
    unsafe fn madd(acc: __m512, a: __m512, b: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, acc)
    }
}

/// Score micro-kernel: `s[r*lds + p*16 + l] = Σ_{u<n} a[r*lda + u] · bp[p*n*16 + u*16 + l]` for
/// `r < MA`, `p < NP` (NP 16-key panels starting at `bp`, `n` units each).
#[inline(always)]
unsafe fn ka<U: Unit, const NP: usize>(
    n: usize,
    a: *const U,
    lda: usize,
    bp: *const U,
    s: *mut f32,
    lds: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NP]; MA];
    for u in 0..n {
        let mut bv = [_mm512_setzero_ps(); NP];
        for p in 0..NP {
            bv[p] = U::load(bp.add(p * n * L + u * L));
        }
        for r in 0..MA {
            let av = U::splat(a.add(r * lda + u));
            for p in 0..NP {
                acc[r][p] = U::madd(acc[r][p], av, bv[p]);
            }
        }
    }
    for r in 0..MA {
        for p in 0..NP {
            _mm512_storeu_ps(s.add(r * lds + p * L), acc[r][p]);
        }
    }
}

/// `s[r, 0..npan*16] = a[r, 0..n] · panels[0..npan]` for `r < rows_pad` (a multiple of MA), `n`
/// units per row and panel column.
#[inline(always)]
pub(super) unsafe fn tiled_scores<U: Unit>(
    rows_pad: usize,
    n: usize,
    a: *const U,
    lda: usize,
    bp: *const U,
    npan: usize,
    s: *mut f32,
    lds: usize,
) {
    let mut p = 0;
    while p < npan {
        let np = (npan - p).min(3);
        let b = bp.add(p * n * L);
        for r in (0..rows_pad).step_by(MA) {
            let (ar, sr) = (a.add(r * lda), s.add(r * lds + p * L));
            match np {
                3 => ka::<U, 3>(n, ar, lda, b, sr, lds),
                2 => ka::<U, 2>(n, ar, lda, b, sr, lds),
                _ => ka::<U, 1>(n, ar, lda, b, sr, lds),
            }
        }
        p += np;
    }
}

/// Accumulating micro-kernel: `out[r*ldo + v*16..][..16] += Σ_{t<inner} coef[r*cr + t*ct] ·
/// x[t*ldx + v*16..][..16]` for `r < MR`, `v < NV`.
#[inline(always)]
unsafe fn kb<U: Unit, const MR: usize, const NV: usize>(
    inner: usize,
    coef: *const U,
    cr: usize,
    ct: usize,
    x: *const U,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    // The chunk's sum starts from zero and is added to `out` at the end (see `KC`).
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for t in 0..inner {
        let mut xv = [_mm512_setzero_ps(); NV];
        for v in 0..NV {
            xv[v] = U::load(x.add(t * ldx + v * L));
        }
        for r in 0..MR {
            let c = U::splat(coef.add(r * cr + t * ct));
            for v in 0..NV {
                acc[r][v] = U::madd(acc[r][v], c, xv[v]);
            }
        }
    }
    for r in 0..MR {
        for v in 0..NV {
            let o = out.add(r * ldo + v * L);
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[r][v]));
        }
    }
}

/// Rows `0..rows` of one column chunk of `NV` vectors, `MR` rows at a time, then 4, then 1.
#[inline(always)]
unsafe fn kb_rows<U: Unit, const MR: usize, const NV: usize>(
    rows: usize,
    inner: usize,
    coef: *const U,
    cr: usize,
    ct: usize,
    x: *const U,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut r = 0;
    while r + MR <= rows {
        let (c, o) = (coef.add(r * cr), out.add(r * ldo));
        kb::<U, MR, NV>(inner, c, cr, ct, x, ldx, o, ldo);
        r += MR;
    }
    while r + 4 <= rows {
        let (c, o) = (coef.add(r * cr), out.add(r * ldo));
        kb::<U, 4, NV>(inner, c, cr, ct, x, ldx, o, ldo);
        r += 4;
    }
    while r < rows {
        let (c, o) = (coef.add(r * cr), out.add(r * ldo));
        kb::<U, 1, NV>(inner, c, cr, ct, x, ldx, o, ldo);
        r += 1;
    }
}

/// `out[r, c] += Σ_{t<inner} coef(r, t) · x[t, c]` for `r < rows`, `c < w` (`w` a multiple of
/// 16), over units `t`, in chunks of `KC` values.
#[inline(always)]
pub(super) unsafe fn tiled_mm_acc<U: Unit>(
    rows: usize,
    inner: usize,
    w: usize,
    coef: *const U,
    cr: usize,
    ct: usize,
    x: *const U,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    if rows == 0 || inner == 0 {
        return;
    }
    let mut t0 = 0;
    while t0 < inner {
        let kc = (KC / U::PER_UNIT).min(inner - t0);
        let (cf, xt) = (coef.add(t0 * ct), x.add(t0 * ldx));
        let mut c0 = 0;
        while c0 < w {
            let nv = ((w - c0) / L).min(4);
            let (xc, oc) = (xt.add(c0), out.add(c0));
            match nv {
                4 => kb_rows::<U, 6, 4>(rows, kc, cf, cr, ct, xc, ldx, oc, ldo),
                3 => kb_rows::<U, 8, 3>(rows, kc, cf, cr, ct, xc, ldx, oc, ldo),
                2 => kb_rows::<U, 8, 2>(rows, kc, cf, cr, ct, xc, ldx, oc, ldo),
                _ => kb_rows::<U, 8, 1>(rows, kc, cf, cr, ct, xc, ldx, oc, ldo),
            }
            c0 += nv * L;
        }
        t0 += kc;
    }
}

/// Writes the entry points `scores` ([`tiled_scores`]) and `mm_acc` ([`tiled_mm_acc`]) for
/// operands of `$unit`, compiled with the target features of the attribute given.
macro_rules! tile_entry_points {
    ($unit:ty, #[$features:meta]) => {
        /// [`super::avx512::tiled_scores`] on this ISA.
        #[$features]
        unsafe fn scores(
            rows_pad: usize,
            n: usize,
            a: *const $unit,
            lda: usize,
            bp: *const $unit,
            npan: usize,
            s: *mut f32,
            lds: usize,
        ) {
            super::avx512::tiled_scores(rows_pad, n, a, lda, bp, npan, s, lds)
        }

        /// [`super::avx512::tiled_mm_acc`] on this ISA.
        #[$features]
        unsafe fn mm_acc(
            rows: usize,
            inner: usize,
            w: usize,
            coef: *const $unit,
            cr: usize,
            ct: usize,
            x: *const $unit,
            ldx: usize,
            out: *mut f32,
            ldo: usize,
        ) {
            super::avx512::tiled_mm_acc(rows, inner, w, coef, cr, ct, x, ldx, out, ldo)
        }
    };
}
pub(super) use tile_entry_points;

tile_entry_points!(f32, #[target_feature(enable = "avx512f")]);

/// Where the bias of each 16-key chunk of a key block comes from: for chunk `c`, lane `l`, key
/// `j = j0 + 16c + l` has `jh = j / kw`, `jw = j % kw` (0 past the block end). Built once per key
/// block, shared by all query rows.
pub(super) struct BiasIdx {
    ih: Vec<[i32; L]>,
    iw: Vec<[i32; L]>,
}

impl BiasIdx {
    fn new(j0: usize, bk: usize, kw: usize) -> Self {
        let n = bk.div_ceil(L);
        let (mut ih, mut iw) = (vec![[0i32; L]; n], vec![[0i32; L]; n]);
        for c in 0..n {
            for l in 0..L {
                let t = c * L + l;
                if t < bk {
                    ih[c][l] = ((j0 + t) / kw) as i32;
                    iw[c][l] = ((j0 + t) % kw) as i32;
                }
            }
        }
        BiasIdx { ih, iw }
    }
}

/// The bias terms of one query row for lanes with indices `idx`: a permute of the row held in
/// (up to) two registers when it has at most 32 entries, a gather otherwise.
#[derive(Clone, Copy)]
enum Lookup {
    Regs(__m512, __m512),
    Gather(*const f32),
}

impl Lookup {
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn new(row: &[f32]) -> Self {
        let n = row.len();
        if n <= 2 * L {
            let lo = _mm512_maskz_loadu_ps(tail_mask(n), row.as_ptr());
            let hi = if n > L {
                _mm512_maskz_loadu_ps(tail_mask(n - L), row.as_ptr().add(L))
            } else {
                _mm512_setzero_ps()
            };
            Lookup::Regs(lo, hi)
        } else {
            Lookup::Gather(row.as_ptr())
        }
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn get(self, idx: &[i32; L]) -> __m512 {
        let iv = _mm512_loadu_si512(idx.as_ptr() as *const _);
        match self {
            Lookup::Regs(lo, hi) => _mm512_permutex2var_ps(lo, iv, hi),
            Lookup::Gather(p) => _mm512_i32gather_ps::<4>(iv, p),
        }
    }
}

/// Adds the rel-pos bias of keys `j0..j0+bk` to score row `s` (`s[j - j0]`), in SAM's order
/// `(s + rel_h) + rel_w`, and returns the row maximum over those keys. Every load and store is
/// one whole 16-key chunk (`j0` is a multiple of 16), so nothing waits on a partially
/// overlapping earlier store.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bias_and_max(
    s: *mut f32,
    j0: usize,
    bk: usize,
    bias: Option<(&[f32], &[f32], usize)>,
    idx: Option<&BiasIdx>,
) -> f32 {
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    match (bias, idx) {
        (Some((rh, rw, kw)), _) if kw % L == 0 => {
            // Each jh segment is a run of whole chunks.
            let (mut j, mut jh, mut jw) = (j0, j0 / kw, j0 % kw);
            while j < j0 + bk {
                let run = (kw - jw).min(j0 + bk - j);
                let hb = _mm512_set1_ps(rh[jh]);
                let (sp, wp) = (s.add(j - j0), rw.as_ptr().add(jw));
                let mut t = 0;
                while t < run {
                    let m = tail_mask(run - t);
                    let sv = _mm512_maskz_loadu_ps(m, sp.add(t));
                    let wv = _mm512_maskz_loadu_ps(m, wp.add(t));
                    let v = _mm512_add_ps(_mm512_add_ps(sv, hb), wv);
                    _mm512_mask_storeu_ps(sp.add(t), m, v);
                    mx = _mm512_mask_max_ps(mx, m, mx, v);
                    t += L;
                }
                j += run;
                jh += 1;
                jw = 0;
            }
        }
        (Some((rh, rw, _)), Some(idx)) => {
            let (h, w) = (Lookup::new(rh), Lookup::new(rw));
            for (c, (ih, iw)) in idx.ih.iter().zip(&idx.iw).enumerate() {
                let m = tail_mask(bk - c * L);
                let sp = s.add(c * L);
                let sv = _mm512_maskz_loadu_ps(m, sp);
                let v = _mm512_add_ps(_mm512_add_ps(sv, h.get(ih)), w.get(iw));
                _mm512_mask_storeu_ps(sp, m, v);
                mx = _mm512_mask_max_ps(mx, m, mx, v);
            }
        }
        _ => {
            let mut t = 0;
            while t < bk {
                let m = tail_mask(bk - t);
                let v = _mm512_maskz_loadu_ps(m, s.add(t));
                mx = _mm512_mask_max_ps(mx, m, mx, v);
                t += L;
            }
        }
    }
    _mm512_reduce_max_ps(mx)
}

/// `s[j] += t[j]` for every key of the block; returns the maximum.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn add_row_and_max(s: *mut f32, t: &[f32]) -> f32 {
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut j = 0;
    while j < t.len() {
        let m = tail_mask(t.len() - j);
        let v = _mm512_add_ps(
            _mm512_maskz_loadu_ps(m, s.add(j)),
            _mm512_maskz_loadu_ps(m, t.as_ptr().add(j)),
        );
        _mm512_mask_storeu_ps(s.add(j), m, v);
        mx = _mm512_mask_max_ps(mx, m, mx, v);
        j += L;
    }
    _mm512_reduce_max_ps(mx)
}

/// `s[j] = exp(s[j] - m)` for `j < n`; returns the sum.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp_sub_sum(s: *mut f32, n: usize, m: f32) -> f32 {
    let mv = _mm512_set1_ps(m);
    let mut sum = _mm512_setzero_ps();
    let mut t = 0;
    while t < n {
        let msk = tail_mask(n - t);
        let v = _mm512_maskz_loadu_ps(msk, s.add(t));
        let e = exp512(_mm512_sub_ps(v, mv));
        _mm512_mask_storeu_ps(s.add(t), msk, e);
        sum = _mm512_mask_add_ps(sum, msk, sum, e);
        t += L;
    }
    _mm512_reduce_add_ps(sum)
}

/// `x[..n] *= a`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn scale_row(x: *mut f32, n: usize, a: f32) {
    let av = _mm512_set1_ps(a);
    let mut t = 0;
    while t < n {
        let m = tail_mask(n - t);
        let v = _mm512_maskz_loadu_ps(m, x.add(t));
        _mm512_mask_storeu_ps(x.add(t), m, _mm512_mul_ps(v, av));
        t += L;
    }
}

/// Shapes shared by all tasks of one call.
pub(super) struct Prep<'a> {
    pub(super) nq: usize,
    pub(super) nk: usize,
    pub(super) d: usize,
    pub(super) dv: usize,
    /// `d`, `dv` rounded up to 16.
    pub(super) dp: usize,
    pub(super) dvp: usize,
    pub(super) bias: Option<RelPosBias<'a>>,
    /// A whole `[heads, nq, nk]` bias table (forward only; exclusive with `bias`).
    pub(super) table: Option<BiasTable<'a>>,
}

impl<'a> Prep<'a> {
    pub(super) fn new(dims: AttnDims, bias: Option<RelPosBias<'a>>) -> Self {
        let AttnDims { nq, nk, d, dv, .. } = dims;
        let (dp, dvp) = (round_up(d, L), round_up(dv, L));
        Prep {
            nq,
            nk,
            d,
            dv,
            dp,
            dvp,
            bias,
            table: None,
        }
    }
    /// Keys `j0..j0+bk` of the bias-table row of query `i` of batch·head `b`.
    fn table_row(&self, b: usize, i: usize, j0: usize, bk: usize) -> Option<&'a [f32]> {
        self.table.map(|t| {
            let row = ((b % t.heads) * self.nq + i) * self.nk + j0;
            &t.table[row..row + bk]
        })
    }
    /// Bias lookup indices for keys `j0..j0+bk` (when the bias needs them).
    pub(super) fn bias_idx(&self, j0: usize, bk: usize) -> Option<BiasIdx> {
        self.bias
            .filter(|r| r.kw % L != 0)
            .map(|r| BiasIdx::new(j0, bk, r.kw))
    }
    /// `(rel_h row, rel_w row, kw)` of query `i` of head `b`.
    fn bias_row(&self, b: usize, i: usize) -> Option<(&'a [f32], &'a [f32], usize)> {
        self.bias.map(|r| {
            let row = b * self.nq + i;
            (
                &r.rel_h[row * r.kh..(row + 1) * r.kh],
                &r.rel_w[row * r.kw..(row + 1) * r.kw],
                r.kw,
            )
        })
    }
}

/// Forward of rows `q0..q0+rows` of head `b`: writes `o [rows, dv]` and `ls [rows]`. `kp` is the
/// head's K in panels, `vb` its V with rows `vs` apart (each at least `dvp` wide).
#[target_feature(enable = "avx512f")]
unsafe fn fwd_block(
    p: &Prep,
    kp: &[f32],
    (vb, vs): (&[f32], usize),
    b: usize,
    q0: usize,
    q: &HeadRows,
    scale: f32,
    o: &mut [f32],
    ls: &mut [f32],
) {
    let (nk, d, dv, dp, dvp) = (p.nk, p.d, p.dv, p.dp, p.dvp);
    let rows = ls.len();
    let rows_pad = round_up(rows, MA);
    let qs = pad_rows_with(rows, d, rows_pad, dp, scale, |i| q.row(b, q0 + i, d));
    let lds = BK_F.min(round_up(nk, L));
    // Scores: each block's rows are written by `scores` (all `npan·16` columns) before any read.
    let mut s = scratch_overwritten(rows_pad * lds);
    let mut acc = scratch(rows * dvp);
    let mut m = scratch_overwritten(rows);
    m.fill(f32::NEG_INFINITY);
    let mut l = scratch(rows);
    let mut j0 = 0;
    while j0 < nk {
        let bk = lds.min(nk - j0);
        let npan = bk.div_ceil(L);
        scores(
            rows_pad,
            d,
            qs.as_ptr(),
            dp,
            kp.as_ptr().add(j0 * d),
            npan,
            s.as_mut_ptr(),
            lds,
        );
        let idx = p.bias_idx(j0, bk);
        for i in 0..rows {
            let sr = s.as_mut_ptr().add(i * lds);
            let (m_new, alpha) = biased_max(p, sr, b, q0 + i, j0, bk, idx.as_ref(), m[i]);
            let sum = exp_sub_sum(sr, bk, m_new);
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
            if j0 > 0 {
                scale_row(acc.as_mut_ptr().add(i * dvp), dvp, alpha);
            }
        }
        mm_acc(
            rows,
            bk,
            dvp,
            s.as_ptr(),
            lds,
            1,
            vb.as_ptr().add(j0 * vs),
            vs,
            acc.as_mut_ptr(),
            dvp,
        );
        j0 += bk;
    }
    finish_rows(dv, dvp, &acc, &m, &l, o, ls);
}

/// Adds the bias of keys `j0..j0+bk` to the score row `sr` of query `i` of head `b` and returns
/// the new running maximum (from `m_old`) and the factor `e^(m_old - m_new)` that rescales what
/// was accumulated before.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn biased_max(
    p: &Prep,
    sr: *mut f32,
    b: usize,
    i: usize,
    j0: usize,
    bk: usize,
    idx: Option<&BiasIdx>,
    m_old: f32,
) -> (f32, f32) {
    let mx = match p.table_row(b, i, j0, bk) {
        Some(t) => add_row_and_max(sr, t),
        None => bias_and_max(sr, j0, bk, p.bias_row(b, i), idx),
    };
    let m_new = m_old.max(mx);
    let alpha = exp512(_mm512_set1_ps(m_old - m_new));
    (m_new, _mm512_cvtss_f32(alpha))
}

/// The end of a forward block: `o[i] = acc[i] / l[i]` (`acc` rows `dvp` apart) and
/// `ls[i] = m[i] + ln l[i]`.
pub(super) fn finish_rows(
    dv: usize,
    dvp: usize,
    acc: &[f32],
    m: &[f32],
    l: &[f32],
    o: &mut [f32],
    ls: &mut [f32],
) {
    for i in 0..ls.len() {
        let inv = 1.0 / l[i];
        for (x, &a) in o[i * dv..(i + 1) * dv].iter_mut().zip(&acc[i * dvp..]) {
            *x = a * inv;
        }
        ls[i] = m[i] + l[i].ln();
    }
}

/// Forward of a call whose operands [`Forward::run`] has checked (`bh·nq > 0`).
pub(super) fn attention_forward(f: Forward, out: &mut [f32], lse: &mut [f32]) {
    let mut p = Prep::new(f.dims, f.bias);
    p.table = f.table;
    let AttnDims { nq, dv, .. } = f.dims;
    let ([q, k, v], scale) = (f.rows, f.scale);
    let (nk, d, dvp) = (p.nk, p.d, p.dvp);
    let qb = q_block(nq);
    // A task is a run of up to FWD_GROUP query blocks of one head; it packs that head's K and V
    // once (cheap next to the blocks' arithmetic, and it stays in cache).
    forward_tasks(out, lse, nq, dv, qb).for_each(|(b, g0, o, l)| {
        let kp = pack_panels_with(nk, d, |j| k.row(b, j, d));
        // V is read in place when its rows need no padding (dv a multiple of 16), whatever their
        // stride (e.g. the v part of interleaved q/k/v rows); otherwise (or when its rows are
        // gathered) padded into a copy.
        let (vb, vs) = if dv == dvp && nk > 0 && v.gather.is_none() {
            let vsrc = &v.data[v.base(b)..];
            (
                Rows::Borrowed(&vsrc[..(nk - 1) * v.row_stride + dv]),
                v.row_stride,
            )
        } else {
            let rows = pad_rows_with(nk, dv, nk, dvp, 1.0, |j| v.row(b, j, dv));
            (Rows::Owned(rows), dvp)
        };
        for (t, (o, l)) in o.chunks_mut(qb * dv).zip(l.chunks_mut(qb)).enumerate() {
            // SAFETY: only called when AVX-512F is available (checked by the dispatcher).
            unsafe { fwd_block(&p, &kp, (&vb, vs), b, g0 + t * qb, &q, scale, o, l) }
        }
    });
}

/// One forward task per run of up to `FWD_GROUP` query blocks (of `qb` rows) of one head:
/// `(batch·head, first query row, its out rows, its lse rows)`.
pub(super) fn forward_tasks<'o>(
    out: &'o mut [f32],
    lse: &'o mut [f32],
    nq: usize,
    dv: usize,
    qb: usize,
) -> rayon::vec::IntoIter<(usize, usize, &'o mut [f32], &'o mut [f32])> {
    let gq = qb * FWD_GROUP;
    let tasks: Vec<(usize, usize, &mut [f32], &mut [f32])> = out
        .chunks_mut(nq * dv)
        .zip(lse.chunks_mut(nq))
        .enumerate()
        .flat_map(|(b, (o, l))| {
            o.chunks_mut(gq * dv)
                .zip(l.chunks_mut(gq))
                .enumerate()
                .map(move |(t, (o, l))| (b, t * gq, o, l))
        })
        .collect();
    tasks.into_par_iter()
}

/// `dst [n, w] = Σ parts [n, wp]` (columns `..w`), summed in the iterator's order.
fn sum_parts<'a>(dst: &mut [f32], w: usize, mut parts: impl Iterator<Item = &'a [f32]>, wp: usize) {
    let first = parts.next().expect("at least one group");
    for (o, s) in dst.chunks_exact_mut(w).zip(first.chunks_exact(wp)) {
        o.copy_from_slice(&s[..w]);
    }
    for p in parts {
        for (o, s) in dst.chunks_exact_mut(w).zip(p.chunks_exact(wp)) {
            o.iter_mut().zip(s).for_each(|(o, s)| *o += s);
        }
    }
}

/// `x [bh, nq, w]` → per head, per group, that group's rows.
fn split_groups(
    x: &mut [f32],
    bh: usize,
    nq: usize,
    w: usize,
    groups: usize,
    rows_of: impl Fn(usize) -> usize,
) -> Vec<Vec<&mut [f32]>> {
    let mut heads = Vec::with_capacity(bh);
    let mut rest = x;
    for _ in 0..bh {
        let (mut h, r) = rest.split_at_mut(nq * w);
        rest = r;
        let mut gs = Vec::with_capacity(groups);
        for g in 0..groups {
            let (a, r) = h.split_at_mut(rows_of(g) * w);
            gs.push(a);
            h = r;
        }
        heads.push(gs);
    }
    heads
}

/// Backward buffers of one group (a run of query blocks of one head).
struct GroupOut<'a> {
    dq: &'a mut [f32],
    drh: &'a mut [f32],
    drw: &'a mut [f32],
}

/// Accumulates `dS` of keys `j0..j0+bk` (row `ds`, `ds[j - j0]`) into `drh [kh]` (sums over
/// `jw`) and `drw [kw]` (sums over `jh`). Reads only: the row is viewed as a `kh × kw` matrix
/// (row stride `kw`) whose rows may be cut short at the block edges.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bias_grad_row(
    ds: *const f32,
    j0: usize,
    bk: usize,
    kw: usize,
    drh: &mut [f32],
    drw: &mut [f32],
) {
    let j1 = j0 + bk;
    let (h0, h1) = (j0 / kw, j1.div_ceil(kw));
    // Valid jw range of segment jh.
    let seg = |jh: usize| {
        let lo = j0.max(jh * kw) - jh * kw;
        let hi = j1.min((jh + 1) * kw) - jh * kw;
        (lo, hi)
    };
    // Lanes c..c+16 of segment jh that are in the block.
    let mask = |jh: usize, c: usize| -> __mmask16 {
        let (lo, hi) = seg(jh);
        if hi <= c || lo >= c + L {
            return 0;
        }
        let m = tail_mask(hi - c) as u32;
        let below = if lo > c { (1u32 << (lo - c)) - 1 } else { 0 };
        (m & !below) as __mmask16
    };
    // Masked-off lanes may lie outside the row; they are never accessed.
    let at = |jh: usize, c: usize| ds.wrapping_add(jh * kw + c).wrapping_sub(j0);
    let mut c = 0;
    while c < kw {
        let mut acc = _mm512_setzero_ps();
        for jh in h0..h1 {
            acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask(jh, c), at(jh, c)));
        }
        let m = tail_mask(kw - c);
        let g = drw.as_mut_ptr().add(c);
        _mm512_mask_storeu_ps(g, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, g), acc));
        c += L;
    }
    for jh in h0..h1 {
        let mut acc = _mm512_setzero_ps();
        let mut c = 0;
        while c < kw {
            acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask(jh, c), at(jh, c)));
            c += L;
        }
        drh[jh] += _mm512_reduce_add_ps(acc);
    }
}

/// Backward of query rows `q0..q0+rows` of head `b`, accumulating dK/dV into `dk [nk, dp]`,
/// `dv [nk, dvp]` and writing this block's dq/drel rows.
#[target_feature(enable = "avx512f")]
unsafe fn bwd_block(
    p: &Prep,
    h: &BwdPack,
    b: usize,
    q0: usize,
    rows: usize,
    t: &Inputs,
    dk: &mut [f32],
    dvacc: &mut [f32],
    g: &mut GroupOut,
    goff: usize,
) {
    let (nq, nk, d, dv, dp, dvp) = (p.nq, p.nk, p.d, p.dv, p.dp, p.dvp);
    let rows_pad = round_up(rows, MA);
    let r0 = b * nq + q0;
    let qs = pad_rows(
        &t.q[r0 * d..(r0 + rows) * d],
        rows,
        d,
        rows_pad,
        dp,
        t.scale,
    );
    let dos = pad_rows(
        &t.dout[r0 * dv..(r0 + rows) * dv],
        rows,
        dv,
        rows_pad,
        dvp,
        1.0,
    );
    let ls = &t.lse[r0..r0 + rows];
    let dsum: Vec<f32> = (0..rows)
        .map(|i| {
            let a = &t.dout[(r0 + i) * dv..(r0 + i + 1) * dv];
            let o = &t.out[(r0 + i) * dv..(r0 + i + 1) * dv];
            a.iter().zip(o).map(|(x, y)| x * y).sum()
        })
        .collect();
    let lds = BK_B.min(round_up(nk, L));
    let mut s = scratch(rows_pad * lds);
    let mut dps = scratch(rows_pad * lds);
    let mut dq = scratch(rows * dp);
    let (kp, vph, krh) = (&h.kp, &h.vp, &h.kr);
    let (kh, kw) = p.bias.map(|r| (r.kh, r.kw)).unwrap_or((0, 0));
    let drh = &mut g.drh[(q0 - goff) * kh..(q0 - goff + rows) * kh];
    let drw = &mut g.drw[(q0 - goff) * kw..(q0 - goff + rows) * kw];
    drh.fill(0.0);
    drw.fill(0.0);
    let mut j0 = 0;
    while j0 < nk {
        let bk = lds.min(nk - j0);
        let npan = bk.div_ceil(L);
        scores(
            rows_pad,
            d,
            qs.as_ptr(),
            dp,
            kp.as_ptr().add(j0 * d),
            npan,
            s.as_mut_ptr(),
            lds,
        );
        scores(
            rows_pad,
            dv,
            dos.as_ptr(),
            dvp,
            vph.as_ptr().add(j0 * dv),
            npan,
            dps.as_mut_ptr(),
            lds,
        );
        let idx = p.bias_idx(j0, bk);
        for i in 0..rows {
            let sr = s.as_mut_ptr().add(i * lds);
            let dr = dps.as_mut_ptr().add(i * lds);
            let br = p.bias_row(b, q0 + i);
            if br.is_some() {
                bias_and_max(sr, j0, bk, br, idx.as_ref());
            }
            let (lv, dd) = (_mm512_set1_ps(ls[i]), _mm512_set1_ps(dsum[i]));
            let mut c = 0;
            while c < bk {
                let m = tail_mask(bk - c);
                let pv = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sr.add(c)), lv));
                _mm512_mask_storeu_ps(sr.add(c), m, pv);
                let dpv = _mm512_maskz_loadu_ps(m, dr.add(c));
                _mm512_mask_storeu_ps(dr.add(c), m, _mm512_mul_ps(pv, _mm512_sub_ps(dpv, dd)));
                c += L;
            }
        }
        // Rel-pos gradients in a separate read-only pass over the finished dS block.
        if p.bias.is_some() {
            for i in 0..rows {
                bias_grad_row(
                    dps.as_ptr().add(i * lds),
                    j0,
                    bk,
                    kw,
                    &mut drh[i * kh..(i + 1) * kh],
                    &mut drw[i * kw..(i + 1) * kw],
                );
            }
        }
        // dV[j] += Σ_i P[i,j] dO[i];  dK[j] += Σ_i dS[i,j] (q[i]·scale);  dQ[i] += Σ_j dS[i,j] k[j]
        mm_acc(
            bk,
            rows,
            dvp,
            s.as_ptr(),
            1,
            lds,
            dos.as_ptr(),
            dvp,
            dvacc.as_mut_ptr().add(j0 * dvp),
            dvp,
        );
        mm_acc(
            bk,
            rows,
            dp,
            dps.as_ptr(),
            1,
            lds,
            qs.as_ptr(),
            dp,
            dk.as_mut_ptr().add(j0 * dp),
            dp,
        );
        mm_acc(
            rows,
            bk,
            dp,
            dps.as_ptr(),
            lds,
            1,
            krh.as_ptr().add(j0 * dp),
            dp,
            dq.as_mut_ptr(),
            dp,
        );
        j0 += bk;
    }
    let dqo = &mut g.dq[(q0 - goff) * d..(q0 - goff + rows) * d];
    for i in 0..rows {
        for (x, &a) in dqo[i * d..(i + 1) * d].iter_mut().zip(&dq[i * dp..]) {
            *x = a * t.scale;
        }
    }
}

/// One head's K and V in the layouts the backward reads: K and V in 16-key panels, K rows
/// padded to `dp` columns.
struct BwdPack<'a> {
    kp: Scratch,
    vp: Scratch,
    kr: Rows<'a>,
}

/// The read-only backward inputs.
struct Inputs<'a> {
    q: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
    scale: f32,
}

/// Gradients on arguments [`Backward::check`] accepted.
pub(super) fn attention_backward(args: Backward) {
    let p = Prep::new(args.dims, args.bias);
    let AttnDims { bh, nq, nk, d, .. } = args.dims;
    let (dvd, dp, dvp) = (p.dv, p.dp, p.dvp);
    let (kh, kw) = args.bias.map(|b| (b.kh, b.kw)).unwrap_or((0, 0));
    let (k, v, dq, dk, dv) = (args.k, args.v, args.dq, args.dk, args.dv);
    let mut empty = (Vec::new(), Vec::new());
    let (drh, drw) = match args.drel {
        Some(hw) => hw,
        None => (&mut empty.0[..], &mut empty.1[..]),
    };
    let inp = Inputs {
        q: args.q,
        out: args.out,
        lse: args.lse,
        dout: args.dout,
        scale: args.scale,
    };
    let qb = q_block(nq);
    let nqb = nq.div_ceil(qb);
    // Groups per head: a function of the shape only (never of the thread count), so the order in
    // which partial dK/dV are summed is fixed.
    let groups = nqb.min((32 / bh).max(1));
    // Query blocks [gb[g], gb[g+1]) form group g.
    let gb: Vec<usize> = (0..=groups).map(|g| g * nqb / groups).collect();
    let rows_of = |g: usize| (gb[g + 1] * qb).min(nq) - gb[g] * qb;
    let (dq_s, drh_s, drw_s) = (
        split_groups(dq, bh, nq, d, groups, rows_of),
        split_groups(drh, bh, nq, kh, groups, rows_of),
        split_groups(drw, bh, nq, kw, groups, rows_of),
    );
    dk.par_chunks_mut(nk * d)
        .zip(dv.par_chunks_mut(nk * dvd))
        .zip(dq_s.into_par_iter().zip(drh_s.into_par_iter().zip(drw_s)))
        .enumerate()
        .for_each(|(b, ((dkh, dvh), (dqg, (drhg, drwg))))| {
            let parts: Vec<(Scratch, Scratch)> = dqg
                .into_par_iter()
                .zip(drhg.into_par_iter().zip(drwg))
                .enumerate()
                .map(|(gi, (dq, (drh, drw)))| {
                    let mut g = GroupOut { dq, drh, drw };
                    let kh_ = &k[b * nk * d..(b + 1) * nk * d];
                    let pack = BwdPack {
                        kp: pack_panels(nk, d, kh_),
                        vp: pack_panels(nk, dvd, &v[b * nk * dvd..(b + 1) * nk * dvd]),
                        kr: padded_cols(kh_, d, dp),
                    };
                    let (mut pk, mut pv) = (scratch(nk * dp), scratch(nk * dvp));
                    let goff = gb[gi] * qb;
                    for t in gb[gi]..gb[gi + 1] {
                        let q0 = t * qb;
                        let rows = qb.min(nq - q0);
                        // SAFETY: only called when AVX-512F is available (checked by the dispatcher).
                        unsafe {
                            bwd_block(&p, &pack, b, q0, rows, &inp, &mut pk, &mut pv, &mut g, goff)
                        };
                    }
                    (pk, pv)
                })
                .collect();
            // Fixed-order sum of the group partials.
            sum_parts(dkh, d, parts.iter().map(|p| &p.0[..]), dp);
            sum_parts(dvh, dvd, parts.iter().map(|p| &p.1[..]), dvp);
        });
    let _ = &mut empty;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_panels_transposes_keys_into_zero_padded_panels() {
        if !crate::cpu::features().avx512f {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        for n in [1, 5, 16, 17, 49, 196] {
            for w in [1, 8, 16, 20, 32, 40] {
                for stride in [w, w + 3, 3 * w] {
                    let src: Vec<f32> = (0..(n - 1) * stride + w).map(|i| i as f32 + 0.5).collect();
                    // A stale pooled buffer full of NaN: every element must be overwritten.
                    drop(Scratch(vec![f32::NAN; 1 << 14]));
                    let got = pack_panels_rows(n, w, &src, stride);
                    assert_eq!(got.len(), n.div_ceil(L) * w * L);
                    for (i, &g) in got.iter().enumerate() {
                        let (p, c, l) = (i / (w * L), i / L % w, i % L);
                        let j = p * L + l;
                        let want = if j < n { src[j * stride + c] } else { 0.0 };
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "n {n} w {w} stride {stride} at {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp512_matches_std() {
        if !crate::cpu::features().avx512f {
            return;
        }
        let xs: Vec<f32> = (0..4000).map(|i| -87.0 + i as f32 * 0.04371).collect();
        for c in xs.chunks(16) {
            let mut buf = [0.0f32; 16];
            buf[..c.len()].copy_from_slice(c);
            // SAFETY: AVX-512F checked above.
            let got: [f32; 16] =
                unsafe { std::mem::transmute(exp512(_mm512_loadu_ps(buf.as_ptr()))) };
            for (g, &x) in got.iter().zip(c) {
                let want = (x as f64).exp();
                assert!(
                    ((*g as f64) - want).abs() <= 4e-7 * want,
                    "exp({x}) = {g}, want {want}"
                );
            }
        }
        // SAFETY: AVX-512F checked above.
        let z: [f32; 16] =
            unsafe { std::mem::transmute(exp512(_mm512_set1_ps(f32::NEG_INFINITY))) };
        assert!(z[0] >= 0.0 && z[0] < 1e-37);
    }
}
