//! Ascend backend: convolutions (dense, transposed, depthwise), their gradients, and TinyViT's fused MBConv block.

use super::*;

impl ConvOps for AscendBackend {
    fn conv2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        let bias = a.bias.map(|b| self.buf(b)).transpose()?;
        self.conv_fwd_raw(g, self.buf(a.x)?, self.buf(a.w)?, bias)
    }

    fn conv2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads> {
        let (x, w, dy) = (self.buf(a.x)?, self.buf(a.w)?, self.buf(a.dy)?);
        let (dx, dw, db) = self.conv_bwd_raw(g, x, w, dy, true, true, a.bias)?;
        Ok(ConvGrads {
            dx: dx.expect("requested"),
            dw: dw.expect("requested"),
            dbias: db,
        })
    }

    fn conv_transpose2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        // conv_transpose2d(x, w) is the input gradient of conv2d(·, w) at dy = x
        // (aclnnConvolutionBackward with only gradInput requested; its `input` argument only
        // supplies the shape, so an uninitialised buffer of that shape is passed).
        let adj = Self::adjoint_geom(g);
        let (oh, ow) = g.transpose_out_hw();
        let ny = g.n * g.c_out * oh * ow;
        let shape_only = self.alloc(ny)?;
        let (w, x) = (self.buf(a.w)?, self.buf(a.x)?);
        let (y, _, _) = self.conv_bwd_raw(adj, &shape_only, w, x, true, false, false)?;
        self.stream.retain_until_sync(shape_only);
        let y = y.expect("requested");
        match a.bias {
            None => Ok(y),
            Some(b) => {
                let dims = [g.n, g.c_out, oh * ow];
                self.add_views(
                    (self.buf(&y)?, contig(&dims)),
                    (self.buf(b)?, lay(&dims, &[0, 1, 0], 0)),
                    1.0,
                    &dims,
                )
            }
        }
    }

    fn conv_transpose2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads> {
        let adj = Self::adjoint_geom(g);
        let (xb, wb, gb) = (self.buf(a.x)?, self.buf(a.w)?, self.buf(a.dy)?);
        // dx = conv2d(dy, w); dw = the weight gradient of conv2d(dy as input, w) at grad x.
        let dx = self.conv_fwd_raw(adj, gb, wb, None)?;
        let (_, dw, _) = self.conv_bwd_raw(adj, gb, wb, xb, false, true, false)?;
        let (oh, ow) = g.transpose_out_hw();
        let dbias = (a.bias)
            .then(|| self.channel_sum(gb, g.n, g.c_out, oh * ow))
            .transpose()?;
        Ok(ConvGrads {
            dx,
            dw: dw.expect("requested"),
            dbias,
        })
    }

    fn depthwise_conv2d(&self, g: Conv2dGeom, a: ConvIn) -> Result<Storage> {
        // aclnnConvolution with groups = channels (weight [c, 1, kh, kw]).
        self.check_depthwise(&g)?;
        self.conv2d(g, a)
    }

    fn depthwise_conv2d_backward(&self, g: Conv2dGeom, a: ConvGradIn) -> Result<ConvGrads> {
        self.check_depthwise(&g)?;
        self.conv2d_backward(g, a)
    }

    fn max_pool2x2_nhwc(&self, (x, v): (&Storage, &View)) -> Result<Storage> {
        // The four corners of every window are four strided views of `x` (steps of two rows
        // and two columns): two aclnnMaximum calls over pairs of them, one over the results.
        let [n, h, w, c] = v.shape[..] else {
            return Err(Error::Shape {
                op: "max_pool2x2_nhwc",
                detail: format!("expected [n, h, w, c], got {:?}", v.shape),
            });
        };
        let dims = [n, h / 2, w / 2, c];
        let (sb, sy, sx, sc) = (v.strides[0], v.strides[1], v.strides[2], v.strides[3]);
        let corner = |dy: usize, dx: usize| {
            lay(
                &dims,
                &[sb, 2 * sy, 2 * sx, sc],
                v.offset + dy * sy + dx * sx,
            )
        };
        let xb = self.buf(x)?;
        let top = self.max_views((xb, corner(0, 0)), (xb, corner(0, 1)), &dims)?;
        let bottom = self.max_views((xb, corner(1, 0)), (xb, corner(1, 1)), &dims)?;
        self.max_views(
            (self.buf(&top)?, contig(&dims)),
            (self.buf(&bottom)?, contig(&dims)),
            &dims,
        )
    }
}
