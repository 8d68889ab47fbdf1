//! CPU backend: convolutions (dense, transposed, depthwise), their gradients, TinyViT's fused
//! MBConv block, and Hiera's 2×2 max pooling.

use super::*;
use medsam_kernels::conv;
use medsam_kernels::mbconv::MbConvDims;
use medsam_kernels::pool::{self, NhwcView};

/// The `[n, c_out, oh, ow]` output: zeroed for the kernels that accumulate into it, from the
/// pool for those that write every element.
fn out_buf(g: Conv2dGeom, (oh, ow): (usize, usize), zeroed: bool) -> Vec<f32> {
    let len = g.n * g.c_out * oh * ow;
    if zeroed {
        super::zeroed(len)
    } else {
        buffer(len)
    }
}

/// Runs a forward `kernel(g, x, w, bias, y)` into `y`.
fn forward(
    mut y: Vec<f32>,
    g: Conv2dGeom,
    a: ConvIn,
    kernel: impl FnOnce(Conv2dGeom, &[f32], &[f32], Option<&[f32]>, &mut [f32]),
) -> Result<Storage> {
    let bias = a.bias.map(host).transpose()?;
    kernel(g, host(a.x)?, host(a.w)?, bias, &mut y);
    Ok(Storage::Cpu(y))
}

impl ConvOps for CpuBackend {
    fn conv2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        forward(out_buf(g, g.out_hw(), true), g, a, conv::conv2d_forward)
    }

    fn conv2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads> {
        let kernels = (conv::conv2d_backward_input, conv::conv2d_backward_weight);
        conv_grads(g, (a.x, a.w, a.dy), a.bias, kernels.0, kernels.1)
    }

    fn conv_transpose2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        let y = out_buf(g, g.transpose_out_hw(), true);
        forward(y, g, a, conv::conv_transpose2d_forward)
    }

    fn conv_transpose2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads> {
        let input = conv::conv_transpose2d_backward_input;
        let weight = conv::conv_transpose2d_backward_weight;
        conv_grads(g, (a.x, a.w, a.dy), a.bias, input, weight)
    }

    fn depthwise_conv2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        forward(
            out_buf(g, g.out_hw(), false),
            g,
            a,
            depthwise::depthwise_forward,
        )
    }

    fn depthwise_conv2d_nhwc(&self, g: Conv2dGeom, a: ConvIn, gelu: bool) -> Result<Storage> {
        let y = out_buf(g, g.out_hw(), false);
        forward(y, g, a, |g, x, w, b, y| {
            depthwise::depthwise_nhwc_forward(g, x, w, b, gelu, y)
        })
    }

    fn depthwise_conv2d_gelu(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        let y = out_buf(g, g.out_hw(), false);
        forward(y, g, a, |g, x, w, b, y| {
            depthwise::depthwise_forward_act(g, x, w, b, true, y)
        })
    }

    fn depthwise_conv2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads> {
        let (x, w, dy) = (host(a.x)?, host(a.w)?, host(a.dy)?);
        let (mut dx, mut dw) = (super::zeroed(x.len()), super::zeroed(w.len()));
        let mut db = a.bias.then(|| super::zeroed(g.c_out));
        depthwise::depthwise_backward_input(g, w, dy, &mut dx);
        depthwise::depthwise_backward_weight(g, x, dy, &mut dw, db.as_deref_mut());
        Ok(ConvGrads {
            dx: Storage::Cpu(dx),
            dw: Storage::Cpu(dw),
            dbias: db.map(Storage::Cpu),
        })
    }

    fn mbconv(
        &self,
        d: MbConvDims,
        x: &Storage,
        w: [&Storage; 6],
        channels_last: bool,
    ) -> Result<Option<Storage>> {
        let mut y = buffer(host(x)?.len());
        let wt = medsam_kernels::mbconv::MbConvWeights {
            w1: host(w[0])?,
            b1: host(w[1])?,
            w2: host(w[2])?,
            b2: host(w[3])?,
            w3: host(w[4])?,
            b3: host(w[5])?,
        };
        let run = if channels_last {
            medsam_kernels::mbconv::mbconv_forward_nhwc
        } else {
            medsam_kernels::mbconv::mbconv_forward
        };
        run(d, host(x)?, wt, &mut y);
        Ok(Some(Storage::Cpu(y)))
    }

    fn max_pool2x2_nhwc(&self, (x, v): (&Storage, &View)) -> Result<Storage> {
        let [n, h, w, c] = v.shape[..] else {
            return Err(Error::Shape {
                op: "max_pool2x2_nhwc",
                detail: format!("expected [n, h, w, c], got {:?}", v.shape),
            });
        };
        let view = NhwcView {
            n,
            h,
            w,
            c,
            strides: [v.strides[0], v.strides[1], v.strides[2]],
            offset: v.offset,
        };
        let mut out = buffer(view.pooled_len());
        pool::max_pool2x2_nhwc(host(x)?, &view, &mut out);
        Ok(Storage::Cpu(out))
    }
}
