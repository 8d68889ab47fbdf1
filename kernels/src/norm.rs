//! LayerNorm over the last dimension (`rows × dim`), and LayerNorm2d over channels of NCHW.
//! Forward saves per-row mean and reciprocal std for the backward.

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
    let _ = (rows, dim, x, gamma, beta, eps, y, mean, rstd);
    unimplemented!()
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
    let _ = (rows, dim, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
    unimplemented!()
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
    let _ = (n, c, hw, x, gamma, beta, eps, y, mean, rstd);
    unimplemented!()
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
    let _ = (n, c, hw, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
    unimplemented!()
}
