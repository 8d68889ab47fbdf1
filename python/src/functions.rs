//! Free functions of `medsam_rs`: LiteMedSAM volume propagation, CT/MR preprocessing (whole
//! directories as `pre_CT_MR.py`, or one in-memory volume's intensity normalisation) and the
//! evaluation metrics (`medsam_rs.metrics` re-exports these).

use crate::image::ArrayIn;
use crate::predictor::Predictor;
use crate::{to_py, value_err, MedsamError};
use medsam::io::nifti::{NiftiVolume, PixelKind};
use medsam::models::AnyModel;
use medsam::pipeline::metrics::MetricsError;
use medsam::pipeline::preprocess::{Modality, PreprocessConfig, PreprocessError, ProgressEvent};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::path::PathBuf;
use std::sync::Mutex;

/// Calls a Python progress callback from any thread; keeps the first exception it raises.
pub(crate) struct Callback {
    f: Option<Py<PyAny>>,
    error: Mutex<Option<PyErr>>,
}

impl Callback {
    pub(crate) fn new(f: Option<Bound<'_, PyAny>>) -> Self {
        Callback {
            f: f.map(Bound::unbind),
            error: Mutex::new(None),
        }
    }

    /// `f(*make(py))` with the GIL taken for the call only.
    pub(crate) fn call(
        &self,
        make: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
    ) {
        let Some(f) = &self.f else { return };
        let mut err = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if err.is_some() {
            return;
        }
        Python::with_gil(|py| {
            if let Err(e) = make(py).and_then(|a| f.call1(py, a).map(drop)) {
                *err = Some(e);
            }
        });
    }

    /// A `(D, H, W)` uint8 volume from `run` (called without the GIL), whose progress reports
    /// `(pass, z)` go to the callback: the library's error first, then the callback's exception.
    pub(crate) fn segment_volume(
        self,
        py: Python<'_>,
        (d, h, w): (usize, usize, usize),
        run: impl Send + FnOnce(&mut dyn FnMut(usize, usize)) -> medsam::Result<Vec<u8>>,
    ) -> PyResult<PyObject> {
        let out = py
            .allow_threads(|| {
                let mut on_slice =
                    |pass: usize, z: usize| self.call(|py| PyTuple::new(py, [pass, z]));
                run(&mut on_slice)
            })
            .map_err(to_py)?;
        self.finish()?;
        Ok(PyArray1::from_vec(py, out)
            .reshape(vec![d, h, w])?
            .into_any()
            .unbind())
    }

    /// The callback's exception, if it raised one.
    pub(crate) fn finish(self) -> PyResult<()> {
        match self.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// LiteMedSAM's 3D inference (`MedSAM_infer_npz_3D`): from each box's middle slice outwards,
/// each slice prompted by the previous slice's mask. `volume` (D, H, W) uint8; `boxes` (6,) or
/// (N, 6) as x_min, y_min, z_min, x_max, y_max, z_max, z bounds inclusive (as the challenge's
/// `boxes`). Returns (D, H, W) uint8 labels 1..N. `progress(box_index, z)` is called after every slice.
/// Each slice's image encoder runs at the predictor's `precision`.
#[pyfunction]
#[pyo3(signature = (predictor, volume, boxes, progress=None))]
fn segment_volume<'py>(
    py: Python<'py>,
    predictor: PyRef<'py, Predictor>,
    volume: &Bound<'py, PyAny>,
    boxes: &Bound<'py, PyAny>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<PyObject> {
    let (model, precision) = (predictor.model.clone(), predictor.precision);
    let AnyModel::Lite(lite) = &*model else {
        return Err(value_err(
            "segment_volume: needs a LiteMedSAM predictor (SAM/MedSAM volumes go slice by slice through predict)",
        ));
    };
    let vol = ArrayIn::extract(volume, "volume")?;
    let (d, h, w) = match (vol.shape().as_slice(), &vol) {
        (&[d, h, w], ArrayIn::U8(_)) => (d, h, w),
        (s, ArrayIn::U8(_)) => {
            return Err(value_err(format!(
                "volume: expected shape (D, H, W), found {s:?}"
            )))
        }
        (_, a) => {
            return Err(value_err(format!(
                "volume: dtype {} is not supported (expected uint8, as pre_CT_MR.py writes)",
                a.dtype()
            )))
        }
    };
    let b = ArrayIn::extract(boxes, "boxes")?;
    let bv = b.view().to_f64();
    if !matches!(b.shape().as_slice(), [6] | [_, 6]) {
        return Err(value_err(format!(
            "boxes: expected shape (6,) or (N, 6), found {:?}",
            b.shape()
        )));
    }
    if bv.iter().any(|v| !v.is_finite() || v.fract() != 0.0) {
        return Err(value_err("boxes: coordinates must be finite integers"));
    }
    let boxes3d: Vec<[i64; 6]> = bv
        .chunks_exact(6)
        .map(|c| std::array::from_fn(|i| c[i] as i64))
        .collect();
    let view = vol.view();
    let crate::image::View::U8(data) = &view else {
        unreachable!("checked uint8 above")
    };
    Callback::new(progress).segment_volume(py, (d, h, w), |on_slice| {
        medsam::pipeline::infer::lite::segment_volume(
            lite,
            data,
            (d, h, w),
            &boxes3d,
            precision,
            on_slice,
        )
    })
}

fn metrics_err(e: MetricsError) -> PyErr {
    match e {
        MetricsError::MaskLength { .. } | MetricsError::InvalidArgument { .. } => {
            value_err(e.to_string())
        }
        other => MedsamError::new_err(other.to_string()),
    }
}

/// Two same-shaped 2-D masks as booleans, with (H, W).
fn mask_pair(
    gt: &Bound<'_, PyAny>,
    pred: &Bound<'_, PyAny>,
) -> PyResult<(Vec<bool>, Vec<bool>, usize, usize)> {
    let (g, p) = (ArrayIn::extract(gt, "gt")?, ArrayIn::extract(pred, "pred")?);
    let (gs, ps) = (g.shape(), p.shape());
    if gs != ps {
        return Err(value_err(format!(
            "gt {gs:?} and pred {ps:?}: masks must have the same shape"
        )));
    }
    let (h, w) = match gs.as_slice() {
        &[h, w] => (h, w),
        s => {
            return Err(value_err(format!(
                "gt: expected a 2-D mask (H, W), found shape {s:?}"
            )))
        }
    };
    Ok((g.view().to_bool(), p.view().to_bool(), h, w))
}

/// Dice similarity coefficient of two 2-D masks (non-zero = foreground); NaN when both are empty.
#[pyfunction]
fn dice(gt: &Bound<'_, PyAny>, pred: &Bound<'_, PyAny>) -> PyResult<f64> {
    let (g, p, h, w) = mask_pair(gt, pred)?;
    medsam::pipeline::metrics::dice(&g, &p, h, w).map_err(metrics_err)
}

/// Intersection over union of two 2-D masks; NaN when both are empty.
#[pyfunction]
fn iou(gt: &Bound<'_, PyAny>, pred: &Bound<'_, PyAny>) -> PyResult<f64> {
    let (g, p, h, w) = mask_pair(gt, pred)?;
    medsam::pipeline::metrics::iou(&g, &p, h, w).map_err(metrics_err)
}

/// Normalised surface Dice at `tolerance` (MedSAM's 2-D convention: spacing (1, 1), tolerance 2).
#[pyfunction]
#[pyo3(signature = (gt, pred, spacing=(1.0, 1.0), tolerance=2.0))]
fn nsd(
    py: Python<'_>,
    gt: &Bound<'_, PyAny>,
    pred: &Bound<'_, PyAny>,
    spacing: (f64, f64),
    tolerance: f64,
) -> PyResult<f64> {
    let (g, p, h, w) = mask_pair(gt, pred)?;
    py.allow_threads(|| {
        medsam::pipeline::metrics::normalized_surface_dice(
            &g,
            &p,
            h,
            w,
            [spacing.0, spacing.1],
            tolerance,
        )
    })
    .map_err(metrics_err)
}

fn parse_modality(s: &str) -> PyResult<Modality> {
    s.parse::<Modality>()
        .map_err(|e| value_err(format!("modality: {e}")))
}

/// One volume's intensities to uint8 as pre_CT_MR.py does it: CT clipped to the window
/// [level − width/2, level + width/2], MR to the 0.5/99.5 percentiles of positive voxels (zeros
/// stay zero); min-max scaled to 0..255 and truncated. float32 input computes in float32.
#[pyfunction]
#[pyo3(signature = (volume, modality="CT", window_level=40.0, window_width=400.0))]
fn normalize_ct_mr(
    py: Python<'_>,
    volume: &Bound<'_, PyAny>,
    modality: &str,
    window_level: f64,
    window_width: f64,
) -> PyResult<PyObject> {
    let modality = parse_modality(modality)?;
    let a = ArrayIn::extract(volume, "volume")?;
    let shape = a.shape();
    if shape.is_empty() || shape.contains(&0) {
        return Err(value_err(format!(
            "volume: expected a non-empty array, found shape {shape:?}"
        )));
    }
    let kind = match &a {
        ArrayIn::F32(_) => PixelKind::F32,
        ArrayIn::F64(_) => PixelKind::F64,
        ArrayIn::U8(_) => PixelKind::U8,
        ArrayIn::I32(_) => PixelKind::I32,
        ArrayIn::I64(_) => PixelKind::I64,
        ArrayIn::Bool(_) => return Err(value_err("volume: bool is not an intensity dtype")),
    };
    let view = a.view();
    let out = py
        .allow_threads(|| {
            let n = shape.iter().product::<usize>();
            let vol = NiftiVolume {
                shape: [1, 1, n],
                data: view.to_f64(),
                kind,
                spacing: [1.0; 3],
            };
            medsam::pipeline::preprocess::normalize_volume(
                &vol,
                modality,
                window_level,
                window_width,
            )
        })
        .map_err(|e| value_err(format!("volume: {e}")))?;
    Ok(PyArray1::from_vec(py, out)
        .reshape(shape)?
        .into_any()
        .unbind())
}

/// pre_CT_MR.py over directories: NIfTI images + labels → `npy_path/imgs` and `npy_path/gts`.
/// `progress(event: dict)` is called per case (from worker threads, one call at a time).
/// Returns a summary dict.
#[pyfunction]
#[pyo3(signature = (nii_path, gt_path, npy_path, modality="CT", anatomy="Abd",
    img_name_suffix="_0000.nii.gz", gt_name_suffix=".nii.gz", remove_label_ids=vec![12],
    tumor_id=None, window_level=40.0, window_width=400.0, image_size=1024,
    voxel_num_thre2d=100, voxel_num_thre3d=1000, num_workers=4, progress=None))]
#[allow(clippy::too_many_arguments)]
fn preprocess_ct_mr<'py>(
    py: Python<'py>,
    nii_path: PathBuf,
    gt_path: PathBuf,
    npy_path: PathBuf,
    modality: &str,
    anatomy: &str,
    img_name_suffix: &str,
    gt_name_suffix: &str,
    remove_label_ids: Vec<u8>,
    tumor_id: Option<u8>,
    window_level: f64,
    window_width: f64,
    image_size: usize,
    voxel_num_thre2d: usize,
    voxel_num_thre3d: usize,
    num_workers: usize,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    crate::require_dir("nii_path", &nii_path)?;
    crate::require_dir("gt_path", &gt_path)?;
    let cfg = PreprocessConfig {
        nii_path,
        dicom_path: None,
        gt_path,
        npy_path,
        modality: parse_modality(modality)?,
        anatomy: anatomy.into(),
        img_name_suffix: img_name_suffix.into(),
        gt_name_suffix: gt_name_suffix.into(),
        remove_label_ids,
        tumor_id,
        window_level,
        window_width,
        image_size,
        voxel_num_thre2d,
        voxel_num_thre3d,
        num_workers,
    };
    let cb = Callback::new(progress);
    let summary = py
        .allow_threads(|| {
            medsam::pipeline::preprocess::preprocess(&cfg, &|e: ProgressEvent| {
                cb.call(|py| {
                    event_args!(py, e,
                        ProgressEvent::Started "started" { cases },
                        ProgressEvent::CaseDone "case_done" { case, slices },
                        ProgressEvent::CaseSkipped "case_skipped" { case, reason },
                    )
                })
            })
        })
        .map_err(|e| match e {
            PreprocessError::Config { .. } => value_err(e.to_string()),
            other => MedsamError::new_err(other.to_string()),
        })?;
    cb.finish()?;
    let done: Vec<_> = summary
        .done
        .into_iter()
        .map(|c| (c.case, c.slices))
        .collect();
    let skipped: Vec<_> = summary
        .skipped
        .into_iter()
        .map(|c| (c.case, c.reason))
        .collect();
    let d = PyDict::new(py);
    d.set_item("label_files", summary.label_files)?;
    d.set_item("missing_images", summary.missing_images)?;
    d.set_item("done", done)?;
    d.set_item("skipped", skipped)?;
    d.set_item("files_written", summary.files_written)?;
    Ok(d)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(segment_volume, m)?)?;
    m.add_function(wrap_pyfunction!(dice, m)?)?;
    m.add_function(wrap_pyfunction!(iou, m)?)?;
    m.add_function(wrap_pyfunction!(nsd, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_ct_mr, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_ct_mr, m)?)?;
    Ok(())
}
