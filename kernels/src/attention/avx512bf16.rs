//! AVX512-BF16 forward attention: the tiling of [`super::avx512`] with both products on
//! `vdpbf16ps` (pairs of bf16 multiplied, accumulated in f32), as PyTorch's bf16
//! `scaled_dot_product_attention` on the CPU does them:
//!
//! 1. `q·scale`, k and v are rounded to bf16 (round to nearest even, [`super::round_bf16`]);
//!    q rows and K are packed as pairs along `d` (K in 16-key panels `[nk/16][d/2][16]`), V as
//!    pairs of consecutive keys `[nk/2][dv]`, the operand format of `vdpbf16ps`;
//! 2. `S = q·Kᵀ` in f32, the bias added and one online-softmax step taken in f32 (shared with
//!    the f32 kernel: [`super::avx512::biased_max`]);
//! 3. the probabilities `exp(s − m)` are summed in f32 and rounded to bf16 (relative to the
//!    running maximum `m` of the row) for `O = α·O + P·V`, accumulated in f32.

#![allow(clippy::too_many_arguments)]

use super::avx512::{
    biased_max, exp512, finish_rows, forward_tasks, panel_rows, q_block, round_up, scale_row,
    scratch, scratch_overwritten, tail_mask, tile_entry_points, transpose16, Prep, Scratch, Unit,
    BK_F, FWD_GROUP, L, MA,
};
use super::{AttnDims, Forward};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// A scratch buffer of 32-bit units seen as bf16 pairs (the pool holds f32 buffers of the same
/// size and alignment).
fn units(s: &Scratch) -> *const Bf16Pair {
    s.as_ptr() as *const Bf16Pair
}

fn units_mut(s: &mut Scratch) -> *mut Bf16Pair {
    s.as_mut_ptr() as *mut Bf16Pair
}

/// `dst[u] = (bf16(src[2u]·scale), bf16(src[2u+1]·scale))` for `u < ⌈n/2⌉` (an odd `n` pairs
/// its last value with 0).
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn round_pairs(src: *const f32, n: usize, scale: f32, dst: *mut Bf16Pair) {
    let sv = _mm512_set1_ps(scale);
    let mut t = 0;
    while t < n {
        let lo = _mm512_maskz_loadu_ps(tail_mask(n - t), src.add(t));
        // Masked-off lanes are never read, even past the end of `src`.
        let hi = _mm512_maskz_loadu_ps(tail_mask(n.saturating_sub(t + L)), src.wrapping_add(t + L));
        let r = _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, sv), _mm512_mul_ps(lo, sv));
        let m = tail_mask((n - t).div_ceil(2));
        _mm512_mask_storeu_epi32(
            dst.add(t / 2) as *mut i32,
            m,
            std::mem::transmute::<__m512bh, __m512i>(r),
        );
        t += 2 * L;
    }
}

/// One head's K (`n` rows of `d`, `row(j)` key `j`'s) as bf16 pairs in 16-key panels
/// `[⌈n/16⌉][⌈d/2⌉][16]` (zero-padded keys). Per 16 keys and 16 units, each key's 32 values are
/// rounded into one vector of pairs and the 16×16 block is transposed in registers, so a unit's
/// 16 keys are stored with one vector (one scalar store per key and unit before; on MedSAM2's
/// int8 encoder, whose Hiera windows have few keys per query block, this took the packing from
/// 4.3 % to 2.4 % of the samples).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_k<'r>(n: usize, d: usize, row: impl Fn(usize) -> &'r [f32]) -> Scratch {
    let du = d.div_ceil(2);
    // Every unit is written below, padded keys included (as zeros).
    let mut out = scratch_overwritten(n.div_ceil(L) * du * L);
    let op = out.as_mut_ptr();
    for p in 0..n.div_ceil(L) {
        let j0 = p * L;
        let keys = L.min(n - j0);
        // The loads below read values < d of each row through raw pointers.
        let rows = panel_rows(j0, keys, d, &row);
        for u0 in (0..du).step_by(L) {
            let mut t = [_mm512_setzero_ps(); L];
            for (r, tr) in t.iter_mut().enumerate().take(keys) {
                *tr = pairs16(rows[r], 2 * u0, d);
            }
            transpose16(&mut t);
            for (c, tc) in t.iter().enumerate().take(L.min(du - u0)) {
                _mm512_storeu_ps(op.add((p * du + u0 + c) * L), *tc);
            }
        }
    }
    out
}

/// Values `k0..k0 + 32` of a row of `d` (zeros past `d`) as 16 bf16 pairs (rounded to nearest
/// even, the first of each pair in the low half), seen as f32 lanes for the transpose.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn pairs16(row: *const f32, k0: usize, d: usize) -> __m512 {
    let lo = _mm512_maskz_loadu_ps(tail_mask(d - k0), row.add(k0));
    // Masked-off lanes are never read, even past the end of the row.
    let hi = _mm512_maskz_loadu_ps(
        tail_mask(d.saturating_sub(k0 + L)),
        row.wrapping_add(k0 + L),
    );
    std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(hi, lo))
}

/// One head's V (`n` rows of `dv`, `row(j)` key `j`'s) as bf16 pairs of consecutive keys,
/// `[⌈n/2⌉][dvp]`: unit `(t, c)` holds `v[2t, c]` (low half) and `v[2t+1, c]` (0 past the end).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_v<'r>(n: usize, dv: usize, dvp: usize, row: impl Fn(usize) -> &'r [f32]) -> Scratch {
    let mut out = scratch(n.div_ceil(2) * dvp);
    let o = units_mut(&mut out);
    for t in 0..n.div_ceil(2) {
        let (lo_row, hi_row) = (row(2 * t), (2 * t + 1 < n).then(|| row(2 * t + 1)));
        let mut c = 0;
        while c < dv {
            let lo = bf16_lanes(Some(lo_row), dv, c);
            let hi = bf16_lanes(hi_row, dv, c);
            let pair = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
            _mm512_storeu_si512(o.add(t * dvp + c) as *mut _, pair);
            c += L;
        }
    }
    out
}

/// `row[c..c+16]` (zeros past `dv`, or for no row) rounded to bf16, one value in the low half of
/// each 32-bit lane.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn bf16_lanes(row: Option<&[f32]>, dv: usize, c: usize) -> __m512i {
    let Some(row) = row else {
        return _mm512_setzero_si512();
    };
    let row = &row[..dv]; // the masked load reads values c..min(c + 16, dv)
    let x = _mm512_maskz_loadu_ps(tail_mask(dv - c), row.as_ptr().add(c));
    _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
        _mm512_cvtneps_pbh(x),
    ))
}

/// Two bf16 values in 32 bits (the first in the low half): the product unit of `vdpbf16ps`.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Bf16Pair(u32);

impl Unit for Bf16Pair {
    const PER_UNIT: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const Self) -> __m512 {
        _mm512_castsi512_ps(_mm512_loadu_si512(p as *const _))
    }
    #[inline(always)]
    unsafe fn splat(p: *const Self) -> __m512 {
        _mm512_castsi512_ps(_mm512_set1_epi32((*p).0 as i32))
    }
    #[inline(always)]
    unsafe fn madd(acc: __m512, a: __m512, b: __m512) -> __m512 {
        let bf16 = |x: __m512| std::mem::transmute::<__m512, __m512bh>(x);
        _mm512_dpbf16_ps(acc, bf16(a), bf16(b))
    }
}

tile_entry_points!(Bf16Pair, #[target_feature(enable = "avx512f,avx512bf16")]);

/// `p[u] = bf16 pairs of e^(s[j] − m)` for `j < n` (0 past `n`); returns the f32 sum of the
/// unrounded values, which is what the softmax divides by.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn exp_sub_sum_bf16(s: *const f32, n: usize, m: f32, p: *mut Bf16Pair) -> f32 {
    let mv = _mm512_set1_ps(m);
    let mut sum = _mm512_setzero_ps();
    let mut t = 0;
    while t < n {
        let (m0, m1) = (tail_mask(n - t), tail_mask(n.saturating_sub(t + L)));
        let e0 = _mm512_maskz_mov_ps(
            m0,
            exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m0, s.add(t)), mv)),
        );
        let e1 = _mm512_maskz_mov_ps(
            m1,
            exp512(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(m1, s.wrapping_add(t + L)),
                mv,
            )),
        );
        sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
        let r = _mm512_cvtne2ps_pbh(e1, e0);
        let mu = tail_mask((n - t).div_ceil(2));
        _mm512_mask_storeu_epi32(
            p.add(t / 2) as *mut i32,
            mu,
            std::mem::transmute::<__m512bh, __m512i>(r),
        );
        t += 2 * L;
    }
    _mm512_reduce_add_ps(sum)
}

/// Forward of rows `q0..q0+rows` of head `b`: writes `o [rows, dv]` and `ls [rows]`. `kp` is the
/// head's K from [`pack_k`], `vp` its V from [`pack_v`].
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn fwd_block(
    p: &Prep,
    kp: &Scratch,
    vp: &Scratch,
    b: usize,
    q0: usize,
    q: &super::HeadRows,
    scale: f32,
    o: &mut [f32],
    ls: &mut [f32],
) {
    let (nk, d, dv, dvp) = (p.nk, p.d, p.dv, p.dvp);
    let du = d.div_ceil(2);
    let rows = ls.len();
    let rows_pad = round_up(rows, MA);
    let mut qs = scratch(rows_pad * du);
    let qo = units_mut(&mut qs);
    for i in 0..rows {
        round_pairs(q.row(b, q0 + i, d).as_ptr(), d, scale, qo.add(i * du));
    }
    // Key blocks start at multiples of 16, so each is a whole number of K panels and V pairs.
    let lds = BK_F.min(round_up(nk, L));
    let lpu = lds / 2;
    let mut s = scratch(rows_pad * lds);
    let mut pb = scratch(rows * lpu);
    let mut acc = scratch(rows * dvp);
    let mut m = scratch(rows);
    m.fill(f32::NEG_INFINITY);
    let mut l = scratch(rows);
    let (kp, vp, pu) = (units(kp), units(vp), units_mut(&mut pb));
    let mut j0 = 0;
    while j0 < nk {
        let bk = lds.min(nk - j0);
        scores(
            rows_pad,
            du,
            units(&qs),
            du,
            kp.add(j0 * du),
            bk.div_ceil(L),
            s.as_mut_ptr(),
            lds,
        );
        let idx = p.bias_idx(j0, bk);
        for i in 0..rows {
            let sr = s.as_mut_ptr().add(i * lds);
            let (m_new, alpha) = biased_max(p, sr, b, q0 + i, j0, bk, idx.as_ref(), m[i]);
            let sum = exp_sub_sum_bf16(sr, bk, m_new, pu.add(i * lpu));
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
            if j0 > 0 {
                scale_row(acc.as_mut_ptr().add(i * dvp), dvp, alpha);
            }
        }
        mm_acc(
            rows,
            bk.div_ceil(2),
            dvp,
            pu,
            lpu,
            1,
            vp.add(j0 / 2 * dvp),
            dvp,
            acc.as_mut_ptr(),
            dvp,
        );
        j0 += bk;
    }
    finish_rows(dv, dvp, &acc, &m, &l, o, ls);
}

/// Forward of a call whose operands [`Forward::run`] has checked (`bh·nq > 0`); the CPU has
/// AVX512-BF16.
pub(super) fn attention_forward(f: Forward, out: &mut [f32], lse: &mut [f32]) {
    let mut p = Prep::new(f.dims, f.bias);
    p.table = f.table;
    let AttnDims { nq, dv, .. } = f.dims;
    let ([q, k, v], scale) = (f.rows, f.scale);
    let (nk, d, dvp) = (p.nk, p.d, p.dvp);
    let qb = q_block(nq);
    // SAFETY (here and below): the dispatcher only comes here when AVX512-BF16 is available.
    let pack = |b: usize| unsafe {
        (
            pack_k(nk, d, |j| k.row(b, j, d)),
            pack_v(nk, dv, dvp, |j| v.row(b, j, dv)),
        )
    };
    // A head split over several tasks (global attention) is packed once for all of them.
    let shared: Option<Vec<(Scratch, Scratch)>> =
        (nq > qb * FWD_GROUP).then(|| (0..f.dims.bh).into_par_iter().map(pack).collect());
    forward_tasks(out, lse, nq, dv, qb).for_each(|(b, g0, o, l)| {
        let own;
        let (kp, vp) = match &shared {
            Some(s) => (&s[b].0, &s[b].1),
            None => {
                own = pack(b);
                (&own.0, &own.1)
            }
        };
        for (t, (o, l)) in o.chunks_mut(qb * dv).zip(l.chunks_mut(qb)).enumerate() {
            unsafe { fwd_block(&p, kp, vp, b, g0 + t * qb, &q, scale, o, l) }
        }
    });
}
