//! Model configuration. Keys mirror SAM's constructor arguments so a JSON file reads like the
//! Python builder; presets match `build_sam.py`; most fields can be inferred from checkpoint shapes.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoderConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub out_chans: usize,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    pub use_rel_pos: bool,
    pub qkv_bias: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptEncoderConfig {
    pub embed_dim: usize,
    pub mask_in_chans: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskDecoderConfig {
    pub transformer_dim: usize,
    pub transformer_depth: usize,
    pub transformer_mlp_dim: usize,
    pub transformer_num_heads: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamConfig {
    pub image_encoder: ImageEncoderConfig,
    pub prompt_encoder: PromptEncoderConfig,
    pub mask_decoder: MaskDecoderConfig,
}

/// The named SAM variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelType {
    #[value(name = "vit_b")]
    VitB,
    #[value(name = "vit_l")]
    VitL,
    #[value(name = "vit_h")]
    VitH,
}

impl SamConfig {
    pub fn preset(t: ModelType) -> Self {
        let (embed_dim, depth, num_heads, global) = match t {
            ModelType::VitB => (768, 12, 12, vec![2, 5, 8, 11]),
            ModelType::VitL => (1024, 24, 16, vec![5, 11, 17, 23]),
            ModelType::VitH => (1280, 32, 16, vec![7, 15, 23, 31]),
        };
        SamConfig {
            image_encoder: ImageEncoderConfig {
                img_size: 1024,
                patch_size: 16,
                embed_dim,
                depth,
                num_heads,
                mlp_ratio: 4.0,
                out_chans: 256,
                window_size: 14,
                global_attn_indexes: global,
                use_rel_pos: true,
                qkv_bias: true,
            },
            prompt_encoder: PromptEncoderConfig {
                embed_dim: 256,
                mask_in_chans: 16,
            },
            mask_decoder: MaskDecoderConfig {
                transformer_dim: 256,
                transformer_depth: 2,
                transformer_mlp_dim: 2048,
                transformer_num_heads: 8,
                num_multimask_outputs: 3,
                iou_head_depth: 3,
                iou_head_hidden_dim: 256,
            },
        }
    }

    /// A small SAM for CPU demos and tests on `img_size`² inputs: the same architecture with fewer,
    /// narrower layers (patch 8, window 4 with one global block, a 2-layer decoder).
    pub fn demo(img_size: usize) -> Self {
        SamConfig {
            image_encoder: ImageEncoderConfig {
                img_size,
                patch_size: 8,
                embed_dim: 96,
                depth: 4,
                num_heads: 4,
                mlp_ratio: 4.0,
                out_chans: 64,
                window_size: 4,
                global_attn_indexes: vec![3],
                use_rel_pos: true,
                qkv_bias: true,
            },
            prompt_encoder: PromptEncoderConfig {
                embed_dim: 64,
                mask_in_chans: 16,
            },
            mask_decoder: MaskDecoderConfig {
                transformer_dim: 64,
                transformer_depth: 2,
                transformer_mlp_dim: 256,
                transformer_num_heads: 4,
                num_multimask_outputs: 3,
                iou_head_depth: 3,
                iou_head_hidden_dim: 64,
            },
        }
    }

    /// The preset this configuration equals, if any.
    pub fn model_type(&self) -> Option<ModelType> {
        [ModelType::VitB, ModelType::VitL, ModelType::VitH]
            .into_iter()
            .find(|&t| Self::preset(t) == *self)
    }

    /// The preset whose shapes this configuration has, ignoring the decoder's head count (which
    /// checkpoint shapes cannot show).
    pub fn model_type_ignoring_heads(&self) -> Option<ModelType> {
        [ModelType::VitB, ModelType::VitL, ModelType::VitH]
            .into_iter()
            .find(|&t| {
                let mut p = Self::preset(t);
                p.mask_decoder.transformer_num_heads = self.mask_decoder.transformer_num_heads;
                p == *self
            })
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("model config: {e}")))
    }

    /// Side of the image embedding grid.
    pub fn grid(&self) -> usize {
        self.image_encoder.img_size / self.image_encoder.patch_size
    }

    /// A configuration read off a state dict's tensor shapes. Shapes decide embed dim, depth,
    /// patch and image size, window size, global blocks, head dim (hence heads), MLP ratio and
    /// the decoder's sizes; the few things shapes cannot show (the decoder's head count) come
    /// from SAM's defaults.
    pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let get = |k: &str| {
            shapes.get(k).ok_or_else(|| {
                Error::Weights(format!("cannot infer the model: key '{k}' is missing"))
            })
        };
        let pw = get("image_encoder.patch_embed.proj.weight")?; // [E, 3, p, p]
        let (embed_dim, patch_size) = (pw[0], pw[2]);
        let pos = get("image_encoder.pos_embed")?; // [1, g, g, E]
        let img_size = pos[1] * patch_size;
        let depth = (0..)
            .take_while(|i| shapes.contains_key(&format!("image_encoder.blocks.{i}.norm1.weight")))
            .count();
        if depth == 0 {
            return Err(Error::Weights(
                "cannot infer the model: no image_encoder.blocks.N found".into(),
            ));
        }
        let mlp = get("image_encoder.blocks.0.mlp.lin1.weight")?[0];
        let use_rel_pos = shapes.contains_key("image_encoder.blocks.0.attn.rel_pos_h");
        let (mut window_size, mut global, mut head_dim) = (0, Vec::new(), 64);
        if use_rel_pos {
            for i in 0..depth {
                let r = get(&format!("image_encoder.blocks.{i}.attn.rel_pos_h"))?;
                head_dim = r[1];
                let size = r[0].div_ceil(2);
                if size == pos[1] {
                    global.push(i);
                } else {
                    window_size = size;
                }
            }
        }
        let qkv_bias = shapes.contains_key("image_encoder.blocks.0.attn.qkv.bias");
        let out_chans = get("image_encoder.neck.0.weight")?[0];
        let pe_dim = get("prompt_encoder.point_embeddings.0.weight")?[1];
        let mask_in_chans = get("prompt_encoder.mask_downscaling.3.weight")?[0];
        let tdepth = (0..)
            .take_while(|i| {
                shapes.contains_key(&format!("mask_decoder.transformer.layers.{i}.norm1.weight"))
            })
            .count();
        let tmlp = get("mask_decoder.transformer.layers.0.mlp.lin1.weight")?[0];
        let n_mask_tokens = get("mask_decoder.mask_tokens.weight")?[0];
        let iou_depth = (0..)
            .take_while(|i| {
                shapes.contains_key(&format!(
                    "mask_decoder.iou_prediction_head.layers.{i}.weight"
                ))
            })
            .count();
        let iou_hidden = get("mask_decoder.iou_prediction_head.layers.0.weight")?[0];
        let defaults = Self::preset(ModelType::VitB);
        Ok(SamConfig {
            image_encoder: ImageEncoderConfig {
                img_size,
                patch_size,
                embed_dim,
                depth,
                num_heads: (embed_dim / head_dim).max(1),
                mlp_ratio: mlp as f64 / embed_dim as f64,
                out_chans,
                window_size,
                global_attn_indexes: global,
                use_rel_pos,
                qkv_bias,
            },
            prompt_encoder: PromptEncoderConfig {
                embed_dim: pe_dim,
                mask_in_chans,
            },
            mask_decoder: MaskDecoderConfig {
                transformer_dim: pe_dim,
                transformer_depth: tdepth,
                transformer_mlp_dim: tmlp,
                transformer_num_heads: defaults.mask_decoder.transformer_num_heads,
                num_multimask_outputs: n_mask_tokens - 1,
                iou_head_depth: iou_depth,
                iou_head_hidden_dim: iou_hidden,
            },
        })
    }
}
