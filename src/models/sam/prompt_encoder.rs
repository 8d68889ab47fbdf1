//! `PromptEncoder` (segment_anything/modeling/prompt_encoder.py): random-Fourier positional
//! encoding, point and box embeddings, optional mask input, `no_mask_embed`, dense PE.
//! MedSAM keeps it frozen, so its outputs are computed without recording a graph.

use crate::error::{Error, Result};
use crate::models::common::{Conv2d, Embedding, Init, LayerNorm2d};
use crate::models::config::PromptEncoderConfig;
use crate::tensor::Tensor;
use std::f32::consts::PI;
use std::sync::Mutex;

pub struct PositionEmbeddingRandom {
    /// `[2, C/2]`, a buffer in the state dict.
    pub positional_encoding_gaussian_matrix: Tensor,
    /// The last [`PositionEmbeddingRandom::dense`] result, token-major `[h, w, C]`, with the
    /// matrix values and grid it was computed from (it depends on nothing else).
    dense_cache: Mutex<Option<DenseCache>>,
}

struct DenseCache {
    gaussian: Vec<f32>,
    hw: (usize, usize),
    pe: Tensor,
}

crate::models::common::module_parts!(PositionEmbeddingRandom: param positional_encoding_gaussian_matrix);

impl PositionEmbeddingRandom {
    pub fn new(positional_encoding_gaussian_matrix: Tensor) -> Self {
        PositionEmbeddingRandom {
            positional_encoding_gaussian_matrix,
            dense_cache: Mutex::new(None),
        }
    }

    /// sin/cos features `[n, C]` of points already normalised to [0, 1] (x, y).
    fn encode(&self, coords: &[[f32; 2]]) -> Result<Vec<f32>> {
        let g = self.positional_encoding_gaussian_matrix.to_vec()?;
        let half = g.len() / 2;
        let mut out = vec![0.0f32; coords.len() * 2 * half];
        for (i, c) in coords.iter().enumerate() {
            let (x, y) = (2.0 * c[0] - 1.0, 2.0 * c[1] - 1.0);
            for j in 0..half {
                let v = (2.0 * PI) * (x * g[j] + y * g[half + j]);
                out[i * 2 * half + j] = v.sin();
                out[i * 2 * half + half + j] = v.cos();
            }
        }
        Ok(out)
    }

    /// Dense PE `[C, h, w]` of the pixel centres of an `h × w` grid: a channel-last view
    /// (`permute` of a contiguous `[h, w, C]`).
    pub fn dense(&self, h: usize, w: usize) -> Result<Tensor> {
        self.dense_cached(h, w)?.permute(&[2, 0, 1])
    }

    /// Token-major dense PE `[h, w, C]`, computed once per grid and matrix.
    fn dense_cached(&self, h: usize, w: usize) -> Result<Tensor> {
        let gaussian = self.positional_encoding_gaussian_matrix.to_vec()?;
        let device = self.positional_encoding_gaussian_matrix.device();
        let mut cache = self
            .dense_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let hit = cache
            .as_ref()
            .filter(|c| c.hw == (h, w) && c.gaussian == gaussian && c.pe.device() == device);
        if let Some(c) = hit {
            return Ok(c.pe.clone());
        }
        let pe = self.dense_tokens(h, w)?;
        *cache = Some(DenseCache {
            gaussian,
            hw: (h, w),
            pe: pe.clone(),
        });
        Ok(pe)
    }

    /// Token-major dense PE `[h, w, C]`.
    fn dense_tokens(&self, h: usize, w: usize) -> Result<Tensor> {
        let coords: Vec<[f32; 2]> = (0..h)
            .flat_map(|y| {
                (0..w).map(move |x| [(x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32])
            })
            .collect();
        let pe = self.encode(&coords)?;
        let c = pe.len() / (h * w);
        Tensor::from_slice(
            &pe,
            &[h, w, c],
            self.positional_encoding_gaussian_matrix.device(),
        )
    }
}

/// A point prompt in input-image pixels; label 1 = foreground, 0 = background, -1 = padding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
    pub label: i32,
}

pub struct MaskDownscaling {
    pub conv0: Conv2d,
    pub norm1: LayerNorm2d,
    pub conv3: Conv2d,
    pub norm4: LayerNorm2d,
    pub conv6: Conv2d,
}

crate::models::common::module_parts!(MaskDownscaling: conv0 as "0", norm1 as "1", conv3 as "3", norm4 as "4", conv6 as "6");

pub struct PromptEncoder {
    pub embed_dim: usize,
    /// (H, W) of the image embedding.
    pub image_embedding_size: (usize, usize),
    /// (H, W) of the encoder input.
    pub input_image_size: (usize, usize),
    pub pe_layer: PositionEmbeddingRandom,
    pub point_embeddings: Vec<Embedding>,
    pub not_a_point_embed: Embedding,
    pub mask_downscaling: MaskDownscaling,
    pub no_mask_embed: Embedding,
}

crate::models::common::module_parts!(PromptEncoder: pe_layer, list point_embeddings, not_a_point_embed, mask_downscaling, no_mask_embed);

impl PromptEncoder {
    pub fn new(
        init: &mut Init,
        cfg: &PromptEncoderConfig,
        grid: usize,
        img_size: usize,
    ) -> Result<Self> {
        Self::with_dims(init, cfg.embed_dim, cfg.mask_in_chans, grid, img_size)
    }

    /// Embedding width `e`, `m` mask channels, a `grid × grid` embedding of an
    /// `img_size × img_size` input (SAM 2 builds it with `m` = 16).
    pub fn with_dims(
        init: &mut Init,
        e: usize,
        m: usize,
        grid: usize,
        img_size: usize,
    ) -> Result<Self> {
        Ok(PromptEncoder {
            embed_dim: e,
            image_embedding_size: (grid, grid),
            input_image_size: (img_size, img_size),
            pe_layer: PositionEmbeddingRandom::new(init.normal(&[2, e / 2], 1.0)?),
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

    /// `[1, C, h, w]` positional encoding of the embedding grid (a channel-last view, see
    /// [`PositionEmbeddingRandom::dense`]).
    pub fn get_dense_pe(&self) -> Result<Tensor> {
        let (h, w) = self.image_embedding_size;
        let pe = self.pe_layer.dense_cached(h, w)?;
        let c = pe.dim(2);
        pe.reshape(&[1, h, w, c])?.permute(&[0, 3, 1, 2])
    }

    /// Input pixel (x, y) → [0, 1] (pixel centres).
    pub fn normalise(&self, x: f32, y: f32) -> [f32; 2] {
        let (h, w) = self.input_image_size;
        [(x + 0.5) / w as f32, (y + 0.5) / h as f32]
    }

    /// Sparse `[B, N, C]` and dense `[B, C, h, w]` embeddings. `points[b]` and `boxes[b]`
    /// (`[x0, y0, x1, y1]` in input pixels) are the prompts of batch item `b`.
    pub fn forward(
        &self,
        points: Option<&[Vec<Point>]>,
        boxes: Option<&[[f32; 4]]>,
        masks: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let bs = points
            .map(|p| p.len())
            .or(boxes.map(|b| b.len()))
            .or(masks.map(|m| m.dim(0)))
            .unwrap_or(1);
        if let (Some(p), Some(b)) = (points, boxes) {
            if p.len() != b.len() {
                return Err(Error::shape(
                    "prompt_encoder",
                    format!("{} point sets for {} boxes", p.len(), b.len()),
                ));
            }
        }
        let e = self.embed_dim;
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); bs];
        for (b, row) in rows.iter_mut().enumerate() {
            let (mut coords, mut labels) = (Vec::new(), Vec::new());
            if let Some(points) = points {
                for p in &points[b] {
                    if !(-1..=1).contains(&p.label) {
                        return Err(Error::arg(
                            "point label",
                            format!("{} (use 1 foreground, 0 background)", p.label),
                        ));
                    }
                    coords.push(self.normalise(p.x, p.y));
                    labels.push(p.label);
                }
                if boxes.is_none() {
                    // SAM's padding point sits at (0, 0) before its +0.5 shift.
                    coords.push(self.normalise(-0.5, -0.5));
                    labels.push(-1);
                }
            }
            if let Some(boxes) = boxes {
                let bx = boxes[b];
                coords.extend([self.normalise(bx[0], bx[1]), self.normalise(bx[2], bx[3])]);
                labels.extend([2, 3]);
            }
            *row = self.embed_points(&coords, &labels)?;
        }
        let n = rows[0].len() / e;
        let flat: Vec<f32> = rows.concat();
        let device = self.no_mask_embed.weight.device();
        let sparse = Tensor::from_slice(&flat, &[bs, n, e], device)?;
        Ok((sparse, self.embed_dense(masks, bs)?))
    }

    /// Dense `[B, C, h, w]`: the embedded masks, or `no_mask_embed` everywhere for `bs` items.
    pub fn embed_dense(&self, masks: Option<&Tensor>, bs: usize) -> Result<Tensor> {
        let (e, (h, w)) = (self.embed_dim, self.image_embedding_size);
        match masks {
            Some(m) => self.embed_masks(m),
            None => self
                .no_mask_embed
                .weight
                .reshape(&[1, e, 1, 1])?
                .broadcast_to(&[bs, e, h, w])?
                .contiguous(),
        }
    }

    /// Sparse rows `[n·C]` of points already divided by the input size, labelled 0/1
    /// background/foreground, 2/3 box corners, −1 padding (`not_a_point_embed` alone).
    pub fn embed_points(&self, coords: &[[f32; 2]], labels: &[i32]) -> Result<Vec<f32>> {
        let e = self.embed_dim;
        let enc = self.pe_layer.encode(coords)?;
        let nap = self.not_a_point_embed.weight.to_vec()?;
        let table: Vec<Vec<f32>> = self
            .point_embeddings
            .iter()
            .map(|p| p.weight.to_vec())
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(labels.len() * e);
        for (i, &l) in labels.iter().enumerate() {
            match l {
                -1 => out.extend_from_slice(&nap),
                0..=3 => {
                    let row = &enc[i * e..(i + 1) * e];
                    out.extend(row.iter().zip(&table[l as usize]).map(|(a, b)| a + b));
                }
                other => {
                    return Err(Error::arg(
                        "point label",
                        format!("{other} (use 1 foreground, 0 background, 2/3 box corners)"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Dense embedding `[B, C, h, w]` of mask prompts `[B, 1, 4h, 4w]`.
    fn embed_masks(&self, m: &Tensor) -> Result<Tensor> {
        let (h, w) = self.image_embedding_size;
        if m.rank() != 4 || m.dim(1) != 1 || m.dim(2) != 4 * h || m.dim(3) != 4 * w {
            return Err(Error::shape(
                "prompt_encoder mask input",
                format!("expected [B, 1, {}, {}], got {:?}", 4 * h, 4 * w, m.shape()),
            ));
        }
        let d = &self.mask_downscaling;
        let x = d.norm1.forward(&d.conv0.forward(m)?)?.gelu()?;
        let x = d.norm4.forward(&d.conv3.forward(&x)?)?.gelu()?;
        d.conv6.forward(&x)
    }
}
