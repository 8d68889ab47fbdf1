//! Pointwise activations and row softmax, forward and backward.

#![allow(clippy::needless_range_loop)]

pub(crate) mod simd;

use rayon::prelude::*;
use simd::{dot_f32, erf_f32, exp_f32, max_f32, simd_dispatch, sum_f32};

/// Elements per rayon task for pointwise ops.
const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/sqrt(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU of one value (f32 erf); inlined into vectorised loops. `h + h·erf` with
/// `h = x/2` (exact) is one fused multiply-add.
#[inline(always)]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    let h = 0.5 * x;
    h.mul_add(erf_f32(x * FRAC_1_SQRT_2), h)
}

simd_dispatch! {
    fn gelu_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = gelu_f32(x);
        }
    }
}

simd_dispatch! {
    fn gelu_bwd_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let cdf = 0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
            *dx = dy * (cdf + x * pdf);
        }
    }
}

simd_dispatch! {
    /// `row[j] = act(row[j] + col_bias[j] + row_bias + residual[j])` in place, `act` GELU or
    /// identity: the epilogue a fused GEMM applies to each finished strip of C. One pass over
    /// the row; each element sees the adds in that order (`(y + (col_bias + row_bias)) +
    /// residual`), and a zero row bias without a column bias adds nothing (so -0.0 stays -0.0).
    pub(crate) fn bias_act_row(
        row: &mut [f32],
        col_bias: Option<&[f32]>,
        row_bias: f32,
        residual: Option<&[f32]>,
        gelu: bool,
    ) {
        if gelu {
            bias_act_pass::<true>(row, col_bias, row_bias, residual);
        } else {
            bias_act_pass::<false>(row, col_bias, row_bias, residual);
        }
    }
}

/// The loop of [`bias_act_row`], one version per activation so each vectorises branch-free.
#[inline(always)]
fn bias_act_pass<const GELU: bool>(
    row: &mut [f32],
    col_bias: Option<&[f32]>,
    row_bias: f32,
    residual: Option<&[f32]>,
) {
    let act = |v: f32| if GELU { gelu_f32(v) } else { v };
    match (col_bias, residual) {
        (Some(cb), Some(r)) => {
            for ((y, &b), &r) in row.iter_mut().zip(cb).zip(r) {
                *y = act(*y + (b + row_bias) + r);
            }
        }
        (Some(cb), None) => {
            for (y, &b) in row.iter_mut().zip(cb) {
                *y = act(*y + (b + row_bias));
            }
        }
        (None, Some(r)) if row_bias != 0.0 => {
            for (y, &r) in row.iter_mut().zip(r) {
                *y = act(*y + row_bias + r);
            }
        }
        (None, Some(r)) => {
            for (y, &r) in row.iter_mut().zip(r) {
                *y = act(*y + r);
            }
        }
        (None, None) if row_bias != 0.0 => {
            for y in row.iter_mut() {
                *y = act(*y + row_bias);
            }
        }
        (None, None) => {
            if GELU {
                for y in row.iter_mut() {
                    *y = gelu_f32(*y);
                }
            }
        }
    }
}

/// Exact GELU: `x · Φ(x)` with `Φ` through erf (PyTorch's default `approximate="none"`).
pub fn gelu_forward(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| gelu_chunk(x, y));
}

/// dx = dy · gelu'(x) (overwritten).
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert_eq!(x.len(), dx.len());
    assert_eq!(dy.len(), dx.len());
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| gelu_bwd_chunk(x, dy, dx));
}

simd_dispatch! {
    fn softmax_rows(dim: usize, x: &[f32], y: &mut [f32]) {
        for (x, y) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)) {
            let m = max_f32(x);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = exp_f32(x - m);
            }
            let inv = 1.0 / sum_f32(y);
            for y in y.iter_mut() {
                *y *= inv;
            }
        }
    }
}

simd_dispatch! {
    fn softmax_bias_rows(dim: usize, x: &[f32], bias: &[f32], y: &mut [f32]) {
        for ((x, b), y) in x.chunks_exact(dim).zip(bias.chunks_exact(dim)).zip(y.chunks_exact_mut(dim)) {
            for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                *y = x + b;
            }
            let m = max_f32(y);
            for y in y.iter_mut() {
                *y = exp_f32(*y - m);
            }
            let inv = 1.0 / sum_f32(y);
            for y in y.iter_mut() {
                *y *= inv;
            }
        }
    }
}

/// Softmax over the last dimension of `x + bias`, `x` a `rows × dim` buffer and `bias` a
/// `bias_rows × dim` table repeated over the rows (row `r` adds bias row `r % bias_rows`): an
/// attention bias shared by every batch, added in the same pass.
pub fn softmax_bias_forward(
    rows: usize,
    dim: usize,
    x: &[f32],
    bias: &[f32],
    bias_rows: usize,
    y: &mut [f32],
) {
    assert_eq!(x.len(), rows * dim);
    assert_eq!(y.len(), rows * dim);
    assert!(
        bias_rows > 0 && bias.len() == bias_rows * dim,
        "softmax_bias: bias"
    );
    if dim == 0 {
        return;
    }
    // Tasks of whole bias periods when they are small, else row blocks that split none.
    let per = rows_per_task(dim);
    let task_rows = if bias_rows <= per {
        (per / bias_rows).max(1) * bias_rows
    } else {
        let mut t = per;
        while !bias_rows.is_multiple_of(t) {
            t -= 1;
        }
        t
    };
    let c = task_rows * dim;
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .enumerate()
        .for_each(|(t, (y, x))| {
            let r0 = (t * task_rows) % bias_rows;
            let n = y.len() / dim;
            // The task's rows map to bias rows r0.., wrapping at most at period boundaries.
            let mut done = 0;
            while done < n {
                let br = (r0 + done) % bias_rows;
                let run = (bias_rows - br).min(n - done);
                softmax_bias_rows(
                    dim,
                    &x[done * dim..(done + run) * dim],
                    &bias[br * dim..(br + run) * dim],
                    &mut y[done * dim..(done + run) * dim],
                );
                done += run;
            }
        });
}

simd_dispatch! {
    fn softmax_bwd_rows(dim: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((y, dy), dx) in y.chunks_exact(dim).zip(dy.chunks_exact(dim)).zip(dx.chunks_exact_mut(dim)) {
            let dot = dot_f32(y, dy);
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = y * (dy - dot);
            }
        }
    }
}

fn rows_per_task(dim: usize) -> usize {
    (CHUNK / dim.max(1)).max(1)
}

/// Checks that every buffer is `rows × dim` and returns the elements per task (None: no work).
fn task_len(rows: usize, dim: usize, lens: &[usize]) -> Option<usize> {
    for &len in lens {
        assert_eq!(len, rows * dim);
    }
    (dim > 0).then(|| rows_per_task(dim) * dim)
}

/// Softmax over the last dimension of a `rows × dim` buffer.
pub fn softmax_forward(rows: usize, dim: usize, x: &[f32], y: &mut [f32]) {
    let Some(c) = task_len(rows, dim, &[x.len(), y.len()]) else {
        return;
    };
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(y, x)| softmax_rows(dim, x, y));
}

/// dx = y ⊙ (dy − Σ dy·y) per row (overwritten).
pub fn softmax_backward(rows: usize, dim: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let Some(c) = task_len(rows, dim, &[y.len(), dy.len(), dx.len()]) else {
        return;
    };
    dx.par_chunks_mut(c)
        .zip(y.par_chunks(c).zip(dy.par_chunks(c)))
        .for_each(|(dx, (y, dy))| softmax_bwd_rows(dim, y, dy, dx));
}

/// Plain-loop oracles (f64 internally).
pub mod reference {
    use super::simd::erf_f64;

    /// erf with absolute error < 1.2e-7 (f64 evaluation).
    pub fn erf(x: f64) -> f64 {
        erf_f64(x)
    }

    pub fn gelu_forward(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            let x = x as f64;
            *y = (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32;
        }
    }

    pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let x = x as f64;
            let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            *dx = (dy as f64 * (cdf + x * pdf)) as f32;
        }
    }

    pub fn softmax_forward(rows: usize, dim: usize, x: &[f32], y: &mut [f32]) {
        for r in 0..rows {
            let xr = &x[r * dim..(r + 1) * dim];
            let m = xr.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let s: f64 = xr.iter().map(|&v| (v as f64 - m).exp()).sum();
            for c in 0..dim {
                y[r * dim + c] = ((xr[c] as f64 - m).exp() / s) as f32;
            }
        }
    }

    /// `bias` is the `bias_rows × dim` table, row `r` of x adding bias row `r % bias_rows`.
    pub fn softmax_bias_forward(
        rows: usize,
        dim: usize,
        x: &[f32],
        (bias, bias_rows): (&[f32], usize),
        y: &mut [f32],
    ) {
        let xb: Vec<f32> = (0..rows * dim)
            .map(|i| x[i] + bias[((i / dim) % bias_rows) * dim + i % dim])
            .collect();
        softmax_forward(rows, dim, &xb, y)
    }

    pub fn softmax_backward(rows: usize, dim: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        for r in 0..rows {
            let o = r * dim;
            let mut dot = 0.0f64;
            for c in 0..dim {
                dot += y[o + c] as f64 * dy[o + c] as f64;
            }
            for c in 0..dim {
                dx[o + c] = (y[o + c] as f64 * (dy[o + c] as f64 - dot)) as f32;
            }
        }
    }
}
