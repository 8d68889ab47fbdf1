//! SAM 2's `PromptEncoder` (`sam2/modeling/sam/prompt_encoder.py`). SAM2Base always passes boxes
//! as two corner points with labels 2 and 3 and no `boxes` argument, so every call pads the
//! point list with one "not a point" (label −1) at (0, 0).

use crate::error::{Error, Result};
use crate::models::common::{join, Conv2d, Embedding, Init, LayerNorm2d, Module};
use crate::models::sam::prompt_encoder::{MaskDownscaling, PositionEmbeddingRandom};
use crate::tensor::Tensor;
use std::f32::consts::PI;

/// Point prompts of one batch item: (x, y) in model-input pixels and a label: 1 foreground,
/// 0 background, 2/3 box top-left/bottom-right, −1 padding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PointInputs {
    pub coords: Vec<[f32; 2]>,
    pub labels: Vec<i32>,
}

pub struct PromptEncoder {
    pub embed_dim: usize,
    pub image_embedding_size: (usize, usize),
    pub input_image_size: (usize, usize),
    pub pe_layer: PositionEmbeddingRandom,
    pub point_embeddings: Vec<Embedding>,
    pub not_a_point_embed: Embedding,
    pub mask_downscaling: MaskDownscaling,
    pub no_mask_embed: Embedding,
}

impl Module for PromptEncoder {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.pe_layer.visit(&join(prefix, "pe_layer"), f);
        for (i, e) in self.point_embeddings.iter_mut().enumerate() {
            e.visit(&join(prefix, &format!("point_embeddings.{i}")), f);
        }
        self.not_a_point_embed
            .visit(&join(prefix, "not_a_point_embed"), f);
        self.mask_downscaling
            .visit(&join(prefix, "mask_downscaling"), f);
        self.no_mask_embed.visit(&join(prefix, "no_mask_embed"), f);
    }
}

impl PromptEncoder {
    pub fn new(init: &mut Init, embed_dim: usize, grid: usize, img_size: usize) -> Result<Self> {
        let (e, m) = (embed_dim, 16);
        Ok(PromptEncoder {
            embed_dim: e,
            image_embedding_size: (grid, grid),
            input_image_size: (img_size, img_size),
            pe_layer: PositionEmbeddingRandom {
                positional_encoding_gaussian_matrix: init.normal(&[2, e / 2], 1.0)?,
            },
            point_embeddings: (0..4)
                .map(|_| Embedding::new(init, 1, e))
                .collect::<Result<_>>()?,
            not_a_point_embed: Embedding::new(init, 1, e)?,
            mask_downscaling: MaskDownscaling {
                conv0: Conv2d::new(init, 1, m / 4, 2, 2, 0, true)?,
                norm1: LayerNorm2d::new(init, m / 4)?,
                conv3: Conv2d::new(init, m / 4, m, 2, 2, 0, true)?,
                norm4: LayerNorm2d::new(init, m)?,
                conv6: Conv2d::new(init, m, e, 1, 1, 0, true)?,
            },
            no_mask_embed: Embedding::new(init, 1, e)?,
        })
    }

    /// `[1, C, h, w]` dense positional encoding of the embedding grid.
    pub fn get_dense_pe(&self) -> Result<Tensor> {
        let (h, w) = self.image_embedding_size;
        self.pe_layer.dense(h, w)?.unsqueeze(0)
    }

    /// Random-Fourier features of points already divided by the input size.
    fn encode(&self, coords: &[[f32; 2]]) -> Result<Vec<f32>> {
        let g = self.pe_layer.positional_encoding_gaussian_matrix.to_vec()?;
        let half = g.len() / 2;
        let mut out = vec![0.0f32; coords.len() * 2 * half];
        for (i, c) in coords.iter().enumerate() {
            let (x, y) = (2.0 * c[0] - 1.0, 2.0 * c[1] - 1.0);
            for j in 0..half {
                let v = 2.0 * PI * (x * g[j] + y * g[half + j]);
                out[i * 2 * half + j] = v.sin();
                out[i * 2 * half + half + j] = v.cos();
            }
        }
        Ok(out)
    }

    /// Sparse `[B, N+1, C]` and dense `[B, C, h, w]` embeddings; `masks` `[B, 1, 4h, 4w]`.
    pub fn forward(
        &self,
        points: &[PointInputs],
        masks: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let e = self.embed_dim;
        let (h_in, w_in) = self.input_image_size;
        let weights: Vec<Vec<f32>> = self
            .point_embeddings
            .iter()
            .map(|p| p.weight.to_vec())
            .collect::<Result<_>>()?;
        let nap = self.not_a_point_embed.weight.to_vec()?;
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
                .map(|c| [(c[0] + 0.5) / w_in as f32, (c[1] + 0.5) / h_in as f32])
                .collect();
            coords.push([0.0, 0.0]);
            let mut labels = p.labels.clone();
            labels.push(-1);
            let enc = self.encode(&coords)?;
            for (i, &l) in labels.iter().enumerate() {
                let row = &enc[i * e..(i + 1) * e];
                match l {
                    -1 => flat.extend_from_slice(&nap),
                    0..=3 => flat.extend(row.iter().zip(&weights[l as usize]).map(|(a, b)| a + b)),
                    other => {
                        return Err(Error::arg(
                            "point label",
                            format!("{other} (use 1 foreground, 0 background, 2/3 box corners)"),
                        ))
                    }
                }
            }
        }
        let device = self.no_mask_embed.weight.device();
        let bs = points.len();
        let sparse = Tensor::from_slice(&flat, &[bs, n, e], device)?;
        let (h, w) = self.image_embedding_size;
        let dense = match masks {
            Some(m) => {
                let d = &self.mask_downscaling;
                let x = d.norm1.forward(&d.conv0.forward(m)?)?.gelu()?;
                let x = d.norm4.forward(&d.conv3.forward(&x)?)?.gelu()?;
                d.conv6.forward(&x)?
            }
            None => self
                .no_mask_embed
                .weight
                .reshape(&[1, e, 1, 1])?
                .broadcast_to(&[bs, e, h, w])?
                .contiguous()?,
        };
        Ok((sparse, dense))
    }
}
