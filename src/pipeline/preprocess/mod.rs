//! Data pipeline: NIfTI volumes → MedSAM training slices (`.npy`), with the semantics of
//! MedSAM's `utils/pre_CT_MR.py` (the npy-writing version: `image_size = 1024`,
//! `voxel_num_thre2d = 100`, `voxel_num_thre3d = 1000`).
//!
//! Per label file `<case><gt_name_suffix>` in `gt_path` (sorted by name) whose image
//! `<case><img_name_suffix>` exists in `nii_path` (or, with `dicom_path`, whose DICOM series
//! folder `<dicom_path>/<case>/` exists; read by [`crate::io::dicom`]):
//!
//! 1. labels → `u8` (`np.uint8`), ids in `remove_label_ids` set to 0;
//! 2. optional `tumor_id`: that label is replaced by its 26-connected instances, numbered
//!    `instance + max(remaining labels) + 1` (wrapping to u8 like NumPy's assignment);
//! 3. `cc3d.dust(threshold=voxel_num_thre3d, connectivity=26)`, then per z slice
//!    `cc3d.dust(threshold=voxel_num_thre2d, connectivity=8)`;
//! 4. slices with any label are kept (`z_index`); a case with none is skipped;
//! 5. image intensities → u8 over the whole volume: CT clipped to the window
//!    `[WL − WW/2, WL + WW/2]`, MR clipped to the 0.5/99.5 percentiles of the positive voxels
//!    (NumPy "linear" percentile) with zeros kept at zero; both min-max scaled to 0..255 and
//!    truncated (`np.uint8`). Arithmetic is float32 when SimpleITK would hand the script a
//!    float32 array (float32 files and rescaled files), float64 otherwise — as NumPy does;
//! 6. every kept slice `i` (0-based position among the kept slices): grey → 3 channels,
//!    `resize(order=3, preserve_range, mode="constant", anti_aliasing=True)` to
//!    `image_size²`, min-max to `[0, 1]` with the denominator clipped at 1e-8, saved as float64
//!    `(S, S, 3)` in `<npy_path>/imgs/`; labels resized with `order=0` and saved as uint8
//!    `(S, S)` in `<npy_path>/gts/`; both named `{MODALITY}_{ANATOMY}_{case}-{i:03}.npy`.
//!
//! Cases run in parallel on `num_workers` threads. A case that cannot be processed (unreadable
//! or truncated file, image/label shape mismatch, no labels left, …) is skipped and reported
//! in the [`PreprocessSummary`]; files already written for it are removed, and every `.npy` is
//! written atomically.

pub mod args;
pub mod components;
pub mod phantom;

use crate::io::image::{resize_cubic_aa_skimage, resize_nearest_u8_skimage};
use crate::io::nifti::{self, NiftiVolume, PixelKind};
use rayon::prelude::*;
use std::fmt;
use std::path::{Path, PathBuf};

/// Imaging modality; selects the intensity normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    CT,
    MR,
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Modality::CT => "CT",
            Modality::MR => "MR",
        })
    }
}

impl std::str::FromStr for Modality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "CT" | "ct" => Ok(Modality::CT),
            "MR" | "mr" | "MRI" => Ok(Modality::MR),
            _ => Err(format!("unknown modality `{s}` (expected CT or MR)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PreprocessConfig {
    /// Directory of images (`<case><img_name_suffix>`).
    pub nii_path: PathBuf,
    /// When set, images are DICOM series in `<dicom_path>/<case>/` instead of NIfTI files.
    pub dicom_path: Option<PathBuf>,
    /// Directory of label maps (`<case><gt_name_suffix>`).
    pub gt_path: PathBuf,
    /// Output directory; `imgs/` and `gts/` are created inside it.
    pub npy_path: PathBuf,
    pub modality: Modality,
    pub anatomy: String,
    pub img_name_suffix: String,
    pub gt_name_suffix: String,
    pub remove_label_ids: Vec<u8>,
    pub tumor_id: Option<u8>,
    pub window_level: f64,
    pub window_width: f64,
    pub image_size: usize,
    pub voxel_num_thre2d: usize,
    pub voxel_num_thre3d: usize,
    /// Parallel cases; 0 = all available cores.
    pub num_workers: usize,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            nii_path: PathBuf::from("data/FLARE22Train/images"),
            dicom_path: None,
            gt_path: PathBuf::from("data/FLARE22Train/labels"),
            npy_path: PathBuf::from("data/npy/CT_Abd"),
            modality: Modality::CT,
            anatomy: "Abd".into(),
            img_name_suffix: "_0000.nii.gz".into(),
            gt_name_suffix: ".nii.gz".into(),
            remove_label_ids: vec![12],
            tumor_id: None,
            window_level: 40.0,
            window_width: 400.0,
            image_size: 1024,
            voxel_num_thre2d: 100,
            voxel_num_thre3d: 1000,
            num_workers: 4,
        }
    }
}

/// Progress notifications (called from worker threads).
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// Case list is known.
    Started { cases: usize },
    /// A case finished and wrote `slices` image/label pairs.
    CaseDone { case: String, slices: usize },
    /// A case was skipped.
    CaseSkipped { case: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseReport {
    pub case: String,
    pub slices: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCase {
    pub case: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct PreprocessSummary {
    /// Label files found in `gt_path`.
    pub label_files: usize,
    /// Label files without a matching image (ignored, as in the reference script).
    pub missing_images: Vec<String>,
    /// Cases processed, sorted by name.
    pub done: Vec<CaseReport>,
    /// Cases skipped with the reason, sorted by name.
    pub skipped: Vec<SkippedCase>,
    /// Total `.npy` files written (images + labels).
    pub files_written: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration `{field}`: {detail}")]
    Config { field: &'static str, detail: String },
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

crate::error::wrap_into_error!(PreprocessError, CaseError);

/// Why a single case was skipped.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error(transparent)]
    Nifti(#[from] nifti::NiftiError),
    #[error(transparent)]
    Npy(#[from] crate::io::npy::NpyError),
    #[error(transparent)]
    Dicom(#[from] crate::io::dicom::DicomError),
    #[error("image {image:?} and label {label:?} shapes differ (z, y, x)")]
    ShapeMismatch {
        image: [usize; 3],
        label: [usize; 3],
    },
    #[error("label map is empty after removing ids and small components")]
    EmptyLabels,
    #[error("MR image has no positive voxels; percentiles undefined")]
    NoPositiveVoxels,
}

/// `name.split(suffix)[0]` as Python computes it.
pub fn case_stem<'a>(name: &'a str, suffix: &str) -> &'a str {
    match name.find(suffix) {
        Some(i) => &name[..i],
        None => name,
    }
}

/// Output file name of slice `i` of `case`.
pub fn slice_file_name(modality: Modality, anatomy: &str, case: &str, i: usize) -> String {
    format!("{modality}_{anatomy}_{case}-{i:03}.npy")
}

/// Runs the preprocessing.
pub fn preprocess(
    cfg: &PreprocessConfig,
    progress: &(dyn Fn(ProgressEvent) + Sync),
) -> Result<PreprocessSummary, PreprocessError> {
    if cfg.gt_name_suffix.is_empty() {
        return Err(PreprocessError::Config {
            field: "gt_name_suffix",
            detail: "must not be empty".into(),
        });
    }
    if cfg.image_size == 0 {
        return Err(PreprocessError::Config {
            field: "image_size",
            detail: "must be positive".into(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PreprocessError::Io { path, source }
    };
    let mut names: Vec<String> = std::fs::read_dir(&cfg.gt_path)
        .map_err(io(&cfg.gt_path))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut summary = PreprocessSummary {
        label_files: names.len(),
        ..Default::default()
    };
    let mut cases = Vec::new();
    for name in names {
        let stem = case_stem(&name, &cfg.gt_name_suffix).to_string();
        let img = match &cfg.dicom_path {
            Some(dir) => dir.join(&stem),
            None => cfg.nii_path.join(format!("{stem}{}", cfg.img_name_suffix)),
        };
        if img.exists() {
            cases.push((name, stem, img));
        } else {
            summary.missing_images.push(name);
        }
    }
    let imgs_dir = cfg.npy_path.join("imgs");
    let gts_dir = cfg.npy_path.join("gts");
    std::fs::create_dir_all(&imgs_dir).map_err(io(&imgs_dir))?;
    std::fs::create_dir_all(&gts_dir).map_err(io(&gts_dir))?;
    progress(ProgressEvent::Started { cases: cases.len() });

    let threads = if cfg.num_workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.num_workers
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| PreprocessError::Threads(e.to_string()))?;
    let results: Vec<(String, Result<usize, CaseError>)> = pool.install(|| {
        cases
            .par_iter()
            .map(|(name, stem, img)| {
                let gt = cfg.gt_path.join(name);
                let r = process_case(cfg, stem, img, &gt, &imgs_dir, &gts_dir);
                match &r {
                    Ok(n) => progress(ProgressEvent::CaseDone {
                        case: stem.clone(),
                        slices: *n,
                    }),
                    Err(e) => progress(ProgressEvent::CaseSkipped {
                        case: stem.clone(),
                        reason: e.to_string(),
                    }),
                }
                (stem.clone(), r)
            })
            .collect()
    });
    for (case, r) in results {
        match r {
            Ok(slices) => {
                summary.files_written += 2 * slices;
                summary.done.push(CaseReport { case, slices });
            }
            Err(e) => summary.skipped.push(SkippedCase {
                case,
                reason: e.to_string(),
            }),
        }
    }
    Ok(summary)
}

/// Label pipeline steps 1–3 on a `(z, y, x)` u8 volume, in place.
pub fn clean_labels(gt: &mut [u8], shape: [usize; 3], cfg: &PreprocessConfig) {
    for &id in &cfg.remove_label_ids {
        gt.iter_mut().filter(|v| **v == id).for_each(|v| *v = 0);
    }
    if let Some(t) = cfg.tumor_id {
        let bw: Vec<u8> = gt.iter().map(|&v| (v == t) as u8).collect();
        for (g, &b) in gt.iter_mut().zip(&bw) {
            if b > 0 {
                *g = 0;
            }
        }
        let (inst, _) = components::connected_components_3d(&bw, shape, 26);
        let mx = gt.iter().copied().max().unwrap_or(0) as u64;
        for (g, &k) in gt.iter_mut().zip(&inst) {
            if k > 0 {
                *g = ((k as u64 + mx + 1) % 256) as u8;
            }
        }
    }
    components::dust_3d(gt, shape, cfg.voxel_num_thre3d, 26);
    let plane = shape[1] * shape[2];
    for z in 0..shape[0] {
        components::dust_2d(
            &mut gt[z * plane..(z + 1) * plane],
            [shape[1], shape[2]],
            cfg.voxel_num_thre2d,
            8,
        );
    }
}

/// NumPy `np.percentile(values, q)` ("linear") on non-empty data. `f32` selects the float32
/// result path NumPy takes for float32 arrays.
fn numpy_percentile(values: &mut [f64], q: f64, f32_mode: bool) -> f64 {
    let n = values.len();
    let vi = (n - 1) as f64 * (q / 100.0);
    let prev = vi.floor();
    let g = vi - prev;
    let cmp = |a: &f64, b: &f64| a.total_cmp(b);
    if vi >= (n - 1) as f64 {
        return *values.iter().max_by(|a, b| cmp(a, b)).unwrap();
    }
    let i = prev as usize;
    let (_, a, rest) = values.select_nth_unstable_by(i, cmp);
    let a = *a;
    let b = *rest.iter().min_by(|x, y| cmp(x, y)).unwrap();
    if f32_mode {
        let (a, b) = (a as f32, b as f32);
        let d = b - a;
        (if g >= 0.5 {
            b - d * ((1.0 - g) as f32)
        } else {
            a + d * (g as f32)
        }) as f64
    } else {
        let d = b - a;
        if g >= 0.5 {
            b - d * (1.0 - g)
        } else {
            a + d * g
        }
    }
}

/// Step 5: the whole volume to u8 (`np.uint8` of the min-max scaled, clipped intensities).
pub fn normalize_volume(
    vol: &NiftiVolume,
    modality: Modality,
    window_level: f64,
    window_width: f64,
) -> Result<Vec<u8>, CaseError> {
    let f32_mode = vol.kind == PixelKind::F32;
    let (lo, hi) = match modality {
        Modality::CT => (
            window_level - window_width / 2.0,
            window_level + window_width / 2.0,
        ),
        Modality::MR => {
            let mut pos: Vec<f64> = vol.data.iter().copied().filter(|&v| v > 0.0).collect();
            if pos.is_empty() {
                return Err(CaseError::NoPositiveVoxels);
            }
            let lo = numpy_percentile(&mut pos, 0.5, f32_mode);
            let hi = numpy_percentile(&mut pos, 99.5, f32_mode);
            (lo, hi)
        }
    };
    // np.uint8 of a float: truncation toward zero (NaN -> 0 on x86)
    let to_u8 = |v: f64| if v.is_nan() { 0 } else { v as i64 as u8 };
    let mut out: Vec<u8> = if f32_mode {
        let (lo, hi) = (lo as f32, hi as f32);
        let clipped: Vec<f32> = vol
            .data
            .iter()
            .map(|&v| (v as f32).max(lo).min(hi))
            .collect();
        let mn = clipped.iter().copied().fold(f32::INFINITY, f32::min);
        let mx = clipped.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        clipped
            .iter()
            .map(|&v| to_u8(((v - mn) / (mx - mn) * 255.0f32) as f64))
            .collect()
    } else {
        let clipped: Vec<f64> = vol.data.iter().map(|&v| v.max(lo).min(hi)).collect();
        let mn = clipped.iter().copied().fold(f64::INFINITY, f64::min);
        let mx = clipped.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        clipped
            .iter()
            .map(|&v| to_u8((v - mn) / (mx - mn) * 255.0))
            .collect()
    };
    if modality == Modality::MR {
        for (o, &v) in out.iter_mut().zip(&vol.data) {
            if v == 0.0 {
                *o = 0;
            }
        }
    }
    Ok(out)
}

/// Step 6 for one grey u8 slice: returns `(S, S, 3)` float64 in `[0, 1]`.
pub fn slice_to_model_input(slice: &[u8], h: usize, w: usize, size: usize) -> Vec<f64> {
    // The three channels are identical, and skimage's resize treats them independently, so
    // one channel is resized and replicated.
    let src: Vec<f64> = slice.iter().map(|&v| v as f64).collect();
    let r = resize_cubic_aa_skimage(&src, h, w, 1, size, size);
    let mn = r.iter().copied().fold(f64::INFINITY, f64::min);
    let mx = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let den = (mx - mn).max(1e-8);
    let mut out = Vec::with_capacity(r.len() * 3);
    for v in r {
        let n = (v - mn) / den;
        out.extend_from_slice(&[n, n, n]);
    }
    out
}

fn process_case(
    cfg: &PreprocessConfig,
    case: &str,
    img_path: &Path,
    gt_path: &Path,
    imgs_dir: &Path,
    gts_dir: &Path,
) -> Result<usize, CaseError> {
    let gt_vol = nifti::read_nifti(gt_path)?;
    let shape = gt_vol.shape;
    let mut gt = gt_vol.to_u8_labels();
    drop(gt_vol);
    clean_labels(&mut gt, shape, cfg);
    let plane = shape[1] * shape[2];
    let z_index: Vec<usize> = (0..shape[0])
        .filter(|&z| gt[z * plane..(z + 1) * plane].iter().any(|&v| v > 0))
        .collect();
    if z_index.is_empty() {
        return Err(CaseError::EmptyLabels);
    }
    let img_vol = if img_path.is_dir() {
        crate::io::dicom::read_series(img_path, None)?.volume
    } else {
        nifti::read_nifti(img_path)?
    };
    if img_vol.shape != shape {
        return Err(CaseError::ShapeMismatch {
            image: img_vol.shape,
            label: shape,
        });
    }
    let img = normalize_volume(&img_vol, cfg.modality, cfg.window_level, cfg.window_width)?;
    drop(img_vol);

    let s = cfg.image_size;
    let mut written: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<(), CaseError> {
        for (i, &z) in z_index.iter().enumerate() {
            let name = slice_file_name(cfg.modality, &cfg.anatomy, case, i);
            let im = slice_to_model_input(&img[z * plane..(z + 1) * plane], shape[1], shape[2], s);
            let lab = resize_nearest_u8_skimage(
                &gt[z * plane..(z + 1) * plane],
                shape[1],
                shape[2],
                1,
                s,
                s,
            );
            let ip = imgs_dir.join(&name);
            crate::io::npy::write_npy_f64(&ip, &[s, s, 3], &im)?;
            written.push(ip);
            let gp = gts_dir.join(&name);
            crate::io::npy::write_npy_u8(&gp, &[s, s], &lab)?;
            written.push(gp);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(z_index.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split_semantics() {
        assert_eq!(
            case_stem("FLARE22_Tr_0001.nii.gz", ".nii.gz"),
            "FLARE22_Tr_0001"
        );
        assert_eq!(case_stem("a.nii.gz.nii.gz", ".nii.gz"), "a");
        assert_eq!(case_stem("readme.txt", ".nii.gz"), "readme.txt");
        assert_eq!(
            slice_file_name(Modality::CT, "Abd", "c1", 7),
            "CT_Abd_c1-007.npy"
        );
        assert_eq!(
            slice_file_name(Modality::MR, "Brain", "c", 1234),
            "MR_Brain_c-1234.npy"
        );
    }

    #[test]
    fn percentile_linear() {
        let mut v: Vec<f64> = (1..=5).map(|x| x as f64).collect();
        assert_eq!(numpy_percentile(&mut v, 50.0, false), 3.0);
        let mut v: Vec<f64> = vec![10.0, 0.5, 3.0, 7.0];
        // (n-1)*0.995 = 2.985 -> 7 + (10-7)*0.985
        let p = numpy_percentile(&mut v, 99.5, false);
        assert!((p - (10.0 - 3.0 * (1.0 - 0.985))).abs() < 1e-12);
    }
}
