//! `SAM2Base` (`sam2/modeling/sam2_base.py`): the model's parameters outside the sub-modules
//! (temporal position encodings of the memory bank, no-memory / no-object embeddings, object
//! pointer projections) and one tracking step — condition the frame's features on the memory
//! bank, run the SAM heads, choose the output mask, encode the result as a new memory.
//!
//! Spatial tensors are NCHW; memory tokens are batch first `[B, N, C]` (the reference is
//! sequence first and transposes inside the memory attention — same arithmetic).

use super::config::Sam2Config;
use super::image_encoder::ImageEncoder;
use super::memory_attention::MemoryAttention;
use super::memory_encoder::MemoryEncoder;
use super::sam::mask_decoder::{argmax, MaskDecoder, MaskDecoderOptions};
use super::sam::prompt_encoder::{PointInputs, PromptEncoder};
use super::sam2_utils::{get_1d_sine_pe, interpolate_bilinear_aa, Mlp};
use crate::error::{Error, Result};
use crate::models::common::{join, Conv2d, Init, Linear, Module};
use crate::ops::precision::InferPrecision;
use crate::tensor::Tensor;
use crate::Device;
use std::collections::BTreeMap;

/// Mask logit written where the object is predicted absent.
pub const NO_OBJ_SCORE: f32 = -1024.0;

/// One frame's image features, as `_prepare_backbone_features` leaves them (NCHW here).
#[derive(Clone)]
pub struct FrameFeatures {
    /// The `num_feature_levels` highest levels, highest resolution first; levels 0 and 1 already
    /// went through `conv_s0` / `conv_s1` when high-res features are used.
    pub vision_feats: Vec<Tensor>,
    pub vision_pos_embeds: Vec<Tensor>,
}

impl FrameFeatures {
    fn top(&self) -> &Tensor {
        self.vision_feats
            .last()
            .expect("at least one feature level")
    }
    fn high_res(&self) -> Option<(&Tensor, &Tensor)> {
        (self.vision_feats.len() > 1).then(|| (&self.vision_feats[0], &self.vision_feats[1]))
    }
}

/// `_forward_sam_heads` outputs.
pub struct SamHeadsOut {
    pub low_res_multimasks: Tensor,
    pub high_res_multimasks: Tensor,
    pub ious: Tensor,
    /// `[B, 1, 4h, 4w]` the chosen mask.
    pub low_res_masks: Tensor,
    /// `[B, 1, S, S]`
    pub high_res_masks: Tensor,
    /// `[B, C]`
    pub obj_ptr: Tensor,
    /// `[B, 1]`
    pub object_score_logits: Tensor,
}

/// What a tracked frame leaves in the memory bank (`current_out` in the reference).
#[derive(Clone)]
pub struct FrameOutput {
    /// `[B, mem_dim, h, w]`, rounded through bfloat16 as the predictor stores them.
    pub maskmem_features: Option<Tensor>,
    pub maskmem_pos_enc: Option<Tensor>,
    /// `[B, 1, 4h, 4w]` low-res logits.
    pub pred_masks: Tensor,
    /// Upsampled logits `[B, 1, S, S]` (not stored by the reference's compact output).
    pub pred_masks_high_res: Option<Tensor>,
    pub obj_ptr: Tensor,
    pub object_score_logits: Tensor,
}

/// `{"cond_frame_outputs": {...}, "non_cond_frame_outputs": {...}}` of one object.
#[derive(Clone, Default)]
pub struct OutputDict {
    pub cond_frame_outputs: BTreeMap<usize, FrameOutput>,
    pub non_cond_frame_outputs: BTreeMap<usize, FrameOutput>,
}

pub struct Sam2Base {
    pub config: Sam2Config,
    pub image_encoder: ImageEncoder,
    pub mask_downsample: Option<Conv2d>,
    pub memory_attention: MemoryAttention,
    pub memory_encoder: MemoryEncoder,
    /// `[num_maskmem, 1, 1, mem_dim]`
    pub maskmem_tpos_enc: Tensor,
    /// `[1, 1, C]`
    pub no_mem_embed: Tensor,
    pub no_mem_pos_enc: Tensor,
    /// `[1, C]`
    pub no_obj_ptr: Option<Tensor>,
    /// `[1, mem_dim]`
    pub no_obj_embed_spatial: Option<Tensor>,
    pub sam_prompt_encoder: PromptEncoder,
    pub sam_mask_decoder: MaskDecoder,
    /// `obj_ptr_proj`: an MLP (3 layers) or a single Linear; absent = identity.
    pub obj_ptr_proj: Option<Mlp>,
    pub obj_ptr_tpos_proj: Option<Linear>,
    pub hidden_dim: usize,
    pub mem_dim: usize,
}

impl Module for Sam2Base {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(
            &join(prefix, "maskmem_tpos_enc"),
            &mut self.maskmem_tpos_enc,
        );
        f(&join(prefix, "no_mem_embed"), &mut self.no_mem_embed);
        f(&join(prefix, "no_mem_pos_enc"), &mut self.no_mem_pos_enc);
        if let Some(t) = &mut self.no_obj_ptr {
            f(&join(prefix, "no_obj_ptr"), t);
        }
        if let Some(t) = &mut self.no_obj_embed_spatial {
            f(&join(prefix, "no_obj_embed_spatial"), t);
        }
        self.image_encoder.visit(&join(prefix, "image_encoder"), f);
        if let Some(c) = &mut self.mask_downsample {
            c.visit(&join(prefix, "mask_downsample"), f);
        }
        self.memory_attention
            .visit(&join(prefix, "memory_attention"), f);
        self.memory_encoder
            .visit(&join(prefix, "memory_encoder"), f);
        self.sam_prompt_encoder
            .visit(&join(prefix, "sam_prompt_encoder"), f);
        self.sam_mask_decoder
            .visit(&join(prefix, "sam_mask_decoder"), f);
        if let Some(p) = &mut self.obj_ptr_proj {
            if p.layers.len() == 1 {
                p.layers[0].visit(&join(prefix, "obj_ptr_proj"), f);
            } else {
                p.visit(&join(prefix, "obj_ptr_proj"), f);
            }
        }
        if let Some(p) = &mut self.obj_ptr_tpos_proj {
            p.visit(&join(prefix, "obj_ptr_tpos_proj"), f);
        }
    }
}

/// Rounds every element through bfloat16 (round to nearest even), as `.to(torch.bfloat16)`.
pub fn round_bf16(t: &Tensor) -> Result<Tensor> {
    let v: Vec<f32> = t
        .to_vec()?
        .into_iter()
        .map(|x| half::bf16::from_f32(x).to_f32())
        .collect();
    Tensor::from_slice(&v, t.shape(), t.device())
}

/// `[B, C, H, W]` → `[B, H·W, C]`.
fn to_tokens(t: &Tensor) -> Result<Tensor> {
    t.flatten_from(2)?.permute(&[0, 2, 1])?.contiguous()
}

impl Sam2Base {
    /// A model with PyTorch-style random initialisation (load a checkpoint over it).
    pub fn new(config: &Sam2Config, seed: u64, device: Device) -> Result<Self> {
        config.validate().map_err(Error::Other)?;
        let mut init = Init::new(seed, device);
        let c = config.hidden_dim();
        let image_encoder = ImageEncoder::new(&mut init, &config.image_encoder)?;
        let memory_encoder = MemoryEncoder::new(&mut init, &config.memory_encoder)?;
        let mem_dim = if memory_encoder.out_proj.is_some() {
            config.memory_encoder.out_dim
        } else {
            c
        };
        let grid = config.embedding_size();
        let pred_obj = config.pred_obj_scores;
        let use_ptrs = config.use_obj_ptrs_in_encoder;
        Ok(Sam2Base {
            config: config.clone(),
            image_encoder,
            mask_downsample: use_ptrs
                .then(|| Conv2d::new(&mut init, 1, 1, 4, 4, 0, true))
                .transpose()?,
            memory_attention: MemoryAttention::new(&mut init, &config.memory_attention)?,
            memory_encoder,
            maskmem_tpos_enc: init.normal(&[config.num_maskmem, 1, 1, mem_dim], 0.02)?,
            no_mem_embed: init.normal(&[1, 1, c], 0.02)?,
            no_mem_pos_enc: init.normal(&[1, 1, c], 0.02)?,
            no_obj_ptr: (pred_obj && use_ptrs)
                .then(|| init.normal(&[1, c], 0.02))
                .transpose()?,
            no_obj_embed_spatial: config
                .no_obj_embed_spatial
                .then(|| init.normal(&[1, mem_dim], 0.02))
                .transpose()?,
            sam_prompt_encoder: PromptEncoder::new(&mut init, c, grid, config.image_size)?,
            sam_mask_decoder: MaskDecoder::new(
                &mut init,
                c,
                MaskDecoderOptions {
                    use_high_res_features: config.use_high_res_features_in_sam,
                    iou_prediction_use_sigmoid: config.iou_prediction_use_sigmoid,
                    pred_obj_scores: pred_obj,
                    pred_obj_scores_mlp: config.pred_obj_scores_mlp,
                    use_multimask_token_for_obj_ptr: config.use_multimask_token_for_obj_ptr,
                    extra: config.sam_mask_decoder_extra_args.clone(),
                },
            )?,
            obj_ptr_proj: if !use_ptrs {
                None
            } else if config.use_mlp_for_obj_ptr_proj {
                Some(Mlp::new(&mut init, c, c, c, 3, false)?)
            } else {
                Some(Mlp::new(&mut init, c, c, c, 1, false)?)
            },
            obj_ptr_tpos_proj: config
                .proj_tpos_enc_in_obj_ptrs
                .then(|| Linear::new(&mut init, c, mem_dim, true))
                .transpose()?,
            hidden_dim: c,
            mem_dim,
        })
    }

    /// Every parameter by state-dict name.
    pub fn state_dict(&mut self) -> Vec<(String, Tensor)> {
        crate::models::common::state_dict(self)
    }

    /// Copies matching tensors in; reports missing, unexpected and wrongly shaped keys.
    pub fn load_state_dict(
        &mut self,
        weights: &BTreeMap<String, Tensor>,
    ) -> Result<crate::models::LoadReport> {
        crate::models::common::load_state_dict(self, weights)
    }

    /// `forward_image` + `_prepare_backbone_features`: images `[B, 3, S, S]` → features.
    pub fn forward_image(&self, img: &Tensor) -> Result<FrameFeatures> {
        let out = self.image_encoder.forward(img)?;
        let mut feats = out.backbone_fpn;
        if let (Some(s0), Some(s1)) = (
            &self.sam_mask_decoder.conv_s0,
            &self.sam_mask_decoder.conv_s1,
        ) {
            feats[0] = s0.forward(&feats[0])?;
            feats[1] = s1.forward(&feats[1])?;
        }
        let levels = if self.config.use_high_res_features_in_sam {
            3
        } else {
            1
        };
        let skip = feats.len().saturating_sub(levels);
        Ok(FrameFeatures {
            vision_feats: feats.split_off(skip),
            vision_pos_embeds: out.vision_pos_enc[skip..].to_vec(),
        })
    }

    /// `_forward_sam_heads` for one prompt per batch item.
    pub fn forward_sam_heads(
        &self,
        backbone_features: &Tensor,
        point_inputs: Option<&[PointInputs]>,
        mask_inputs: Option<&Tensor>,
        high_res_features: Option<(&Tensor, &Tensor)>,
        multimask_output: bool,
    ) -> Result<SamHeadsOut> {
        let b = backbone_features.dim(0);
        let default_points;
        let points = match point_inputs {
            Some(p) => p,
            None => {
                default_points = vec![
                    PointInputs {
                        coords: vec![[0.0, 0.0]],
                        labels: vec![-1],
                    };
                    b
                ];
                &default_points
            }
        };
        let resized;
        let mask_prompt = match mask_inputs {
            Some(m) => {
                let (mh, mw) = (
                    4 * self.sam_prompt_encoder.image_embedding_size.0,
                    4 * self.sam_prompt_encoder.image_embedding_size.1,
                );
                if m.dim(2) != mh || m.dim(3) != mw {
                    resized = interpolate_bilinear_aa(m, mh, mw)?;
                    Some(&resized)
                } else {
                    Some(m)
                }
            }
            None => None,
        };
        let (sparse, dense) = self.sam_prompt_encoder.forward(points, mask_prompt)?;
        let dec = self.sam_mask_decoder.forward(
            backbone_features,
            &self.sam_prompt_encoder.get_dense_pe()?,
            &sparse,
            &dense,
            multimask_output,
            high_res_features,
        )?;
        let scores = dec.object_score_logits.to_vec()?;
        let appearing: Vec<bool> = scores.iter().map(|&s| s > 0.0).collect();
        let mut low = dec.masks;
        if self.config.pred_obj_scores && appearing.iter().any(|a| !a) {
            let (m, hw) = (low.dim(1), low.dim(2) * low.dim(3));
            let mut v = low.to_vec()?;
            for (bi, &a) in appearing.iter().enumerate() {
                if !a {
                    v[bi * m * hw..(bi + 1) * m * hw].fill(NO_OBJ_SCORE);
                }
            }
            low = Tensor::from_slice(&v, low.shape(), low.device())?;
        }
        let s = self.config.image_size;
        let high = low.upsample_bilinear(s, s)?;
        let ious = dec.iou_pred;
        let tokens = dec.sam_tokens_out;
        let (low_res_masks, high_res_masks, token) = if multimask_output {
            let iv = ious.to_vec()?;
            let m = ious.dim(1);
            let best: Vec<usize> = (0..b).map(|bi| argmax(&iv[bi * m..(bi + 1) * m])).collect();
            let pick = |t: &Tensor| -> Result<Tensor> {
                let rows: Vec<Tensor> = best
                    .iter()
                    .enumerate()
                    .map(|(bi, &k)| t.select(0, bi)?.select(0, k))
                    .collect::<Result<_>>()?;
                Tensor::stack(&rows, 0)
            };
            let token = if tokens.dim(1) > 1 {
                pick(&tokens)?
            } else {
                tokens.select(1, 0)?
            };
            (pick(&low)?.unsqueeze(1)?, pick(&high)?.unsqueeze(1)?, token)
        } else {
            (low.clone(), high.clone(), tokens.select(1, 0)?)
        };
        let mut obj_ptr = match &self.obj_ptr_proj {
            Some(p) => p.forward(&token)?,
            None => token.contiguous()?,
        };
        if self.config.pred_obj_scores {
            if let Some(no_obj) = &self.no_obj_ptr {
                let lam: Vec<f32> = if self.config.soft_no_obj_ptr {
                    scores.iter().map(|&s| 1.0 / (1.0 + (-s).exp())).collect()
                } else {
                    appearing.iter().map(|&a| f32::from(u8::from(a))).collect()
                };
                let lam_t = Tensor::from_slice(&lam, &[b, 1], obj_ptr.device())?;
                obj_ptr = self.blend_no_obj_ptr(obj_ptr, &lam_t, no_obj)?;
            }
        }
        Ok(SamHeadsOut {
            low_res_multimasks: low,
            high_res_multimasks: high,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits: dec.object_score_logits,
        })
    }

    /// `_use_mask_as_output`: a mask prompt `[B, 1, S, S]` (0/1) taken as the frame's output
    /// (logits ±10, low-res by antialiased downscaling), its object pointer from the SAM heads
    /// on the raw features with the mask as dense prompt, and the object score from whether
    /// the mask is empty.
    pub fn use_mask_as_output(
        &self,
        feats: &FrameFeatures,
        mask_inputs: &Tensor,
    ) -> Result<SamHeadsOut> {
        let (out_scale, out_bias) = (20.0f32, -10.0f32);
        let b = mask_inputs.dim(0);
        let high = mask_inputs.scale(out_scale)?.shift(out_bias)?;
        let low = interpolate_bilinear_aa(&high, high.dim(2) / 4, high.dim(3) / 4)?;
        let ious = Tensor::full(&[b, 1], 1.0, mask_inputs.device())?;
        let v = mask_inputs.contiguous()?.to_vec()?;
        let per = v.len() / b.max(1);
        let lam: Vec<f32> = (0..b)
            .map(|i| f32::from(u8::from(v[i * per..(i + 1) * per].iter().any(|&x| x > 0.0))))
            .collect();
        let lam_t = Tensor::from_slice(&lam, &[b, 1], mask_inputs.device())?;
        let mut obj_ptr = match &self.mask_downsample {
            Some(conv) if self.config.use_obj_ptrs_in_encoder => {
                let small = conv.forward(mask_inputs)?;
                self.forward_sam_heads(feats.top(), None, Some(&small), feats.high_res(), false)?
                    .obj_ptr
            }
            _ => Tensor::zeros(&[b, self.hidden_dim], mask_inputs.device())?,
        };
        let object_score_logits = lam_t.scale(out_scale)?.shift(out_bias)?;
        if self.config.pred_obj_scores {
            if let Some(no_obj) = &self.no_obj_ptr {
                obj_ptr = self.blend_no_obj_ptr(obj_ptr, &lam_t, no_obj)?;
            }
        }
        Ok(SamHeadsOut {
            low_res_multimasks: low.clone(),
            high_res_multimasks: high.clone(),
            ious,
            low_res_masks: low,
            high_res_masks: high,
            obj_ptr,
            object_score_logits,
        })
    }

    /// `obj_ptr · λ (fixed_no_obj_ptr) + (1 − λ) · no_obj_ptr`, λ `[B, 1]` the appearing weight.
    fn blend_no_obj_ptr(
        &self,
        mut obj_ptr: Tensor,
        lam: &Tensor,
        no_obj: &Tensor,
    ) -> Result<Tensor> {
        if self.config.fixed_no_obj_ptr {
            obj_ptr = obj_ptr.mul(lam)?;
        }
        let inv = lam.neg()?.shift(1.0)?;
        obj_ptr.add(&inv.mul(no_obj)?)
    }

    /// `_use_multimask`.
    pub fn use_multimask(
        &self,
        is_init_cond_frame: bool,
        point_inputs: Option<&[PointInputs]>,
    ) -> bool {
        let num_pts = point_inputs.map_or(0, |p| p.first().map_or(0, |x| x.labels.len()));
        self.config.multimask_output_in_sam
            && (is_init_cond_frame || self.config.multimask_output_for_tracking)
            && (self.config.multimask_min_pt_num..=self.config.multimask_max_pt_num)
                .contains(&num_pts)
    }

    /// `_prepare_memory_conditioned_features`: the frame's top-level features `[B, C, h, w]`
    /// after attending to the memory bank in `output_dict`, the memory attention at `precision`
    /// (as an autocast around it would set it).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_memory_conditioned_features(
        &self,
        frame_idx: usize,
        is_init_cond_frame: bool,
        feats: &FrameFeatures,
        output_dict: &OutputDict,
        num_frames: usize,
        track_in_reverse: bool,
        precision: InferPrecision,
    ) -> Result<Tensor> {
        let top = feats.top();
        let (b, c, h, w) = (top.dim(0), top.dim(1), top.dim(2), top.dim(3));
        if self.config.num_maskmem == 0 {
            return Ok(top.clone());
        }
        let cfg = &self.config;
        let (memory, memory_pos, num_obj_ptr_tokens) = if !is_init_cond_frame {
            self.gather_memory(frame_idx, output_dict, num_frames, track_in_reverse, b)?
        } else if cfg.directly_add_no_mem_embed {
            let e = self.no_mem_embed.reshape(&[1, c, 1, 1])?;
            return top.add(&e);
        } else {
            (
                self.no_mem_embed.broadcast_to(&[b, 1, c])?.contiguous()?,
                self.no_mem_pos_enc.broadcast_to(&[b, 1, c])?.contiguous()?,
                0,
            )
        };
        let curr = to_tokens(top)?;
        let curr_pos = to_tokens(feats.vision_pos_embeds.last().expect("pos"))?;
        let out = precision.autocast(|| {
            self.memory_attention.forward(
                &curr,
                &memory,
                &curr_pos,
                &memory_pos,
                num_obj_ptr_tokens,
            )
        })?;
        out.permute(&[0, 2, 1])?
            .contiguous()?
            .reshape(&[b, c, h, w])
    }

    /// The memory tokens and their position encodings `[B, M, mem_dim]` for a tracked frame:
    /// conditioning frames, the `num_maskmem − 1` previous frames, then object pointers.
    fn gather_memory(
        &self,
        frame_idx: usize,
        output_dict: &OutputDict,
        num_frames: usize,
        track_in_reverse: bool,
        b: usize,
    ) -> Result<(Tensor, Tensor, usize)> {
        let cfg = &self.config;
        let c = self.hidden_dim;
        let cond = &output_dict.cond_frame_outputs;
        if cond.is_empty() {
            return Err(Error::Other(
                "tracking a frame needs at least one conditioning (prompted) frame".into(),
            ));
        }
        let (selected, unselected) =
            select_closest_cond_frames(frame_idx, cond, cfg.max_cond_frames_in_attn);
        let mut t_pos_and_prevs: Vec<(usize, Option<&FrameOutput>)> =
            selected.iter().map(|(_, o)| (0, Some(*o))).collect();
        let stride = cfg.memory_temporal_stride_for_eval.max(1) as i64;
        let fi = frame_idx as i64;
        let lookup = |t: i64| -> Option<&FrameOutput> {
            if t < 0 {
                return None;
            }
            let t = t as usize;
            output_dict
                .non_cond_frame_outputs
                .get(&t)
                .or_else(|| unselected.iter().find(|(k, _)| *k == t).map(|(_, o)| *o))
        };
        for t_pos in 1..cfg.num_maskmem {
            let t_rel = (cfg.num_maskmem - t_pos) as i64;
            let prev = if t_rel == 1 {
                if track_in_reverse {
                    fi + 1
                } else {
                    fi - 1
                }
            } else if !track_in_reverse {
                (fi - 2).div_euclid(stride) * stride - (t_rel - 2) * stride
            } else {
                -((-(fi + 2)).div_euclid(stride)) * stride + (t_rel - 2) * stride
            };
            t_pos_and_prevs.push((t_pos, lookup(prev)));
        }
        let mut mem = Vec::new();
        let mut mem_pos = Vec::new();
        for (t_pos, prev) in t_pos_and_prevs {
            let Some(prev) = prev else { continue };
            let (Some(f), Some(p)) = (&prev.maskmem_features, &prev.maskmem_pos_enc) else {
                continue;
            };
            mem.push(to_tokens(f)?);
            let tpos = self
                .maskmem_tpos_enc
                .select(0, cfg.num_maskmem - t_pos - 1)?
                .reshape(&[1, 1, self.mem_dim])?;
            mem_pos.push(to_tokens(p)?.add(&tpos)?);
        }
        let mut num_obj_ptr_tokens = 0;
        if cfg.use_obj_ptrs_in_encoder {
            let max_ptrs = num_frames.min(cfg.max_obj_ptrs_in_encoder);
            let mut pos_and_ptrs: Vec<(i64, &Tensor)> = selected
                .iter()
                .filter(|(t, _)| {
                    !cfg.only_obj_ptrs_in_the_past_for_eval
                        || if track_in_reverse {
                            *t >= frame_idx
                        } else {
                            *t <= frame_idx
                        }
                })
                .map(|(t, o)| {
                    let d = fi - *t as i64;
                    let p = if cfg.use_signed_tpos_enc_to_obj_ptrs {
                        if track_in_reverse {
                            -d
                        } else {
                            d
                        }
                    } else {
                        d.abs()
                    };
                    (p, &o.obj_ptr)
                })
                .collect();
            for t_diff in 1..max_ptrs as i64 {
                let t = if track_in_reverse {
                    fi + t_diff
                } else {
                    fi - t_diff
                };
                if t < 0 || t >= num_frames as i64 {
                    break;
                }
                if let Some(o) = lookup(t) {
                    pos_and_ptrs.push((t_diff, &o.obj_ptr));
                }
            }
            if !pos_and_ptrs.is_empty() {
                let n = pos_and_ptrs.len();
                let ptrs: Vec<Tensor> = pos_and_ptrs.iter().map(|(_, p)| (*p).clone()).collect();
                let obj_ptrs = Tensor::stack(&ptrs, 1)?; // [B, n, C]
                let obj_pos = if cfg.add_tpos_enc_to_obj_ptrs {
                    let t_diff_max = (max_ptrs as f32) - 1.0;
                    let tpos_dim = if cfg.proj_tpos_enc_in_obj_ptrs {
                        c
                    } else {
                        self.mem_dim
                    };
                    let pos: Vec<f32> = pos_and_ptrs
                        .iter()
                        .map(|(p, _)| *p as f32 / t_diff_max)
                        .collect();
                    let pe = get_1d_sine_pe(&pos, tpos_dim, obj_ptrs.device())?;
                    match &self.obj_ptr_tpos_proj {
                        Some(l) => l.forward(&pe)?,
                        None => pe,
                    }
                } else {
                    Tensor::zeros(&[n, self.mem_dim], obj_ptrs.device())?
                };
                let split = c / self.mem_dim;
                let (obj_ptrs, obj_pos) = if self.mem_dim < c {
                    (
                        obj_ptrs
                            .contiguous()?
                            .reshape(&[b, n * split, self.mem_dim])?,
                        obj_pos
                            .reshape(&[n, 1, self.mem_dim])?
                            .broadcast_to(&[n, split, self.mem_dim])?
                            .reshape(&[n * split, self.mem_dim])?,
                    )
                } else {
                    (obj_ptrs, obj_pos)
                };
                let tokens = obj_ptrs.dim(1);
                mem.push(obj_ptrs);
                mem_pos.push(
                    obj_pos
                        .unsqueeze(0)?
                        .broadcast_to(&[b, tokens, self.mem_dim])?
                        .contiguous()?,
                );
                num_obj_ptr_tokens = tokens;
            }
        }
        Ok((
            Tensor::cat(&mem, 1)?,
            Tensor::cat(&mem_pos, 1)?,
            num_obj_ptr_tokens,
        ))
    }

    /// `_encode_new_memory`: (`maskmem_features`, `maskmem_pos_enc`) of a frame from its raw top
    /// features and high-res mask logits.
    pub fn encode_new_memory(
        &self,
        feats: &FrameFeatures,
        pred_masks_high_res: &Tensor,
        object_score_logits: &Tensor,
        is_mask_from_pts: bool,
    ) -> Result<(Tensor, Tensor)> {
        let cfg = &self.config;
        let binarize = cfg.binarize_mask_from_pts_for_mem_enc && is_mask_from_pts;
        let mut mask = if binarize {
            let v: Vec<f32> = pred_masks_high_res
                .to_vec()?
                .into_iter()
                .map(|x| f32::from(u8::from(x > 0.0)))
                .collect();
            Tensor::from_slice(
                &v,
                pred_masks_high_res.shape(),
                pred_masks_high_res.device(),
            )?
        } else {
            pred_masks_high_res.sigmoid()?
        };
        if cfg.sigmoid_scale_for_mem_enc != 1.0 {
            mask = mask.scale(cfg.sigmoid_scale_for_mem_enc)?;
        }
        if cfg.sigmoid_bias_for_mem_enc != 0.0 {
            mask = mask.shift(cfg.sigmoid_bias_for_mem_enc)?;
        }
        let (mut features, pos) = self.memory_encoder.forward(feats.top(), &mask)?;
        if let Some(e) = &self.no_obj_embed_spatial {
            let b = features.dim(0);
            let absent: Vec<f32> = object_score_logits
                .to_vec()?
                .into_iter()
                .map(|s| f32::from(u8::from(s <= 0.0)))
                .collect();
            let absent = Tensor::from_slice(&absent, &[b, 1, 1, 1], features.device())?;
            let e = e.reshape(&[1, self.mem_dim, 1, 1])?;
            features = features.add(&absent.mul(&e)?)?;
        }
        Ok((features, pos))
    }

    /// `track_step` without the memory encoder (the predictor runs it when needed):
    /// returns the frame's output with `maskmem_*` unset; the memory attention runs at
    /// `memory_precision`, everything else in f32.
    #[allow(clippy::too_many_arguments)]
    pub fn track_step(
        &self,
        frame_idx: usize,
        is_init_cond_frame: bool,
        feats: &FrameFeatures,
        point_inputs: Option<&[PointInputs]>,
        mask_inputs: Option<&Tensor>,
        output_dict: &OutputDict,
        num_frames: usize,
        track_in_reverse: bool,
        prev_sam_mask_logits: Option<&Tensor>,
        memory_precision: InferPrecision,
    ) -> Result<FrameOutput> {
        if let Some(m) = mask_inputs.filter(|_| self.config.use_mask_input_as_output_without_sam) {
            return Ok(self.use_mask_as_output(feats, m)?.into());
        }
        let pix_feat = self.prepare_memory_conditioned_features(
            frame_idx,
            is_init_cond_frame,
            feats,
            output_dict,
            num_frames,
            track_in_reverse,
            memory_precision,
        )?;
        let mask_inputs = mask_inputs.or(prev_sam_mask_logits);
        let multimask = self.use_multimask(is_init_cond_frame, point_inputs);
        let out = self.forward_sam_heads(
            &pix_feat,
            point_inputs,
            mask_inputs,
            feats.high_res(),
            multimask,
        )?;
        Ok(out.into())
    }
}

impl From<SamHeadsOut> for FrameOutput {
    /// The chosen mask, pointer and score of the SAM heads, no memory yet.
    fn from(out: SamHeadsOut) -> Self {
        FrameOutput {
            maskmem_features: None,
            maskmem_pos_enc: None,
            pred_masks: out.low_res_masks,
            pred_masks_high_res: Some(out.high_res_masks),
            obj_ptr: out.obj_ptr,
            object_score_logits: out.object_score_logits,
        }
    }
}

/// `select_closest_cond_frames`: (selected, unselected) conditioning outputs, at most
/// `max_cond_frame_num` of them (−1: all), the closest before and after first.
#[allow(clippy::type_complexity)]
pub fn select_closest_cond_frames(
    frame_idx: usize,
    cond: &BTreeMap<usize, FrameOutput>,
    max_cond_frame_num: i64,
) -> (Vec<(usize, &FrameOutput)>, Vec<(usize, &FrameOutput)>) {
    if max_cond_frame_num == -1 || cond.len() as i64 <= max_cond_frame_num {
        return (cond.iter().map(|(k, v)| (*k, v)).collect(), Vec::new());
    }
    let mut selected: Vec<usize> = Vec::new();
    if let Some((&t, _)) = cond.range(..frame_idx).next_back() {
        selected.push(t);
    }
    if let Some((&t, _)) = cond.range(frame_idx..).next() {
        selected.push(t);
    }
    let remain = (max_cond_frame_num as usize).saturating_sub(selected.len());
    let mut rest: Vec<usize> = cond
        .keys()
        .copied()
        .filter(|t| !selected.contains(t))
        .collect();
    rest.sort_by_key(|&t| (t as i64 - frame_idx as i64).abs());
    selected.extend(rest.into_iter().take(remain));
    let sel = selected.iter().map(|t| (*t, &cond[t])).collect();
    let unsel = cond
        .iter()
        .filter(|(k, _)| !selected.contains(k))
        .map(|(k, v)| (*k, v))
        .collect();
    (sel, unsel)
}
