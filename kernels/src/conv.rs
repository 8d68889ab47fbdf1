//! conv2d (NCHW, weight `[c_out, c_in/groups, kh, kw]`) and conv_transpose2d
//! (weight `[c_in, c_out, kh, kw]`), forward and backward. Fast path: im2col/col2im + `gemm`.

/// Geometry of a 2-D convolution. For conv_transpose2d, `c_in`/`h`/`w` describe its input and
/// `out_hw` its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub groups: usize,
}

impl Conv2dGeom {
    /// Output height and width of conv2d.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad.0 - self.kh) / self.stride.0 + 1,
            (self.w + 2 * self.pad.1 - self.kw) / self.stride.1 + 1,
        )
    }
    /// Output height and width of conv_transpose2d (no output padding, dilation 1).
    pub fn transpose_out_hw(&self) -> (usize, usize) {
        (
            (self.h - 1) * self.stride.0 + self.kh - 2 * self.pad.0,
            (self.w - 1) * self.stride.1 + self.kw - 2 * self.pad.1,
        )
    }
}

/// y `[n, c_out, oh, ow]` = conv2d(x `[n, c_in, h, w]`, w) + bias.
pub fn conv2d_forward(g: Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let _ = (g, x, w, bias, y);
    unimplemented!("conv2d_forward")
}

/// dx `[n, c_in, h, w]` (overwritten) from dy `[n, c_out, oh, ow]`.
pub fn conv2d_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let _ = (g, w, dy, dx);
    unimplemented!("conv2d_backward_input")
}

/// dw (overwritten) and optionally dbias (overwritten) from x and dy.
pub fn conv2d_backward_weight(
    g: Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    let _ = (g, x, dy, dw, dbias);
    unimplemented!("conv2d_backward_weight")
}

/// y `[n, c_out, oh, ow]` = conv_transpose2d(x `[n, c_in, h, w]`, w `[c_in, c_out, kh, kw]`) + bias.
pub fn conv_transpose2d_forward(
    g: Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let _ = (g, x, w, bias, y);
    unimplemented!("conv_transpose2d_forward")
}

/// dx (overwritten) of conv_transpose2d.
pub fn conv_transpose2d_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let _ = (g, w, dy, dx);
    unimplemented!("conv_transpose2d_backward_input")
}

/// dw and optionally dbias (overwritten) of conv_transpose2d.
pub fn conv_transpose2d_backward_weight(
    g: Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    let _ = (g, x, dy, dw, dbias);
    unimplemented!("conv_transpose2d_backward_weight")
}
