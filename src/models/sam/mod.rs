//! SAM / MedSAM. Module files mirror `segment_anything/modeling/` and keep its state-dict names,
//! so `image_encoder.blocks.3.attn.rel_pos_h` is a field path here too.

pub mod image_encoder;
pub mod mask_decoder;
pub mod prompt_encoder;
pub mod transformer;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
pub use crate::models::common::LoadReport;
pub use crate::models::common::Module;
use crate::models::common::{self, Init};
pub use crate::models::config::{ModelType, SamConfig};
use crate::tensor::Tensor;
use crate::Device;
use image_encoder::ImageEncoderViT;
use mask_decoder::MaskDecoder;
use prompt_encoder::PromptEncoder;
use std::collections::BTreeMap;

pub struct Sam {
    pub config: SamConfig,
    pub image_encoder: ImageEncoderViT,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
}

crate::models::common::module_parts!(Sam: image_encoder, prompt_encoder, mask_decoder);

impl Sam {
    /// A model with PyTorch-style random initialisation, reproducible for `seed`.
    pub fn new(config: &SamConfig, seed: u64, device: Device) -> Result<Self> {
        config
            .validate()
            .map_err(|e| crate::Error::arg("model configuration", e))?;
        let mut init = Init::new(seed, device);
        let ie = &config.image_encoder;
        Ok(Sam {
            config: config.clone(),
            image_encoder: ImageEncoderViT::new(&mut init, ie)?,
            prompt_encoder: PromptEncoder::new(
                &mut init,
                &config.prompt_encoder,
                config.grid(),
                ie.img_size,
            )?,
            mask_decoder: MaskDecoder::new(&mut init, &config.mask_decoder)?,
        })
    }

    common::state_dict_methods!(
        /// The parameters MedSAM trains, in `torch.optim` order: image encoder, then mask decoder
        /// (the prompt encoder is frozen).
        keep: |_| true
    );

    /// MedSAM's forward for training and evaluation: images `[B, 3, S, S]` in [0, 1] and one box
    /// per image (input pixels) → low-res logits `[B, 1, 4g, 4g]`.
    pub fn forward(&self, images: &Tensor, boxes: &[[f32; 4]]) -> Result<Tensor> {
        let encode = |x: &Tensor| self.image_encoder.forward(x);
        let (masks, _iou) = forward_boxes(
            "sam.forward",
            images,
            boxes,
            encode,
            &self.prompt_encoder,
            &self.mask_decoder,
        )?;
        Ok(masks)
    }

    /// All parameter shapes by name (for config inference checks and reports).
    pub fn shapes(&mut self) -> BTreeMap<String, Vec<usize>> {
        self.state_dict()
            .into_iter()
            .map(|(k, t)| (k, t.shape().to_vec()))
            .collect()
    }
}

/// MedSAM's box-prompted forward, shared with LiteMedSAM: `encode` the images, embed one box per
/// image with the frozen prompt encoder (no graph recorded), decode one mask each → low-res
/// logits `[B, 1, 4g, 4g]` and predicted IoU `[B, 1]`. `what` names the caller in errors.
pub(crate) fn forward_boxes(
    what: &'static str,
    images: &Tensor,
    boxes: &[[f32; 4]],
    encode: impl FnOnce(&Tensor) -> Result<Tensor>,
    prompt_encoder: &PromptEncoder,
    mask_decoder: &MaskDecoder,
) -> Result<(Tensor, Tensor)> {
    if images.dim(0) != boxes.len() {
        return Err(Error::shape(
            what,
            format!("{} images for {} boxes", images.dim(0), boxes.len()),
        ));
    }
    let embeddings = encode(images)?;
    let (sparse, dense, pe) = no_grad(|| -> Result<_> {
        let (s, d) = prompt_encoder.forward(None, Some(boxes), None)?;
        Ok((s, d, prompt_encoder.get_dense_pe()?))
    })?;
    mask_decoder.forward(&embeddings, &pe, &sparse, &dense, false)
}
