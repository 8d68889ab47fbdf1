//! Portable tiled attention (no explicit SIMD; auto-vectorised through `simd_dispatch`), used when
//! AVX-512 is unavailable. Work is split over (batch·head, block of `BQ` queries). K and V are copied
//! once into transposed, zero-padded `[d, nk_pad]` panels so a score tile `BQ × BK` is a sequence of
//! broadcast-FMA rank-1 updates held in registers (4 query rows × 64 keys).

#![allow(clippy::needless_range_loop)]

use super::{round_bf16, AttnDims, Backward, Forward, RelPosBias};
use crate::activation::simd::{dot_f32, exp_f32, max_f32, simd_dispatch, sum_f32};
use rayon::prelude::*;

/// Queries per task.
const BQ: usize = 64;
/// Keys per tile (width of the register-blocked score tile).
const BK: usize = 64;
/// Query rows per register block.
const RB: usize = 4;

/// `src [bh, n, d]` → `[bh, d, npad]`, zero-padded columns `n..npad`.
fn transpose_pad(bh: usize, n: usize, d: usize, npad: usize, src: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0f32; bh * d * npad];
    if d == 0 {
        return t;
    }
    t.par_chunks_mut(d * npad)
        .zip(src.par_chunks(n * d))
        .for_each(|(t, s)| {
            for (j, row) in s.chunks_exact(d).enumerate() {
                for (dd, &x) in row.iter().enumerate() {
                    t[dd * npad + j] = x;
                }
            }
        });
    t
}

/// Register-blocked update of a `W`-column slab: for `r < rows`,
/// `out[r*ldo + col0 ..][..W] += Σ_{t<inner} coef[r*cs_r + t*cs_t] · x[t*ldx + col0 ..][..W]`.
/// RB rows × W columns of `out` stay in registers (16 AVX-512 vectors for W = 64) while `t` runs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn slab<const W: usize>(
    rows: usize,
    inner: usize,
    coef: &[f32],
    cs_r: usize,
    cs_t: usize,
    x: &[f32],
    ldx: usize,
    out: &mut [f32],
    ldo: usize,
    col0: usize,
) {
    // Full RB-row blocks. All indices into `acc` are compile-time constants after unrolling, so
    // the accumulators live in registers (a dynamic index would force them onto the stack).
    let mut i = 0;
    while i + RB <= rows {
        let mut acc = [[0.0f32; W]; RB];
        for t in 0..inner {
            let xv: &[f32; W] = x[t * ldx + col0..t * ldx + col0 + W].try_into().unwrap();
            for r in 0..RB {
                let c = coef[(i + r) * cs_r + t * cs_t];
                for j in 0..W {
                    acc[r][j] = c.mul_add(xv[j], acc[r][j]);
                }
            }
        }
        for r in 0..RB {
            let o = &mut out[(i + r) * ldo + col0..(i + r) * ldo + col0 + W];
            o.iter_mut().zip(&acc[r]).for_each(|(o, a)| *o += a);
        }
        i += RB;
    }
    // Remaining rows one at a time.
    while i < rows {
        let mut acc = [0.0f32; W];
        for t in 0..inner {
            let xv: &[f32; W] = x[t * ldx + col0..t * ldx + col0 + W].try_into().unwrap();
            let c = coef[i * cs_r + t * cs_t];
            for j in 0..W {
                acc[j] = c.mul_add(xv[j], acc[j]);
            }
        }
        let o = &mut out[i * ldo + col0..i * ldo + col0 + W];
        o.iter_mut().zip(&acc).for_each(|(o, a)| *o += a);
        i += 1;
    }
}

simd_dispatch! {
    /// `out[r*ldo + c] += Σ_{t<inner} coef[r*cs_r + t*cs_t] · x[t*ldx + c]` for `r < rows`, `c < w`:
    /// a small GEMM whose left operand is addressed through strides (so Pᵀ/dSᵀ need no copy).
    #[allow(clippy::too_many_arguments)]
    fn tile_mm(rows: usize, inner: usize, w: usize, coef: &[f32], cs_r: usize, cs_t: usize, x: &[f32], ldx: usize, out: &mut [f32], ldo: usize) {
        let mut c0 = 0;
        while w - c0 >= 64 {
            slab::<64>(rows, inner, coef, cs_r, cs_t, x, ldx, out, ldo, c0);
            c0 += 64;
        }
        if w - c0 >= 32 {
            slab::<32>(rows, inner, coef, cs_r, cs_t, x, ldx, out, ldo, c0);
            c0 += 32;
        }
        if w - c0 >= 16 {
            slab::<16>(rows, inner, coef, cs_r, cs_t, x, ldx, out, ldo, c0);
            c0 += 16;
        }
        if w - c0 >= 8 {
            slab::<8>(rows, inner, coef, cs_r, cs_t, x, ldx, out, ldo, c0);
            c0 += 8;
        }
        for c in c0..w {
            for r in 0..rows {
                let mut a = out[r * ldo + c];
                for t in 0..inner {
                    a = coef[r * cs_r + t * cs_t].mul_add(x[t * ldx + c], a);
                }
                out[r * ldo + c] = a;
            }
        }
    }
}

/// `s[i*BK + j] = Σ_c a[i*d + c] · bt[c*ld + j]` for `i < rows` and `j < BK` (overwrites).
fn tile_abt(rows: usize, d: usize, a: &[f32], bt: &[f32], ld: usize, s: &mut [f32]) {
    s[..rows * BK].fill(0.0);
    tile_mm(rows, d, BK, a, d, 1, bt, ld, s, BK);
}

/// Keys per accumulation chunk: each chunk's sum starts from zero and is then added to `out`,
/// so long key rows are sums of short sums (see the AVX-512 kernel's `KC`).
const KC: usize = 64;

/// `out[r*w..] += Σ_{t<inner} coef[r*cs_r + t*cs_t] · x[t*w..(t+1)*w]` for `r < rows`.
#[allow(clippy::too_many_arguments)]
fn tile_axpy(
    rows: usize,
    inner: usize,
    w: usize,
    coef: &[f32],
    cs_r: usize,
    cs_t: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let mut t0 = 0;
    while t0 < inner {
        let kc = KC.min(inner - t0);
        tile_mm(
            rows,
            kc,
            w,
            &coef[t0 * cs_t..],
            cs_r,
            cs_t,
            &x[t0 * w..],
            w,
            out,
            w,
        );
        t0 += kc;
    }
}

simd_dispatch! {
    /// Online-softmax step for one tile: turns scores into `exp(s - m_new)` in place, updates the
    /// running max `m` and sum `l`, and rescales the output accumulator rows.
    #[allow(clippy::too_many_arguments)]
    fn online_softmax(rows: usize, bk: usize, dv: usize, s: &mut [f32], m: &mut [f32], l: &mut [f32], acc: &mut [f32]) {
        for i in 0..rows {
            let sr = &mut s[i * BK..i * BK + bk];
            let m_new = m[i].max(max_f32(sr));
            let alpha = exp_f32(m[i] - m_new);
            for v in sr.iter_mut() {
                *v = exp_f32(*v - m_new);
            }
            let sum = sum_f32(sr);
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
            acc[i * dv..(i + 1) * dv].iter_mut().for_each(|a| *a *= alpha);
        }
    }
}

simd_dispatch! {
    /// Backward tile: `p = exp(s - lse)` (into `s`) and `ds = p ⊙ (dp − D)` (into `dp`).
    fn probs_and_ds(rows: usize, bk: usize, s: &mut [f32], dp: &mut [f32], lse: &[f32], dsum: &[f32]) {
        for i in 0..rows {
            let sr = &mut s[i * BK..i * BK + bk];
            let dr = &mut dp[i * BK..i * BK + bk];
            let (ls, dd) = (lse[i], dsum[i]);
            for (s, d) in sr.iter_mut().zip(dr.iter_mut()) {
                let p = exp_f32(*s - ls);
                *s = p;
                *d = p * (*d - dd);
            }
        }
    }
}

/// Adds `rel_h[i, jh] + rel_w[i, jw]` to score tile columns `j0..j0+bk` (in SAM's order).
#[allow(clippy::too_many_arguments)]
fn add_bias(
    rows: usize,
    j0: usize,
    bk: usize,
    rh: &[f32],
    rw: &[f32],
    kh: usize,
    kw: usize,
    s: &mut [f32],
) {
    for i in 0..rows {
        let sr = &mut s[i * BK..i * BK + bk];
        let mut j = j0;
        while j < j0 + bk {
            let (jh, jw) = (j / kw, j % kw);
            let run = (kw - jw).min(j0 + bk - j);
            let hb = rh[i * kh + jh];
            let wr = &rw[i * kw + jw..i * kw + jw + run];
            for (s, &w) in sr[j - j0..j - j0 + run].iter_mut().zip(wr) {
                *s = (*s + hb) + w;
            }
            j += run;
        }
    }
}

/// Accumulates a score-gradient tile into `drh [rows, kh]` and `drw [rows, kw]`.
#[allow(clippy::too_many_arguments)]
fn acc_bias_grad(
    rows: usize,
    j0: usize,
    bk: usize,
    ds: &[f32],
    kh: usize,
    kw: usize,
    drh: &mut [f32],
    drw: &mut [f32],
) {
    for i in 0..rows {
        let dr = &ds[i * BK..i * BK + bk];
        let mut j = j0;
        while j < j0 + bk {
            let (jh, jw) = (j / kw, j % kw);
            let run = (kw - jw).min(j0 + bk - j);
            let part = &dr[j - j0..j - j0 + run];
            drh[i * kh + jh] += part.iter().sum::<f32>();
            for (g, &v) in drw[i * kw + jw..i * kw + jw + run].iter_mut().zip(part) {
                *g += v;
            }
            j += run;
        }
    }
}

/// `[bh][query block]` chunks of a `[bh, nq, w]` buffer.
fn q_blocks(x: &mut [f32], nq: usize, w: usize) -> Vec<Vec<&mut [f32]>> {
    x.chunks_mut(nq * w)
        .map(|c| c.chunks_mut(BQ * w).collect())
        .collect()
}

/// Rows of a block padded to a multiple of RB, each multiplied by `scale`.
fn padded_rows(src: &[f32], rows: usize, w: usize, scale: f32) -> Vec<f32> {
    let mut p = vec![0.0f32; rows.div_ceil(RB) * RB * w];
    p[..rows * w]
        .iter_mut()
        .zip(src)
        .for_each(|(d, &s)| *d = s * scale);
    p
}

fn rel_rows<'a>(
    bias: &Option<RelPosBias<'a>>,
    b: usize,
    nq: usize,
    q0: usize,
    rows: usize,
) -> Option<(&'a [f32], &'a [f32], usize, usize)> {
    bias.map(|r| {
        let h0 = (b * nq + q0) * r.kh;
        let w0 = (b * nq + q0) * r.kw;
        (
            &r.rel_h[h0..h0 + rows * r.kh],
            &r.rel_w[w0..w0 + rows * r.kw],
            r.kh,
            r.kw,
        )
    })
}

/// Writes `out` and the per-row log-sum-exp of the biased, scaled scores `lse [bh, nq]`.
pub(super) fn attention_forward(f: Forward, out: &mut [f32], lse: &mut [f32]) {
    let AttnDims { bh, nq, nk, d, dv } = f.dims;
    let (scale, bias, table) = (f.scale, f.bias, f.table);
    // This path works on dense operands.
    let [q, k, v] = f.rows;
    let (q, k, v) = (
        q.dense_view(bh, nq, d),
        k.dense_view(bh, nk, d),
        v.dense_view(bh, nk, dv),
    );
    // bf16: the operands rounded once here (q after its scale), the probabilities per tile.
    let bf16 = f.bf16;
    let (q, k, v, scale) = if bf16 {
        let round = |x: &[f32], s: f32| -> std::borrow::Cow<[f32]> {
            x.iter().map(|&x| round_bf16(x * s)).collect()
        };
        (round(&q, scale), round(&k, 1.0), round(&v, 1.0), 1.0)
    } else {
        (q, k, v, scale)
    };
    let npad = nk.div_ceil(BK) * BK;
    let kt = transpose_pad(bh, nk, d, npad, &k);
    let nqb = nq.div_ceil(BQ);
    let tasks: Vec<(usize, usize)> = (0..bh)
        .flat_map(|b| (0..nqb).map(move |t| (b, t)))
        .collect();
    // Each task owns rows q0..q0+rows of head b: a contiguous range of out and lse.
    let mut out_chunks: Vec<&mut [f32]> = out
        .chunks_mut(nq * dv)
        .flat_map(|o| o.chunks_mut(BQ * dv))
        .collect();
    let mut lse_chunks: Vec<&mut [f32]> =
        lse.chunks_mut(nq).flat_map(|o| o.chunks_mut(BQ)).collect();
    tasks
        .par_iter()
        .zip(out_chunks.par_iter_mut())
        .zip(lse_chunks.par_iter_mut())
        .for_each(|((&(b, t), o), ls)| {
            let q0 = t * BQ;
            let rows = ls.len();
            let qs = padded_rows(
                &q[(b * nq + q0) * d..(b * nq + q0 + rows) * d],
                rows,
                d,
                scale,
            );
            let rp = rows.div_ceil(RB) * RB;
            let ktb = &kt[b * d * npad..(b + 1) * d * npad];
            let vb = &v[b * nk * dv..(b + 1) * nk * dv];
            let rel = rel_rows(&bias, b, nq, q0, rows);
            let mut s = vec![0.0f32; rp * BK];
            let mut m = vec![f32::NEG_INFINITY; rows];
            let mut l = vec![0.0f32; rows];
            o.fill(0.0);
            for j0 in (0..nk).step_by(BK) {
                let bk = BK.min(nk - j0);
                tile_abt(rp, d, &qs, &ktb[j0..], npad, &mut s);
                if let Some((rh, rw, kh, kw)) = rel {
                    add_bias(rows, j0, bk, rh, rw, kh, kw, &mut s);
                }
                if let Some(t) = table {
                    let t0 = ((b % t.heads) * nq + q0) * nk + j0;
                    for i in 0..rows {
                        let tr = &t.table[t0 + i * nk..t0 + i * nk + bk];
                        s[i * BK..i * BK + bk]
                            .iter_mut()
                            .zip(tr)
                            .for_each(|(s, &t)| *s += t);
                    }
                }
                online_softmax(rows, bk, dv, &mut s, &mut m, &mut l, o);
                if bf16 {
                    for i in 0..rows {
                        s[i * BK..i * BK + bk]
                            .iter_mut()
                            .for_each(|p| *p = round_bf16(*p));
                    }
                }
                tile_axpy(rows, bk, dv, &s, BK, 1, &vb[j0 * dv..], o);
            }
            for i in 0..rows {
                let inv = 1.0 / l[i];
                o[i * dv..(i + 1) * dv].iter_mut().for_each(|x| *x *= inv);
                ls[i] = m[i] + l[i].ln();
            }
        });
}

/// Gradients of attention (all overwritten), on arguments [`Backward::check`] accepted.
pub(super) fn attention_backward(args: Backward) {
    let (dims, scale, bias) = (args.dims, args.scale, args.bias);
    let (q, k, v, out, lse, dout) = (args.q, args.k, args.v, args.out, args.lse, args.dout);
    let (dq, dk, dv, drel) = (args.dq, args.dk, args.dv, args.drel);
    let AttnDims { bh, nq, nk, d, .. } = dims;
    let dvd = dims.dv;
    let (kh, kw) = bias.map(|b| (b.kh, b.kw)).unwrap_or((1, 1));
    let mut dummy = (Vec::new(), Vec::new());
    let (drh, drw) = match drel {
        Some(hw) => hw,
        None => {
            dummy = (vec![0.0f32; bh * nq], vec![0.0f32; bh * nq]);
            (&mut dummy.0[..], &mut dummy.1[..])
        }
    };
    let npad = nk.div_ceil(BK) * BK;
    let kt = transpose_pad(bh, nk, d, npad, k);
    let vt = transpose_pad(bh, nk, dvd, npad, v);
    let dq_c = q_blocks(dq, nq, d);
    let drh_c = q_blocks(drh, nq, kh);
    let drw_c = q_blocks(drw, nq, kw);
    dk.par_chunks_mut(nk * d)
        .zip(dv.par_chunks_mut(nk * dvd))
        .zip(dq_c.into_par_iter().zip(drh_c.into_par_iter().zip(drw_c)))
        .enumerate()
        .for_each(|(b, ((dkb, dvb), (dqb, (drhb, drwb))))| {
            let ktb = &kt[b * d * npad..(b + 1) * d * npad];
            let vtb = &vt[b * dvd * npad..(b + 1) * dvd * npad];
            let kb = &k[b * nk * d..(b + 1) * nk * d];
            // One (dK, dV) partial per query block, summed in block order: deterministic.
            let parts: Vec<(Vec<f32>, Vec<f32>)> = dqb
                .into_par_iter()
                .zip(drhb.into_par_iter().zip(drwb))
                .enumerate()
                .map(|(t, (dqt, (drht, drwt)))| {
                    let (mut pk, mut pv) = (vec![0.0f32; nk * d], vec![0.0f32; nk * dvd]);
                    let q0 = t * BQ;
                    let rows = BQ.min(nq - q0);
                    let r0 = b * nq + q0;
                    let qs = padded_rows(&q[r0 * d..(r0 + rows) * d], rows, d, scale);
                    let dos = padded_rows(&dout[r0 * dvd..(r0 + rows) * dvd], rows, dvd, 1.0);
                    let rp = rows.div_ceil(RB) * RB;
                    let ls = &lse[r0..r0 + rows];
                    let dsum: Vec<f32> = (0..rows)
                        .map(|i| {
                            let a = &dout[(r0 + i) * dvd..(r0 + i + 1) * dvd];
                            let o = &out[(r0 + i) * dvd..(r0 + i + 1) * dvd];
                            dot_f32(a, o)
                        })
                        .collect();
                    let rel = rel_rows(&bias, b, nq, q0, rows);
                    let mut s = vec![0.0f32; rp * BK];
                    let mut dp = vec![0.0f32; rp * BK];
                    dqt.fill(0.0);
                    drht.fill(0.0);
                    drwt.fill(0.0);
                    for j0 in (0..nk).step_by(BK) {
                        let bk = BK.min(nk - j0);
                        tile_abt(rp, d, &qs, &ktb[j0..], npad, &mut s);
                        if let Some((rh, rw, kh, kw)) = rel {
                            add_bias(rows, j0, bk, rh, rw, kh, kw, &mut s);
                        }
                        tile_abt(rp, dvd, &dos, &vtb[j0..], npad, &mut dp);
                        probs_and_ds(rows, bk, &mut s, &mut dp, ls, &dsum);
                        // dV[j] += Σ_i P[i,j] dO[i];  dK[j] += Σ_i dS[i,j] (q[i]·scale)
                        tile_axpy(bk, rows, dvd, &s, 1, BK, &dos, &mut pv[j0 * dvd..]);
                        tile_axpy(bk, rows, d, &dp, 1, BK, &qs, &mut pk[j0 * d..]);
                        // dQ[i] += Σ_j dS[i,j] k[j]  (scaled at the end)
                        tile_axpy(rows, bk, d, &dp, BK, 1, &kb[j0 * d..], dqt);
                        if rel.is_some() {
                            acc_bias_grad(rows, j0, bk, &dp, kh, kw, drht, drwt);
                        }
                    }
                    dqt.iter_mut().for_each(|x| *x *= scale);
                    (pk, pv)
                })
                .collect();
            dkb.fill(0.0);
            dvb.fill(0.0);
            for (pk, pv) in &parts {
                dkb.iter_mut().zip(pk).for_each(|(x, y)| *x += y);
                dvb.iter_mut().zip(pv).for_each(|(x, y)| *x += y);
            }
        });
    let _ = &dummy;
}
