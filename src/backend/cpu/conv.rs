//! CPU backend: convolutions (dense, transposed, depthwise), their gradients, and TinyViT's fused MBConv block.

use super::*;
use medsam_kernels::conv;

impl ConvOps for CpuBackend {
    fn conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = vec![0.0; g.n * g.c_out * oh * ow];
        let bias = bias.map(host).transpose()?;
        conv::conv2d_forward(g, host(x)?, host(w)?, bias, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        conv_grads(
            g,
            (x, w, dy),
            bias,
            conv::conv2d_backward_input,
            conv::conv2d_backward_weight,
        )
    }

    fn conv_transpose2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.transpose_out_hw();
        let mut y = vec![0.0; g.n * g.c_out * oh * ow];
        let bias = bias.map(host).transpose()?;
        conv::conv_transpose2d_forward(g, host(x)?, host(w)?, bias, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn conv_transpose2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        conv_grads(
            g,
            (x, w, dy),
            bias,
            conv::conv_transpose2d_backward_input,
            conv::conv_transpose2d_backward_weight,
        )
    }

    fn depthwise_conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = buffer(g.n * g.c_out * oh * ow);
        let bias = bias.map(host).transpose()?;
        depthwise::depthwise_forward(g, host(x)?, host(w)?, bias, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn depthwise_conv2d_nhwc(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        gelu: bool,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = buffer(g.n * g.c_out * oh * ow);
        let bias = bias.map(host).transpose()?;
        depthwise::depthwise_nhwc_forward(g, host(x)?, host(w)?, bias, gelu, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn depthwise_conv2d_gelu(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = buffer(g.n * g.c_out * oh * ow);
        let bias = bias.map(host).transpose()?;
        depthwise::depthwise_forward_act(g, host(x)?, host(w)?, bias, true, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn depthwise_conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        let (x, w, dy) = (host(x)?, host(w)?, host(dy)?);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        let mut db = bias.then(|| vec![0.0; g.c_out]);
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
        dims: medsam_kernels::mbconv::MbConvDims,
        x: &Storage,
        w: [&Storage; 6],
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
        medsam_kernels::mbconv::mbconv_forward(dims, host(x)?, wt, &mut y);
        Ok(Some(Storage::Cpu(y)))
    }
}
