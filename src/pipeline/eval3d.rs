//! Evaluation on 3D volumes: for every volume and every label present in its ground truth, the
//! label's 3D bounding box prompts the model (LiteMedSAM's slice-by-slice box propagation or
//! MedSAM2's memory propagation), and the model's mask and the fill-the-box-on-every-slice
//! baseline are scored by 3D DSC and NSD (normalised surface Dice at a tolerance in mm, DeepMind's
//! `surface-distance` definitions as the CVPR24 challenge uses them; see
//! [`crate::pipeline::metrics::volume_metrics`]).
//!
//! Conventions (stated once):
//! - Volumes are `(z, y, x)` in C order; spacing as the readers give it is `(x, y, z)` and is passed
//!   to the metrics along the array axes, `[sz, sy, sx]`. (The challenge's `compute_metrics.py`
//!   passes the `.npz` `spacing` as stored; ours is the physical order.)
//! - Inputs: a challenge `.npz` holding `imgs` and `gts` (and `spacing`); a folder of them; image
//!   and label folders matched by name (`case.nii.gz` ↔ `case.nii.gz`, nnU-Net's `case_0000` ↔
//!   `case`, `.npz` ↔ `.npz`), either as `DIR/imgs` + `DIR/gts` or `--label-path`; a DICOM series
//!   folder (or a folder of series folders) with NIfTI labels. DICOM SEG labels are not read.
//! - Boxes: the ground truth's inclusive bounds `[x_min, y_min, z_min, x_max, y_max, z_max]`, no
//!   jitter (as the 2D evaluation). LiteMedSAM gets them as upstream's `MedSAM_infer_npz_3D` does
//!   (every slice `z_min..=z_max`, middle slice first); MedSAM2 gets the label's 2D bounds on the
//!   middle slice of the z range (its key slice). The baseline fills the 3D box on every slice.
//! - A volume whose label map holds no foreground is refused; labels the model misses score 0.

use crate::dist::Communicator;
use crate::error::{Error, Result};
use crate::io::volume::{self, Volume};
use crate::pipeline::metrics::{self, volume_metrics, GroupAcc, SampleMetrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Eval3dConfig {
    /// A `.npz`/NIfTI file, a DICOM series folder, or a folder of volumes.
    pub data_path: PathBuf,
    /// Labels: a file, or a folder matched by name; `None` for self-contained `.npz` files or a
    /// `DIR/imgs` + `DIR/gts` layout.
    pub label_path: Option<PathBuf>,
    pub work_dir: PathBuf,
    /// NSD tolerance in mm.
    pub nsd_tolerance: f64,
    pub max_volumes: Option<usize>,
    /// DICOM series to read when a folder holds several.
    pub series: Option<String>,
}

impl Default for Eval3dConfig {
    fn default() -> Self {
        Eval3dConfig {
            data_path: PathBuf::new(),
            label_path: None,
            work_dir: PathBuf::from("eval_out"),
            nsd_tolerance: 2.0,
            max_volumes: None,
            series: None,
        }
    }
}

/// An image and its label map.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumePair {
    pub name: String,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// A volume ready for evaluation.
pub struct LoadedVolume {
    pub name: String,
    /// uint8 image as the 3D readers give it (with its spacing `(x, y, z)`).
    pub image: Volume,
    /// Stored voxel values (NIfTI, DICOM), for models with their own intensity handling.
    pub raw: Option<Vec<f64>>,
    pub labels: Vec<u8>,
    /// What the readers changed or warned about.
    pub notes: Vec<String>,
}

impl LoadedVolume {
    /// `(d, h, w)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        self.image.shape
    }
    /// Spacing along the array axes `[sz, sy, sx]`.
    pub fn spacing_zyx(&self) -> [f64; 3] {
        let [x, y, z] = self.image.spacing;
        [z, y, x]
    }
}

/// One label's ground-truth bounds, inclusive: `[x_min, y_min, z_min, x_max, y_max, z_max]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GtBox {
    pub label: u8,
    pub bounds: [usize; 6],
}

/// Answers a volume's boxes: a `(d, h, w)` map with object `i` as `i + 1`.
pub type Segmenter<'a> = dyn FnMut(&LoadedVolume, &[GtBox]) -> Result<Vec<u8>> + 'a;

/// One CSV row.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row3d {
    pub volume: String,
    pub label: u32,
    pub method: String,
    pub metrics: SampleMetrics,
    pub gt_voxels: u64,
    pub pred_voxels: u64,
}

/// Per label: model and box-baseline means.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LabelSummary3d {
    pub count: u64,
    pub dsc: Option<f64>,
    pub nsd: Option<f64>,
    pub box_dsc: Option<f64>,
    pub box_nsd: Option<f64>,
}

/// JSON shape: `{"model","nsd_tolerance_mm","volumes","seconds","per_label":{"<id>":{...}},
/// "all":{...}}`; means over non-NaN values, `null` when undefined.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary3d {
    pub model: String,
    pub nsd_tolerance_mm: f64,
    pub volumes: u64,
    /// Wall time of the model's segmentation over all volumes (max over ranks).
    pub seconds: f64,
    pub per_label: BTreeMap<String, LabelSummary3d>,
    pub all: LabelSummary3d,
}

#[derive(Clone, Debug)]
pub struct Eval3dOutcome {
    pub summary: Summary3d,
    pub rows: Vec<Row3d>,
    pub csv: PathBuf,
    pub json: PathBuf,
    /// Reader notes and warnings, prefixed with the volume's name.
    pub notes: Vec<String>,
}

/// True when `data_path` (with `label_path`) is 3D input rather than the 2D npy layout.
pub fn is_volume_input(data_path: &Path, label_path: Option<&Path>) -> bool {
    if label_path.is_some() || data_path.is_file() {
        return true;
    }
    let imgs = data_path.join("imgs");
    let dir = if imgs.is_dir() {
        imgs
    } else {
        data_path.into()
    };
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| volume_key(&e.path()).is_some() || e.path().is_dir())
        })
        .unwrap_or(false)
}

/// The matching key of a volume file (`case` for `case.nii.gz`, `case_0000.nii.gz`, `case.npz`);
/// `None` for other files.
fn volume_key(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let lower = name.to_ascii_lowercase();
    let stem = [".nii.gz", ".nii", ".npz"]
        .iter()
        .find(|e| lower.ends_with(*e))
        .map(|e| name[..name.len() - e.len()].to_string())?;
    Some(strip_channel(stem))
}

fn strip_channel(stem: String) -> String {
    match stem.strip_suffix("_0000") {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => stem,
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// Pairs images with labels (see the module doc for the layouts).
pub fn list_volume_pairs(data: &Path, labels: Option<&Path>) -> Result<Vec<VolumePair>> {
    if !data.exists() {
        return Err(Error::file(data, "no such file or folder"));
    }
    if let Some(l) = labels {
        if !l.exists() {
            return Err(Error::file(l, "label path: no such file or folder"));
        }
    }
    let name_of = |p: &Path| {
        volume_key(p).unwrap_or_else(|| {
            p.file_name()
                .map(|s| strip_channel(s.to_string_lossy().into_owned()))
                .unwrap_or_default()
        })
    };
    let single = |label: PathBuf| {
        Ok(vec![VolumePair {
            name: name_of(data),
            image: data.to_path_buf(),
            label,
        }])
    };
    match labels {
        // One image (a file, or a DICOM series folder) with one label file.
        Some(l) if l.is_file() => return single(l.to_path_buf()),
        Some(l) if data.is_file() => return single(find_label(l, &name_of(data), data)?),
        None if data.is_file() => {
            if volume_key(data).is_some_and(|_| is_npz(data)) {
                return single(data.to_path_buf());
            }
            return Err(Error::file(
                data,
                "a NIfTI image needs its label map: pass --label-path FILE_OR_FOLDER",
            ));
        }
        _ => {}
    }
    let (img_dir, label_dir) = match labels {
        Some(l) => (data.to_path_buf(), Some(l.to_path_buf())),
        None if data.join("imgs").is_dir() && data.join("gts").is_dir() => {
            (data.join("imgs"), Some(data.join("gts")))
        }
        None => (data.to_path_buf(), None),
    };
    let mut pairs = Vec::new();
    for p in sorted_entries(&img_dir)? {
        let is_vol = volume_key(&p).is_some();
        if !(is_vol || p.is_dir()) {
            continue;
        }
        let name = name_of(&p);
        let label = match &label_dir {
            Some(ld) => find_label(ld, &name, &p)?,
            None if is_npz(&p) => p.clone(),
            None => {
                return Err(Error::file(
                    &p,
                    "needs a label map: pass --label-path FOLDER (labels matched by name)",
                ))
            }
        };
        pairs.push(VolumePair {
            name,
            image: p,
            label,
        });
    }
    if pairs.is_empty() {
        return Err(Error::file(
            &img_dir,
            "holds no volumes (.npz, .nii, .nii.gz or DICOM series folders)",
        ));
    }
    Ok(pairs)
}

fn is_npz(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// The label in `dir` whose key is `name` (the image's key).
fn find_label(dir: &Path, name: &str, image: &Path) -> Result<PathBuf> {
    sorted_entries(dir)?
        .into_iter()
        .find(|p| p.is_file() && volume_key(p).as_deref() == Some(name))
        .ok_or_else(|| {
            Error::file(
                dir,
                format!(
                    "no label for image {} (looked for {name}.nii.gz, {name}.nii or {name}.npz)",
                    image.display()
                ),
            )
        })
}

/// Reads an image and its labels and checks that they fit together.
pub fn load_pair(pair: &VolumePair, series: Option<&str>) -> Result<LoadedVolume> {
    let mut notes = Vec::new();
    let (image, raw) = if pair.image.is_dir() {
        let s = crate::io::dicom::read_series(&pair.image, series)
            .map_err(|e| Error::Other(e.to_string()))?;
        notes.extend(s.warnings.iter().map(|w| w.to_string()));
        volume::check_finite(&pair.image, &s.volume)?;
        (
            volume::u8_volume(&pair.image, &s.volume),
            Some(s.volume.data),
        )
    } else if is_npz(&pair.image) {
        (volume::read_npz_volume(&pair.image)?, None)
    } else {
        let v = crate::io::nifti::read_nifti(&pair.image)?;
        volume::check_finite(&pair.image, &v)?;
        (volume::u8_volume(&pair.image, &v), Some(v.data))
    };
    notes.extend(image.note.clone());
    let (shape, labels) = read_labels(&pair.label)?;
    if shape != image.shape {
        let (d, h, w) = image.shape;
        return Err(Error::file(
            &pair.label,
            format!(
                "label map is {}×{}×{} (D×H×W) but image {} is {d}×{h}×{w}",
                shape.0,
                shape.1,
                shape.2,
                pair.image.display()
            ),
        ));
    }
    if labels.iter().all(|&l| l == 0) {
        return Err(Error::file(
            &pair.label,
            "label map has no foreground voxels (all 0): nothing to evaluate",
        ));
    }
    Ok(LoadedVolume {
        name: pair.name.clone(),
        image,
        raw,
        labels,
        notes,
    })
}

fn read_labels(path: &Path) -> Result<((usize, usize, usize), Vec<u8>)> {
    if path.is_dir() {
        return Err(Error::file(
            path,
            "DICOM SEG (or folder) labels are not read; give the label map as NIfTI or .npz",
        ));
    }
    if is_npz(path) {
        return volume::read_npz_labels(path);
    }
    let v = crate::io::nifti::read_nifti(path)?;
    if let Some(x) = v
        .data
        .iter()
        .find(|x| !(x.fract() == 0.0 && (0.0..=255.0).contains(*x)))
    {
        return Err(Error::file(
            path,
            format!("label map holds {x}; labels must be integers in 0..=255"),
        ));
    }
    let [d, h, w] = v.shape;
    Ok(((d, h, w), v.to_u8_labels()))
}

/// Inclusive bounds of every label present, in label order.
pub fn gt_boxes(labels: &[u8], (d, h, w): (usize, usize, usize)) -> Vec<GtBox> {
    let mut b: BTreeMap<u8, [usize; 6]> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate().filter(|(_, &l)| l > 0) {
        let (z, y, x) = (i / (h * w), i / w % h, i % w);
        let e = b.entry(l).or_insert([x, y, z, x, y, z]);
        *e = [
            e[0].min(x),
            e[1].min(y),
            e[2].min(z),
            e[3].max(x),
            e[4].max(y),
            e[5].max(z),
        ];
    }
    debug_assert!(labels.len() == d * h * w);
    b.into_iter()
        .map(|(label, bounds)| GtBox { label, bounds })
        .collect()
}

/// The fill-the-box baseline: the inclusive 3D box on every slice of its z range.
pub fn box_volume(b: &[usize; 6], (d, h, w): (usize, usize, usize)) -> Vec<bool> {
    let mut m = vec![false; d * h * w];
    let [x0, y0, z0, x1, y1, z1] = *b;
    for z in z0..=z1.min(d - 1) {
        for y in y0..=y1.min(h - 1) {
            let row = (z * h + y) * w;
            m[row + x0..=row + x1.min(w - 1)].fill(true);
        }
    }
    m
}

/// LiteMedSAM's `MedSAM_infer_npz_3D` on the ground-truth boxes (inclusive bounds, passed as they
/// are to [`crate::pipeline::infer::lite::segment_volume`]).
pub fn lite_segmenter(
    model: &crate::models::lite::LiteMedSam,
    precision: crate::ops::precision::InferPrecision,
) -> impl FnMut(&LoadedVolume, &[GtBox]) -> Result<Vec<u8>> + '_ {
    move |v, boxes| {
        let b3: Vec<crate::pipeline::infer::lite::Box3d> =
            boxes.iter().map(|g| g.bounds.map(|c| c as i64)).collect();
        crate::pipeline::infer::lite::segment_volume(
            model,
            &v.image.data,
            v.shape(),
            &b3,
            precision,
            &mut |_, _| {},
        )
    }
}

/// MedSAM2's 3D recipe (forward and reverse from the key slice, largest component) with the
/// label's 2D bounds on the middle slice of its z range as the prompt. `intensity`: how stored
/// values become uint8 (`None`: uint8 data as is, anything else clipped to its percentiles).
pub fn medsam2_segmenter(
    predictor: &crate::models::sam2::VideoPredictor,
    intensity: Option<crate::models::sam2::volume::Intensity>,
) -> impl FnMut(&LoadedVolume, &[GtBox]) -> Result<Vec<u8>> + '_ {
    use crate::models::sam2::volume::{
        segment_volume_medsam2, to_uint8, volume_to_frames, Intensity, VolumePrompt,
    };
    move |v, boxes| {
        let (d, h, w) = v.shape();
        let u8v = match (&v.raw, intensity) {
            (Some(raw), Some(how)) => to_uint8(raw, how),
            (Some(raw), None)
                if !raw
                    .iter()
                    .all(|&x| x.fract() == 0.0 && (0.0..=255.0).contains(&x)) =>
            {
                to_uint8(raw, Intensity::Percentile)
            }
            _ => v.image.data.clone(),
        };
        let objects: Vec<VolumePrompt> =
            boxes
                .iter()
                .map(|g| {
                    let key = (g.bounds[2] + g.bounds[5]) / 2;
                    let plane = &v.labels[key * h * w..(key + 1) * h * w];
                    let on: Vec<bool> = plane.iter().map(|&l| l == g.label).collect();
                    let [x0, y0, x1, y1] = metrics::mask_bbox(&on, h, w)
                        .ok()
                        .flatten()
                        .unwrap_or([g.bounds[0], g.bounds[1], g.bounds[3], g.bounds[4]]);
                    VolumePrompt {
                        key_slice: key,
                        prompt: crate::models::sam2::Prompt {
                            points: Vec::new(),
                            labels: Vec::new(),
                            bbox: Some([x0, y0, x1, y1].map(|c| c as f32)),
                        },
                    }
                })
                .collect();
        let frames = volume_to_frames(&u8v, (d, h, w), predictor.model.config.image_size)?;
        segment_volume_medsam2(predictor, frames, (d, h, w), &objects, true, &mut |_, _| {})
    }
}

/// Scores one loaded volume: model rows and box-baseline rows per label; returns the rows and the
/// model's seconds.
pub fn score_volume(
    v: &LoadedVolume,
    method: &str,
    segment: &mut Segmenter<'_>,
    tolerance: f64,
) -> Result<(Vec<Row3d>, f64)> {
    let shape = v.shape();
    let boxes = gt_boxes(&v.labels, shape);
    let t0 = Instant::now();
    let segs = segment(v, &boxes)?;
    let secs = t0.elapsed().as_secs_f64();
    if segs.len() != v.labels.len() {
        return Err(Error::shape(
            "segmentation",
            format!("{} voxels for {} in the volume", segs.len(), v.labels.len()),
        ));
    }
    let (d, h, w) = shape;
    let spacing = v.spacing_zyx();
    let mut rows = Vec::new();
    for (i, g) in boxes.iter().enumerate() {
        let gt: Vec<bool> = v.labels.iter().map(|&l| l == g.label).collect();
        let pred: Vec<bool> = segs.iter().map(|&s| s as usize == i + 1).collect();
        let bx = box_volume(&g.bounds, shape);
        for (m, mask) in [(method, &pred), ("box", &bx)] {
            rows.push(Row3d {
                volume: v.name.clone(),
                label: g.label as u32,
                method: m.to_string(),
                metrics: volume_metrics(&gt, mask, [d, h, w], spacing, tolerance)?,
                gt_voxels: gt.iter().filter(|&&b| b).count() as u64,
                pred_voxels: mask.iter().filter(|&&b| b).count() as u64,
            });
        }
    }
    Ok((rows, secs))
}

/// CSV header matching `csv_line`'s rows.
pub const CSV_HEADER_3D: &str = "volume,label,method,dsc,nsd,iou,gt_voxels,pred_voxels";

fn csv_line(r: &Row3d) -> String {
    let f = |v: f64| {
        if v.is_nan() {
            "nan".to_string()
        } else {
            // + 0.0: an empty f64 sum is -0.0, which would print as "-0.000000"
            format!("{:.6}", v + 0.0)
        }
    };
    let name = if r.volume.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", r.volume.replace('"', "\"\""))
    } else {
        r.volume.clone()
    };
    format!(
        "{name},{},{},{},{},{},{},{}",
        r.label,
        r.method,
        f(r.metrics.dsc),
        f(r.metrics.nsd),
        f(r.metrics.iou),
        r.gt_voxels,
        r.pred_voxels
    )
}

/// Per-label and overall means of the model's and the baseline's rows.
pub fn summarise(
    rows: &[Row3d],
    model: &str,
    tolerance: f64,
    volumes: u64,
    secs: f64,
) -> Summary3d {
    let mut acc: BTreeMap<u32, (GroupAcc, GroupAcc)> = BTreeMap::new();
    let mut all = (GroupAcc::default(), GroupAcc::default());
    for r in rows {
        let e = acc.entry(r.label).or_default();
        if r.method == "box" {
            e.1.push(&r.metrics);
            all.1.push(&r.metrics);
        } else {
            e.0.push(&r.metrics);
            all.0.push(&r.metrics);
        }
    }
    let s = |(m, b): &(GroupAcc, GroupAcc)| LabelSummary3d {
        count: m.count.max(b.count),
        dsc: m.dsc.mean(),
        nsd: m.nsd.mean(),
        box_dsc: b.dsc.mean(),
        box_nsd: b.nsd.mean(),
    };
    Summary3d {
        model: model.to_string(),
        nsd_tolerance_mm: tolerance,
        volumes,
        seconds: secs,
        per_label: acc.iter().map(|(k, v)| (k.to_string(), s(v))).collect(),
        all: s(&all),
    }
}

/// Scores this rank's share of the volumes; rank 0 writes `metrics3d.csv` (one row per volume,
/// label and method: the model's name or `box`) and `metrics3d.json` ([`Summary3d`]) into the
/// work dir. `on_volume(done, total)` reports progress.
pub fn evaluate_volumes(
    cfg: &Eval3dConfig,
    method: &str,
    segment: &mut Segmenter<'_>,
    comm: &dyn Communicator,
    on_volume: &mut dyn FnMut(usize, usize),
) -> Result<Eval3dOutcome> {
    if !(cfg.nsd_tolerance.is_finite() && cfg.nsd_tolerance >= 0.0) {
        return Err(Error::arg(
            "--nsd-tolerance",
            format!(
                "must be a finite number of mm ≥ 0, got {}",
                cfg.nsd_tolerance
            ),
        ));
    }
    let mut pairs = list_volume_pairs(&cfg.data_path, cfg.label_path.as_deref())?;
    if let Some(m) = cfg.max_volumes {
        pairs.truncate(m);
    }
    let mine = crate::dist::rank_share(&pairs, comm);
    let (mut rows, mut notes, mut secs) = (Vec::new(), Vec::new(), 0.0);
    for (i, pair) in mine.iter().enumerate() {
        let v = load_pair(pair, cfg.series.as_deref())?;
        notes.extend(v.notes.iter().map(|n| format!("{}: {n}", v.name)));
        let (r, s) = score_volume(&v, method, segment, cfg.nsd_tolerance)?;
        rows.extend(r);
        secs += s;
        on_volume(i + 1, mine.len());
    }
    let payload = serde_json::to_vec(&(rows, notes, secs)).map_err(Error::wrap)?;
    let (mut all_rows, mut all_notes, mut max_secs) = (Vec::new(), Vec::new(), 0.0f64);
    for bytes in comm.all_gather_bytes(&payload)? {
        let (r, n, s): (Vec<Row3d>, Vec<String>, f64) =
            serde_json::from_slice(&bytes).map_err(Error::wrap)?;
        all_rows.extend(r);
        all_notes.extend(n);
        max_secs = max_secs.max(s);
    }
    all_rows.sort_by(|a, b| {
        (&a.volume, a.label, a.method == "box").cmp(&(&b.volume, b.label, b.method == "box"))
    });
    let summary = summarise(
        &all_rows,
        method,
        cfg.nsd_tolerance,
        pairs.len() as u64,
        max_secs,
    );
    let (csv, json) = (
        cfg.work_dir.join("metrics3d.csv"),
        cfg.work_dir.join("metrics3d.json"),
    );
    if comm.is_root() {
        std::fs::create_dir_all(&cfg.work_dir).map_err(|e| Error::io(&cfg.work_dir, e))?;
        metrics::write_csv(&csv, CSV_HEADER_3D, all_rows.iter().map(csv_line))?;
        let j = serde_json::to_vec_pretty(&summary).map_err(Error::wrap)?;
        metrics::write_atomic(&json, &j)?;
    }
    Ok(Eval3dOutcome {
        summary,
        rows: all_rows,
        csv,
        json,
        notes: all_notes,
    })
}

/// The printed table: per label, the model's and the baseline's mean DSC and NSD.
pub fn format_table_3d(s: &Summary3d) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
    let head = format!(
        "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9}\n",
        "label", "count", "DSC", "NSD", "box DSC", "box NSD"
    );
    let line = |id: &str, l: &LabelSummary3d| {
        format!(
            "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9}\n",
            id,
            l.count,
            f(l.dsc),
            f(l.nsd),
            f(l.box_dsc),
            f(l.box_nsd)
        )
    };
    let mut out = head;
    for (id, l) in &s.per_label {
        out += &line(id, l);
    }
    out + &line("all", &s.all)
}
