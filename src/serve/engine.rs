//! The model behind the server: one loaded SAM/MedSAM or LiteMedSAM, shared by every session.
//!
//! Work is split as the predictors split it: [`Engine::encode`] turns one 2D uint8 image (a slice)
//! into an embedding (the expensive part, cached by the sessions), [`Engine::decode`] answers a
//! prompt on it. A box-only prompt goes through the same predictor code as `medsam infer`
//! (`Predictor::predict_box` / `LitePredictor::predict_box`), so the masks are identical.
//!
//! MedSAM2 (a video predictor) has no per-slice embedding to cache: [`Engine::propagate`] runs
//! `medsam infer --model-type medsam2`'s whole 3D recipe (`segment_volume_medsam2`) from a box
//! and/or points on one slice, with the same preprocessing and defaults, so the volume masks are
//! identical. Its uint8 volumes are made by [`medsam2_u8`], the conversion `medsam infer
//! --model-type medsam2` applies to a NIfTI volume (the slice models' is `session::to_u8`,
//! `medsam infer`'s for them); [`Engine::volume_u8`] picks the model's.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::lite::LiteMedSam;
use crate::models::sam::prompt_encoder::Point;
use crate::models::sam::Sam;
use crate::models::sam2::volume::{
    segment_volume_medsam2_live, to_uint8, volume_to_frames, Intensity, VolumePrompt,
};
use crate::models::sam2::{Prompt as Sam2Prompt, VideoPredictor};
use crate::pipeline::infer::lite::{ImageU8, LitePredictor};
use crate::pipeline::infer::sam::{InferPrecision, InputImage, Predictor};
use crate::tensor::Tensor;

/// The loaded model.
/// The loaded model; the slice models with their image encoder's precision (MedSAM2's video
/// predictor holds its own).
pub enum Engine {
    Sam(Box<Sam>, InferPrecision),
    Lite(Box<LiteMedSam>, InferPrecision),
    Medsam2(Box<VideoPredictor>),
}

/// One image's embedding with the sizes needed to map prompts and masks.
#[derive(Clone)]
pub struct Embedding {
    pub tensor: Tensor,
    pub orig_hw: (usize, usize),
    /// LiteMedSAM: the resized image's size inside the padded input.
    pub new_hw: (usize, usize),
}

impl Embedding {
    /// Bytes held (for cache accounting).
    pub fn bytes(&self) -> usize {
        self.tensor.shape().iter().product::<usize>() * 4
    }
}

/// A prompt in image pixels: an optional box `[x0, y0, x1, y1]` and clicks `(x, y, positive)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    pub bbox: Option<[f32; 4]>,
    pub points: Vec<(f32, f32, bool)>,
}

impl Engine {
    pub fn from_any(m: crate::models::AnyModel, precision: InferPrecision) -> Engine {
        match m {
            crate::models::AnyModel::Sam(s) => Engine::Sam(s, precision),
            crate::models::AnyModel::Lite(l) => Engine::Lite(l, precision),
        }
    }

    /// "medsam" or "litemedsam" (shown to clients).
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Sam(..) => "medsam",
            Engine::Lite(..) => "litemedsam",
            Engine::Medsam2(_) => "medsam2",
        }
    }

    /// Encodes an image (grey or RGB uint8).
    pub fn encode(&self, img: &ImageU8) -> Result<Embedding> {
        match self {
            Engine::Sam(m, precision) => {
                let p = Predictor::new(m, &input_image(img), *precision)?;
                Ok(Embedding {
                    tensor: p.embedding,
                    orig_hw: p.orig_hw,
                    new_hw: p.orig_hw,
                })
            }
            Engine::Lite(m, precision) => {
                let p = LitePredictor::with_precision(m, img, *precision)?;
                Ok(Embedding {
                    tensor: p.embedding,
                    orig_hw: p.orig_hw,
                    new_hw: p.new_hw,
                })
            }
            Engine::Medsam2(_) => Err(slice_by_slice_error()),
        }
    }

    /// The binary mask (row-major `h·w`) for a prompt on an encoded image.
    pub fn decode(&self, emb: &Embedding, prompt: &Prompt) -> Result<Vec<bool>> {
        if prompt.bbox.is_none() && prompt.points.is_empty() {
            return Err(Error::arg("prompt", "needs a box or at least one point"));
        }
        match (self, prompt.points.is_empty(), prompt.bbox) {
            (Engine::Sam(m, _), true, Some(b)) => {
                let p = Predictor {
                    model: m,
                    embedding: emb.tensor.clone(),
                    orig_hw: emb.orig_hw,
                };
                Ok(p.predict_box(b)?.mask)
            }
            (Engine::Lite(m, _), true, Some(b)) => {
                let p = LitePredictor {
                    model: m,
                    embedding: emb.tensor.clone(),
                    orig_hw: emb.orig_hw,
                    new_hw: emb.new_hw,
                };
                Ok(p.predict_box(b.map(|v| v as f64))?.mask)
            }
            _ => self.decode_with_points(emb, prompt),
        }
    }

    /// Points (with or without a box): the prompt encoder's point path, scaled as boxes are.
    fn decode_with_points(&self, emb: &Embedding, prompt: &Prompt) -> Result<Vec<bool>> {
        let (h, w) = emb.orig_hw;
        let (sx, sy) = match self {
            Engine::Sam(m, _) => {
                let s = m.config.image_encoder.img_size as f32;
                (s / w as f32, s / h as f32)
            }
            Engine::Lite(m, _) => {
                let r = m.img_size() as f32 / h.max(w) as f32;
                (r, r)
            }
            Engine::Medsam2(_) => return Err(slice_by_slice_error()),
        };
        let pts: Vec<Point> = prompt
            .points
            .iter()
            .map(|&(x, y, pos)| Point {
                x: x * sx,
                y: y * sy,
                label: i32::from(pos),
            })
            .collect();
        let boxes = prompt
            .bbox
            .map(|b| [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]);
        let boxes_arr = boxes.map(|b| [b]);
        let (pe, md) = match self {
            Engine::Sam(m, _) => (&m.prompt_encoder, &m.mask_decoder),
            Engine::Lite(m, _) => (&m.prompt_encoder, &m.mask_decoder),
            Engine::Medsam2(_) => return Err(slice_by_slice_error()),
        };
        no_grad(|| {
            let dense_pe = pe.get_dense_pe()?;
            let (sparse, dense) = pe.forward(
                Some(std::slice::from_ref(&pts)),
                boxes_arr.as_ref().map(|b| &b[..]),
                None,
            )?;
            let (logits, _iou) = md.forward(&emb.tensor, &dense_pe, &sparse, &dense, false)?;
            let prob = match self {
                Engine::Sam(..) | Engine::Medsam2(_) => {
                    logits.sigmoid()?.upsample_bilinear(h, w)?
                }
                Engine::Lite(..) => {
                    let (nh, nw) = emb.new_hw;
                    logits
                        .narrow(2, 0, nh)?
                        .narrow(3, 0, nw)?
                        .contiguous()?
                        .upsample_bilinear(h, w)?
                        .sigmoid()?
                }
            };
            Ok(prob.to_vec()?.iter().map(|&p| p > 0.5).collect())
        })
    }

    /// Whether point prompts are offered to clients.
    pub fn supports_points(&self) -> bool {
        true
    }
}

/// The f64 H×W×3 image `medsam infer` reads from an 8-bit file.
fn input_image(img: &ImageU8) -> InputImage {
    let hwc = if img.channels == 3 {
        img.data.iter().map(|&v| v as f64).collect()
    } else {
        img.data.iter().flat_map(|&v| [v as f64; 3]).collect()
    };
    InputImage {
        h: img.h,
        w: img.w,
        hwc,
        is_npy: false,
    }
}

fn slice_by_slice_error() -> Error {
    Error::arg(
        "model",
        "MedSAM2 has no slice embeddings: its prompts segment the whole volume (Engine::propagate)",
    )
}

/// Raw voxels → uint8 as `medsam infer --model-type medsam2` converts a NIfTI volume (without
/// `--window`): integers in 0–255 kept, anything else clipped to the 0.5–99.5th percentiles of
/// the non-zero voxels and min-max scaled. Non-finite values are refused, as `medsam infer`
/// refuses them.
pub fn medsam2_u8(data: &[f64]) -> Result<Vec<u8>> {
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::arg(
            "image",
            format!("voxel {i} is {}: MedSAM2 needs finite intensities", data[i]),
        ));
    }
    let keep = data
        .iter()
        .all(|&x| x.fract() == 0.0 && (0.0..=255.0).contains(&x));
    let how = if keep {
        Intensity::AsIs
    } else {
        Intensity::Percentile
    };
    Ok(to_uint8(data, how))
}

impl Engine {
    /// Whether prompts segment the whole volume ([`Engine::propagate`]) rather than one slice.
    pub fn propagates(&self) -> bool {
        matches!(self, Engine::Medsam2(_))
    }

    /// The `n` voxels `values(i)` of an uploaded volume as uint8, converted as `medsam infer`
    /// converts a NIfTI volume for this model: [`medsam2_u8`] for MedSAM2, `session::to_u8`
    /// (integers in 0–255 kept, else min-max) for the slice models.
    pub fn volume_u8(&self, values: impl Fn(usize) -> f64, n: usize) -> Result<Vec<u8>> {
        if self.propagates() {
            medsam2_u8(&(0..n).map(values).collect::<Vec<f64>>())
        } else {
            Ok(super::session::to_u8(values, n))
        }
    }

    /// MedSAM2's 3D recipe on a grey uint8 volume `(d, h, w)` for one object prompted on slice
    /// `key`; returns the `d·h·w` 0/1 mask. `on_slice(step, z, mask)` reports each tracked frame
    /// (steps count both passes: `d + 1` in all, the key slice twice).
    pub fn propagate(
        &self,
        vol: &[u8],
        (d, h, w): (usize, usize, usize),
        key: usize,
        prompt: &Prompt,
        on_slice: &mut dyn FnMut(usize, usize, &[u8]),
    ) -> Result<Vec<u8>> {
        let Engine::Medsam2(p) = self else {
            return Err(Error::arg(
                "model",
                "only MedSAM2 propagates through a volume",
            ));
        };
        let object = VolumePrompt {
            key_slice: key,
            prompt: Sam2Prompt {
                points: prompt.points.iter().map(|&(x, y, _)| [x, y]).collect(),
                labels: prompt
                    .points
                    .iter()
                    .map(|&(_, _, pos)| i32::from(pos))
                    .collect(),
                bbox: prompt.bbox,
            },
        };
        let frames = volume_to_frames(vol, (d, h, w), p.model.config.image_size)?;
        let mut step = 0;
        let mut report = |_pass, z, m: &[u8]| {
            on_slice(step, z, m);
            step += 1;
        };
        no_grad(|| segment_volume_medsam2_live(p, frames, (d, h, w), &[object], true, &mut report))
    }
}
