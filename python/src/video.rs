//! `medsam_rs.VideoPredictor`: `sam2.sam2_video_predictor.SAM2VideoPredictor`'s shape (an
//! inference state over a stack of frames, prompts on any frame for any object id,
//! propagation forward or in reverse, reset) over the crate's SAM 2.1 / MedSAM2 model, plus
//! MedSAM2's whole-volume recipe (`segment_volume`).
//!
//! Conventions:
//! - frames are uint8 `(N, H, W)` (grey, as CT/MR slices) or `(N, H, W, 3)` (RGB) and get
//!   MedSAM2's preprocessing (Pillow bicubic resize to the model size, /255, ImageNet
//!   mean/std); float32 `(N, 3, S, S)` frames are taken as already preprocessed and need
//!   `video_size=(H, W)`;
//! - masks come back as float32 logits `(n_obj, 1, H, W)` at video resolution, with the object
//!   ids in the order the state first saw them, as the reference returns them;
//! - compute runs with the GIL released; the state is taken out of its Python object for the
//!   call and put back afterwards (a state used from two threads at once is refused).

use crate::functions::Callback;
use crate::image::{ArrayIn, View};
use crate::{to_py, value_err};
use medsam::models::sam2::volume::{
    pil_resize_bicubic, segment_volume_medsam2, to_uint8, volume_to_frames, Intensity, VolumePrompt,
};
use medsam::models::sam2::{load_sam2, InferenceState as State, Prompt, VideoPredictor as Inner};
use medsam::{Device, Tensor};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::path::PathBuf;
use std::sync::Arc;

const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

#[pyclass(module = "medsam_rs")]
pub struct VideoPredictor {
    inner: Arc<Inner>,
    device: Device,
}

/// `inference_state`: frames, prompts and tracking results of one video or volume.
#[pyclass(module = "medsam_rs")]
pub struct InferenceState {
    state: Option<State>,
}

impl InferenceState {
    fn take(&mut self) -> PyResult<State> {
        self.state.take().ok_or_else(|| {
            value_err("state: in use by another call (an InferenceState serves one call at a time)")
        })
    }
}

#[pymethods]
impl InferenceState {
    /// Number of frames (slices).
    #[getter]
    fn num_frames(&self) -> PyResult<usize> {
        Ok(self.peek()?.num_frames)
    }
    /// `(H, W)`: the size masks are returned at.
    #[getter]
    fn video_size(&self) -> PyResult<(usize, usize)> {
        let s = self.peek()?;
        Ok((s.video_height, s.video_width))
    }
    /// Object ids in the order they were first prompted.
    #[getter]
    fn obj_ids(&self) -> PyResult<Vec<i64>> {
        Ok(self.peek()?.obj_ids().to_vec())
    }
    fn __repr__(&self) -> String {
        match &self.state {
            Some(s) => format!(
                "InferenceState(num_frames={}, video_size=({}, {}), obj_ids={:?})",
                s.num_frames,
                s.video_height,
                s.video_width,
                s.obj_ids()
            ),
            None => "InferenceState(<in use>)".into(),
        }
    }
}

impl InferenceState {
    fn peek(&self) -> PyResult<&State> {
        self.state
            .as_ref()
            .ok_or_else(|| value_err("state: in use by another call"))
    }
}

/// Frames from Python as the model's `[N, 3, S, S]` input and the video size.
fn frames_in(
    frames: &Bound<'_, PyAny>,
    size: usize,
    video_size: Option<(usize, usize)>,
) -> PyResult<(Tensor, usize, usize)> {
    let a = ArrayIn::extract(frames, "frames")?;
    let shape = a.shape();
    match (a.view(), shape.as_slice()) {
        (View::U8(v), &[n, h, w]) => {
            Ok((volume_to_frames(&v, (n, h, w), size).map_err(to_py)?, h, w))
        }
        (View::U8(v), &[n, h, w, 3]) => Ok((rgb_frames(&v, (n, h, w), size)?, h, w)),
        (View::F32(v), &[n, 3, s1, s2]) if s1 == size && s2 == size => {
            let (h, w) = video_size.ok_or_else(|| {
                value_err("video_size: preprocessed float32 frames need video_size=(H, W)")
            })?;
            let t = Tensor::from_vec(v.into_owned(), &[n, 3, size, size]).map_err(to_py)?;
            Ok((t, h, w))
        }
        (_, s) => Err(value_err(format!(
            "frames: expected uint8 (N, H, W) or (N, H, W, 3), or float32 (N, 3, {size}, {size}) \
             preprocessed; found {} {s:?}",
            a.dtype()
        ))),
    }
}

/// RGB uint8 frames `(n, h, w, 3)` → `[n, 3, size, size]` as MedSAM2's loader (each channel
/// resized as Pillow resizes an RGB image, then /255 and ImageNet mean/std).
fn rgb_frames(v: &[u8], (n, h, w): (usize, usize, usize), size: usize) -> PyResult<Tensor> {
    if n == 0 || h == 0 || w == 0 {
        return Err(value_err("frames: an empty array"));
    }
    let mut out = Vec::with_capacity(n * 3 * size * size);
    let mut plane = vec![0u8; h * w];
    for frame in v.chunks_exact(h * w * 3) {
        for c in 0..3 {
            for (p, px) in plane.iter_mut().zip(frame.chunks_exact(3)) {
                *p = px[c];
            }
            let r = pil_resize_bicubic(&plane, h, w, size, size);
            out.extend(
                r.iter()
                    .map(|&p| ((p as f64 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) as f32),
            );
        }
    }
    Tensor::from_vec(out, &[n, 3, size, size]).map_err(to_py)
}

/// Points `(K, 2)`, labels `(K,)` and a box `(4,)` as one prompt.
fn prompt_in(
    points: Option<&Bound<'_, PyAny>>,
    labels: Option<&Bound<'_, PyAny>>,
    bbox: Option<&Bound<'_, PyAny>>,
) -> PyResult<Prompt> {
    let mut p = Prompt::default();
    if let Some(b) = bbox {
        let a = ArrayIn::extract(b, "box")?;
        let v = a.view().to_f64();
        if v.len() != 4 || v.iter().any(|x| !x.is_finite()) {
            return Err(value_err(format!(
                "box: expected 4 finite values [x0, y0, x1, y1], found shape {:?}",
                a.shape()
            )));
        }
        p.bbox = Some([v[0] as f32, v[1] as f32, v[2] as f32, v[3] as f32]);
    }
    match (points, labels) {
        (None, None) => {}
        (Some(pts), Some(lbl)) => {
            let a = ArrayIn::extract(pts, "points")?;
            let pv = a.view().to_f64();
            if !matches!(a.shape().as_slice(), [_, 2]) || pv.iter().any(|x| !x.is_finite()) {
                return Err(value_err(format!(
                    "points: expected finite (K, 2) coordinates, found shape {:?}",
                    a.shape()
                )));
            }
            let l = ArrayIn::extract(lbl, "labels")?.view().to_f64();
            if l.len() != pv.len() / 2 || l.iter().any(|&x| x != 0.0 && x != 1.0) {
                return Err(value_err(format!(
                    "labels: expected {} values, each 1 (foreground) or 0 (background)",
                    pv.len() / 2
                )));
            }
            p.points = pv
                .chunks_exact(2)
                .map(|c| [c[0] as f32, c[1] as f32])
                .collect();
            p.labels = l.iter().map(|&x| x as i32).collect();
        }
        _ => return Err(value_err("points and labels go together")),
    }
    if p.bbox.is_none() && p.points.is_empty() {
        return Err(value_err(
            "a prompt needs box=... and/or points=... with labels=...",
        ));
    }
    Ok(p)
}

/// Logits `[n_obj, 1, H, W]` as a float32 numpy array.
fn masks_out(py: Python<'_>, m: &Tensor) -> PyResult<PyObject> {
    let shape = m.shape().to_vec();
    let v = m.to_vec().map_err(to_py)?;
    Ok(PyArray1::from_vec(py, v)
        .reshape(shape)?
        .into_any()
        .unbind())
}

fn parse_intensity(window: Option<(f64, f64)>, raw: &[f64]) -> PyResult<Intensity> {
    Ok(match window {
        Some((level, width)) if width > 0.0 && level.is_finite() => {
            Intensity::Window { level, width }
        }
        Some((l, w)) => {
            return Err(value_err(format!(
                "window: level {l} and width {w}: the width must be positive"
            )))
        }
        None if raw
            .iter()
            .all(|&x| x.fract() == 0.0 && (0.0..=255.0).contains(&x)) =>
        {
            Intensity::AsIs
        }
        None => Intensity::Percentile,
    })
}

#[pymethods]
impl VideoPredictor {
    /// Loads a SAM 2.1 / MedSAM2 checkpoint (`{"model": state_dict}` .pt, .pth or
    /// .safetensors). `config`: a JSON file whose keys mirror SAM2's Hydra config (otherwise
    /// inferred from the weights); `image_size` overrides the size the file name suggests
    /// (512 for MedSAM2 files, else 1024); `fill_hole_area` as `build_sam2_video_predictor`
    /// (8; 0 = off, as the reference on CPU); `precision` of the image encoder: "f32", "bf16" or
    /// "int8" (the memory attention then runs in bf16; the heads and the memory encoder in f32).
    #[new]
    #[pyo3(signature = (checkpoint, config=None, image_size=None, device="cpu", fill_hole_area=8, precision="f32"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        checkpoint: PathBuf,
        config: Option<PathBuf>,
        image_size: Option<usize>,
        device: &str,
        fill_hole_area: usize,
        precision: &str,
    ) -> PyResult<Self> {
        let precision = crate::predictor::parse_precision(precision)?;
        if !checkpoint.is_file() {
            return Err(crate::not_found_err(format!(
                "{}: checkpoint not found",
                checkpoint.display()
            )));
        }
        let device: Device = device.parse().map_err(to_py)?;
        let (model, _) = py
            .allow_threads(|| load_sam2(&checkpoint, config.as_deref(), image_size, device))
            .map_err(to_py)?;
        let mut inner = Inner::new(model);
        inner.fill_hole_area = fill_hole_area;
        inner.precision = precision;
        Ok(VideoPredictor {
            inner: Arc::new(inner),
            device,
        })
    }

    /// The model's input size S (frames are resized to S×S).
    #[getter]
    fn image_size(&self) -> usize {
        self.inner.model.config.image_size
    }

    #[getter]
    fn fill_hole_area(&self) -> usize {
        self.inner.fill_hole_area
    }

    /// The image encoder's precision: "f32", "bf16" or "int8".
    #[getter]
    fn precision(&self) -> &'static str {
        self.inner.precision.name()
    }

    /// `init_state`: encodes the first frame and returns the state of this frame stack.
    #[pyo3(signature = (frames, video_size=None))]
    fn init_state(
        &self,
        py: Python<'_>,
        frames: &Bound<'_, PyAny>,
        video_size: Option<(usize, usize)>,
    ) -> PyResult<InferenceState> {
        let (images, h, w) = frames_in(frames, self.image_size(), video_size)?;
        let images = images.to_device(self.device).map_err(to_py)?;
        let inner = self.inner.clone();
        let state = py
            .allow_threads(|| inner.init_state(images, h, w))
            .map_err(to_py)?;
        Ok(InferenceState { state: Some(state) })
    }

    /// `add_new_points_or_box`: returns `(frame_idx, obj_ids, masks)` with every object's
    /// logits on that frame, `(n_obj, 1, H, W)` float32.
    #[pyo3(signature = (state, frame_idx, obj_id, points=None, labels=None, r#box=None,
                        clear_old_points=true, normalize_coords=true))]
    #[allow(clippy::too_many_arguments)] // mirrors the reference's keyword arguments
    fn add_new_points_or_box(
        &self,
        py: Python<'_>,
        state: &mut InferenceState,
        frame_idx: usize,
        obj_id: i64,
        points: Option<Bound<'_, PyAny>>,
        labels: Option<Bound<'_, PyAny>>,
        r#box: Option<Bound<'_, PyAny>>,
        clear_old_points: bool,
        normalize_coords: bool,
    ) -> PyResult<(usize, Vec<i64>, PyObject)> {
        let prompt = prompt_in(points.as_ref(), labels.as_ref(), r#box.as_ref())?;
        let mut st = state.take()?;
        let inner = self.inner.clone();
        let res = py.allow_threads(|| {
            inner.add_new_points_or_box(
                &mut st,
                frame_idx,
                obj_id,
                &prompt,
                clear_old_points,
                normalize_coords,
            )
        });
        let ids = st.obj_ids().to_vec();
        state.state = Some(st);
        let m = res.map_err(to_py)?;
        Ok((frame_idx, ids, masks_out(py, &m)?))
    }

    /// `propagate_in_video`: a list of `(frame_idx, obj_ids, masks)` in the order frames were
    /// tracked; `callback(frame_idx, obj_ids, masks)`, if given, is called as each frame is done
    /// (for progress or streaming).
    #[pyo3(signature = (state, start_frame_idx=None, max_frame_num_to_track=None, reverse=false, callback=None))]
    fn propagate_in_video(
        &self,
        py: Python<'_>,
        state: &mut InferenceState,
        start_frame_idx: Option<usize>,
        max_frame_num_to_track: Option<usize>,
        reverse: bool,
        callback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<(usize, Vec<i64>, PyObject)>> {
        let mut st = state.take()?;
        let ids = st.obj_ids().to_vec();
        let inner = self.inner.clone();
        let cb = Callback::new(callback);
        let mut frames: Vec<(usize, Tensor)> = Vec::new();
        let res = py.allow_threads(|| {
            inner.propagate_in_video(
                &mut st,
                start_frame_idx,
                max_frame_num_to_track,
                reverse,
                &mut |t, m| {
                    cb.call(|py| {
                        let arr = masks_out(py, m)?;
                        PyTuple::new(
                            py,
                            [
                                t.into_pyobject(py)?.into_any(),
                                ids.clone().into_pyobject(py)?,
                                arr.into_bound(py),
                            ],
                        )
                    });
                    frames.push((t, m.clone()));
                    Ok(())
                },
            )
        });
        state.state = Some(st);
        res.map_err(to_py)?;
        cb.finish()?;
        frames
            .iter()
            .map(|(t, m)| Ok((*t, ids.clone(), masks_out(py, m)?)))
            .collect()
    }

    /// `reset_state`: forgets every prompt, object and result (keeps the frames).
    fn reset_state(&self, state: &mut InferenceState) -> PyResult<()> {
        let mut st = state.take()?;
        self.inner.reset_state(&mut st);
        state.state = Some(st);
        Ok(())
    }

    /// MedSAM2's 3D recipe (`medsam2_infer_3D_CT.py`) on a `(D, H, W)` volume: per object, the
    /// box on its key slice, a forward pass, reset, a reverse pass, the OR of both and (by
    /// default) the largest connected component. `boxes`: `(6,)` or `(N, 6)` as x_min, y_min,
    /// z_min, x_max, y_max, z_max, z bounds inclusive (as the challenge's `boxes`); `key_slices`
    /// default to the middle `(z_min + z_max) // 2` of each z range. Intensities: uint8-valued volumes as they are, `window=(level, width)` for CT,
    /// otherwise the 0.5–99.5th percentiles. Returns `(D, H, W)` uint8 labels 1..N;
    /// `progress(pass, slice)` after every slice (pass 0 forward, 1 reverse).
    #[pyo3(signature = (volume, boxes, key_slices=None, window=None, keep_largest_cc=true, progress=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    fn segment_volume(
        &self,
        py: Python<'_>,
        volume: &Bound<'_, PyAny>,
        boxes: &Bound<'_, PyAny>,
        key_slices: Option<Vec<usize>>,
        window: Option<(f64, f64)>,
        keep_largest_cc: bool,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let vol = ArrayIn::extract(volume, "volume")?;
        let &[d, h, w] = vol.shape().as_slice() else {
            return Err(value_err(format!(
                "volume: expected shape (D, H, W), found {:?}",
                vol.shape()
            )));
        };
        let raw = vol.view().to_f64();
        if raw.iter().any(|x| !x.is_finite()) {
            return Err(value_err("volume: holds NaN or infinite values"));
        }
        let objects = volume_prompts(boxes, key_slices, (d, h, w))?;
        let intensity = parse_intensity(window, &raw)?;
        let size = self.image_size();
        let device = self.device;
        let inner = self.inner.clone();
        Callback::new(progress).segment_volume(py, (d, h, w), |on_slice| {
            let u8vol = to_uint8(&raw, intensity);
            let frames = volume_to_frames(&u8vol, (d, h, w), size)?.to_device(device)?;
            segment_volume_medsam2(
                &inner,
                frames,
                (d, h, w),
                &objects,
                keep_largest_cc,
                on_slice,
            )
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "VideoPredictor(image_size={}, fill_hole_area={}, device={:?}, precision={:?})",
            self.image_size(),
            self.inner.fill_hole_area,
            self.device,
            self.precision()
        )
    }
}

/// `(6,)` / `(N, 6)` boxes and optional key slices → one prompt per object, checked against
/// the volume.
fn volume_prompts(
    boxes: &Bound<'_, PyAny>,
    key_slices: Option<Vec<usize>>,
    (d, h, w): (usize, usize, usize),
) -> PyResult<Vec<VolumePrompt>> {
    let b = ArrayIn::extract(boxes, "boxes")?;
    if !matches!(b.shape().as_slice(), [6] | [_, 6]) {
        return Err(value_err(format!(
            "boxes: expected shape (6,) or (N, 6), found {:?}",
            b.shape()
        )));
    }
    let bv = b.view().to_f64();
    if bv.iter().any(|v| !v.is_finite() || v.fract() != 0.0) {
        return Err(value_err("boxes: coordinates must be finite integers"));
    }
    let n = bv.len() / 6;
    if let Some(k) = &key_slices {
        if k.len() != n {
            return Err(value_err(format!(
                "key_slices: {} given for {n} boxes",
                k.len()
            )));
        }
    }
    let mut out = Vec::with_capacity(n);
    for (i, c) in bv.chunks_exact(6).enumerate() {
        let [x0, y0, z0, x1, y1, z1] = std::array::from_fn(|j| c[j] as i64);
        let inside = |lo: i64, hi: i64, n: usize| 0 <= lo && lo < hi && hi <= n as i64;
        // z bounds are inclusive slice indices (one slice: z_min = z_max).
        let inside_z = 0 <= z0 && z0 <= z1 && z1 < d as i64;
        if !(inside(x0, x1, w) && inside(y0, y1, h) && inside_z) {
            return Err(value_err(format!(
                "boxes[{i}]: [{x0}, {y0}, {z0}, {x1}, {y1}, {z1}] is empty or outside the \
                 volume (D, H, W) = ({d}, {h}, {w})"
            )));
        }
        let key = match &key_slices {
            Some(k) if (z0..=z1).contains(&(k[i] as i64)) => k[i],
            Some(k) => {
                return Err(value_err(format!(
                    "key_slices[{i}]: {} is outside box {i}'s z range {z0}..={z1}",
                    k[i]
                )))
            }
            None => ((z0 + z1) / 2) as usize,
        };
        out.push(VolumePrompt {
            key_slice: key,
            prompt: Prompt {
                points: Vec::new(),
                labels: Vec::new(),
                bbox: Some([x0 as f32, y0 as f32, x1 as f32, y1 as f32]),
            },
        });
    }
    Ok(out)
}
