//! SAM / MedSAM. Module files mirror `segment_anything/modeling/` and keep its state-dict names,
//! so `image_encoder.blocks.3.attn.rel_pos_h` is a field path here too.

pub mod image_encoder;
pub mod mask_decoder;
pub mod prompt_encoder;
pub mod transformer;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
pub use crate::models::common::Module;
use crate::models::common::{join, Init};
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

/// What loading a state dict found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (key, expected shape, checkpoint shape)
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
    /// An error listing every problem by key, or Ok for a clean load.
    pub fn into_result(self) -> Result<Self> {
        if self.is_clean() {
            return Ok(self);
        }
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", self.unexpected.join(", ")));
        }
        for (k, want, got) in &self.mismatched {
            parts.push(format!(
                "{k}: model expects shape {want:?}, checkpoint has {got:?}"
            ));
        }
        Err(Error::Weights(parts.join("; ")))
    }
}

impl Module for Sam {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.image_encoder.visit(&join(prefix, "image_encoder"), f);
        self.prompt_encoder
            .visit(&join(prefix, "prompt_encoder"), f);
        self.mask_decoder.visit(&join(prefix, "mask_decoder"), f);
    }
}

impl Sam {
    /// A model with PyTorch-style random initialisation, reproducible for `seed`.
    pub fn new(config: &SamConfig, seed: u64, device: Device) -> Result<Self> {
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

    /// Every parameter and buffer by state-dict name, in PyTorch's order.
    pub fn state_dict(&mut self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit("", &mut |name, t| out.push((name.to_string(), t.detach())));
        out
    }

    /// Copies matching tensors in; reports missing, unexpected and wrongly shaped keys by name.
    pub fn load_state_dict(&mut self, weights: &BTreeMap<String, Tensor>) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let mut seen = std::collections::HashSet::new();
        let mut failure = None;
        self.visit("", &mut |name, t| {
            seen.insert(name.to_string());
            match weights.get(name) {
                None => report.missing.push(name.to_string()),
                Some(w) if w.shape() != t.shape() => report.mismatched.push((
                    name.to_string(),
                    t.shape().to_vec(),
                    w.shape().to_vec(),
                )),
                Some(w) => match t.assign(w) {
                    Ok(()) => report.loaded += 1,
                    Err(e) => failure = Some(e),
                },
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        report.unexpected = weights
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        Ok(report)
    }

    /// The parameters MedSAM trains, in `torch.optim` order: image encoder, then mask decoder
    /// (the prompt encoder is frozen).
    pub fn trainable_parameters(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out: Vec<(String, *mut Tensor)> = Vec::new();
        self.image_encoder.visit("image_encoder", &mut |n, t| {
            out.push((n.to_string(), t as *mut Tensor))
        });
        self.mask_decoder.visit("mask_decoder", &mut |n, t| {
            out.push((n.to_string(), t as *mut Tensor))
        });
        // SAFETY: each pointer comes from a distinct field of `self`, which stays mutably borrowed
        // for the lifetime of the returned references; no two entries alias.
        out.into_iter()
            .map(|(n, p)| (n, unsafe { &mut *p }))
            .collect()
    }

    /// Marks the trainable parameters as variables (so backward fills their `.grad`).
    pub fn enable_training(&mut self) {
        for (_, t) in self.trainable_parameters() {
            if !t.requires_grad() {
                *t = t.detach().into_variable();
            }
        }
    }

    /// MedSAM's forward for training and evaluation: images `[B, 3, S, S]` in [0, 1] and one box
    /// per image (input pixels) → low-res logits `[B, 1, 4g, 4g]`.
    pub fn forward(&self, images: &Tensor, boxes: &[[f32; 4]]) -> Result<Tensor> {
        if images.dim(0) != boxes.len() {
            return Err(Error::shape(
                "sam.forward",
                format!("{} images for {} boxes", images.dim(0), boxes.len()),
            ));
        }
        let embeddings = self.image_encoder.forward(images)?;
        let (sparse, dense, pe) = no_grad(|| -> Result<_> {
            let (s, d) = self.prompt_encoder.forward(None, Some(boxes), None)?;
            Ok((s, d, self.prompt_encoder.get_dense_pe()?))
        })?;
        let (masks, _iou) = self
            .mask_decoder
            .forward(&embeddings, &pe, &sparse, &dense, false)?;
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
