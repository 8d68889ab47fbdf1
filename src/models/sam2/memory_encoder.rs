//! `MemoryEncoder` (`sam2/modeling/memory_encoder.py`): the mask is downsampled 16× by strided
//! convs (`MaskDownSampler`), added to a 1×1 projection of the frame's stride-16 features, fused
//! by ConvNeXt blocks (`CXBlock`) and projected to `out_dim`, with a sine position encoding.

use super::config::MemoryEncoderConfig;
use super::sam2_utils::position_embedding_sine;
use crate::error::Result;
use crate::models::common::{join, Conv2d, Init, LayerNorm2d, Linear, Module};
use crate::tensor::Tensor;

pub struct MaskDownSampler {
    /// (conv, norm) per stage, then the final 1×1 conv; stored as `encoder.{3i}` / `encoder.{3i+1}`.
    pub stages: Vec<(Conv2d, LayerNorm2d)>,
    pub out: Conv2d,
}

impl Module for MaskDownSampler {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for (i, (c, n)) in self.stages.iter_mut().enumerate() {
            c.visit(&join(prefix, &format!("encoder.{}", 3 * i)), f);
            n.visit(&join(prefix, &format!("encoder.{}", 3 * i + 1)), f);
        }
        let last = 3 * self.stages.len();
        self.out.visit(&join(prefix, &format!("encoder.{last}")), f);
    }
}

impl MaskDownSampler {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (c, n) in &self.stages {
            x = n.forward(&c.forward(&x)?)?.gelu()?;
        }
        self.out.forward(&x)
    }
}

/// ConvNeXt block: depthwise conv → LayerNorm2d → pointwise MLP (GELU) → layer scale → residual.
pub struct CxBlock {
    pub dwconv_weight: Tensor,
    pub dwconv_bias: Tensor,
    pub padding: usize,
    pub norm: LayerNorm2d,
    pub pwconv1: Linear,
    pub pwconv2: Linear,
    pub gamma: Option<Tensor>,
}

impl Module for CxBlock {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        if let Some(g) = &mut self.gamma {
            f(&join(prefix, "gamma"), g);
        }
        f(&join(prefix, "dwconv.weight"), &mut self.dwconv_weight);
        f(&join(prefix, "dwconv.bias"), &mut self.dwconv_bias);
        self.norm.visit(&join(prefix, "norm"), f);
        self.pwconv1.visit(&join(prefix, "pwconv1"), f);
        self.pwconv2.visit(&join(prefix, "pwconv2"), f);
    }
}

impl CxBlock {
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let x = input.depthwise_conv2d(
            &self.dwconv_weight,
            Some(&self.dwconv_bias),
            1,
            self.padding,
        )?;
        let x = self.norm.forward(&x)?.permute(&[0, 2, 3, 1])?;
        let x = self.pwconv1.forward(&x)?.gelu()?;
        let mut x = self.pwconv2.forward(&x)?;
        if let Some(g) = &self.gamma {
            x = x.mul(g)?;
        }
        input.add(&x.permute(&[0, 3, 1, 2])?)
    }
}

pub struct MemoryEncoder {
    pub mask_downsampler: MaskDownSampler,
    pub pix_feat_proj: Conv2d,
    /// `fuser.layers.{i}`
    pub fuser: Vec<CxBlock>,
    pub out_proj: Option<Conv2d>,
    pub out_dim: usize,
}

impl Module for MemoryEncoder {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.mask_downsampler
            .visit(&join(prefix, "mask_downsampler"), f);
        self.pix_feat_proj.visit(&join(prefix, "pix_feat_proj"), f);
        for (i, l) in self.fuser.iter_mut().enumerate() {
            l.visit(&join(prefix, &format!("fuser.layers.{i}")), f);
        }
        if let Some(o) = &mut self.out_proj {
            o.visit(&join(prefix, "out_proj"), f);
        }
    }
}

impl MemoryEncoder {
    pub fn new(init: &mut Init, cfg: &MemoryEncoderConfig) -> Result<Self> {
        let md = &cfg.mask_downsampler;
        let num_layers = (md.total_stride as f64).log2() / (md.stride as f64).log2();
        let num_layers = num_layers.round() as usize;
        let mut stages = Vec::new();
        let mut cin = 1;
        for _ in 0..num_layers {
            let cout = cin * md.stride * md.stride;
            stages.push((
                Conv2d::new(init, cin, cout, md.kernel_size, md.stride, md.padding, true)?,
                LayerNorm2d::new(init, cout)?,
            ));
            cin = cout;
        }
        let fl = &cfg.fuser.layer;
        let fuser = (0..cfg.fuser.num_layers)
            .map(|_| {
                let k = fl.kernel_size;
                let bound = 1.0 / ((k * k) as f32).sqrt();
                Ok(CxBlock {
                    dwconv_weight: init.uniform(&[fl.dim, 1, k, k], bound)?,
                    dwconv_bias: init.uniform(&[fl.dim], bound)?,
                    padding: fl.padding,
                    norm: LayerNorm2d::new(init, fl.dim)?,
                    pwconv1: Linear::new(init, fl.dim, 4 * fl.dim, true)?,
                    pwconv2: Linear::new(init, 4 * fl.dim, fl.dim, true)?,
                    gamma: (fl.layer_scale_init_value > 0.0)
                        .then(|| {
                            Tensor::full(&[fl.dim], fl.layer_scale_init_value as f32, init.device)
                        })
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(MemoryEncoder {
            mask_downsampler: MaskDownSampler {
                stages,
                out: Conv2d::new(init, cin, md.embed_dim, 1, 1, 0, true)?,
            },
            pix_feat_proj: Conv2d::new(init, cfg.in_dim, cfg.in_dim, 1, 1, 0, true)?,
            fuser,
            out_proj: (cfg.out_dim != cfg.in_dim)
                .then(|| Conv2d::new(init, cfg.in_dim, cfg.out_dim, 1, 1, 0, true))
                .transpose()?,
            out_dim: cfg.out_dim,
        })
    }

    /// `pix_feat [B, C, h, w]`, `masks [B, 1, 16h, 16w]` (already sigmoid-scaled) →
    /// (`maskmem_features [B, out_dim, h, w]`, position encoding `[B, out_dim, h, w]`).
    pub fn forward(&self, pix_feat: &Tensor, masks: &Tensor) -> Result<(Tensor, Tensor)> {
        let m = self.mask_downsampler.forward(masks)?;
        let mut x = self.pix_feat_proj.forward(pix_feat)?.add(&m)?;
        for l in &self.fuser {
            x = l.forward(&x)?;
        }
        if let Some(o) = &self.out_proj {
            x = o.forward(&x)?;
        }
        let pos = position_embedding_sine(self.out_dim, x.dim(2), x.dim(3), x.device())?;
        Ok((x, pos))
    }
}
