//! LayerNorm over the last dimension (`rows × dim`), and LayerNorm2d over channels of NCHW.
//! Forward saves per-row mean and reciprocal std for the backward.

#![allow(clippy::needless_range_loop)]

use crate::activation::simd::{dot_f32, reduce16, simd_dispatch, sum_f32, SyncPtr};
use rayon::prelude::*;

/// Target number of elements handled by one rayon task.
const TASK_ELEMS: usize = 1 << 14;
/// Pixels per LayerNorm2d task (vectorised across pixels, looping over channels).
const PIX_BLOCK: usize = 256;

/// `(Σ x, Σ (x − μ)²)`-style row moments: 16 running lane sums (lane `l` takes elements `l`,
/// `l + 16`, …), then [`reduce16`]. Every row op here is latency-bound on its sums, so the sums
/// are kept short and independent.
#[inline(always)]
fn row_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut ch = x.chunks_exact(16);
    for c in &mut ch {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    for (a, &v) in acc.iter_mut().zip(ch.remainder()) {
        *a += v;
    }
    reduce16(acc)
}

/// Σ (x − μ)² with the lanes of [`row_sum`] (each square fused into its add).
#[inline(always)]
fn row_sq_dev(x: &[f32], mu: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut ch = x.chunks_exact(16);
    for c in &mut ch {
        for l in 0..16 {
            let d = c[l] - mu;
            acc[l] = d.mul_add(d, acc[l]);
        }
    }
    for (a, &v) in acc.iter_mut().zip(ch.remainder()) {
        let d = v - mu;
        *a = d.mul_add(d, *a);
    }
    reduce16(acc)
}

simd_dispatch! {
    #[allow(clippy::too_many_arguments)]
    fn ln_rows(dim: usize, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]) {
        for (r, (x, y)) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)).enumerate() {
            let mu = row_sum(x) / dim as f32;
            let var = row_sq_dev(x, mu) / dim as f32;
            let rs = 1.0 / (var + eps).sqrt();
            for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                *y = (x - mu) * rs * g + b;
            }
            mean[r] = mu;
            rstd[r] = rs;
        }
    }
}

simd_dispatch! {
    #[allow(clippy::too_many_arguments)]
    fn ln_bwd_rows(dim: usize, x: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32]) {
        for (r, ((x, dy), dx)) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).zip(dx.chunks_exact_mut(dim)).enumerate() {
            let (mu, rs) = (mean[r], rstd[r]);
            // a = mean(dy·γ), b = mean(dy·γ·x̂), evaluated in 16-wide chunks so they vectorise.
            let mut gd = [0.0f32; 16];
            let mut xh = [0.0f32; 16];
            let (mut a, mut b) = (0.0f32, 0.0f32);
            for ((x, dy), g) in x.chunks(16).zip(dy.chunks(16)).zip(gamma.chunks(16)) {
                let n = x.len();
                for l in 0..n {
                    gd[l] = dy[l] * g[l];
                    xh[l] = (x[l] - mu) * rs;
                }
                a += sum_f32(&gd[..n]);
                b += dot_f32(&gd[..n], &xh[..n]);
            }
            let a = a / dim as f32;
            let b = b / dim as f32;
            for (((((dx, &x), &dy), &g), dg), db) in dx.iter_mut().zip(x).zip(dy).zip(gamma).zip(dgamma.iter_mut()).zip(dbeta.iter_mut()) {
                let xh = (x - mu) * rs;
                *dx = rs * (dy * g - a - xh * b);
                *dg += dy * xh;
                *db += dy;
            }
        }
    }
}

/// y = (x - mean) * rstd * gamma + beta per row; writes `mean[rows]`, `rstd[rows]`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    rows: usize,
    dim: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    assert_eq!(x.len(), rows * dim);
    assert_eq!(y.len(), rows * dim);
    assert!(gamma.len() == dim && beta.len() == dim && mean.len() == rows && rstd.len() == rows);
    if rows == 0 || dim == 0 {
        return;
    }
    let rpt = (TASK_ELEMS / dim).max(1);
    y.par_chunks_mut(rpt * dim)
        .zip(x.par_chunks(rpt * dim))
        .zip(mean.par_chunks_mut(rpt).zip(rstd.par_chunks_mut(rpt)))
        .for_each(|((y, x), (m, r))| ln_rows(dim, x, gamma, beta, eps, y, m, r));
}

/// Parameter-gradient partials are accumulated in this many fixed groups of consecutive tasks
/// and summed in group order, so dgamma/dbeta do not depend on the thread count or on how rayon
/// happened to split the work (a fold/reduce tree does, and made training runs differ in the
/// last bits).
const GRAD_GROUPS: usize = 64;

/// Runs `task(t, dgamma_part, dbeta_part)` for `t < tasks` in parallel over [`GRAD_GROUPS`]
/// contiguous groups (sequential inside a group) and returns the partials summed in order.
fn grouped_param_grads(
    tasks: usize,
    dim: usize,
    task: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let groups = tasks.clamp(1, GRAD_GROUPS);
    let per = tasks.div_ceil(groups);
    let parts: Vec<(Vec<f32>, Vec<f32>)> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let (mut g, mut b) = (vec![0.0f32; dim], vec![0.0f32; dim]);
            for t in gi * per..((gi + 1) * per).min(tasks) {
                task(t, &mut g, &mut b);
            }
            (g, b)
        })
        .collect();
    let (mut g, mut b) = (vec![0.0f32; dim], vec![0.0f32; dim]);
    for (pg, pb) in &parts {
        g.iter_mut().zip(pg).for_each(|(a, x)| *a += x);
        b.iter_mut().zip(pb).for_each(|(a, x)| *a += x);
    }
    (g, b)
}

/// dx overwritten; dgamma and dbeta accumulated (+=).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    rows: usize,
    dim: usize,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    assert!(x.len() == rows * dim && dy.len() == rows * dim && dx.len() == rows * dim);
    assert!(gamma.len() == dim && dgamma.len() == dim && dbeta.len() == dim);
    assert!(mean.len() == rows && rstd.len() == rows);
    if rows == 0 || dim == 0 {
        return;
    }
    let rpt = (TASK_ELEMS / dim).max(1);
    let dxp = SyncPtr::new(dx);
    let (pg, pb) = grouped_param_grads(rows.div_ceil(rpt), dim, |t, g, b| {
        let (r0, r1) = (t * rpt, ((t + 1) * rpt).min(rows));
        let span = r0 * dim..r1 * dim;
        // SAFETY: task t is the only writer of rows r0..r1 of dx.
        let dx = unsafe { dxp.slice(span.start, span.len()) };
        let (m, r) = (&mean[r0..r1], &rstd[r0..r1]);
        ln_bwd_rows(dim, &x[span.clone()], gamma, m, r, &dy[span], dx, g, b);
    });
    dgamma.iter_mut().zip(&pg).for_each(|(a, b)| *a += b);
    dbeta.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
}

simd_dispatch! {
    /// One block of pixels `p0..p0+np` of one image: x/y are the whole `[c, hw]` image.
    #[allow(clippy::too_many_arguments)]
    fn ln2d_block(c: usize, hw: usize, p0: usize, np: usize, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: SyncPtr, mean: &mut [f32], rstd: &mut [f32]) {
        let mut acc = [0.0f32; PIX_BLOCK];
        let acc = &mut acc[..np];
        for ci in 0..c {
            let xr = &x[ci * hw + p0..ci * hw + p0 + np];
            acc.iter_mut().zip(xr).for_each(|(a, &v)| *a += v);
        }
        let inv_c = 1.0 / c as f32;
        mean.iter_mut().zip(acc.iter()).for_each(|(m, &a)| *m = a * inv_c);
        acc.iter_mut().for_each(|a| *a = 0.0);
        for ci in 0..c {
            let xr = &x[ci * hw + p0..ci * hw + p0 + np];
            acc.iter_mut().zip(xr).zip(mean.iter()).for_each(|((a, &v), &m)| *a += (v - m) * (v - m));
        }
        rstd.iter_mut().zip(acc.iter()).for_each(|(r, &a)| *r = 1.0 / (a * inv_c + eps).sqrt());
        for ci in 0..c {
            let xr = &x[ci * hw + p0..ci * hw + p0 + np];
            // SAFETY: this task is the only writer of pixels p0..p0+np of this image.
            let yr = unsafe { y.slice(ci * hw + p0, np) };
            let (g, b) = (gamma[ci], beta[ci]);
            for (((y, &x), &m), &r) in yr.iter_mut().zip(xr).zip(mean.iter()).zip(rstd.iter()) {
                *y = (x - m) * r * g + b;
            }
        }
    }
}

simd_dispatch! {
    #[allow(clippy::too_many_arguments)]
    fn ln2d_bwd_block(c: usize, hw: usize, p0: usize, np: usize, x: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], dy: &[f32], dx: SyncPtr, dgamma: &mut [f32], dbeta: &mut [f32]) {
        let mut a = [0.0f32; PIX_BLOCK];
        let mut b = [0.0f32; PIX_BLOCK];
        let a = &mut a[..np];
        let b = &mut b[..np];
        for ci in 0..c {
            let off = ci * hw + p0;
            let (xr, dyr) = (&x[off..off + np], &dy[off..off + np]);
            let g = gamma[ci];
            let mut sg = 0.0f32;
            let mut sb = 0.0f32;
            for (((((a, b), &x), &dy), &m), &r) in a.iter_mut().zip(b.iter_mut()).zip(xr).zip(dyr).zip(mean).zip(rstd) {
                let xh = (x - m) * r;
                let gd = dy * g;
                *a += gd;
                *b += gd * xh;
                sg += dy * xh;
                sb += dy;
            }
            dgamma[ci] += sg;
            dbeta[ci] += sb;
        }
        let inv_c = 1.0 / c as f32;
        a.iter_mut().for_each(|v| *v *= inv_c);
        b.iter_mut().for_each(|v| *v *= inv_c);
        for ci in 0..c {
            let off = ci * hw + p0;
            let (xr, dyr) = (&x[off..off + np], &dy[off..off + np]);
            // SAFETY: this task is the only writer of pixels p0..p0+np of this image.
            let dxr = unsafe { dx.slice(off, np) };
            let g = gamma[ci];
            for (((((dx, &a), &b), &x), &dy), (&m, &r)) in dxr.iter_mut().zip(a.iter()).zip(b.iter()).zip(xr).zip(dyr).zip(mean.iter().zip(rstd)) {
                let xh = (x - m) * r;
                *dx = r * (dy * g - a - xh * b);
            }
        }
    }
}

/// LayerNorm2d as SAM defines it: x `[n, c, hw]`, normalised over `c` at every (n, pixel);
/// mean/rstd are `[n, hw]`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm2d_forward(
    n: usize,
    c: usize,
    hw: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    assert!(x.len() == n * c * hw && y.len() == n * c * hw);
    assert!(gamma.len() == c && beta.len() == c && mean.len() == n * hw && rstd.len() == n * hw);
    if n * c * hw == 0 {
        return;
    }
    let yp = SyncPtr::new(y);
    let nb = hw.div_ceil(PIX_BLOCK);
    // Tasks (image, pixel block) own disjoint pixel columns of y and disjoint mean/rstd ranges.
    mean.par_chunks_mut(hw)
        .zip(rstd.par_chunks_mut(hw))
        .enumerate()
        .flat_map(|(ni, (m, r))| {
            m.par_chunks_mut(PIX_BLOCK)
                .zip(r.par_chunks_mut(PIX_BLOCK))
                .enumerate()
                .map(move |(bi, mr)| (ni, bi, mr))
        })
        .for_each(|(ni, bi, (m, r))| {
            let p0 = bi * PIX_BLOCK;
            let np = m.len();
            debug_assert!(bi < nb);
            let img = &x[ni * c * hw..(ni + 1) * c * hw];
            let yimg = unsafe { yp.add(ni * c * hw) };
            ln2d_block(c, hw, p0, np, img, gamma, beta, eps, yimg, m, r);
        });
}

/// Backward of `layer_norm2d_forward`: dx overwritten, dgamma/dbeta accumulated.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm2d_backward(
    n: usize,
    c: usize,
    hw: usize,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    assert!(x.len() == n * c * hw && dy.len() == n * c * hw && dx.len() == n * c * hw);
    assert!(gamma.len() == c && dgamma.len() == c && dbeta.len() == c);
    assert!(mean.len() == n * hw && rstd.len() == n * hw);
    if n * c * hw == 0 {
        return;
    }
    let dxp = SyncPtr::new(dx);
    let nb = hw.div_ceil(PIX_BLOCK);
    let (pg, pb) = grouped_param_grads(n * nb, c, |t, g, b| {
        let (ni, bi) = (t / nb, t % nb);
        let p0 = bi * PIX_BLOCK;
        let np = PIX_BLOCK.min(hw - p0);
        let o = ni * c * hw;
        let ms = &mean[ni * hw + p0..ni * hw + p0 + np];
        let rs = &rstd[ni * hw + p0..ni * hw + p0 + np];
        // SAFETY (for the writes inside): each task owns pixels p0..p0+np of image ni.
        let dimg = unsafe { dxp.add(o) };
        let (xi, dyi) = (&x[o..o + c * hw], &dy[o..o + c * hw]);
        ln2d_bwd_block(c, hw, p0, np, xi, gamma, ms, rs, dyi, dimg, g, b);
    });
    dgamma.iter_mut().zip(&pg).for_each(|(a, b)| *a += b);
    dbeta.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
}

/// Plain-loop oracles with f64 accumulation.
pub mod reference {
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_forward(
        rows: usize,
        dim: usize,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        // LayerNorm over the last dim == LayerNorm2d with n = rows, c = dim, hw = 1.
        super::reference::layer_norm2d_forward(rows, dim, 1, x, gamma, beta, eps, y, mean, rstd)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        rows: usize,
        dim: usize,
        x: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        super::reference::layer_norm2d_backward(
            rows, dim, 1, x, gamma, mean, rstd, dy, dx, dgamma, dbeta,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm2d_forward(
        n: usize,
        c: usize,
        hw: usize,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        for ni in 0..n {
            for p in 0..hw {
                let at = |ci: usize| ni * c * hw + ci * hw + p;
                let mu = (0..c).map(|ci| x[at(ci)] as f64).sum::<f64>() / c as f64;
                let var = (0..c)
                    .map(|ci| (x[at(ci)] as f64 - mu).powi(2))
                    .sum::<f64>()
                    / c as f64;
                let rs = 1.0 / (var + eps as f64).sqrt();
                for ci in 0..c {
                    y[at(ci)] =
                        ((x[at(ci)] as f64 - mu) * rs * gamma[ci] as f64 + beta[ci] as f64) as f32;
                }
                mean[ni * hw + p] = mu as f32;
                rstd[ni * hw + p] = rs as f32;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm2d_backward(
        n: usize,
        c: usize,
        hw: usize,
        x: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let mut dg = vec![0.0f64; c];
        let mut db = vec![0.0f64; c];
        for ni in 0..n {
            for p in 0..hw {
                let at = |ci: usize| ni * c * hw + ci * hw + p;
                let mu = mean[ni * hw + p] as f64;
                let rs = rstd[ni * hw + p] as f64;
                let xh = |ci: usize| (x[at(ci)] as f64 - mu) * rs;
                let mut a = 0.0f64;
                let mut b = 0.0f64;
                for ci in 0..c {
                    let gd = dy[at(ci)] as f64 * gamma[ci] as f64;
                    a += gd;
                    b += gd * xh(ci);
                    dg[ci] += dy[at(ci)] as f64 * xh(ci);
                    db[ci] += dy[at(ci)] as f64;
                }
                a /= c as f64;
                b /= c as f64;
                for ci in 0..c {
                    let gd = dy[at(ci)] as f64 * gamma[ci] as f64;
                    dx[at(ci)] = (rs * (gd - a - xh(ci) * b)) as f32;
                }
            }
        }
        for ci in 0..c {
            dgamma[ci] += dg[ci] as f32;
            dbeta[ci] += db[ci] as f32;
        }
    }
}
