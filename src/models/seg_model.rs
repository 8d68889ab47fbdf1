//! [`SegModel`]: what training and evaluation need from a box-prompted segmenter, implemented by
//! SAM/MedSAM ([`Sam`]) and LiteMedSAM ([`LiteMedSam`]) so `train` and `evaluate` are written once.
//!
//! The npy layout holds 1024×1024 images (MedSAM's input). SAM consumes them as they are. For
//! LiteMedSAM every sample is brought into its 256 frame the way upstream's LiteMedSAM
//! `train_one_gpu.py` does: the uint8 image's longest side to 256 with `INTER_AREA`, min-max to
//! [0, 1], zero-padded to 256×256; the label map resized with `INTER_NEAREST` and padded; the
//! box scaled by `256 / max(H, W)`. Its loss is upstream's: Dice + BCE on the 256×256 low-res
//! logits plus the MSE between the predicted and the true IoU.

use crate::error::Result;
use crate::io::image::resize_nearest_cv2;
use crate::models::lite::tiny_vit::Mode;
use crate::models::lite::LiteMedSam;
use crate::models::{LoadReport, Sam};
use crate::ops::loss::dice_bce_loss;
use crate::pipeline::data::{Batch, Image};
use crate::pipeline::infer::lite::{prepare_input, scale_box, ImageU8, LitePredictor};
use crate::pipeline::infer::sam::{InferPrecision, InputImage, Predictor};
use crate::tensor::Tensor;
use crate::Device;
use std::collections::BTreeMap;

/// Evaluation's part of [`SegModel`] (separate so shared handles, `Arc<Sam>`, evaluate too).
pub trait SegPredict {
    /// One mask (at the image's size) per box `[x0, y0, x1, y1]` in image pixels, the image
    /// encoded once.
    fn predict_boxes(
        &self,
        img: &Image,
        boxes: &[[usize; 4]],
        precision: InferPrecision,
    ) -> Result<Vec<Vec<bool>>>;
}

impl<M: SegPredict + ?Sized> SegPredict for std::sync::Arc<M> {
    fn predict_boxes(
        &self,
        img: &Image,
        boxes: &[[usize; 4]],
        precision: InferPrecision,
    ) -> Result<Vec<Vec<bool>>> {
        (**self).predict_boxes(img, boxes, precision)
    }
}

pub trait SegModel: SegPredict {
    /// Side of the square model input.
    fn img_size(&self) -> usize;
    /// Where the parameters live (host batches are moved there).
    fn device(&self) -> Device;
    /// Every parameter and buffer by state-dict name, in PyTorch's order.
    fn state_dict(&mut self) -> Vec<(String, Tensor)>;
    fn load_state_dict(&mut self, weights: &BTreeMap<String, Tensor>) -> Result<LoadReport>;
    /// The parameters the optimizer updates, in `torch.optim` order.
    fn trainable_parameters(&mut self) -> Vec<(String, &mut Tensor)>;
    /// Marks the trainable parameters as variables.
    fn enable_training(&mut self);
    /// Images `[B, 3, S, S]` in the model frame and one box per image → low-res logits.
    fn forward(&self, images: &Tensor, boxes: &[[f32; 4]], mode: Mode) -> Result<Tensor>;
    /// A host batch of the npy layout brought into the model's input frame.
    fn prepare_batch(&self, batch: &Batch) -> Result<Batch>;
    /// The training loss of a prepared batch whose images are already on [`Self::device`].
    fn loss(&self, images: &Tensor, batch: &Batch) -> Result<Tensor>;
}

/// The [`SegModel`] methods that are the model's inherent ones of the same name.
macro_rules! delegate_parameter_methods {
    ($model:ident) => {
        fn state_dict(&mut self) -> Vec<(String, Tensor)> {
            $model::state_dict(self)
        }
        fn load_state_dict(&mut self, weights: &BTreeMap<String, Tensor>) -> Result<LoadReport> {
            $model::load_state_dict(self, weights)
        }
        fn trainable_parameters(&mut self) -> Vec<(String, &mut Tensor)> {
            $model::trainable_parameters(self)
        }
        fn enable_training(&mut self) {
            $model::enable_training(self)
        }
    };
}

impl SegModel for Sam {
    fn img_size(&self) -> usize {
        self.config.image_encoder.img_size
    }
    fn device(&self) -> Device {
        self.image_encoder.patch_embed.proj.weight.device()
    }
    delegate_parameter_methods!(Sam);
    fn forward(&self, images: &Tensor, boxes: &[[f32; 4]], _mode: Mode) -> Result<Tensor> {
        Sam::forward(self, images, boxes)
    }
    fn prepare_batch(&self, batch: &Batch) -> Result<Batch> {
        Ok(Batch {
            images: batch.images.clone(),
            masks: batch.masks.clone(),
            boxes: batch.boxes.clone(),
            names: batch.names.clone(),
        })
    }
    /// MedSAM's: Dice + BCE on the low-res logits upsampled to the image size.
    fn loss(&self, images: &Tensor, batch: &Batch) -> Result<Tensor> {
        let (h, w) = (batch.images.dim(2), batch.images.dim(3));
        let logits = Sam::forward(self, images, &batch.boxes)?;
        let up = logits.upsample_bilinear(h, w)?;
        dice_bce_loss(&up, &batch.masks)
    }
}

impl SegPredict for Sam {
    fn predict_boxes(
        &self,
        img: &Image,
        boxes: &[[usize; 4]],
        precision: InferPrecision,
    ) -> Result<Vec<Vec<bool>>> {
        let hwc = chw_to_hwc(img, |v| v as f64);
        let input = InputImage {
            h: img.h,
            w: img.w,
            hwc,
            is_npy: true,
        };
        let predictor = Predictor::new(self, &input, precision)?;
        boxes
            .iter()
            .map(|b| {
                let b = [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32];
                Ok(predictor.predict_box(b)?.mask)
            })
            .collect()
    }
}

/// The npy image (CHW in [0, 1], stored as uint8/255 by preprocessing) back as the uint8 HWC image
/// LiteMedSAM's pipeline starts from.
pub fn image_to_u8(img: &Image) -> Result<ImageU8> {
    let data = chw_to_hwc(img, |v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
    ImageU8::new(img.h, img.w, 3, data)
}

/// The 3-channel CHW image's values interleaved (HWC), each mapped by `f`.
fn chw_to_hwc<T>(img: &Image, f: impl Fn(f32) -> T) -> Vec<T> {
    let n = img.h * img.w;
    (0..n)
        .flat_map(|i| (0..3).map(move |c| c * n + i))
        .map(|k| f(img.chw[k]))
        .collect()
}

/// Fraction of agreement between `logits > 0` and a 0/1 target, per plane (upstream's
/// `cal_iou`; two empty masks agree fully rather than giving upstream's 0/0).
fn plane_ious(logits: &[f32], target: &[f32], planes: usize) -> Vec<f32> {
    let plane = logits.len() / planes.max(1);
    (0..planes)
        .map(|i| {
            let r = i * plane..(i + 1) * plane;
            let (mut inter, mut union) = (0usize, 0usize);
            for (&l, &g) in logits[r.clone()].iter().zip(&target[r]) {
                let (p, g) = (l > 0.0, g > 0.5);
                inter += (p && g) as usize;
                union += (p || g) as usize;
            }
            if union == 0 {
                1.0
            } else {
                inter as f32 / union as f32
            }
        })
        .collect()
}

impl LiteMedSam {
    /// One npy sample (image CHW, mask plane, box at the image's size) in the 256 frame.
    fn prepare_sample(
        &self,
        img: &Image,
        mask: &[f32],
        bbox: [f32; 4],
    ) -> Result<(Vec<f32>, Vec<f32>, [f32; 4])> {
        let s = self.img_size();
        let (input, (nh, nw)) = prepare_input(&image_to_u8(img)?, s)?;
        let small = resize_nearest_cv2(mask, (img.h, img.w), (nh, nw));
        let mut padded = vec![0.0f32; s * s];
        for y in 0..nh {
            padded[y * s..y * s + nw].copy_from_slice(&small[y * nw..(y + 1) * nw]);
        }
        let b = bbox.map(|v| v as f64);
        Ok((input.to_vec()?, padded, scale_box(b, (img.h, img.w), s)))
    }
}

impl SegModel for LiteMedSam {
    fn img_size(&self) -> usize {
        LiteMedSam::img_size(self)
    }
    fn device(&self) -> Device {
        self.mask_decoder.iou_token.weight.device()
    }
    delegate_parameter_methods!(LiteMedSam);
    fn forward(&self, images: &Tensor, boxes: &[[f32; 4]], mode: Mode) -> Result<Tensor> {
        LiteMedSam::forward(self, images, boxes, mode)
    }
    fn prepare_batch(&self, batch: &Batch) -> Result<Batch> {
        let (b, h, w) = (
            batch.images.dim(0),
            batch.images.dim(2),
            batch.images.dim(3),
        );
        let s = self.img_size();
        let (all_img, all_mask) = (batch.images.to_vec()?, batch.masks.to_vec()?);
        let (mut images, mut masks, mut boxes) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..b {
            let img = Image {
                h,
                w,
                chw: all_img[i * 3 * h * w..(i + 1) * 3 * h * w].to_vec(),
            };
            let mask = &all_mask[i * h * w..(i + 1) * h * w];
            let (im, m, bx) = self.prepare_sample(&img, mask, batch.boxes[i])?;
            images.extend(im);
            masks.extend(m);
            boxes.push(bx);
        }
        Ok(Batch {
            images: Tensor::from_vec(images, &[b, 3, s, s])?,
            masks: Tensor::from_vec(masks, &[b, 1, s, s])?,
            boxes,
            names: batch.names.clone(),
        })
    }
    /// Upstream LiteMedSAM's: Dice + BCE on the 256×256 logits, plus MSE(predicted IoU, IoU).
    fn loss(&self, images: &Tensor, batch: &Batch) -> Result<Tensor> {
        let (logits, iou) = self.forward_with_iou(images, &batch.boxes, Mode::Train)?;
        let mask_loss = dice_bce_loss(&logits, &batch.masks)?;
        let truth = plane_ious(&logits.to_vec()?, &batch.masks.to_vec()?, logits.dim(0));
        let truth = Tensor::from_vec(truth, iou.shape())?.to_device(iou.device())?;
        let diff = iou.sub(&truth)?;
        mask_loss.add(&diff.mul(&diff)?.mean_all()?)
    }
}

impl SegPredict for LiteMedSam {
    fn predict_boxes(
        &self,
        img: &Image,
        boxes: &[[usize; 4]],
        precision: InferPrecision,
    ) -> Result<Vec<Vec<bool>>> {
        let predictor = LitePredictor::with_precision(self, &image_to_u8(img)?, precision)?;
        boxes
            .iter()
            .map(|b| Ok(predictor.predict_box(b.map(|v| v as f64))?.mask))
            .collect()
    }
}
