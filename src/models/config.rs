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

    /// Reads and validates a JSON model configuration.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let c: Self = read_json_config(path, "SAM model configuration")?;
        c.validated(path)
    }

    /// Side of the image embedding grid (0 for an invalid zero patch size).
    pub fn grid(&self) -> usize {
        self.image_encoder
            .img_size
            .checked_div(self.image_encoder.patch_size)
            .unwrap_or(0)
    }

    /// A configuration read off a state dict's tensor shapes. Shapes decide embed dim, depth,
    /// patch and image size, window size, global blocks, head dim (hence heads), MLP ratio and
    /// the decoder's sizes; the few things shapes cannot show (the decoder's head count) come
    /// from SAM's defaults.
    pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let get = |k: &str, rank: usize| checked_shape(shapes, k, rank, "model");
        let pw = get("image_encoder.patch_embed.proj.weight", 4)?; // [E, 3, p, p]
        let (embed_dim, patch_size) = (pw[0], pw[2]);
        let pos = get("image_encoder.pos_embed", 4)?; // [1, g, g, E]
        let img_size = pos[1].saturating_mul(patch_size);
        let depth = (0..)
            .take_while(|i| shapes.contains_key(&format!("image_encoder.blocks.{i}.norm1.weight")))
            .count();
        if depth == 0 {
            return Err(Error::Weights(
                "cannot infer the model: no image_encoder.blocks.N found".into(),
            ));
        }
        let mlp = get("image_encoder.blocks.0.mlp.lin1.weight", 2)?[0];
        let use_rel_pos = shapes.contains_key("image_encoder.blocks.0.attn.rel_pos_h");
        let (mut window_size, mut global, mut head_dim) = (0, Vec::new(), 64);
        if use_rel_pos {
            for i in 0..depth {
                let r = get(&format!("image_encoder.blocks.{i}.attn.rel_pos_h"), 2)?;
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
        let out_chans = get("image_encoder.neck.0.weight", 4)?[0];
        let pe_dim = get("prompt_encoder.point_embeddings.0.weight", 2)?[1];
        let mask_in_chans = get("prompt_encoder.mask_downscaling.3.weight", 4)?[0];
        let tdepth = (0..)
            .take_while(|i| {
                shapes.contains_key(&format!("mask_decoder.transformer.layers.{i}.norm1.weight"))
            })
            .count();
        let tmlp = get("mask_decoder.transformer.layers.0.mlp.lin1.weight", 2)?[0];
        let n_mask_tokens = get("mask_decoder.mask_tokens.weight", 2)?[0];
        let iou_depth = (0..)
            .take_while(|i| {
                shapes.contains_key(&format!(
                    "mask_decoder.iou_prediction_head.layers.{i}.weight"
                ))
            })
            .count();
        let iou_hidden = get("mask_decoder.iou_prediction_head.layers.0.weight", 2)?[0];
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
                num_multimask_outputs: n_mask_tokens.saturating_sub(1),
                iou_head_depth: iou_depth,
                iou_head_hidden_dim: iou_hidden,
            },
        })
    }
}

/// A JSON configuration file (at most 1 MiB): errors say the file is not a JSON `what` rather
/// than quoting a UTF-8 or serde detail alone.
pub fn read_json_config<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let bytes = crate::io::limits::read_file_bounded(path, 1 << 20)?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(Error::file(
            path,
            format!("not a JSON {what} (the file is binary, not UTF-8 text)"),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::file(path, format!("{what}: {e}")))
}

/// The shape of `key` in a checkpoint's `shapes`, required to have `rank` non-zero dimensions
/// (an inferred size must come from a real tensor, not a 0-element or malformed one).
pub fn checked_shape<'a>(
    shapes: &'a BTreeMap<String, Vec<usize>>,
    key: &str,
    rank: usize,
    what: &str,
) -> Result<&'a [usize]> {
    let s = shapes.get(key).ok_or_else(|| {
        Error::Weights(format!("cannot infer the {what}: key '{key}' is missing"))
    })?;
    if s.len() != rank || s.contains(&0) {
        return Err(Error::Weights(format!(
            "cannot infer the {what}: '{key}' has shape {s:?}, expected {rank} non-zero dimensions"
        )));
    }
    Ok(s)
}

/// Largest accepted image side, stack depth and parameter count (ViT-H: 1024, 32 blocks, 0.64 G):
/// generous for real models, small enough that a typo cannot ask for terabytes.
pub const MAX_IMG_SIZE: usize = 16384;
pub const MAX_DEPTH: usize = 1024;
pub const MAX_PARAMS: u64 = 1 << 32;
/// Largest attention score matrix of one image (heads × tokens², elements; ViT-H: 2^28).
pub const MAX_ATTENTION: u64 = 1 << 32;

/// `Err("field `f`: detail")` unless `ok`.
fn need(ok: bool, field: &str, detail: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("field `{field}`: {}", detail()))
    }
}

/// `v` in `1..=max`, else "`v` must be in 1..=`max`".
fn need_in(v: usize, max: usize, field: &str) -> Result<(), String> {
    need((1..=max).contains(&v), field, || {
        format!("{v} must be in 1..={max}")
    })
}

fn positive_ratio(v: f64, field: &str) -> Result<(), String> {
    need(v.is_finite() && v > 0.0 && v <= 1024.0, field, || {
        format!("{v} is not a finite ratio in (0, 1024]")
    })
}

/// Rough parameter count of a transformer stack: 4·E² (attention) + 2·ratio·E² (MLP) per block.
fn block_params(dim: usize, ratio: f64, depth: usize) -> u64 {
    let e2 = (dim as u64).saturating_mul(dim as u64);
    let per = (e2 as f64 * (4.0 + 2.0 * ratio)) as u64;
    per.saturating_mul(depth as u64)
}

impl PromptEncoderConfig {
    /// Positive, even embedding (half sines, half cosines); mask channels a multiple of 4.
    pub fn validate(&self) -> Result<(), String> {
        let e = self.embed_dim;
        need(
            e >= 2 && e.is_multiple_of(2) && e <= 1 << 16,
            "prompt_encoder.embed_dim",
            || format!("{e} must be even and in 2..=65536"),
        )?;
        let m = self.mask_in_chans;
        need(
            m >= 4 && m.is_multiple_of(4) && m <= 1 << 16,
            "prompt_encoder.mask_in_chans",
            || format!("{m} must be a positive multiple of 4"),
        )
    }
}

impl MaskDecoderConfig {
    /// Sizes the decoder's layers divide: dim by 8 (upscaling, hypernetworks) and by 2·heads
    /// (the token-to-image attention runs at half width).
    pub fn validate(&self) -> Result<(), String> {
        let d = self.transformer_dim;
        let h = self.transformer_num_heads;
        need(
            d >= 8 && d.is_multiple_of(8) && d <= 1 << 16,
            "mask_decoder.transformer_dim",
            || format!("{d} must be a positive multiple of 8"),
        )?;
        need_in(h, d, "mask_decoder.transformer_num_heads")?;
        need(
            (d / 2).is_multiple_of(h),
            "mask_decoder.transformer_num_heads",
            || format!("{h} heads must divide transformer_dim / 2 = {}", d / 2),
        )?;
        need_in(self.transformer_depth, 64, "mask_decoder.transformer_depth")?;
        need_in(
            self.transformer_mlp_dim,
            1 << 20,
            "mask_decoder.transformer_mlp_dim",
        )?;
        need_in(
            self.num_multimask_outputs,
            64,
            "mask_decoder.num_multimask_outputs",
        )?;
        need_in(self.iou_head_depth, 64, "mask_decoder.iou_head_depth")?;
        need_in(
            self.iou_head_hidden_dim,
            1 << 20,
            "mask_decoder.iou_head_hidden_dim",
        )
    }

    fn params(&self) -> u64 {
        let d = self.transformer_dim as u64;
        let layer = 4 * d * d * 3 / 2 + 2 * d * self.transformer_mlp_dim as u64;
        layer.saturating_mul(self.transformer_depth as u64 + 1)
    }
}

/// The prompt encoder and the decoder agree with each other and with the encoder's output.
fn validate_heads_agree(
    out_chans: usize,
    pe: &PromptEncoderConfig,
    md: &MaskDecoderConfig,
) -> Result<(), String> {
    pe.validate()?;
    md.validate()?;
    need(
        pe.embed_dim == md.transformer_dim,
        "prompt_encoder.embed_dim",
        || {
            format!(
                "{} differs from mask_decoder.transformer_dim {}",
                pe.embed_dim, md.transformer_dim
            )
        },
    )?;
    need(
        out_chans == md.transformer_dim,
        "image_encoder.out_chans",
        || {
            format!(
                "{out_chans} differs from mask_decoder.transformer_dim {}",
                md.transformer_dim
            )
        },
    )
}

impl SamConfig {
    /// Checks every size before anything is built: positive sizes, the divisibility the layers
    /// rely on, and bounded totals (parameters, attention). The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let ie = &self.image_encoder;
        need_in(ie.img_size, MAX_IMG_SIZE, "image_encoder.img_size")?;
        need(
            ie.patch_size >= 1
                && ie.patch_size <= ie.img_size
                && ie.img_size.is_multiple_of(ie.patch_size),
            "image_encoder.patch_size",
            || {
                format!(
                    "{} must be a positive divisor of img_size {}",
                    ie.patch_size, ie.img_size
                )
            },
        )?;
        need_in(ie.embed_dim, 1 << 16, "image_encoder.embed_dim")?;
        need(
            ie.num_heads >= 1 && ie.embed_dim.is_multiple_of(ie.num_heads),
            "image_encoder.num_heads",
            || {
                format!(
                    "{} must be a positive divisor of embed_dim {}",
                    ie.num_heads, ie.embed_dim
                )
            },
        )?;
        need_in(ie.depth, MAX_DEPTH, "image_encoder.depth")?;
        positive_ratio(ie.mlp_ratio, "image_encoder.mlp_ratio")?;
        need(
            (ie.embed_dim as f64 * ie.mlp_ratio) as usize >= 1,
            "image_encoder.mlp_ratio",
            || {
                format!(
                    "{} gives an empty MLP for embed_dim {}",
                    ie.mlp_ratio, ie.embed_dim
                )
            },
        )?;
        need_in(ie.out_chans, 1 << 16, "image_encoder.out_chans")?;
        if let Some(&i) = ie.global_attn_indexes.iter().find(|&&i| i >= ie.depth) {
            return Err(format!(
                "field `image_encoder.global_attn_indexes`: block {i} does not exist (depth {})",
                ie.depth
            ));
        }
        let grid = self.grid();
        let windowed = (0..ie.depth).any(|i| !ie.global_attn_indexes.contains(&i));
        need(
            !windowed || (1..=grid.max(1)).contains(&ie.window_size),
            "image_encoder.window_size",
            || {
                format!(
                    "{} must be in 1..={grid} (the embedding grid)",
                    ie.window_size
                )
            },
        )?;
        let tokens = (grid * grid) as u64;
        let attention = (ie.num_heads as u64).saturating_mul(tokens.saturating_mul(tokens));
        need(attention <= MAX_ATTENTION, "image_encoder.img_size", || {
            format!(
                "{} with patch {} and {} heads needs {attention} attention scores per image, over {MAX_ATTENTION}",
                ie.img_size, ie.patch_size, ie.num_heads
            )
        })?;
        validate_heads_agree(ie.out_chans, &self.prompt_encoder, &self.mask_decoder)?;
        let params = block_params(ie.embed_dim, ie.mlp_ratio, ie.depth)
            .saturating_add(tokens.saturating_mul(ie.embed_dim as u64))
            .saturating_add(self.mask_decoder.params());
        need(params <= MAX_PARAMS, "image_encoder", || {
            format!("about {params} parameters, over the limit of {MAX_PARAMS}")
        })
    }

    /// [`SamConfig::from_json_file`] or an inferred configuration, validated: an error naming
    /// `source` (the JSON file or the checkpoint) and the field.
    pub fn validated(self, source: &Path) -> Result<Self> {
        self.validate()
            .map_err(|e| Error::file(source, format!("invalid model configuration: {e}")))?;
        Ok(self)
    }
}

/// LiteMedSAM's configuration checks: TinyViT's own, bounded sizes, and the heads agreeing.
pub fn validate_lite(c: &super::lite::LiteConfig) -> Result<(), String> {
    let ie = &c.image_encoder;
    ie.validate().map_err(|e| e.to_string())?;
    need_in(ie.img_size, MAX_IMG_SIZE, "image_encoder.img_size")?;
    need_in(ie.in_chans, 64, "image_encoder.in_chans")?;
    need(ie.depths.len() <= 16, "image_encoder.depths", || {
        format!("{} stages, at most 16", ie.depths.len())
    })?;
    for (i, (&e, &d)) in ie.embed_dims.iter().zip(&ie.depths).enumerate() {
        need(
            (1..=1 << 14).contains(&e),
            "image_encoder.embed_dims",
            || format!("stage {i}: {e} must be in 1..=16384"),
        )?;
        need(d <= MAX_DEPTH, "image_encoder.depths", || {
            format!("stage {i}: {d} must be at most {MAX_DEPTH}")
        })?;
    }
    for (i, &w) in ie.window_sizes.iter().enumerate().skip(1) {
        need(w <= 64, "image_encoder.window_sizes", || {
            format!("stage {i}: {w} must be at most 64")
        })?;
    }
    need(
        ie.local_conv_size <= 31,
        "image_encoder.local_conv_size",
        || format!("{} must be an odd size up to 31", ie.local_conv_size),
    )?;
    positive_ratio(ie.mlp_ratio, "image_encoder.mlp_ratio")?;
    positive_ratio(ie.mbconv_expand_ratio, "image_encoder.mbconv_expand_ratio")?;
    need_in(ie.out_chans, 1 << 16, "image_encoder.out_chans")?;
    validate_heads_agree(ie.out_chans, &c.prompt_encoder, &c.mask_decoder)?;
    let params = ie
        .embed_dims
        .iter()
        .zip(&ie.depths)
        .map(|(&e, &d)| block_params(e, ie.mlp_ratio.max(ie.mbconv_expand_ratio), d))
        .fold(0u64, u64::saturating_add)
        .saturating_add(c.mask_decoder.params());
    need(params <= MAX_PARAMS, "image_encoder", || {
        format!("about {params} parameters, over the limit of {MAX_PARAMS}")
    })
}
