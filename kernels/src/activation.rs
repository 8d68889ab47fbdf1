//! Pointwise activations and row softmax, forward and backward.

/// Exact GELU: `x · Φ(x)` with `Φ` through erf (PyTorch's default `approximate="none"`).
pub fn gelu_forward(x: &[f32], y: &mut [f32]) {
    let _ = (x, y);
    unimplemented!()
}

/// dx = dy · gelu'(x) (overwritten).
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let _ = (x, dy, dx);
    unimplemented!()
}

/// Softmax over the last dimension of a `rows × dim` buffer.
pub fn softmax_forward(rows: usize, dim: usize, x: &[f32], y: &mut [f32]) {
    let _ = (rows, dim, x, y);
    unimplemented!()
}

/// dx = y ⊙ (dy − Σ dy·y) per row (overwritten).
pub fn softmax_backward(rows: usize, dim: usize, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let _ = (rows, dim, y, dy, dx);
    unimplemented!()
}
