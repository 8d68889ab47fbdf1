//! The demo's real-scan stage: pretrained LiteMedSAM on a real MRI, scored against a reference.
//!
//! The scan is Colin27 (`ch2.nii.gz`, single-subject T1, 181×217×181 at 1 mm) with its
//! skull-stripped version (`ch2bet.nii.gz`; `> 0` is the brain mask), both from Debian's
//! `mricron-data`. The volume is windowed to uint8 as LiteMedSAM's data pipeline does for MR
//! (clip to the 0.5/99.5 percentiles of the positive voxels, scale to 0–255, zeros kept); a few
//! axial slices are prompted with the brain mask's bounding box widened by a small margin (as
//! MedSAM's boxes are) and the predicted brain is scored by DSC against the mask.

use medsam::io::nifti::{read_nifti, NiftiVolume};
use medsam::models::LiteMedSam;
use medsam::pipeline::infer::lite::{ImageU8, LitePredictor};
use medsam::pipeline::metrics::{box_mask, dice};
use medsam::pipeline::preprocess::{normalize_volume, Modality};
use medsam::viz::{self, ComparisonRow};
use medsam::Device;
use medsam::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where `scripts/fetch_demo_assets.sh` puts things (all under one directory, `assets/`).
#[derive(Clone, Debug)]
pub struct RealAssets {
    pub weights: PathBuf,
    pub scan: PathBuf,
    pub brain: PathBuf,
}

/// The one line telling how to get the assets.
pub const FETCH_HINT: &str =
    "bash scripts/fetch_demo_assets.sh  (LiteMedSAM weights + the Colin27 MRI from Debian's mricron-data)";

/// The assets under `dir` (or the scan where the `mricron-data` package installs it), `None`
/// when any is missing.
pub fn find_assets(dir: &Path) -> Option<RealAssets> {
    let weights = dir.join("lite_medsam.pth");
    let system = Path::new("/usr/share/mricron/templates");
    let pick = |name: &str| {
        [dir.join(name), system.join(name)]
            .into_iter()
            .find(|p| p.is_file())
    };
    Some(RealAssets {
        scan: pick("ch2.nii.gz")?,
        brain: pick("ch2bet.nii.gz")?,
        weights: weights.is_file().then_some(weights)?,
    })
}

#[derive(Clone, Debug)]
pub struct RealConfig {
    pub assets: RealAssets,
    pub out_dir: PathBuf,
    /// Axial slices, spread evenly over the middle of the brain's extent.
    pub slices: usize,
    /// Pixels added on every side of the mask's bounding box.
    pub margin: usize,
}

/// One scored slice.
#[derive(Clone, Debug)]
pub struct RealSlice {
    pub z: usize,
    pub bbox: [usize; 4],
    pub dsc: f64,
    /// DSC of the filled box (what the prompt alone gives).
    pub box_dsc: f64,
    pub seconds: f64,
}

#[derive(Clone, Debug)]
pub struct RealReport {
    pub shape: [usize; 3],
    pub slices: Vec<RealSlice>,
    pub mean_dsc: f64,
    pub figure: PathBuf,
    /// Loading the model and the volumes.
    pub load_seconds: f64,
    pub seconds: f64,
}

fn read(path: &Path) -> Result<NiftiVolume> {
    read_nifti(path).map_err(Error::from)
}

/// Axial plane `z` of a `(z, y, x)` volume, rows flipped so anterior is up (NIfTI's y axis points
/// anteriorly while image rows go down).
fn plane<T: Copy>(v: &[T], [_, h, w]: [usize; 3], z: usize) -> Vec<T> {
    let p = &v[z * h * w..(z + 1) * h * w];
    (0..h)
        .rev()
        .flat_map(|y| p[y * w..(y + 1) * w].iter().copied())
        .collect()
}

/// The mask's bounds widened by `margin` and clipped to the image.
fn margin_box(mask: &[bool], h: usize, w: usize, margin: usize) -> Option<[usize; 4]> {
    let b = medsam::pipeline::data::mask_bounds(mask, w)?;
    Some([
        b[0].saturating_sub(margin),
        b[1].saturating_sub(margin),
        (b[2] + margin).min(w - 1),
        (b[3] + margin).min(h - 1),
    ])
}

/// `n` slice indices spread over the middle 60% of the planes that hold brain.
fn pick_slices(brain: &[bool], [d, h, w]: [usize; 3], n: usize) -> Vec<usize> {
    let with: Vec<usize> = (0..d)
        .filter(|&z| brain[z * h * w..(z + 1) * h * w].iter().any(|&b| b))
        .collect();
    let (Some(&lo), Some(&hi)) = (with.first(), with.last()) else {
        return Vec::new();
    };
    let span = (hi - lo) as f64;
    (0..n)
        .map(|i| {
            let t = 0.2 + 0.6 * (i as f64 + 0.5) / n as f64;
            lo + (t * span).round() as usize
        })
        .collect()
}

/// A slice's prediction, prompt box, DSC and the filled box's DSC.
type Scored = (Vec<bool>, [usize; 4], f64, f64);

fn score_slice(
    model: &LiteMedSam,
    img: &[u8],
    gt: &[bool],
    (h, w): (usize, usize),
    margin: usize,
) -> Result<Option<Scored>> {
    let Some(b) = margin_box(gt, h, w, margin) else {
        return Ok(None);
    };
    let predictor = LitePredictor::new(model, &ImageU8::new(h, w, 1, img.to_vec())?)?;
    let pred = predictor.predict_box(b.map(|v| v as f64))?.mask;
    let dsc = dice(gt, &pred, h, w)?;
    let box_dsc = dice(gt, &box_mask(h, w, b), h, w)?;
    Ok(Some((pred, b, dsc, box_dsc)))
}

/// Runs pretrained LiteMedSAM on `cfg.slices` axial slices; writes `real_scan.png` (image with
/// box | reference | prediction per slice) into `cfg.out_dir`. `on_slice(done, total)` reports.
pub fn run(cfg: &RealConfig, on_slice: &mut dyn FnMut(usize, usize)) -> Result<RealReport> {
    let t0 = Instant::now();
    let a = &cfg.assets;
    let (model, _) = medsam::models::load::load_lite_model(&a.weights, None, Device::Cpu)?;
    let (scan, bet) = (read(&a.scan)?, read(&a.brain)?);
    if scan.shape != bet.shape {
        return Err(Error::file(
            &a.brain,
            format!("shape {:?}, the scan's is {:?}", bet.shape, scan.shape),
        ));
    }
    let vol = normalize_volume(&scan, Modality::MR, 0.0, 0.0)
        .map_err(|e| Error::file(&a.scan, e.to_string()))?;
    let brain: Vec<bool> = bet.data.iter().map(|&v| v > 0.0).collect();
    let load_seconds = t0.elapsed().as_secs_f64();
    let shape = scan.shape;
    let (h, w) = (shape[1], shape[2]);
    let zs = pick_slices(&brain, shape, cfg.slices);
    let (mut slices, mut rows) = (Vec::new(), Vec::new());
    for (i, &z) in zs.iter().enumerate() {
        let ts = Instant::now();
        let (img, gt) = (plane(&vol, shape, z), plane(&brain, shape, z));
        if let Some((pred, bbox, dsc, box_dsc)) =
            score_slice(&model, &img, &gt, (h, w), cfg.margin)?
        {
            let rgb: Vec<u8> = img.iter().flat_map(|&v| [v; 3]).collect();
            rows.push((rgb, gt, pred, bbox, format!("Colin27 T1, axial z={z}")));
            slices.push(RealSlice {
                z,
                bbox,
                dsc,
                box_dsc,
                seconds: ts.elapsed().as_secs_f64(),
            });
        }
        on_slice(i + 1, zs.len());
    }
    if slices.is_empty() {
        return Err(Error::file(
            &a.brain,
            "no brain voxels (`> 0`) in the picked slices",
        ));
    }
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
    let figure = cfg.out_dir.join("real_scan.png");
    let fig: Vec<ComparisonRow<bool>> = rows
        .iter()
        .map(|(rgb, gt, pred, bbox, title)| ComparisonRow {
            image: rgb,
            h,
            w,
            gt,
            pred,
            bbox: Some(*bbox),
            title,
        })
        .collect();
    viz::save_comparison_png(&figure, &fig)?;
    let mean_dsc = slices.iter().map(|s| s.dsc).sum::<f64>() / slices.len() as f64;
    Ok(RealReport {
        shape,
        slices,
        mean_dsc,
        figure,
        load_seconds,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The printed table: one line per slice, then the mean.
pub fn format_table(r: &RealReport) -> String {
    let mut out = format!(
        "{:<6} {:<22} {:>8} {:>8} {:>7}\n",
        "slice", "box [x0,y0,x1,y1]", "DSC", "box DSC", "sec"
    );
    for s in &r.slices {
        let b = format!("[{},{},{},{}]", s.bbox[0], s.bbox[1], s.bbox[2], s.bbox[3]);
        out += &format!(
            "z={:<4} {:<22} {:>8.4} {:>8.4} {:>7.2}\n",
            s.z, b, s.dsc, s.box_dsc, s.seconds
        );
    }
    let mean_box = r.slices.iter().map(|s| s.box_dsc).sum::<f64>() / r.slices.len() as f64;
    out += &format!(
        "{:<6} {:<22} {:>8.4} {:>8.4}\n",
        "mean", "", r.mean_dsc, mean_box
    );
    out
}
