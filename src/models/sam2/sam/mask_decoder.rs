//! SAM 2's `MaskDecoder` (`sam2/modeling/sam/mask_decoder.py`): SAM's decoder plus an object-score
//! token and head, high-resolution skip features (`conv_s0`, `conv_s1`) added during upscaling,
//! a sigmoid IoU head, and the video predictor's fallback from an unstable single mask to the
//! best multimask output.

use super::super::config::MaskDecoderExtraArgs;
use super::transformer::TwoWayTransformer;
use crate::error::{Error, Result};
use crate::models::common::{join, Conv2d, Embedding, Init, Mlp, Module};
use crate::models::sam::mask_decoder::{self as sam, hypernetworks_mlps, OutputUpscaling};
use crate::tensor::Tensor;

/// What the decoder returns for a batch of `b` prompts.
pub struct DecoderOut {
    /// `[b, M, 4h, 4w]` mask logits (M = 3 multimask, else 1).
    pub masks: Tensor,
    /// `[b, M]`
    pub iou_pred: Tensor,
    /// `[b, M', C]` output tokens for object pointers (M' = 3 with multimask and
    /// `use_multimask_token_for_obj_ptr`, else 1).
    pub sam_tokens_out: Tensor,
    /// `[b, 1]`
    pub object_score_logits: Tensor,
}

pub struct MaskDecoder {
    /// SAM's decoder with SAM 2's block MLP: `transformer`, `iou_token`, `mask_tokens`,
    /// `output_upscaling`, `output_hypernetworks_mlps`, `iou_prediction_head` (sigmoid output
    /// with `iou_prediction_use_sigmoid`).
    pub sam: sam::MaskDecoder<Mlp>,
    pub obj_score_token: Option<Embedding>,
    pub conv_s0: Option<Conv2d>,
    pub conv_s1: Option<Conv2d>,
    pub pred_obj_score_head: Option<Mlp>,
    pub use_multimask_token_for_obj_ptr: bool,
    pub extra: MaskDecoderExtraArgs,
}

impl Module for MaskDecoder {
    // The reference's order: SAM 2's extras sit between SAM's modules.
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        let s = &mut self.sam;
        s.transformer.visit(&join(prefix, "transformer"), f);
        s.iou_token.visit(&join(prefix, "iou_token"), f);
        s.mask_tokens.visit(&join(prefix, "mask_tokens"), f);
        if let Some(t) = &mut self.obj_score_token {
            t.visit(&join(prefix, "obj_score_token"), f);
        }
        s.output_upscaling
            .visit(&join(prefix, "output_upscaling"), f);
        if let Some(c) = &mut self.conv_s0 {
            c.visit(&join(prefix, "conv_s0"), f);
        }
        if let Some(c) = &mut self.conv_s1 {
            c.visit(&join(prefix, "conv_s1"), f);
        }
        for (i, m) in s.output_hypernetworks_mlps.iter_mut().enumerate() {
            m.visit(&join(prefix, &format!("output_hypernetworks_mlps.{i}")), f);
        }
        s.iou_prediction_head
            .visit(&join(prefix, "iou_prediction_head"), f);
        if let Some(h) = &mut self.pred_obj_score_head {
            // A single Linear is stored as `pred_obj_score_head.weight`; the MLP as `.layers.i`.
            if h.layers.len() == 1 {
                h.layers[0].visit(&join(prefix, "pred_obj_score_head"), f);
            } else {
                h.visit(&join(prefix, "pred_obj_score_head"), f);
            }
        }
    }
}

/// Decoder options taken from `SAM2Base`.
pub struct MaskDecoderOptions {
    pub use_high_res_features: bool,
    pub iou_prediction_use_sigmoid: bool,
    pub pred_obj_scores: bool,
    pub pred_obj_scores_mlp: bool,
    pub use_multimask_token_for_obj_ptr: bool,
    pub extra: MaskDecoderExtraArgs,
}

impl MaskDecoder {
    pub fn new(init: &mut Init, d: usize, o: MaskDecoderOptions) -> Result<Self> {
        let n = 4;
        // Parameters are drawn in the order the reference builds them.
        let mut iou_prediction_head = Mlp::new(init, d, 256, n, 3, false)?;
        iou_prediction_head.sigmoid_output = o.iou_prediction_use_sigmoid;
        let transformer = TwoWayTransformer::new(init, 2, d, 8, 2048)?;
        let iou_token = Embedding::new(init, 1, d)?;
        let mask_tokens = Embedding::new(init, n, d)?;
        let obj_score_token = o
            .pred_obj_scores
            .then(|| Embedding::new(init, 1, d))
            .transpose()?;
        let output_upscaling = OutputUpscaling::new(init, d)?;
        let conv_s0 = o
            .use_high_res_features
            .then(|| Conv2d::new(init, d, d / 8, 1, 1, 0, true))
            .transpose()?;
        let conv_s1 = o
            .use_high_res_features
            .then(|| Conv2d::new(init, d, d / 4, 1, 1, 0, true))
            .transpose()?;
        let output_hypernetworks_mlps = hypernetworks_mlps(init, d, n)?;
        let pred_obj_score_head = if !o.pred_obj_scores {
            None
        } else if o.pred_obj_scores_mlp {
            Some(Mlp::new(init, d, d, 1, 3, false)?)
        } else {
            Some(Mlp::new(init, d, d, 1, 1, false)?)
        };
        Ok(MaskDecoder {
            sam: sam::MaskDecoder {
                transformer,
                iou_token,
                mask_tokens,
                output_upscaling,
                output_hypernetworks_mlps,
                iou_prediction_head,
                num_mask_tokens: n,
            },
            obj_score_token,
            conv_s0,
            conv_s1,
            pred_obj_score_head,
            use_multimask_token_for_obj_ptr: o.use_multimask_token_for_obj_ptr,
            extra: o.extra,
        })
    }

    /// `image_embeddings [b, C, h, w]` (one per prompt), `image_pe [1, C, h, w]`,
    /// `high_res_features` = (feat_s0 `[b, C/8, 4h, 4w]`, feat_s1 `[b, C/4, 2h, 2w]`).
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
        high_res_features: Option<(&Tensor, &Tensor)>,
    ) -> Result<DecoderOut> {
        let (masks, iou, mask_tokens_out, object_score_logits) =
            self.predict_masks(image_embeddings, image_pe, sparse, dense, high_res_features)?;
        let (masks, iou_pred) = if multimask_output {
            (masks.narrow(1, 1, 3)?, iou.narrow(1, 1, 3)?)
        } else if self.extra.dynamic_multimask_via_stability {
            self.dynamic_multimask_via_stability(&masks, &iou)?
        } else {
            (masks.narrow(1, 0, 1)?, iou.narrow(1, 0, 1)?)
        };
        let sam_tokens_out = if multimask_output && self.use_multimask_token_for_obj_ptr {
            mask_tokens_out.narrow(1, 1, 3)?
        } else {
            mask_tokens_out.narrow(1, 0, 1)?
        };
        Ok(DecoderOut {
            masks,
            iou_pred,
            sam_tokens_out,
            object_score_logits,
        })
    }

    fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        high_res_features: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let bs = sparse.dim(0);
        if image_embeddings.dim(0) != bs {
            return Err(Error::shape(
                "sam2 mask_decoder",
                format!(
                    "{} image embeddings for {bs} prompts",
                    image_embeddings.dim(0)
                ),
            ));
        }
        let src = image_embeddings.add(dense)?;
        let (hs, masks) = self.sam.decode(
            self.obj_score_token.as_ref(),
            &src,
            image_pe,
            sparse,
            high_res_features,
        )?;
        let s = usize::from(self.obj_score_token.is_some());
        let iou_token_out = hs.select(1, s)?;
        let mask_tokens_out = hs.narrow(1, s + 1, self.sam.num_mask_tokens)?;
        let iou_pred = self.sam.iou_prediction_head.forward(&iou_token_out)?;
        let object_score_logits = match &self.pred_obj_score_head {
            Some(head) => head.forward(&hs.select(1, 0)?)?,
            None => Tensor::full(&[bs, 1], 10.0, src.device())?,
        };
        Ok((masks, iou_pred, mask_tokens_out, object_score_logits))
    }

    /// Area(logits > δ) / area(logits > −δ) per mask (1 for an empty union).
    fn stability_scores(&self, logits: &[f32]) -> f32 {
        let delta = self.extra.dynamic_multimask_stability_delta;
        let i = logits.iter().filter(|&&v| v > delta).count();
        let u = logits.iter().filter(|&&v| v > -delta).count();
        if u > 0 {
            i as f32 / u as f32
        } else {
            1.0
        }
    }

    /// `_dynamic_multimask_via_stability`: keep the single-mask output where it is stable,
    /// otherwise the multimask output with the highest predicted IoU.
    fn dynamic_multimask_via_stability(
        &self,
        masks: &Tensor,
        iou: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, hw) = (masks.dim(0), masks.dim(2) * masks.dim(3));
        let (mv, iv) = (masks.contiguous()?.to_vec()?, iou.to_vec()?);
        let m = self.sam.num_mask_tokens;
        let mut out_m = Vec::with_capacity(b * hw);
        let mut out_i = Vec::with_capacity(b);
        for bi in 0..b {
            let plane = |k: usize| &mv[(bi * m + k) * hw..(bi * m + k + 1) * hw];
            let ious = &iv[bi * m..(bi + 1) * m];
            let best = argmax(&ious[1..]) + 1;
            let stable =
                self.stability_scores(plane(0)) >= self.extra.dynamic_multimask_stability_thresh;
            let k = if stable { 0 } else { best };
            out_m.extend_from_slice(plane(k));
            out_i.push(ious[k]);
        }
        Ok((
            Tensor::from_slice(&out_m, &[b, 1, masks.dim(2), masks.dim(3)], masks.device())?,
            Tensor::from_slice(&out_i, &[b, 1], masks.device())?,
        ))
    }
}

/// Index of the first maximum (torch.argmax's choice among ties on CPU).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
