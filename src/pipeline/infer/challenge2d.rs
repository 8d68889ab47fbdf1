//! Upstream's `MedSAM_infer_npz_2D` (`CVPR24_LiteMedSAM_infer.py`, LiteMedSAM branch) for every
//! model family: the image is encoded once, then the boxes are taken in order, box `k` (from 1)
//! setting label `k` wherever its mask is on (`segs[mask > 0] = idx`), so a later box overwrites
//! an earlier one where they overlap. Each box goes through the family's own 2D path: LiteMedSAM's
//! [`LitePredictor`], SAM/MedSAM's [`Predictor`], and MedSAM2 with the image as a one-frame video
//! and each box an object on frame 0.

use crate::error::{Error, Result};
use crate::models::lite::LiteMedSam;
use crate::models::sam2::frames::Uint8Frames;
use crate::models::sam2::volume::{segment_volume_medsam2, VolumePrompt};
use crate::models::sam2::{Prompt, VideoPredictor};
use crate::models::Sam;
use crate::pipeline::infer::lite::{ImageU8, LitePredictor};
use crate::pipeline::infer::sam::{InferPrecision, InputImage, Predictor};

/// Labels are uint8 (upstream's `segs`): at most this many boxes per image.
pub const MAX_BOXES: usize = 255;

/// Refuses more boxes than uint8 labels can tell apart (before any encoding is spent on them).
pub fn check_box_count(n: usize) -> Result<()> {
    if n > MAX_BOXES {
        return Err(Error::arg(
            "boxes",
            format!("{n} boxes, but the labels are uint8: at most {MAX_BOXES} boxes per image"),
        ));
    }
    Ok(())
}

/// The `pixels`-long label map of `boxes` taken in order, `predict` giving each box's mask:
/// `segs[mask > 0] = idx` with `idx` = 1, 2, ….
pub fn compose_labels<B: Copy>(
    pixels: usize,
    boxes: &[B],
    mut predict: impl FnMut(B) -> Result<Vec<bool>>,
) -> Result<Vec<u8>> {
    check_box_count(boxes.len())?;
    let mut segs = vec![0u8; pixels];
    for (i, &b) in boxes.iter().enumerate() {
        let mask = predict(b)?;
        if mask.len() != pixels {
            return Err(Error::shape(
                "compose_labels",
                format!("box {i}: a mask of {} pixels for {pixels}", mask.len()),
            ));
        }
        let idx = (i + 1) as u8;
        for (s, _) in segs.iter_mut().zip(&mask).filter(|(_, &m)| m) {
            *s = idx;
        }
    }
    Ok(segs)
}

/// LiteMedSAM: `MedSAM_infer_npz_2D` itself. `boxes` are `[x_min, y_min, x_max, y_max]` in image
/// pixels; the image encoder runs at `precision` (see [`LitePredictor::with_precision`]).
pub fn segment_image_lite(
    model: &LiteMedSam,
    img: &ImageU8,
    boxes: &[[f64; 4]],
    precision: InferPrecision,
) -> Result<Vec<u8>> {
    check_box_count(boxes.len())?;
    let predictor = LitePredictor::with_precision(model, img, precision)?;
    compose_labels(img.h * img.w, boxes, |b| Ok(predictor.predict_box(b)?.mask))
}

/// SAM/MedSAM (ViT): the image through `MedSAM_Inference.py`'s preprocessing (as an 8-bit image
/// file is), each box through [`Predictor::predict_box`].
pub fn segment_image_sam(
    model: &Sam,
    img: &ImageU8,
    boxes: &[[f32; 4]],
    precision: InferPrecision,
) -> Result<Vec<u8>> {
    check_box_count(boxes.len())?;
    let input = InputImage {
        h: img.h,
        w: img.w,
        hwc: rgb_of(img).into_iter().map(f64::from).collect(),
        is_npy: false,
    };
    let predictor = Predictor::new(model, &input, precision)?;
    compose_labels(img.h * img.w, boxes, |b| Ok(predictor.predict_box(b)?.mask))
}

/// MedSAM2: the image as a one-frame video (MedSAM2's own frame preprocessing), each prompt an
/// object on frame 0, labelled in order as [`compose_labels`] does; `keep_largest_cc` keeps each
/// object's largest connected component, as the volume recipe does.
pub fn segment_image_medsam2(
    predictor: &VideoPredictor,
    img: &ImageU8,
    prompts: &[Prompt],
    keep_largest_cc: bool,
) -> Result<Vec<u8>> {
    check_box_count(prompts.len())?;
    let (h, w) = (img.h, img.w);
    let frames = Uint8Frames::from_rgb(&[rgb_of(img)], (h, w), predictor.model.config.image_size)?;
    let objects: Vec<VolumePrompt> = prompts
        .iter()
        .map(|p| VolumePrompt {
            key_slice: 0,
            prompt: p.clone(),
        })
        .collect();
    segment_volume_medsam2(
        predictor,
        frames,
        (1, h, w),
        &objects,
        keep_largest_cc,
        &mut |_, _| {},
    )
}

/// The image as `h × w × 3` RGB (grey repeated to 3 channels, as upstream's `np.repeat`).
pub fn rgb_of(img: &ImageU8) -> Vec<u8> {
    if img.channels == 3 {
        img.data.clone()
    } else {
        img.data.iter().flat_map(|&v| [v; 3]).collect()
    }
}
