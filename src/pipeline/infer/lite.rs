//! LiteMedSAM inference as upstream's `CVPR24_LiteMedSAM_infer.py` (LiteMedSAM branch) does it:
//!
//! - 2D: the uint8 image's longest side to 256 with OpenCV's `INTER_AREA` ([`resize_area_u8_cv2`],
//!   bit-exact with `cv2.resize`), min-max to [0, 1] over the resized image, zero-padding to
//!   256×256; each box scaled by `256 / max(H, W)` and truncated to integers; low-res logits
//!   cropped to the unpadded size, bilinear (align_corners=False) to H×W, sigmoid, > 0.5.
//! - 3D ([`segment_volume`], `MedSAM_infer_npz_3D`): per box, the middle slice of its z-range with
//!   the box, then slice by slice towards `z_max` and towards `z_min`, each slice prompted by the
//!   bounds (±3 px at 256 scale) of the previous slice's mask, falling back to the box when that
//!   mask is empty. Upstream re-encodes a slice for every box whose z range covers it; here a
//!   slice's embedding (the same tensor) is kept for the later boxes that cover it, up to
//!   [`SLICE_EMBEDDING_BYTES`], and let go after the last.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::io::image::resize_area_u8_cv2;
use crate::models::lite::LiteMedSam;
use crate::pipeline::infer::sam::{InferPrecision, InputImage};
use crate::tensor::Tensor;
use std::collections::VecDeque;
use std::path::Path;

/// A uint8 image, row-major `h × w × channels` (1 = grey, 3 = RGB).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageU8 {
    pub h: usize,
    pub w: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl ImageU8 {
    pub fn new(h: usize, w: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != h * w * channels || h == 0 || w == 0 || !(channels == 1 || channels == 3) {
            return Err(Error::arg(
                "image",
                format!(
                    "{} bytes for a {h}×{w}×{channels} image (need 1 or 3 channels, non-empty)",
                    data.len()
                ),
            ));
        }
        Ok(ImageU8 {
            h,
            w,
            channels,
            data,
        })
    }
}

/// Upstream's `resize_longest_side`: scale so the longer side is `target`, sizes rounded half up.
pub fn resize_longest_side(img: &ImageU8, target: usize) -> ImageU8 {
    let scale = target as f64 / img.h.max(img.w) as f64;
    let (nh, nw) = (
        (img.h as f64 * scale + 0.5) as usize,
        (img.w as f64 * scale + 0.5) as usize,
    );
    let data = resize_area_u8_cv2(&img.data, img.h, img.w, img.channels, nh.max(1), nw.max(1));
    ImageU8 {
        h: nh.max(1),
        w: nw.max(1),
        channels: img.channels,
        data,
    }
}

/// The model input `[1, 3, S, S]` and the unpadded size `(new_h, new_w)` for an image.
pub fn prepare_input(img: &ImageU8, size: usize) -> Result<(Tensor, (usize, usize))> {
    let r = resize_longest_side(img, size);
    let (lo, hi) = r
        .data
        .iter()
        .fold((u8::MAX, u8::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let range = ((hi - lo) as f64).max(1e-8);
    let mut chw = vec![0.0f32; 3 * size * size];
    for y in 0..r.h {
        for x in 0..r.w {
            for c in 0..3 {
                let v = r.data[(y * r.w + x) * r.channels + if r.channels == 1 { 0 } else { c }];
                chw[(c * size + y) * size + x] = ((v - lo) as f64 / range) as f32;
            }
        }
    }
    Ok((Tensor::from_vec(chw, &[1, 3, size, size])?, (r.h, r.w)))
}

/// Upstream's `resize_box_to_256`: each coordinate times `size / max(H, W)`, truncated.
pub fn scale_box(b: [f64; 4], (h, w): (usize, usize), size: usize) -> [f32; 4] {
    let ratio = size as f64 / h.max(w) as f64;
    b.map(|v| (v * ratio).trunc() as f32)
}

/// Upstream's `get_bbox256`: bounds of a `size × size` mask's foreground, widened by `shift` and
/// clipped to `[0, size]`; `None` for an empty mask.
pub fn mask_bbox(mask: &[u8], size: usize, shift: i64) -> Option<[f32; 4]> {
    let (mut x0, mut y0, mut x1, mut y1) = (i64::MAX, i64::MAX, -1i64, -1i64);
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m > 0) {
        let (y, x) = ((i / size) as i64, (i % size) as i64);
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    (x1 >= 0).then(|| {
        let s = size as i64;
        [
            (x0 - shift).max(0) as f32,
            (y0 - shift).max(0) as f32,
            (x1 + shift).min(s) as f32,
            (y1 + shift).min(s) as f32,
        ]
    })
}

/// One box's answer, as SAM's (the low-res logits cover the padded 256×256 frame).
pub type LitePrediction = crate::pipeline::infer::sam::BoxPrediction;

/// Holds one image's embedding and answers box prompts on it.
pub struct LitePredictor<'m> {
    pub model: &'m LiteMedSam,
    pub embedding: Tensor,
    pub orig_hw: (usize, usize),
    /// Size of the resized image inside the padded input.
    pub new_hw: (usize, usize),
}

impl<'m> LitePredictor<'m> {
    /// Preprocesses and encodes the image (the expensive part, done once).
    pub fn new(model: &'m LiteMedSam, img: &ImageU8) -> Result<Self> {
        Self::with_precision(model, img, InferPrecision::F32)
    }

    /// [`LitePredictor::new`] with the image encoder at `precision`: its matrix products in bf16
    /// where this CPU makes bf16 pay, or its linear layers dynamically quantized to int8 (see
    /// [`crate::ops::quant`]); the decoder stays f32.
    pub fn with_precision(
        model: &'m LiteMedSam,
        img: &ImageU8,
        precision: InferPrecision,
    ) -> Result<Self> {
        let (input, new_hw) = prepare_input(img, model.img_size())?;
        let embedding = no_grad(|| precision.autocast(|| model.image_encoder.forward(&input)))?;
        Ok(LitePredictor {
            model,
            embedding,
            orig_hw: (img.h, img.w),
            new_hw,
        })
    }

    /// Predicts the mask of a box in original-image pixels `[x0, y0, x1, y1]`.
    pub fn predict_box(&self, bbox: [f64; 4]) -> Result<LitePrediction> {
        self.predict_box_input(scale_box(bbox, self.orig_hw, self.model.img_size()))
    }

    /// Predicts the mask of a box already in model-input pixels (the 256 frame).
    pub fn predict_box_input(&self, box_in: [f32; 4]) -> Result<LitePrediction> {
        let (h, w) = self.orig_hw;
        let (nh, nw) = self.new_hw;
        let m = self.model;
        no_grad(|| {
            let pe = m.prompt_encoder.get_dense_pe()?;
            let (sparse, dense) = m.prompt_encoder.forward(None, Some(&[box_in]), None)?;
            let (logits, iou) =
                m.mask_decoder
                    .forward(&self.embedding, &pe, &sparse, &dense, false)?;
            let crop = logits.narrow(2, 0, nh)?.narrow(3, 0, nw)?.contiguous()?;
            let prob = crop.upsample_bilinear(h, w)?.sigmoid()?;
            let mask = prob.to_vec()?.iter().map(|&p| p > 0.5).collect();
            Ok(LitePrediction {
                low_res_logits: logits,
                mask,
                iou: iou.to_vec()?[0],
            })
        })
    }
}

/// A 3D box `[x_min, y_min, z_min, x_max, y_max, z_max]` (upstream's `boxes` of 3D npz files),
/// all bounds inclusive: slices `z_min..=z_max` are segmented.
pub type Box3d = [i64; 6];

/// `MedSAM_infer_npz_3D` for a `d × h × w` uint8 volume: labels `1..=boxes.len()` (later boxes
/// overwrite earlier ones where they overlap), row-major `d·h·w`, each slice's image encoder at
/// `precision`. `on_slice(box, z)` reports progress.
pub fn segment_volume(
    model: &LiteMedSam,
    vol: &[u8],
    (d, h, w): (usize, usize, usize),
    boxes: &[Box3d],
    precision: InferPrecision,
    on_slice: &mut dyn FnMut(usize, usize),
) -> Result<Vec<u8>> {
    if vol.len() != d * h * w || d == 0 || h == 0 || w == 0 {
        return Err(Error::arg(
            "volume",
            format!("{} voxels for {d}×{h}×{w}", vol.len()),
        ));
    }
    let size = model.img_size();
    let plane = h * w;
    let mut segs = vec![0u8; vol.len()];
    let mut embeddings = SliceEmbeddings::default();
    for (bi, b) in boxes.iter().enumerate() {
        let idx = u8::try_from(bi + 1)
            .map_err(|_| Error::arg("boxes", "at most 255 boxes per volume"))?;
        let [x0, y0, z0, x1, y1, z1] = *b;
        // Upstream asserts z_min < z_max; z_min = z_max (a one-slice object, as evaluation's
        // ground-truth boxes can be) runs the same loops on that slice alone. Upstream caps
        // z_max + 1 at D, so z_max = D is accepted and means D - 1.
        if z0 > z1 || z0 < 0 || z1 > d as i64 {
            return Err(Error::arg(
                "boxes",
                format!(
                    "box {bi}: z range {z0}..={z1} (need 0 ≤ z_min ≤ z_max ≤ {})",
                    d - 1
                ),
            ));
        }
        let mid_box = [x0 as f64, y0 as f64, x1 as f64, y1 as f64];
        let z_mid = ((z1 - z0) as f64 / 2.0 + z0 as f64) as i64;
        let mut temp = vec![0u8; vol.len()];
        // Upstream's loops: forward `range(z_middle, min(z_max + 1, D))`, then backward
        // `range(z_middle - 1, max(-1, z_min - 1), -1)` — both z bounds inclusive.
        let forward: Vec<(i64, Option<i64>)> = (z_mid..(z1 + 1).min(d as i64))
            .map(|z| (z, (z != z_mid).then_some(z - 1)))
            .collect();
        let backward: Vec<(i64, Option<i64>)> =
            (z0..z_mid).rev().map(|z| (z, Some(z + 1))).collect();
        for (z, prev) in forward.into_iter().chain(backward) {
            let z = z as usize;
            // Kept only for a later box that covers this slice too.
            let later = boxes[bi + 1..]
                .iter()
                .any(|l| l[2] <= z as i64 && z as i64 <= l[5]);
            let pred = embeddings.predictor(model, z, precision, later, || {
                ImageU8::new(h, w, 1, vol[z * plane..(z + 1) * plane].to_vec())
            })?;
            let box_in = match prev {
                None => scale_box(mid_box, (h, w), size),
                Some(p) => {
                    let prev = ImageU8::new(
                        h,
                        w,
                        1,
                        temp[p as usize * plane..(p as usize + 1) * plane].to_vec(),
                    )?;
                    let r = resize_longest_side(&prev, size);
                    let mut padded = vec![0u8; size * size];
                    for y in 0..r.h {
                        padded[y * size..y * size + r.w]
                            .copy_from_slice(&r.data[y * r.w..(y + 1) * r.w]);
                    }
                    mask_bbox(&padded, size, 3).unwrap_or_else(|| scale_box(mid_box, (h, w), size))
                }
            };
            let m = pred.predict_box_input(box_in)?.mask;
            for (t, &on) in temp[z * plane..(z + 1) * plane].iter_mut().zip(&m) {
                if on {
                    *t = idx;
                }
            }
            on_slice(bi, z);
        }
        for (s, &t) in segs.iter_mut().zip(&temp) {
            if t > 0 {
                *s = idx;
            }
        }
    }
    Ok(segs)
}

/// Bytes of slice embeddings [`segment_volume`] keeps for later boxes at most: 128 of
/// LiteMedSAM's 256×64×64 f32 embeddings (4 MiB each), more than most organs' z ranges.
pub const SLICE_EMBEDDING_BYTES: usize = 512 << 20;

/// The embeddings of a volume's slices encoded so far, most recently used last.
#[derive(Default)]
struct SliceEmbeddings {
    kept: VecDeque<(usize, Kept)>,
    bytes: usize,
}

/// A slice's embedding with the sizes its predictor needs: (embedding, orig_hw, new_hw).
type Kept = (Tensor, (usize, usize), (usize, usize));

impl SliceEmbeddings {
    /// A predictor on slice `z`: its kept embedding, or `slice()` encoded at `precision`; kept
    /// afterwards if `keep_for_later` (the least recently used dropped past
    /// [`SLICE_EMBEDDING_BYTES`]), else let go.
    fn predictor<'m>(
        &mut self,
        model: &'m LiteMedSam,
        z: usize,
        precision: InferPrecision,
        keep_for_later: bool,
        slice: impl FnOnce() -> Result<ImageU8>,
    ) -> Result<LitePredictor<'m>> {
        let (embedding, orig_hw, new_hw) = match self.kept.iter().position(|(kz, _)| *kz == z) {
            Some(i) => {
                let (_, hit) = self.kept.remove(i).expect("position is in range");
                self.bytes -= hit.0.numel() * 4;
                if keep_for_later {
                    self.keep(z, hit.clone());
                }
                hit
            }
            None => {
                let pred = LitePredictor::with_precision(model, &slice()?, precision)?;
                if keep_for_later {
                    self.keep(z, (pred.embedding.clone(), pred.orig_hw, pred.new_hw));
                }
                return Ok(pred);
            }
        };
        Ok(LitePredictor {
            model,
            embedding,
            orig_hw,
            new_hw,
        })
    }

    fn keep(&mut self, z: usize, kept: Kept) {
        let bytes = kept.0.numel() * 4;
        while self.bytes + bytes > SLICE_EMBEDDING_BYTES {
            let Some((_, old)) = self.kept.pop_front() else {
                return; // larger than the whole budget: not kept
            };
            self.bytes -= old.0.numel() * 4;
        }
        self.bytes += bytes;
        self.kept.push_back((z, kept));
    }
}

/// The uint8 image LiteMedSAM's pipeline starts from: image files as decoded (8-bit; 16-bit
/// scaled to 0–255 and rounded); `.npy` uint8 arrays as stored, float arrays in [0, 1] times 255
/// and in [0, 255] as they are, rounded to the nearest integer.
pub fn lite_image(path: &Path, img: &InputImage) -> Result<ImageU8> {
    let round = |v: &[f64]| -> Vec<u8> { v.iter().map(|&x| x.round() as u8).collect() };
    if !img.is_npy {
        return ImageU8::new(img.h, img.w, 3, round(&img.hwc));
    }
    let arr = crate::io::npy::read_npy(path)?;
    let channels = if arr.shape.len() == 3 { 3 } else { 1 };
    if arr.is_u8() {
        let data = arr.to_u8().map_err(|e| Error::file(path, e))?;
        return ImageU8::new(img.h, img.w, channels, data);
    }
    let v = arr.to_f64();
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if !(lo >= 0.0 && hi <= 255.0) {
        return Err(Error::file(
            path,
            format!(
                "LiteMedSAM needs a uint8 image: float values must lie in [0, 1] or [0, 255], found [{lo}, {hi}]"
            ),
        ));
    }
    let scale = if hi <= 1.0 { 255.0 } else { 1.0 };
    let scaled: Vec<f64> = v.iter().map(|&x| x * scale).collect();
    ImageU8::new(img.h, img.w, channels, round(&scaled))
}

/// Checks a 3D box against a `d × h × w` volume: an error when it is empty or lies wholly outside,
/// clipped (with a warning) when it sticks out.
pub fn check_box3d(
    i: usize,
    b: Box3d,
    (d, h, w): (usize, usize, usize),
) -> Result<(Box3d, Option<String>)> {
    let [x0, y0, z0, x1, y1, z1] = b;
    if x1 <= x0 || y1 <= y0 || z1 < z0 {
        return Err(Error::arg(
            "boxes",
            format!("box {i} {b:?} is empty: need x_min < x_max, y_min < y_max, z_min ≤ z_max"),
        ));
    }
    let (wi, hi, di) = (w as i64, h as i64, d as i64);
    if x0 >= wi || y0 >= hi || z0 >= di || x1 <= 0 || y1 <= 0 || z1 < 0 {
        return Err(Error::arg(
            "boxes",
            format!(
                "box {i} {b:?} lies outside the volume (x 0..{w}, y 0..{h}, z 0..{d}; the volume is D×H×W = {d}×{h}×{w})"
            ),
        ));
    }
    let c = [
        x0.max(0),
        y0.max(0),
        z0.max(0),
        x1.min(wi),
        y1.min(hi),
        z1.min(di - 1),
    ];
    let warning = (c != b).then(|| {
        format!("box {i} {b:?} extends outside the {d}×{h}×{w} (D×H×W) volume; clipped to {c:?}")
    });
    Ok((c, warning))
}
