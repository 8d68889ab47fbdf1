//! Box-prompted inference with `MedSAM_Inference.py` semantics: grey → 3 channels, resize to the
//! model input with cubic anti-aliased interpolation and a cast to uint8, min-max to [0, 1] (no
//! mean/std), boxes scaled to the input size, `multimask_output=False`, sigmoid, bilinear back to
//! the original size, threshold 0.5. The image embedding is computed once per image.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::io::image::{resize_cubic_aa_skimage_mode, ResizeMode};
use crate::models::Sam;
pub use crate::ops::precision::InferPrecision;
use crate::tensor::Tensor;
use std::path::Path;

/// An input image as H×W×3 f64 (values as read: 0–255 for 8-bit files, [0, 1] for npy).
#[derive(Clone, Debug)]
pub struct InputImage {
    pub h: usize,
    pub w: usize,
    pub hwc: Vec<f64>,
    /// True for `.npy` inputs, which skip the uint8 cast.
    pub is_npy: bool,
}

/// Decodes an image file whose pixel count was checked against the limits
/// (`MEDSAM_MAX_IMAGE_PIXELS`) before decoding, with the decoder's own allocation capped too (a
/// 100 KB PNG may declare gigapixels).
pub fn decode_image_bounded(path: &Path) -> Result<image::DynamicImage> {
    let max_px = crate::io::limits::Limits::current_or_default().max_image_pixels;
    let bad = |e: image::ImageError| Error::file(path, format!("cannot read image: {e}"));
    let open = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
        let r = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
        if r.format().is_some() {
            return Ok(r);
        }
        r.with_guessed_format().map_err(|e| Error::io(path, e))
    };
    let (w, h) = open()?.into_dimensions().map_err(bad)?;
    let px = w as u64 * h as u64;
    if px > max_px {
        return Err(Error::file(
            path,
            format!(
                "image of {w}×{h} = {px} pixels is over the limit of {max_px} (MEDSAM_MAX_IMAGE_PIXELS)"
            ),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Four 16-bit channels per pixel, twice over for the decoder's working buffers.
    limits.max_alloc = Some(px.saturating_mul(16).max(1 << 20));
    let mut r = open()?;
    r.limits(limits);
    r.decode().map_err(bad)
}

/// Reads PNG/JPEG/BMP/TIFF (grey or RGB; alpha dropped; 16-bit scaled to 0–255) or an `.npy`
/// H×W×3 / H×W array.
pub fn read_input_image(path: &Path) -> Result<InputImage> {
    if !path.exists() {
        return Err(Error::file(path, "no such file"));
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        let a = crate::io::npy::read_npy(path)?;
        let v: Vec<f64> = a.to_f32().into_iter().map(|x| x as f64).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            let bad = v.iter().filter(|x| !x.is_finite()).count();
            return Err(Error::file(
                path,
                format!(
                    "npy image holds {bad} NaN or infinite value(s) (first at flat index {i}); \
                     a mask computed from them would be meaningless"
                ),
            ));
        }
        return match a.shape.as_slice() {
            &[h, w, 3] => Ok(InputImage {
                h,
                w,
                hwc: v,
                is_npy: true,
            }),
            &[h, w] => Ok(InputImage {
                h,
                w,
                hwc: v.iter().flat_map(|&x| [x, x, x]).collect(),
                is_npy: true,
            }),
            s => Err(Error::file(
                path,
                format!("npy image: expected (H, W, 3) or (H, W), found {s:?}"),
            )),
        };
    }
    let img = decode_image_bounded(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let hwc: Vec<f64> = match img {
        image::DynamicImage::ImageLuma8(g) => {
            g.into_raw().iter().flat_map(|&x| [x as f64; 3]).collect()
        }
        image::DynamicImage::ImageLuma16(g) => g
            .into_raw()
            .iter()
            .flat_map(|&x| [x as f64 / 257.0; 3])
            .collect(),
        other => other
            .to_rgb8()
            .into_raw()
            .iter()
            .map(|&x| x as f64)
            .collect(),
    };
    if h == 0 || w == 0 {
        return Err(Error::file(path, "image has no pixels"));
    }
    Ok(InputImage {
        h,
        w,
        hwc,
        is_npy: false,
    })
}

/// Min-max to [0, 1] with MedSAM's 1e-8 floor on the range.
fn min_max(v: &mut [f64]) {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let range = (hi - lo).max(1e-8);
    v.iter_mut().for_each(|x| *x = (*x - lo) / range);
}

/// The model input `[1, 3, S, S]` for an image, as MedSAM_Inference.py prepares it. A grey
/// image read as RGB (three equal channels, as every grey PNG and most CT/MR slices) is prepared
/// as one plane and copied to the three channels: the same numbers (each channel is resized and
/// scaled on its own, and the min and max are those of the plane), a third of the work and none
/// of the interleaved `S × S × 3` f64 buffer (25 MB at 1024²).
pub fn prepare_input(img: &InputImage, size: usize) -> Result<Tensor> {
    let grey = img
        .hwc
        .chunks_exact(3)
        .all(|p| p[0].to_bits() == p[1].to_bits() && p[0].to_bits() == p[2].to_bits());
    let channels = if grey { 1 } else { 3 };
    let src: std::borrow::Cow<[f64]> = if grey {
        img.hwc
            .iter()
            .step_by(3)
            .copied()
            .collect::<Vec<f64>>()
            .into()
    } else {
        (&img.hwc[..]).into()
    };
    let mut px = if img.is_npy && img.h == size && img.w == size {
        src.into_owned()
    } else {
        // MedSAM_Inference.py calls resize without `mode`: skimage's default, "reflect".
        let mode = ResizeMode::Reflect;
        let mut r = resize_cubic_aa_skimage_mode(&src, img.h, img.w, channels, size, size, mode);
        if !img.is_npy {
            // `.astype(np.uint8)`: truncation toward zero, wrapping out-of-range values as C does.
            r.iter_mut().for_each(|x| *x = ((*x as i64) as u8) as f64);
        }
        r
    };
    min_max(&mut px);
    let plane = size * size;
    let mut chw = vec![0.0f32; 3 * plane];
    for (c, dst) in chw.chunks_exact_mut(plane).enumerate() {
        let channel = px.iter().skip(c % channels).step_by(channels);
        dst.iter_mut()
            .zip(channel)
            .for_each(|(d, &v)| *d = v as f32);
    }
    Tensor::from_vec(chw, &[1, 3, size, size])
}

/// Result of checking a box against the image.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedBox {
    pub bbox: [f32; 4],
    /// Set when the box was clipped to the image.
    pub warning: Option<String>,
}

/// Clips a box partly outside the image (with a warning); errors when it is empty or wholly
/// outside.
pub fn check_box(b: [f32; 4], h: usize, w: usize) -> Result<CheckedBox> {
    let [x0, y0, x1, y1] = b;
    if b.iter().any(|v| !v.is_finite()) {
        return Err(Error::arg(
            "--box",
            format!("{b:?} has a non-finite coordinate"),
        ));
    }
    if x1 <= x0 || y1 <= y0 {
        return Err(Error::arg(
            "--box",
            format!("{b:?} is empty: need x0 < x1 and y0 < y1"),
        ));
    }
    let (wf, hf) = (w as f32, h as f32);
    if x1 <= 0.0 || y1 <= 0.0 || x0 >= wf || y0 >= hf {
        return Err(Error::arg(
            "--box",
            format!("{b:?} lies wholly outside the {w}×{h} image"),
        ));
    }
    let clipped = [x0.max(0.0), y0.max(0.0), x1.min(wf), y1.min(hf)];
    let warning = (clipped != b)
        .then(|| format!("box {b:?} extends outside the {w}×{h} image; clipped to {clipped:?}"));
    Ok(CheckedBox {
        bbox: clipped,
        warning,
    })
}

/// One box's answer.
pub struct BoxPrediction {
    /// Low-res logits `[1, 1, 4g, 4g]`.
    pub low_res_logits: Tensor,
    /// Binary mask at the original size, row-major `h·w`.
    pub mask: Vec<bool>,
    pub iou: f32,
}

/// Holds one image's embedding and answers any number of box prompts on it.
pub struct Predictor<'m> {
    pub model: &'m Sam,
    pub embedding: Tensor,
    pub orig_hw: (usize, usize),
}

impl<'m> Predictor<'m> {
    /// Encodes the image (the expensive part, done once).
    pub fn new(model: &'m Sam, img: &InputImage, precision: InferPrecision) -> Result<Self> {
        let size = model.config.image_encoder.img_size;
        let input = prepare_input(img, size)?;
        let embedding = no_grad(|| precision.autocast(|| model.image_encoder.forward(&input)))?;
        Ok(Predictor {
            model,
            embedding,
            orig_hw: (img.h, img.w),
        })
    }

    /// Predicts the mask of a box given in original-image pixels.
    pub fn predict_box(&self, bbox: [f32; 4]) -> Result<BoxPrediction> {
        let (h, w) = self.orig_hw;
        let size = self.model.config.image_encoder.img_size as f32;
        let scaled = [
            bbox[0] / w as f32 * size,
            bbox[1] / h as f32 * size,
            bbox[2] / w as f32 * size,
            bbox[3] / h as f32 * size,
        ];
        no_grad(|| {
            let pe = self.model.prompt_encoder.get_dense_pe()?;
            let (sparse, dense) = self
                .model
                .prompt_encoder
                .forward(None, Some(&[scaled]), None)?;
            let (logits, iou) =
                self.model
                    .mask_decoder
                    .forward(&self.embedding, &pe, &sparse, &dense, false)?;
            let prob = logits.sigmoid()?.upsample_bilinear(h, w)?;
            let mask = prob.to_vec()?.iter().map(|&p| p > 0.5).collect();
            Ok(BoxPrediction {
                low_res_logits: logits,
                mask,
                iou: iou.to_vec()?[0],
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input as prepared before grey images took the one-plane path: all three channels
    /// resized, cast and scaled together.
    fn three_channel_input(img: &InputImage, size: usize) -> Vec<f32> {
        let mode = ResizeMode::Reflect;
        let mut r = resize_cubic_aa_skimage_mode(&img.hwc, img.h, img.w, 3, size, size, mode);
        if !img.is_npy {
            r.iter_mut().for_each(|x| *x = ((*x as i64) as u8) as f64);
        }
        min_max(&mut r);
        let plane = size * size;
        let mut chw = vec![0.0f32; 3 * plane];
        for (i, px) in r.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = px[c] as f32;
            }
        }
        chw
    }

    /// A grey image prepared as one plane gives the three-channel numbers bit for bit, up- and
    /// downscaled, from a PNG (uint8 cast) or an .npy; an image with one coloured pixel is not
    /// taken for grey; an .npy at the model's size is only scaled.
    #[test]
    fn grey_images_are_prepared_as_one_plane_with_the_same_numbers() {
        let (h, w) = (23, 37);
        let grey: Vec<f64> = (0..h * w)
            .flat_map(|i| [((i * 37) % 251) as f64; 3])
            .collect();
        let mut tinted = grey.clone();
        tinted[3 * 100 + 2] += 1.0;
        for (hwc, is_npy) in [(grey.clone(), false), (grey, true), (tinted, false)] {
            let img = InputImage { h, w, hwc, is_npy };
            for size in [16, 64] {
                let got = prepare_input(&img, size).unwrap().to_vec().unwrap();
                let want = three_channel_input(&img, size);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "size {size}, npy {is_npy}");
            }
        }
        // An .npy already at the model's size is not resized.
        let hwc: Vec<f64> = (0..256).flat_map(|i| [i as f64 / 300.0; 3]).collect();
        let img = InputImage {
            h: 16,
            w: 16,
            hwc,
            is_npy: true,
        };
        let got = prepare_input(&img, 16).unwrap().to_vec().unwrap();
        assert_eq!(got[..256], got[512..]);
        assert_eq!((got[0], got[255]), (0.0, 1.0));
    }
}
