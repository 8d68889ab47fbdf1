//! SAM's decomposed relative-position terms (`add_decomposed_rel_pos` in segment_anything's
//! `image_encoder.py`), before they are added to the attention scores:
//!
//! - q `[maps, h, w, c]` (`maps` = batch × heads, one row of `c` per token `(y, x)`),
//!   `rh [h, kh, c]` and `rw [w, kw, c]` (`get_rel_pos` for the query and key grids);
//! - `rel_h[m, y, x, k] = Σ_c q[m, y, x, c]·rh[y, k, c]`, written as `[maps, h·w, kh]`;
//! - `rel_w[m, y, x, k] = Σ_c q[m, y, x, c]·rw[x, k, c]`, written as `[maps, h·w, kw]`.
//!
//! Upstream computes them with two einsums, which as batched matrix products need q permuted
//! twice (two copies of q) and their results permuted back. Here each output row is a product
//! of one q row with a table, `[c] · [c, k]`: the tables are transposed once (k contiguous,
//! padded to whole vectors of [`LANES`]), and four or eight rows are multiplied at a time so
//! that as many independent accumulator chains keep the FMA units busy. Outputs are
//! overwritten, never read. `kh` and `kw` are at least 1 unless there are no tokens.
//! Each output element is summed in the order `c = 0, 1, …` with fused multiply-adds by one
//! thread, so results do not depend on the thread count or the instruction set chosen.

use rayon::prelude::*;

/// Vector width (f32 lanes of AVX-512) the tables are padded to.
pub const LANES: usize = 16;
/// Vectors of one output row computed per pass (4 × 16 = 64 keys: SAM's global attention).
const MAX_VECS: usize = 4;
/// Rows multiplied together, each with its own accumulators (twice as many for tables of one
/// or two vectors).
const ROWS: usize = 4;

/// Sizes: q `[maps, h, w, c]`, `rh [h, kh, c]`, `rw [w, kw, c]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelPosDims {
    pub maps: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
}

impl RelPosDims {
    fn check(&self, q: usize, rh: usize, rw: usize, out_h: usize, out_w: usize) {
        let RelPosDims {
            maps,
            h,
            w,
            c,
            kh,
            kw,
        } = *self;
        assert_eq!(q, maps * h * w * c, "rel_pos: q length for {self:?}");
        assert_eq!(rh, h * kh * c, "rel_pos: rh length for {self:?}");
        assert_eq!(rw, w * kw * c, "rel_pos: rw length for {self:?}");
        assert_eq!(
            out_h,
            maps * h * w * kh,
            "rel_pos: rel_h length for {self:?}"
        );
        assert_eq!(
            out_w,
            maps * h * w * kw,
            "rel_pos: rel_w length for {self:?}"
        );
    }
}

/// `[n, k, c]` tables → `[n, c, kp]` with `kp = k` rounded up to whole vectors, zero-padded.
fn transposed_padded(t: &[f32], n: usize, k: usize, c: usize) -> (Vec<f32>, usize) {
    let kp = k.div_ceil(LANES) * LANES;
    let mut out = vec![0.0f32; n * c * kp];
    for i in 0..n {
        for j in 0..k {
            for ci in 0..c {
                out[(i * c + ci) * kp + j] = t[(i * k + j) * c + ci];
            }
        }
    }
    (out, kp)
}

/// The implementations of [`decomposed_rel_pos_with`]. Both sum each element in the same order
/// with fused multiply-adds, so their results are identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelPosIsa {
    /// Register-tiled AVX-512: four rows × up to four vectors of 16 keys per pass.
    Avx512,
    /// The same loops in scalar code (`f32::mul_add`): for tests and CPUs without AVX-512,
    /// where it is slow (a library call per multiply-add without hardware FMA), so the CPU
    /// backend composes the terms from matmuls there instead ([`fast_available`]).
    Portable,
}

impl RelPosIsa {
    /// Every one this CPU runs, best first.
    pub fn available() -> Vec<RelPosIsa> {
        let mut v = Vec::new();
        if fast_available() {
            v.push(RelPosIsa::Avx512);
        }
        v.push(RelPosIsa::Portable);
        v
    }
}

/// Whether this CPU runs the AVX-512 kernel ([`decomposed_rel_pos`] is then worth calling).
pub fn fast_available() -> bool {
    cfg!(target_arch = "x86_64") && crate::cpu::features().avx512f
}

/// Computes `rel_h` and `rel_w` (see the module doc), in parallel over `(map, y)` row groups,
/// with the best implementation this CPU runs.
pub fn decomposed_rel_pos(
    d: RelPosDims,
    q: &[f32],
    rh: &[f32],
    rw: &[f32],
    rel_h: &mut [f32],
    rel_w: &mut [f32],
) {
    decomposed_rel_pos_with(RelPosIsa::available()[0], d, q, rh, rw, rel_h, rel_w)
}

/// [`decomposed_rel_pos`] with the implementation `isa`. Panics if this CPU cannot run it.
pub fn decomposed_rel_pos_with(
    isa: RelPosIsa,
    d: RelPosDims,
    q: &[f32],
    rh: &[f32],
    rw: &[f32],
    rel_h: &mut [f32],
    rel_w: &mut [f32],
) {
    assert!(
        RelPosIsa::available().contains(&isa),
        "rel_pos: this CPU cannot run {isa:?}"
    );
    d.check(q.len(), rh.len(), rw.len(), rel_h.len(), rel_w.len());
    let RelPosDims {
        h, w, c, kh, kw, ..
    } = d;
    if d.maps * h * w == 0 || c == 0 {
        rel_h.fill(0.0);
        rel_w.fill(0.0);
        return;
    }
    assert!(kh > 0 && kw > 0, "rel_pos: no keys in {d:?}");
    let (th, kph) = transposed_padded(rh, h, kh, c);
    let (tw, kpw) = transposed_padded(rw, w, kw, c);
    let groups = q.par_chunks(w * c).zip(
        rel_h
            .par_chunks_mut(w * kh)
            .zip(rel_w.par_chunks_mut(w * kw)),
    );
    groups.enumerate().for_each(|(g, (qg, (oh, ow)))| {
        let th_y = &th[(g % h) * c * kph..(g % h + 1) * c * kph];
        let table_h = Tables {
            data: th_y,
            stride: 0,
            kp: kph,
            k: kh,
        };
        let table_w = Tables {
            data: &tw,
            stride: c * kpw,
            kp: kpw,
            k: kw,
        };
        products(isa, qg, c, table_h, oh);
        products(isa, qg, c, table_w, ow);
    });
}

/// The transposed tables of one product: row `x` uses `data[x·stride..][..c·kp]` (`stride` 0:
/// one table for all rows), `[c, kp]`, of which the first `k` columns are kept.
#[derive(Clone, Copy)]
struct Tables<'a> {
    data: &'a [f32],
    stride: usize,
    kp: usize,
    k: usize,
}

/// `out[x, j] = Σ_c q[x, c]·table_x[c, j]` for the rows `x` of one group (`q` `[rows, c]` and
/// `out` `[rows, k]` dense), [`ROWS`] rows and up to [`MAX_VECS`] vectors at a time.
fn products(isa: RelPosIsa, q: &[f32], c: usize, t: Tables, out: &mut [f32]) {
    let (rows, k) = (q.len() / c, t.k);
    assert!(out.len() == rows * k && t.data.len() >= (rows - 1) * t.stride + c * t.kp);
    // Column blocks outside, rows inside: each pass covers up to MAX_VECS vectors of keys.
    let mut kb = 0;
    while kb < k {
        let vecs = ((t.kp - kb) / LANES).min(MAX_VECS);
        let n = (k - kb).min(vecs * LANES);
        let full = match isa {
            #[cfg(target_arch = "x86_64")]
            RelPosIsa::Avx512 => avx512::rows_for(vecs),
            _ => 1,
        };
        let mut x = 0;
        while x < rows {
            // Full passes, then one of ROWS if that many are left, then single rows.
            let r = [full, ROWS, 1]
                .into_iter()
                .find(|&r| r <= full && rows - x >= r)
                .unwrap_or(1);
            let b = Block {
                q: &q[x * c..],
                c,
                table: &t.data[x * t.stride..],
                stride: t.stride,
                kp: t.kp,
                kb,
                n,
                out: &mut out[x * k + kb..],
                k,
            };
            match isa {
                // SAFETY: `decomposed_rel_pos_with` checked that the CPU has AVX-512F; the
                // assert above and the loop bounds keep every access of `b` in its slices.
                #[cfg(target_arch = "x86_64")]
                RelPosIsa::Avx512 => unsafe { avx512::block(b, r, vecs) },
                _ => portable_block(b, r),
            }
            x += r;
        }
        kb += vecs * LANES;
    }
}

/// One pass of [`products`]: `r` rows from `q` (row `i` at `q[i·c..]`, its table at
/// `table[i·stride..]`), output columns `kb..kb + n` (`out` starts at column `kb` of the first
/// row; rows `k` apart).
struct Block<'a> {
    q: &'a [f32],
    c: usize,
    table: &'a [f32],
    stride: usize,
    kp: usize,
    kb: usize,
    n: usize,
    out: &'a mut [f32],
    k: usize,
}

fn portable_block(b: Block, r: usize) {
    for i in 0..r {
        for j in 0..b.n {
            let mut acc = 0.0f32;
            for ci in 0..b.c {
                let t = b.table[i * b.stride + ci * b.kp + b.kb + j];
                acc = b.q[i * b.c + ci].mul_add(t, acc);
            }
            b.out[i * b.k + j] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Block, LANES, MAX_VECS, ROWS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F; `b`'s slices hold `r` rows (1, [`ROWS`], or `rows_for(vecs)`) of
    /// `c` (q), of tables `[c, kp]` from column `kb` on with `vecs` whole vectors, and `r`
    /// output rows of `n` columns.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(b: Block, r: usize, vecs: usize) {
        match (r, b.stride == 0, vecs) {
            (1, _, 1) => tile::<1, 1, false>(b),
            (1, _, 2) => tile::<1, 2, false>(b),
            (1, _, 3) => tile::<1, 3, false>(b),
            (1, _, _) => tile::<1, MAX_VECS, false>(b),
            (ROWS, true, 1) => tile::<ROWS, 1, true>(b),
            (ROWS, true, 2) => tile::<ROWS, 2, true>(b),
            (ROWS, true, 3) => tile::<ROWS, 3, true>(b),
            (ROWS, true, _) => tile::<ROWS, MAX_VECS, true>(b),
            (ROWS, false, 1) => tile::<ROWS, 1, false>(b),
            (ROWS, false, 2) => tile::<ROWS, 2, false>(b),
            (ROWS, false, 3) => tile::<ROWS, 3, false>(b),
            (ROWS, false, _) => tile::<ROWS, MAX_VECS, false>(b),
            (_, true, 1) => tile::<{ 2 * ROWS }, 1, true>(b),
            (_, true, _) => tile::<{ 2 * ROWS }, 2, true>(b),
            (_, false, 1) => tile::<{ 2 * ROWS }, 1, false>(b),
            (_, false, _) => tile::<{ 2 * ROWS }, 2, false>(b),
        }
    }

    /// Rows a pass of `vecs` vectors takes (more rows for narrow tables: 16 accumulators).
    pub(super) fn rows_for(vecs: usize) -> usize {
        if vecs <= 2 {
            2 * ROWS
        } else {
            ROWS
        }
    }

    /// `R × V` accumulators in registers over the whole `c` axis, then one (masked) store each.
    /// `SHARED`: every row reads the same table (`stride` 0), loaded once per vector.
    #[inline(always)]
    unsafe fn tile<const R: usize, const V: usize, const SHARED: bool>(b: Block) {
        let (q, t, o) = (b.q.as_ptr(), b.table.as_ptr(), b.out.as_mut_ptr());
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for ci in 0..b.c {
            let t0 = t.add(ci * b.kp + b.kb);
            let shared: [__m512; V] = if SHARED {
                std::array::from_fn(|v| _mm512_loadu_ps(t0.add(v * LANES)))
            } else {
                [_mm512_setzero_ps(); V]
            };
            for (i, row) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*q.add(i * b.c + ci));
                let tr = t0.add(i * b.stride);
                for (v, a) in row.iter_mut().enumerate() {
                    let tv = if SHARED {
                        shared[v]
                    } else {
                        _mm512_loadu_ps(tr.add(v * LANES))
                    };
                    *a = _mm512_fmadd_ps(qv, tv, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                let left = b.n.saturating_sub(v * LANES).min(LANES);
                let mask: __mmask16 = ((1u32 << left) - 1) as u16;
                _mm512_mask_storeu_ps(o.add(i * b.k + v * LANES), mask, *a);
            }
        }
    }
}

/// Plain loops, accumulated in f64: the oracle for [`decomposed_rel_pos`].
pub mod reference {
    use super::RelPosDims;

    pub fn decomposed_rel_pos(
        d: RelPosDims,
        q: &[f32],
        rh: &[f32],
        rw: &[f32],
        rel_h: &mut [f32],
        rel_w: &mut [f32],
    ) {
        d.check(q.len(), rh.len(), rw.len(), rel_h.len(), rel_w.len());
        let RelPosDims {
            maps,
            h,
            w,
            c,
            kh,
            kw,
        } = d;
        let dot = |a: &[f32], b: &[f32]| -> f32 {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>() as f32
        };
        for m in 0..maps {
            for y in 0..h {
                for x in 0..w {
                    let t = (m * h + y) * w + x;
                    let qr = &q[t * c..(t + 1) * c];
                    for k in 0..kh {
                        rel_h[t * kh + k] = dot(qr, &rh[(y * kh + k) * c..(y * kh + k + 1) * c]);
                    }
                    for k in 0..kw {
                        rel_w[t * kw + k] = dot(qr, &rw[(x * kw + k) * c..(x * kw + k + 1) * c]);
                    }
                }
            }
        }
    }
}
