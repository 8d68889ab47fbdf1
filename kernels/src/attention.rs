//! Multi-head attention `softmax(q·kᵀ·scale + bias)·v`, computed in tiles with an online softmax so
//! the `nq × nk` score matrix of all heads is never materialised. `bias` is SAM's decomposed
//! relative position: for key index `j = jh*kw + jw`, `bias[i, j] = rel_h[i, jh] + rel_w[i, jw]`.
//! The backward recomputes the scores tile by tile from q, k and the saved log-sum-exp.

/// Sizes: `bh` = batch × heads; q `[bh, nq, d]`, k `[bh, nk, d]`, v `[bh, nk, dv]`, out `[bh, nq, dv]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub bh: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub dv: usize,
}

/// Decomposed relative-position bias: `rel_h [bh, nq, kh]`, `rel_w [bh, nq, kw]`, `kh*kw == nk`.
#[derive(Clone, Copy, Debug)]
pub struct RelPosBias<'a> {
    pub rel_h: &'a [f32],
    pub rel_w: &'a [f32],
    pub kh: usize,
    pub kw: usize,
}

/// Writes `out` and the per-row log-sum-exp of the biased, scaled scores `lse [bh, nq]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    dims: AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    bias: Option<RelPosBias>,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let _ = (dims, q, k, v, scale, bias, out, lse);
    unimplemented!()
}

/// Gradients of attention (all overwritten). `drel_h`/`drel_w` are required iff `bias` is given.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dims: AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    bias: Option<RelPosBias>,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    drel: Option<(&mut [f32], &mut [f32])>,
) {
    let _ = (dims, q, k, v, scale, bias, out, lse, dout, dq, dk, dv, drel);
    unimplemented!()
}
