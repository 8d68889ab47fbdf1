//! `medsam_rs.Predictor`: `segment_anything.SamPredictor`'s shape (set the image once, prompt
//! it many times) over the crate's models, with one of three image/prompt transforms:
//!
//! - `"medsam"` (SAM/MedSAM default): MedSAM_Inference.py / MedSAM's notebooks — cubic
//!   anti-aliased resize to S×S, min-max to [0, 1], prompts scaled by S/W and S/H, masks
//!   `sigmoid(bilinear(logits → H×W)) > 0.5`; the crate's `infer::prepare_input`.
//! - `"sam"`: `SamPredictor` — Pillow bilinear resize of the longest side to S, ImageNet
//!   mean/std, zero padding; prompts scaled by the resized/original ratio per axis; masks
//!   upsampled to S×S, cropped, upsampled to H×W, `> 0`.
//! - `"lite"` (LiteMedSAM, the only one for it): CVPR24_LiteMedSAM_infer.py — the crate's
//!   `infer_lite::prepare_input` (INTER_AREA, min-max, pad) and box scaling (×S/max(H,W),
//!   truncated); masks cropped, bilinear to H×W, sigmoid, > 0.5.
//!
//! Outputs follow `SamPredictor.predict`: `(masks[C,H,W] bool, iou[C] f32, low_res[C,4g,4g] f32)`
//! for one prompt, with a leading N for a batch of N boxes/point sets.

use crate::image::{ArrayIn, ImageIn, Pixels};
use crate::{to_py, value_err};
use medsam::autograd::no_grad;
use medsam::io::image::{resize_u8_pil, PilFilter};
use medsam::models::sam::mask_decoder::MaskDecoder;
use medsam::models::sam::prompt_encoder::{Point, PromptEncoder};
use medsam::models::AnyModel;
use medsam::models::ModelType;
use medsam::pipeline::infer::lite::ImageU8;
use medsam::pipeline::infer::sam::{InferPrecision, InputImage};
use medsam::{Device, Tensor};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// SAM's `pixel_mean` / `pixel_std` (buffers not stored in checkpoints).
const PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
const PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transform {
    MedSam,
    Sam,
    Lite,
}

impl Transform {
    fn name(self) -> &'static str {
        match self {
            Transform::MedSam => "medsam",
            Transform::Sam => "sam",
            Transform::Lite => "lite",
        }
    }
}

/// One image's embedding and the sizes needed to map prompts and masks.
struct Embedded {
    embedding: Tensor,
    orig_hw: (usize, usize),
    /// The resized image inside the model's S×S frame (S×S for "medsam").
    input_hw: (usize, usize),
}

#[pyclass(module = "medsam_rs")]
pub struct Predictor {
    pub(crate) model: Arc<AnyModel>,
    device: Device,
    pub(crate) precision: InferPrecision,
    transform: Transform,
    state: Option<Embedded>,
}

fn parse_model_type(s: Option<&str>) -> PyResult<(Option<ModelType>, bool)> {
    Ok(match s {
        None => (None, false),
        Some("vit_b") => (Some(ModelType::VitB), false),
        Some("vit_l") => (Some(ModelType::VitL), false),
        Some("vit_h") => (Some(ModelType::VitH), false),
        Some("lite") => (None, true),
        Some(o) => {
            return Err(value_err(format!(
                "model_type: unknown `{o}` (expected vit_b, vit_l, vit_h or lite)"
            )))
        }
    })
}

pub(crate) fn parse_precision(s: &str) -> PyResult<InferPrecision> {
    match s {
        "f32" | "float32" => Ok(InferPrecision::F32),
        "bf16" | "bfloat16" => Ok(InferPrecision::Bf16),
        "int8" => Ok(InferPrecision::Int8),
        o => Err(value_err(format!(
            "precision: unknown `{o}` (expected f32, bf16 or int8)"
        ))),
    }
}

/// `ResizeLongestSide.get_preprocess_shape`.
fn longest_side_shape(h: usize, w: usize, size: usize) -> (usize, usize) {
    let scale = size as f64 / h.max(w) as f64;
    (
        (h as f64 * scale + 0.5) as usize,
        (w as f64 * scale + 0.5) as usize,
    )
}

/// `SamPredictor.set_image` up to the encoder: Pillow resize, normalise, pad.
fn sam_input(px: &Pixels, size: usize) -> medsam::Result<(Tensor, (usize, usize))> {
    let (h, w) = (px.h, px.w);
    let mut u8s = px.to_u8();
    if px.c == 1 {
        u8s = u8s.iter().flat_map(|&v| [v, v, v]).collect();
    }
    let (nh, nw) = longest_side_shape(h, w, size);
    let r = resize_u8_pil(&u8s, (h, w, 3), (nh, nw), PilFilter::Bilinear);
    let mut chw = vec![0.0f32; 3 * size * size];
    for y in 0..nh {
        for x in 0..nw {
            for c in 0..3 {
                chw[(c * size + y) * size + x] =
                    (r[(y * nw + x) * 3 + c] as f32 - PIXEL_MEAN[c]) / PIXEL_STD[c];
            }
        }
    }
    Ok((Tensor::from_vec(chw, &[1, 3, size, size])?, (nh, nw)))
}

impl Predictor {
    fn img_size(&self) -> usize {
        match &*self.model {
            AnyModel::Sam(m) => m.config.image_encoder.img_size,
            AnyModel::Lite(m) => m.img_size(),
        }
    }

    fn decoder(&self) -> (&PromptEncoder, &MaskDecoder) {
        match &*self.model {
            AnyModel::Sam(m) => (&m.prompt_encoder, &m.mask_decoder),
            AnyModel::Lite(m) => (&m.prompt_encoder, &m.mask_decoder),
        }
    }

    /// Preprocesses and encodes (runs without the GIL).
    fn encode(&self, px: &Pixels) -> medsam::Result<Embedded> {
        px.check_range()
            .map_err(|e| medsam::Error::arg("image", e))?;
        let size = self.img_size();
        let (h, w) = (px.h, px.w);
        let (input, input_hw) = match self.transform {
            Transform::MedSam => {
                let img = InputImage {
                    h,
                    w,
                    hwc: px.hwc3_f64(),
                    // Float images take MedSAM_Inference.py's `.npy` path (no uint8 cast).
                    is_npy: px.is_float(),
                };
                (
                    medsam::pipeline::infer::sam::prepare_input(&img, size)?,
                    (size, size),
                )
            }
            Transform::Lite => {
                let img = ImageU8::new(h, w, px.c, px.to_u8())?;
                medsam::pipeline::infer::lite::prepare_input(&img, size)?
            }
            Transform::Sam => sam_input(px, size)?,
        };
        let input = input.to_device(self.device)?;
        let embedding = no_grad(|| {
            self.precision.autocast(|| match &*self.model {
                AnyModel::Sam(m) => m.image_encoder.forward(&input),
                AnyModel::Lite(m) => m.image_encoder.forward(&input),
            })
        })?;
        Ok(Embedded {
            embedding,
            orig_hw: (h, w),
            input_hw,
        })
    }

    /// Original-image coordinates `(x, y)` to the model frame.
    fn map_xy(&self, st: &Embedded, x: f64, y: f64, is_box: bool) -> (f32, f32) {
        let (h, w) = st.orig_hw;
        let size = self.img_size() as f64;
        match self.transform {
            Transform::MedSam => ((x / w as f64 * size) as f32, (y / h as f64 * size) as f32),
            Transform::Sam => {
                let (nh, nw) = st.input_hw;
                (
                    (x * (nw as f64 / w as f64)) as f32,
                    (y * (nh as f64 / h as f64)) as f32,
                )
            }
            Transform::Lite => {
                let r = size / h.max(w) as f64;
                // Upstream truncates box coordinates (resize_box_to_256), not points.
                if is_box {
                    ((x * r).trunc() as f32, (y * r).trunc() as f32)
                } else {
                    ((x * r) as f32, (y * r) as f32)
                }
            }
        }
    }

    /// Low-res logits `[N, C, 4g, 4g]` → masks at the original size.
    fn masks(&self, st: &Embedded, logits: &Tensor) -> medsam::Result<Vec<bool>> {
        let (h, w) = st.orig_hw;
        let (nh, nw) = st.input_hw;
        let size = self.img_size();
        let v = match self.transform {
            Transform::MedSam => logits.sigmoid()?.upsample_bilinear(h, w)?.to_vec()?,
            Transform::Lite => {
                // The 4g×4g logits cover the padded frame: crop the image's part at that scale.
                let g4 = logits.dim(2);
                let (ch, cw) = (nh * g4 / size, nw * g4 / size);
                let crop = logits.narrow(2, 0, ch)?.narrow(3, 0, cw)?.contiguous()?;
                crop.upsample_bilinear(h, w)?.sigmoid()?.to_vec()?
            }
            Transform::Sam => {
                let up = logits.upsample_bilinear(size, size)?;
                let crop = up.narrow(2, 0, nh)?.narrow(3, 0, nw)?.contiguous()?;
                let v = crop.upsample_bilinear(h, w)?.to_vec()?;
                return Ok(v.iter().map(|&x| x > 0.0).collect());
            }
        };
        Ok(v.iter().map(|&p| p > 0.5).collect())
    }
}

/// Prompts parsed from numpy: boxes `(N, 4)` and/or points `(N, K, 2)` with labels `(N, K)`.
struct Prompts {
    boxes: Option<Vec<[f64; 4]>>,
    points: Option<Vec<Vec<(f64, f64, i32)>>>,
    batched: bool,
}

fn parse_prompts(
    point_coords: Option<&Bound<'_, PyAny>>,
    point_labels: Option<&Bound<'_, PyAny>>,
    bbox: Option<&Bound<'_, PyAny>>,
) -> PyResult<Prompts> {
    let mut batched = false;
    let boxes = match bbox {
        None => None,
        Some(b) => {
            let a = ArrayIn::extract(b, "box")?;
            let shape = a.shape();
            let n = match shape.as_slice() {
                [4] => 1,
                [n, 4] => {
                    batched = true;
                    *n
                }
                s => {
                    return Err(value_err(format!(
                        "box: expected shape (4,) or (N, 4) as x0, y0, x1, y1, found {s:?}"
                    )))
                }
            };
            let v = a.view().to_f64();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(value_err("box: has a non-finite coordinate"));
            }
            let boxes: Vec<[f64; 4]> = v
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect();
            for (i, b) in boxes.iter().enumerate() {
                if b[2] < b[0] || b[3] < b[1] {
                    return Err(value_err(format!(
                        "box {i}: {b:?} has x1 < x0 or y1 < y0 (expected x0, y0, x1, y1)"
                    )));
                }
            }
            debug_assert_eq!(boxes.len(), n);
            Some(boxes)
        }
    };
    let points = match (point_coords, point_labels) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(value_err(
                "point_coords and point_labels: give both or neither",
            ))
        }
        (Some(c), Some(l)) => {
            let (c, l) = (
                ArrayIn::extract(c, "point_coords")?,
                ArrayIn::extract(l, "point_labels")?,
            );
            let (cs, ls) = (c.shape(), l.shape());
            let (n, k) = match (cs.as_slice(), ls.as_slice()) {
                ([k, 2], [kl]) if k == kl => (1, *k),
                ([n, k, 2], [nl, kl]) if n == nl && k == kl => {
                    batched = true;
                    (*n, *k)
                }
                _ => {
                    return Err(value_err(format!(
                        "point_coords {cs:?} and point_labels {ls:?}: expected (K, 2) with (K,), or (N, K, 2) with (N, K)"
                    )))
                }
            };
            let (cv, lv) = (c.view().to_f64(), l.view().to_f64());
            if cv.iter().any(|x| !x.is_finite()) {
                return Err(value_err("point_coords: has a non-finite coordinate"));
            }
            if let Some(bad) = lv.iter().find(|&&x| !(x == 0.0 || x == 1.0 || x == -1.0)) {
                return Err(value_err(format!(
                    "point_labels: {bad} is not 1 (foreground), 0 (background) or -1 (padding)"
                )));
            }
            Some(
                (0..n)
                    .map(|i| {
                        (0..k)
                            .map(|j| {
                                let p = (i * k + j) * 2;
                                (cv[p], cv[p + 1], lv[i * k + j] as i32)
                            })
                            .collect()
                    })
                    .collect::<Vec<Vec<_>>>(),
            )
        }
    };
    if let (Some(b), Some(p)) = (&boxes, &points) {
        if b.len() != p.len() {
            return Err(value_err(format!(
                "{} boxes but {} point sets: give one point set per box",
                b.len(),
                p.len()
            )));
        }
    }
    if boxes.is_none() && points.is_none() {
        return Err(value_err(
            "predict: give a box and/or point_coords with point_labels",
        ));
    }
    Ok(Prompts {
        boxes,
        points,
        batched,
    })
}

type Outputs = (Vec<bool>, Vec<f32>, Vec<f32>, Vec<usize>);

#[pymethods]
impl Predictor {
    /// Loads a SAM/MedSAM (ViT) or LiteMedSAM (TinyViT) checkpoint (.pth or .safetensors).
    #[new]
    #[pyo3(signature = (checkpoint, model_type=None, config=None, device="cpu", precision="f32", transform=None))]
    fn new(
        py: Python<'_>,
        checkpoint: PathBuf,
        model_type: Option<&str>,
        config: Option<PathBuf>,
        device: &str,
        precision: &str,
        transform: Option<&str>,
    ) -> PyResult<Self> {
        let (sam_type, want_lite) = parse_model_type(model_type)?;
        let precision = parse_precision(precision)?;
        let device: Device = device.parse().map_err(to_py)?;
        let (model, _) = py
            .allow_threads(|| {
                medsam::models::load::load_any_model(
                    &checkpoint,
                    sam_type,
                    config.as_deref(),
                    device,
                )
            })
            .map_err(to_py)?;
        let is_lite = matches!(model, AnyModel::Lite(_));
        if want_lite && !is_lite {
            return Err(value_err(format!(
                "model_type: lite does not match {}, which holds a SAM/MedSAM (ViT) model",
                checkpoint.display()
            )));
        }
        let transform = match (transform, is_lite) {
            (None, false) | (Some("medsam"), false) => Transform::MedSam,
            (Some("sam"), false) => Transform::Sam,
            (None, true) | (Some("lite"), true) => Transform::Lite,
            (Some(t), lite) => {
                return Err(value_err(format!(
                    "transform: `{t}` does not apply to a {} model (expected {})",
                    if lite { "LiteMedSAM" } else { "SAM/MedSAM" },
                    if lite { "lite" } else { "medsam or sam" }
                )))
            }
        };
        Ok(Predictor {
            model: Arc::new(model),
            device,
            precision,
            transform,
            state: None,
        })
    }

    /// Encodes an image: (H, W, 3) or (H, W), uint8 (0-255) or float32/float64 in [0, 1];
    /// `image_format="BGR"` for OpenCV's channel order.
    #[pyo3(signature = (image, image_format="RGB"))]
    fn set_image(
        &mut self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        image_format: &str,
    ) -> PyResult<()> {
        let bgr = match image_format {
            "RGB" => false,
            "BGR" => true,
            o => {
                return Err(value_err(format!(
                    "image_format: unknown `{o}` (expected RGB or BGR)"
                )))
            }
        };
        let img = ImageIn::extract(image)?;
        let px = img.pixels();
        let this = &*self;
        let st = py
            .allow_threads(|| {
                let px = if bgr { px.reversed_channels() } else { px };
                this.encode(&px)
            })
            .map_err(to_py)?;
        self.state = Some(st);
        Ok(())
    }

    /// Masks for box and/or point prompts in original-image pixels. One prompt: box (4,),
    /// point_coords (K, 2), point_labels (K,); a batch: (N, 4), (N, K, 2), (N, K).
    /// Returns (masks bool [N,]C×H×W, iou_predictions f32 [N,]C, low_res_logits f32 [N,]C×4g×4g)
    /// with C = 3 when multimask_output else 1.
    #[pyo3(signature = (point_coords=None, point_labels=None, r#box=None, multimask_output=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        point_coords: Option<&Bound<'py, PyAny>>,
        point_labels: Option<&Bound<'py, PyAny>>,
        r#box: Option<&Bound<'py, PyAny>>,
        multimask_output: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(PyObject, PyObject, PyObject)> {
        // Any truthy value, as SamPredictor accepts (numpy bools included).
        let multimask_output = match multimask_output {
            Some(m) => m.is_truthy()?,
            None => false,
        };
        let st = self.state.as_ref().ok_or_else(|| {
            crate::MedsamError::new_err("predict: no image set; call set_image(image) first")
        })?;
        let prompts = parse_prompts(point_coords, point_labels, r#box)?;
        let (masks, iou, low, shape) = py
            .allow_threads(|| self.decode(st, &prompts, multimask_output))
            .map_err(to_py)?;
        let (n, c, g, h, w) = (shape[0], shape[1], shape[2], shape[3], shape[4]);
        let lead: Vec<usize> = if prompts.batched { vec![n, c] } else { vec![c] };
        let dims = |rest: &[usize]| -> Vec<usize> { lead.iter().chain(rest).copied().collect() };
        let m = PyArray1::from_vec(py, masks).reshape(dims(&[h, w]))?;
        let i = PyArray1::from_vec(py, iou).reshape(dims(&[]))?;
        let l = PyArray1::from_vec(py, low).reshape(dims(&[g, g]))?;
        Ok((
            m.into_any().unbind(),
            i.into_any().unbind(),
            l.into_any().unbind(),
        ))
    }

    /// The cached image embedding, float32 (1, C, g, g).
    fn get_image_embedding<'py>(&self, py: Python<'py>) -> PyResult<PyObject> {
        let st = self.state.as_ref().ok_or_else(|| {
            crate::MedsamError::new_err(
                "get_image_embedding: no image set; call set_image(image) first",
            )
        })?;
        let v = st.embedding.to_vec().map_err(to_py)?;
        let a = PyArray1::from_vec(py, v).reshape(st.embedding.shape().to_vec())?;
        Ok(a.into_any().unbind())
    }

    /// Benchmark hook: seconds per decode of `box` (prompt encoder, mask decoder, masks at the
    /// original size) timed inside Rust over `repeats` calls, numpy conversion excluded — the
    /// "Rust call" that `predict`'s Python overhead is measured against.
    #[pyo3(signature = (r#box, repeats=20, multimask_output=false))]
    fn _bench_decode(
        &self,
        py: Python<'_>,
        r#box: &Bound<'_, PyAny>,
        repeats: usize,
        multimask_output: bool,
    ) -> PyResult<f64> {
        let st = self.state.as_ref().ok_or_else(|| {
            crate::MedsamError::new_err("_bench_decode: no image set; call set_image(image) first")
        })?;
        let prompts = parse_prompts(None, None, Some(r#box))?;
        py.allow_threads(|| {
            let t = std::time::Instant::now();
            for _ in 0..repeats.max(1) {
                self.decode(st, &prompts, multimask_output)?;
            }
            Ok(t.elapsed().as_secs_f64() / repeats.max(1) as f64)
        })
        .map_err(to_py)
    }

    /// Forgets the current image.
    fn reset_image(&mut self) {
        self.state = None;
    }

    #[getter]
    fn is_image_set(&self) -> bool {
        self.state.is_some()
    }

    /// (H, W) of the current image.
    #[getter]
    fn original_size(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|s| s.orig_hw)
    }

    /// (h, w) of the resized image inside the model's input frame.
    #[getter]
    fn input_size(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|s| s.input_hw)
    }

    /// Side of the model's square input (1024 for MedSAM, 256 for LiteMedSAM).
    #[getter(img_size)]
    fn py_img_size(&self) -> usize {
        self.img_size()
    }

    /// "sam" (SAM/MedSAM, ViT encoder) or "lite" (LiteMedSAM, TinyViT encoder).
    #[getter]
    fn model_family(&self) -> &'static str {
        match &*self.model {
            AnyModel::Sam(_) => "sam",
            AnyModel::Lite(_) => "lite",
        }
    }

    /// "medsam", "sam" or "lite".
    #[getter(transform)]
    fn py_transform(&self) -> &'static str {
        self.transform.name()
    }

    fn __repr__(&self) -> String {
        format!(
            "Predictor(family={:?}, img_size={}, transform={:?}, device={:?})",
            self.model_family(),
            self.img_size(),
            self.transform.name(),
            self.device
        )
    }
}

impl Predictor {
    /// Prompt encoder + mask decoder + postprocessing for a batch (no GIL).
    fn decode(&self, st: &Embedded, p: &Prompts, multimask: bool) -> medsam::Result<Outputs> {
        let boxes: Option<Vec<[f32; 4]>> = p.boxes.as_ref().map(|bs| {
            bs.iter()
                .map(|b| {
                    let (x0, y0) = self.map_xy(st, b[0], b[1], true);
                    let (x1, y1) = self.map_xy(st, b[2], b[3], true);
                    [x0, y0, x1, y1]
                })
                .collect()
        });
        let points: Option<Vec<Vec<Point>>> = p.points.as_ref().map(|sets| {
            sets.iter()
                .map(|set| {
                    set.iter()
                        .map(|&(x, y, label)| {
                            let (x, y) = self.map_xy(st, x, y, false);
                            Point { x, y, label }
                        })
                        .collect()
                })
                .collect()
        });
        let (pe_enc, dec) = self.decoder();
        let (logits, iou) = no_grad(|| -> medsam::Result<(Tensor, Tensor)> {
            let pe = pe_enc.get_dense_pe()?;
            let (sparse, dense) = pe_enc.forward(points.as_deref(), boxes.as_deref(), None)?;
            dec.forward(&st.embedding, &pe, &sparse, &dense, multimask)
        })?;
        let masks = no_grad(|| self.masks(st, &logits))?;
        let (n, c, g) = (logits.dim(0), logits.dim(1), logits.dim(2));
        let (h, w) = st.orig_hw;
        Ok((masks, iou.to_vec()?, logits.to_vec()?, vec![n, c, g, h, w]))
    }
}
