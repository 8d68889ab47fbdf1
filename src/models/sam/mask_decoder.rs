//! `MaskDecoder` (segment_anything/modeling/mask_decoder.py) with MedSAM's batch pairing: when the
//! batch holds as many image embeddings as prompts, image `i` is decoded with prompt `i`.

use super::transformer::TwoWayTransformer;
use crate::error::{Error, Result};
use crate::models::common::ConvTranspose2d;
use crate::models::common::{join, Embedding, Init, LayerNorm2d, Linear, Module};
use crate::models::config::MaskDecoderConfig;
use crate::tensor::Tensor;

/// SAM's `MLP`: ReLU between `num_layers` linears.
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Module for Mlp {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit(&join(prefix, &format!("layers.{i}")), f);
        }
    }
}

impl Mlp {
    pub fn new(init: &mut Init, inp: usize, hidden: usize, out: usize, n: usize) -> Result<Self> {
        let dims: Vec<usize> = std::iter::once(inp)
            .chain(std::iter::repeat_n(hidden, n - 1))
            .chain(std::iter::once(out))
            .collect();
        Ok(Mlp {
            layers: dims
                .windows(2)
                .map(|w| Linear::new(init, w[0], w[1], true))
                .collect::<Result<_>>()?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

pub struct OutputUpscaling {
    pub conv0: ConvTranspose2d,
    pub norm1: LayerNorm2d,
    pub conv3: ConvTranspose2d,
}

impl Module for OutputUpscaling {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.conv0.visit(&join(prefix, "0"), f);
        self.norm1.visit(&join(prefix, "1"), f);
        self.conv3.visit(&join(prefix, "3"), f);
    }
}

pub struct MaskDecoder {
    pub transformer: TwoWayTransformer,
    pub iou_token: Embedding,
    pub mask_tokens: Embedding,
    pub output_upscaling: OutputUpscaling,
    pub output_hypernetworks_mlps: Vec<Mlp>,
    pub iou_prediction_head: Mlp,
    pub num_mask_tokens: usize,
}

impl Module for MaskDecoder {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.transformer.visit(&join(prefix, "transformer"), f);
        self.iou_token.visit(&join(prefix, "iou_token"), f);
        self.mask_tokens.visit(&join(prefix, "mask_tokens"), f);
        self.output_upscaling
            .visit(&join(prefix, "output_upscaling"), f);
        for (i, m) in self.output_hypernetworks_mlps.iter_mut().enumerate() {
            m.visit(&join(prefix, &format!("output_hypernetworks_mlps.{i}")), f);
        }
        self.iou_prediction_head
            .visit(&join(prefix, "iou_prediction_head"), f);
    }
}

impl MaskDecoder {
    pub fn new(init: &mut Init, cfg: &MaskDecoderConfig) -> Result<Self> {
        let d = cfg.transformer_dim;
        let n = cfg.num_multimask_outputs + 1;
        Ok(MaskDecoder {
            transformer: TwoWayTransformer::new(
                init,
                cfg.transformer_depth,
                d,
                cfg.transformer_num_heads,
                cfg.transformer_mlp_dim,
            )?,
            iou_token: Embedding::new(init, 1, d)?,
            mask_tokens: Embedding::new(init, n, d)?,
            output_upscaling: OutputUpscaling {
                conv0: ConvTranspose2d::new(init, d, d / 4, 2)?,
                norm1: LayerNorm2d::new(init, d / 4)?,
                conv3: ConvTranspose2d::new(init, d / 4, d / 8, 2)?,
            },
            output_hypernetworks_mlps: (0..n)
                .map(|_| Mlp::new(init, d, d, d / 8, 3))
                .collect::<Result<_>>()?,
            iou_prediction_head: Mlp::new(init, d, cfg.iou_head_hidden_dim, n, cfg.iou_head_depth)?,
            num_mask_tokens: n,
        })
    }

    /// Returns low-res mask logits `[B, M, 4h, 4w]` and IoU predictions `[B, M]`; `M` is 1, or the
    /// multimask outputs when `multimask_output`.
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (masks, iou) = self.predict_masks(image_embeddings, image_pe, sparse, dense)?;
        let (start, len) = if multimask_output {
            (1, self.num_mask_tokens - 1)
        } else {
            (0, 1)
        };
        Ok((masks.narrow(1, start, len)?, iou.narrow(1, start, len)?))
    }

    fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let bs = sparse.dim(0);
        let output_tokens = Tensor::cat(
            &[
                self.iou_token.weight.clone(),
                self.mask_tokens.weight.clone(),
            ],
            0,
        )?;
        let d = output_tokens.dim(1);
        let output_tokens =
            output_tokens
                .unsqueeze(0)?
                .broadcast_to(&[bs, self.num_mask_tokens + 1, d])?;
        let tokens = Tensor::cat(&[output_tokens, sparse.clone()], 1)?;
        let nb = image_embeddings.dim(0);
        let src = if nb == bs {
            image_embeddings.clone()
        } else if nb == 1 {
            image_embeddings.broadcast_to(&[
                bs,
                image_embeddings.dim(1),
                image_embeddings.dim(2),
                image_embeddings.dim(3),
            ])?
        } else {
            return Err(Error::shape(
                "mask_decoder",
                format!("{nb} image embeddings for {bs} prompts"),
            ));
        };
        let src = src.add(dense)?;
        let (b, c, h, w) = (src.dim(0), src.dim(1), src.dim(2), src.dim(3));
        let pos_src = image_pe.broadcast_to(&[b, c, h, w])?;
        let (hs, src) = self.transformer.forward(&src, &pos_src, &tokens)?;
        let iou_token_out = hs.narrow(1, 0, 1)?.reshape(&[b, d])?;
        let src = src.transpose(1, 2)?.reshape(&[b, c, h, w])?;
        let up = &self.output_upscaling;
        let x = up.norm1.forward(&up.conv0.forward(&src)?)?.gelu()?;
        let upscaled = up.conv3.forward(&x)?.gelu()?;
        let hyper: Vec<Tensor> = (0..self.num_mask_tokens)
            .map(|i| {
                self.output_hypernetworks_mlps[i]
                    .forward(&hs.narrow(1, 1 + i, 1)?.reshape(&[b, d])?)
            })
            .collect::<Result<_>>()?;
        let hyper_in = Tensor::stack(&hyper, 1)?; // [b, M, c']
        let (cu, hu, wu) = (upscaled.dim(1), upscaled.dim(2), upscaled.dim(3));
        let masks = hyper_in
            .matmul(&upscaled.reshape(&[b, cu, hu * wu])?)?
            .reshape(&[b, self.num_mask_tokens, hu, wu])?;
        let iou_pred = self.iou_prediction_head.forward(&iou_token_out)?;
        Ok((masks, iou_pred))
    }
}
