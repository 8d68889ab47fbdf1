//! LiteMedSAM: the TinyViT image encoder with SAM's prompt encoder and mask decoder at a 256×256
//! input (64×64 embedding, 256×256 low-res masks). State-dict names are those of
//! `lite_medsam.pth` (`image_encoder.*`, `mask_decoder.*`, `prompt_encoder.*`).

pub mod tiny_vit;

use crate::error::{Error, Result};
#[doc(hidden)]
pub use crate::models::common::load_state_dict as load_module;
use crate::models::common::{self, Init};
use crate::models::config::{MaskDecoderConfig, ModelType, PromptEncoderConfig, SamConfig};
use crate::models::sam::mask_decoder::MaskDecoder;
use crate::models::sam::prompt_encoder::PromptEncoder;
use crate::tensor::Tensor;
use crate::Device;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tiny_vit::{Mode, TinyVit, TinyVitConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiteConfig {
    pub image_encoder: TinyVitConfig,
    pub prompt_encoder: PromptEncoderConfig,
    pub mask_decoder: MaskDecoderConfig,
}

/// Names of BatchNorm buffers (state, not trained parameters).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

impl LiteConfig {
    /// `build_lite_medsam()`.
    pub fn lite_medsam() -> Self {
        let sam = SamConfig::preset(ModelType::VitB);
        LiteConfig {
            image_encoder: TinyVitConfig::lite_medsam(),
            prompt_encoder: sam.prompt_encoder,
            mask_decoder: sam.mask_decoder,
        }
    }

    /// Reads and validates a JSON LiteMedSAM configuration.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let c: Self = super::config::read_json_config(path, "LiteMedSAM configuration")?;
        c.validated(path)
    }

    /// Checks every size before anything is built (see [`super::config::validate_lite`]).
    pub fn validated(self, source: &Path) -> Result<Self> {
        super::config::validate_lite(&self)
            .map_err(|e| Error::file(source, format!("invalid model configuration: {e}")))?;
        Ok(self)
    }

    /// Whether a state dict holds a TinyViT encoder (LiteMedSAM) rather than SAM's ViT.
    pub fn is_lite_state_dict<'a>(mut keys: impl Iterator<Item = &'a String>) -> bool {
        keys.any(|k| {
            k.starts_with("image_encoder.patch_embed.seq.")
                || k.starts_with("image_encoder.layers.")
        })
    }

    /// The configuration read off a LiteMedSAM state dict's shapes. The input size cannot be seen
    /// in the (1×1) stem, so it is LiteMedSAM's 256; the decoder's head count is SAM's 8.
    pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let get = |k: &str| {
            // Linear weights, embeddings and attention biases are 2-D; conv weights 4-D.
            let linear = [
                "qkv",
                "attention_biases",
                "fc1",
                "point_embeddings",
                "lin1",
                "mask_tokens",
                "iou_prediction_head",
            ];
            let rank = if linear.iter().any(|n| k.contains(n)) {
                2
            } else {
                4
            };
            super::config::checked_shape(shapes, k, rank, "LiteMedSAM model")
        };
        let p = "image_encoder";
        let stem = get(&format!("{p}.patch_embed.seq.0.c.weight"))?; // [e0/2, in, 1, 1]
        let n_layers = (0..)
            .take_while(|i| {
                shapes
                    .keys()
                    .any(|k| k.starts_with(&format!("{p}.layers.{i}.")))
            })
            .count();
        if n_layers < 2 {
            return Err(Error::Weights(format!(
                "cannot infer the LiteMedSAM model: {n_layers} encoder stages found"
            )));
        }
        let depth = |i: usize| {
            (0..)
                .take_while(|b| {
                    shapes
                        .keys()
                        .any(|k| k.starts_with(&format!("{p}.layers.{i}.blocks.{b}.")))
                })
                .count()
        };
        let mut cfg = TinyVitConfig {
            img_size: 256,
            in_chans: stem[1],
            embed_dims: Vec::new(),
            depths: Vec::new(),
            // Stage 0 (MBConv) has no attention: its heads and window are unused and take
            // LiteMedSAM's values.
            num_heads: vec![2],
            window_sizes: vec![7],
            mlp_ratio: 4.0,
            mbconv_expand_ratio: 4.0,
            local_conv_size: 3,
            out_chans: get(&format!("{p}.neck.0.weight"))?[0],
        };
        let e0 = get(&format!("{p}.patch_embed.seq.2.c.weight"))?[0];
        cfg.embed_dims.push(e0);
        cfg.depths.push(depth(0));
        let hidden0 = get(&format!("{p}.layers.0.blocks.0.conv1.c.weight"))?[0];
        cfg.mbconv_expand_ratio = hidden0 as f64 / e0 as f64;
        for i in 1..n_layers {
            let b0 = format!("{p}.layers.{i}.blocks.0");
            let qkv = get(&format!("{b0}.attn.qkv.weight"))?; // [3·dim, dim]
            let ab = get(&format!("{b0}.attn.attention_biases"))?; // [heads, ws²]
            let ws = (ab[1] as f64).sqrt().round() as usize;
            if ws * ws != ab[1] {
                return Err(Error::Weights(format!(
                    "{b0}.attn.attention_biases: {} offsets is not a square window",
                    ab[1]
                )));
            }
            cfg.embed_dims.push(qkv[1]);
            cfg.depths.push(depth(i));
            cfg.num_heads.push(ab[0]);
            cfg.window_sizes.push(ws);
            cfg.mlp_ratio = get(&format!("{b0}.mlp.fc1.weight"))?[0] as f64 / qkv[1] as f64;
            cfg.local_conv_size = get(&format!("{b0}.local_conv.c.weight"))?[2];
        }
        let pe_dim = get("prompt_encoder.point_embeddings.0.weight")?[1];
        let mask_in_chans = get("prompt_encoder.mask_downscaling.3.weight")?[0];
        let count = |pfx: &str| {
            (0..)
                .take_while(|i| {
                    shapes.contains_key(&format!("{pfx}{i}.weight"))
                        || shapes.contains_key(&format!("{pfx}{i}.norm1.weight"))
                })
                .count()
        };
        let sam = SamConfig::preset(ModelType::VitB);
        Ok(LiteConfig {
            image_encoder: cfg,
            prompt_encoder: PromptEncoderConfig {
                embed_dim: pe_dim,
                mask_in_chans,
            },
            mask_decoder: MaskDecoderConfig {
                transformer_dim: pe_dim,
                transformer_depth: count("mask_decoder.transformer.layers."),
                transformer_mlp_dim: get("mask_decoder.transformer.layers.0.mlp.lin1.weight")?[0],
                transformer_num_heads: sam.mask_decoder.transformer_num_heads,
                num_multimask_outputs: get("mask_decoder.mask_tokens.weight")?[0].saturating_sub(1),
                iou_head_depth: count("mask_decoder.iou_prediction_head.layers."),
                iou_head_hidden_dim: get("mask_decoder.iou_prediction_head.layers.0.weight")?[0],
            },
        })
    }
}

pub struct LiteMedSam {
    pub config: LiteConfig,
    pub image_encoder: TinyVit,
    pub mask_decoder: MaskDecoder,
    pub prompt_encoder: PromptEncoder,
}

crate::models::common::module_parts!(LiteMedSam: image_encoder, mask_decoder, prompt_encoder);

impl LiteMedSam {
    /// A model with deterministic random initialisation for `seed` (BatchNorm as PyTorch
    /// initialises it: weight 1 — 0 for MBConv's last — bias 0, running mean 0, variance 1).
    pub fn new(config: &LiteConfig, seed: u64, device: Device) -> Result<Self> {
        super::config::validate_lite(config).map_err(|e| Error::arg("model configuration", e))?;
        let mut init = Init::new(seed, device);
        let ie = &config.image_encoder;
        Ok(LiteMedSam {
            config: config.clone(),
            image_encoder: TinyVit::new(&mut init, ie)?,
            mask_decoder: MaskDecoder::new(&mut init, &config.mask_decoder)?,
            prompt_encoder: PromptEncoder::new(
                &mut init,
                &config.prompt_encoder,
                ie.grid(),
                ie.img_size,
            )?,
        })
    }

    /// Side of the model input (256 for LiteMedSAM).
    pub fn img_size(&self) -> usize {
        self.config.image_encoder.img_size
    }

    common::state_dict_methods!(
        /// The parameters training updates, in `torch.optim` order: image encoder then mask
        /// decoder (the prompt encoder is frozen); BatchNorm buffers are not parameters.
        keep: |name| !is_buffer(name)
    );

    /// Images `[B, 3, S, S]` in [0, 1] and one box per image (input pixels) → low-res logits
    /// `[B, 1, 4g, 4g]`. `Mode::Train` uses batch statistics in BatchNorm (as `model.train()`).
    pub fn forward(&self, images: &Tensor, boxes: &[[f32; 4]], mode: Mode) -> Result<Tensor> {
        Ok(self.forward_with_iou(images, boxes, mode)?.0)
    }

    /// [`Self::forward`] plus the decoder's predicted IoU `[B, 1]` (LiteMedSAM's training loss
    /// regresses it onto the true IoU).
    pub fn forward_with_iou(
        &self,
        images: &Tensor,
        boxes: &[[f32; 4]],
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let encode = |x: &Tensor| self.image_encoder.forward_mode(x, mode);
        crate::models::sam::forward_boxes(
            "lite_medsam.forward",
            images,
            boxes,
            encode,
            &self.prompt_encoder,
            &self.mask_decoder,
        )
    }
}
