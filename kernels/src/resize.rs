//! Bilinear interpolation of `[planes, h, w]` with PyTorch's `align_corners=False` semantics
//! (`F.interpolate(mode="bilinear")`), forward and backward.

/// y `[planes, oh, ow]` from x `[planes, h, w]`.
pub fn bilinear_forward(
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    x: &[f32],
    y: &mut [f32],
) {
    let _ = (planes, h, w, oh, ow, x, y);
    unimplemented!()
}

/// dx (overwritten) from dy.
pub fn bilinear_backward(
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    dy: &[f32],
    dx: &mut [f32],
) {
    let _ = (planes, h, w, oh, ow, dy, dx);
    unimplemented!()
}
