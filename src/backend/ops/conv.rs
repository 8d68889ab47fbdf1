//! Convolutions (dense, transposed, depthwise), their gradients, TinyViT's fused MBConv block,
//! and Hiera's 2×2 max pooling.

use crate::backend::*;
use crate::error::Result;
use medsam_kernels::mbconv::MbConvDims;

/// A convolution's operands: input `x`, weight `w`, and the bias when the layer has one.
#[derive(Clone, Copy)]
pub struct ConvIn<'a> {
    pub x: &'a Storage,
    pub w: &'a Storage,
    pub bias: Option<&'a Storage>,
}

/// What a convolution's backward reads: the forward's `x` and `w`, the output gradient `dy`, and
/// whether the layer has a bias (its gradient is then returned too).
#[derive(Clone, Copy)]
pub struct ConvGradIn<'a> {
    pub x: &'a Storage,
    pub w: &'a Storage,
    pub dy: &'a Storage,
    pub bias: bool,
}

pub trait ConvOps: MemoryOps + PointwiseOps {
    fn conv2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage>;

    fn conv2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads>;

    fn conv_transpose2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage>;

    fn conv_transpose2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads>;

    /// Depthwise conv2d (`groups = c_in = c_out`, weight `[c, 1, kh, kw]`).
    fn depthwise_conv2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage>;

    /// Depthwise conv on channels-last buffers (x `[n, h, w, c]` → `[n, oh, ow, c]`, weight
    /// `[c, 1, kh, kw]`), then GELU if `gelu`; inference only. The default transposes around
    /// [`ConvOps::depthwise_conv2d`].
    fn depthwise_conv2d_nhwc(&self, g: Conv2dGeom, a: ConvIn, gelu: bool) -> Result<Storage> {
        let (c, hw) = (g.c_in, g.h * g.w);
        let nchw = View {
            shape: vec![g.n, c, g.h, g.w],
            strides: vec![hw * c, 1, g.w * c, c],
            offset: 0,
        };
        let xn = self.materialize(a.x, &nchw)?;
        let a = ConvIn { x: &xn, ..a };
        let y = if gelu {
            self.depthwise_conv2d_gelu(g, a)?
        } else {
            self.depthwise_conv2d(g, a)?
        };
        let (oh, ow) = g.out_hw();
        let nhwc = View {
            shape: vec![g.n, oh, ow, c],
            strides: vec![c * oh * ow, ow, 1, oh * ow],
            offset: 0,
        };
        self.materialize(&y, &nhwc)
    }

    /// `gelu(depthwise_conv2d(..))` for inference; backends may fuse the activation.
    fn depthwise_conv2d_gelu(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        let y = self.depthwise_conv2d(g, a)?;
        self.unary(Unary::Gelu, &y)
    }

    fn depthwise_conv2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads>;

    /// `nn.MaxPool2d(2, 2)` (floor mode) of a channels-last view `[n, h, w, c]` whose channel
    /// stride is 1 (any other strides, e.g. queries sliced out of a q/k/v projection, are read
    /// in place) → contiguous `[n, h/2, w/2, c]`; a NaN in a window gives NaN. Inference only.
    fn max_pool2x2_nhwc(&self, x: (&Storage, &View)) -> Result<Storage>;

    /// TinyViT's MBConv block for inference (BatchNorm folded), on `x` stored NCHW, or NHWC
    /// when `channels_last` (the output is stored the same way):
    /// `gelu(W3·gelu(dw3×3(gelu(W1·x + b1)) + b2) + b3 + x)`; `w = [w1, b1, w2, b2, w3, b3]`.
    /// `Ok(None)` when the backend has no fused kernel; the caller then runs the ops one by one.
    fn mbconv(
        &self,
        d: MbConvDims,
        x: &Storage,
        w: [&Storage; 6],
        channels_last: bool,
    ) -> Result<Option<Storage>> {
        let _ = (d, x, w, channels_last);
        Ok(None)
    }
}
