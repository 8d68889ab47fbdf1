//! SAM 2's `PromptEncoder` (`sam2/modeling/sam/prompt_encoder.py`): SAM's
//! ([`crate::models::sam::prompt_encoder`], same state-dict names) with 16 mask channels. SAM2Base
//! always passes boxes as two corner points with labels 2 and 3 and no `boxes` argument, so every
//! call pads the point list with one "not a point" (label −1) at (0, 0).

use crate::error::{Error, Result};
use crate::models::common::{Init, Module};
use crate::models::sam::prompt_encoder as sam;
use crate::tensor::Tensor;

/// Point prompts of one batch item: (x, y) in model-input pixels and a label: 1 foreground,
/// 0 background, 2/3 box top-left/bottom-right, −1 padding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PointInputs {
    pub coords: Vec<[f32; 2]>,
    pub labels: Vec<i32>,
}

/// SAM's prompt encoder behind SAM 2's point interface; its fields read through `Deref`.
pub struct PromptEncoder(pub sam::PromptEncoder);

impl std::ops::Deref for PromptEncoder {
    type Target = sam::PromptEncoder;
    fn deref(&self) -> &sam::PromptEncoder {
        &self.0
    }
}

impl Module for PromptEncoder {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.0.visit(prefix, f);
    }
}

impl PromptEncoder {
    pub fn new(init: &mut Init, embed_dim: usize, grid: usize, img_size: usize) -> Result<Self> {
        sam::PromptEncoder::with_dims(init, embed_dim, 16, grid, img_size).map(PromptEncoder)
    }

    /// Sparse `[B, N+1, C]` and dense `[B, C, h, w]` embeddings; `masks` `[B, 1, 4h, 4w]`.
    pub fn forward(
        &self,
        points: &[PointInputs],
        masks: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let e = self.embed_dim;
        let n = points.first().map_or(0, |p| p.coords.len()) + 1;
        let mut flat = Vec::with_capacity(points.len() * n * e);
        for p in points {
            if p.coords.len() + 1 != n || p.labels.len() != p.coords.len() {
                return Err(Error::shape(
                    "sam2 prompt_encoder",
                    "every batch item needs the same number of points, one label each",
                ));
            }
            let mut coords: Vec<[f32; 2]> = p
                .coords
                .iter()
                .map(|c| self.normalise(c[0], c[1]))
                .collect();
            coords.push([0.0, 0.0]);
            let mut labels = p.labels.clone();
            labels.push(-1);
            flat.extend(self.embed_points(&coords, &labels)?);
        }
        let device = self.no_mask_embed.weight.device();
        let bs = points.len();
        let sparse = Tensor::from_slice(&flat, &[bs, n, e], device)?;
        Ok((sparse, self.embed_dense(masks, bs)?))
    }
}
