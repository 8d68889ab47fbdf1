//! Evaluation over the npy layout: for every slice and every label in it, the label's bounds are
//! the box prompt; the model's mask and the fill-the-box baseline are scored by DSC, IoU and NSD.
//! Shardable: each rank scores its slices and rank 0 merges the accumulators. Generic over
//! [`SegPredict`] (SAM/MedSAM or LiteMedSAM, each with its own input pipeline).

use crate::dist::Communicator;
use crate::error::{Error, Result};
use crate::models::seg_model::SegPredict;
use crate::pipeline::data::{label_ids, list_pairs, read_image, read_labels, NpyPair};
use crate::pipeline::infer::sam::InferPrecision;
use crate::pipeline::metrics::{
    self, box_mask, mask_bbox, sample_metrics, MetricsAccumulator, MetricsSummary, SampleMetrics,
};
use crate::viz::{self, ComparisonRow};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub data_path: PathBuf,
    pub work_dir: PathBuf,
    pub max_slices: Option<usize>,
    /// NSD tolerance in pixels.
    pub nsd_tolerance: f64,
    /// Slices drawn in the comparison figure.
    pub figure_slices: usize,
    pub precision: InferPrecision,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            data_path: PathBuf::new(),
            work_dir: PathBuf::from("eval_out"),
            max_slices: None,
            nsd_tolerance: 2.0,
            figure_slices: 4,
            precision: InferPrecision::F32,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EvalOutcome {
    pub summary: MetricsSummary,
    pub csv: PathBuf,
    pub json: PathBuf,
    pub figure: Option<PathBuf>,
}

/// One scored (slice, label).
struct Scored {
    row: String,
    label: u32,
    model: SampleMetrics,
    baseline: SampleMetrics,
}

/// A figure row kept for the comparison PNG.
struct FigureRow {
    rgb: Vec<u8>,
    h: usize,
    w: usize,
    gt: Vec<bool>,
    pred: Vec<bool>,
    bbox: [usize; 4],
    title: String,
}

fn to_rgb(img: &crate::pipeline::data::Image) -> Vec<u8> {
    let n = img.h * img.w;
    (0..n)
        .flat_map(|i| (0..3).map(move |c| (i, c)))
        .map(|(i, c)| (img.chw[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

fn score_slice<M: SegPredict + ?Sized>(
    model: &M,
    pair: &NpyPair,
    cfg: &EvalConfig,
    figure: &mut Vec<FigureRow>,
) -> Result<Vec<Scored>> {
    let img = read_image(&pair.image)?;
    let (h, w, labels) = read_labels(&pair.gt)?;
    if (h, w) != (img.h, img.w) {
        return Err(Error::file(
            &pair.gt,
            format!("label map is {h}×{w}, image is {}×{}", img.h, img.w),
        ));
    }
    let name = pair
        .gt
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ids = label_ids(&labels);
    let mut gts = Vec::new();
    for &label in &ids {
        let gt: Vec<bool> = labels.iter().map(|&l| l == label).collect();
        let b = mask_bbox(&gt, h, w)?.expect("label present");
        gts.push((label, gt, b));
    }
    let boxes: Vec<[usize; 4]> = gts.iter().map(|g| g.2).collect();
    let preds = model.predict_boxes(&img, &boxes, cfg.precision)?;
    let mut out = Vec::new();
    for ((label, gt, b), pred) in gts.into_iter().zip(preds) {
        let spacing = [1.0, 1.0];
        let model_m = sample_metrics(&gt, &pred, h, w, spacing, cfg.nsd_tolerance)?;
        let base_m = sample_metrics(&gt, &box_mask(h, w, b), h, w, spacing, cfg.nsd_tolerance)?;
        if figure.len() < cfg.figure_slices && !figure.iter().any(|f| f.title.starts_with(&name)) {
            figure.push(FigureRow {
                rgb: to_rgb(&img),
                h,
                w,
                gt: gt.clone(),
                pred: pred.clone(),
                bbox: b,
                title: format!("{name} label {label}"),
            });
        }
        out.push(Scored {
            row: metrics::csv_row(&name, label as u32, &model_m, Some(&base_m)),
            label: label as u32,
            model: model_m,
            baseline: base_m,
        });
    }
    Ok(out)
}

/// Scores this rank's share of the slices; rank 0 writes `metrics.csv`, `metrics.json` and the
/// comparison figure into the work dir and returns the merged summary (other ranks get theirs).
pub fn evaluate<M: SegPredict + ?Sized>(
    model: &M,
    cfg: &EvalConfig,
    comm: &dyn Communicator,
    on_slice: &mut dyn FnMut(usize, usize),
) -> Result<EvalOutcome> {
    let mut pairs = list_pairs(&cfg.data_path)?;
    if let Some(m) = cfg.max_slices {
        pairs.truncate(m);
    }
    let mine = crate::dist::rank_share(&pairs, comm);
    let mut acc = MetricsAccumulator::new();
    let mut rows = Vec::new();
    let mut figure = Vec::new();
    let t0 = Instant::now();
    for (i, pair) in mine.iter().enumerate() {
        for s in score_slice(model, pair, cfg, &mut figure)? {
            acc.add(s.label, &s.model, Some(&s.baseline));
            rows.push(s.row);
        }
        on_slice(i + 1, mine.len());
    }
    acc.add_timing(mine.len() as u64, t0.elapsed().as_secs_f64());
    // Gather every rank's accumulator and CSV rows on all ranks; rank 0 writes.
    let payload = serde_json::to_vec(&(acc, rows)).map_err(Error::wrap)?;
    let gathered = comm.all_gather_bytes(&payload)?;
    let mut total = MetricsAccumulator::new();
    let mut all_rows = Vec::new();
    for bytes in gathered {
        let (a, r): (MetricsAccumulator, Vec<String>) =
            serde_json::from_slice(&bytes).map_err(Error::wrap)?;
        total.merge(&a);
        all_rows.extend(r);
    }
    all_rows.sort();
    let summary = total.summary();
    let (csv, json) = (
        cfg.work_dir.join("metrics.csv"),
        cfg.work_dir.join("metrics.json"),
    );
    let mut fig_path = None;
    if comm.is_root() {
        std::fs::create_dir_all(&cfg.work_dir).map_err(|e| Error::io(&cfg.work_dir, e))?;
        metrics::write_csv(&csv, metrics::CSV_HEADER, all_rows)?;
        summary.write_json(&json)?;
        if !figure.is_empty() {
            let path = cfg.work_dir.join("comparison.png");
            let fig: Vec<ComparisonRow<bool>> = figure
                .iter()
                .map(|f| ComparisonRow {
                    image: &f.rgb,
                    h: f.h,
                    w: f.w,
                    gt: &f.gt,
                    pred: &f.pred,
                    bbox: Some(f.bbox),
                    title: &f.title,
                })
                .collect();
            viz::save_comparison_png(&path, &fig)?;
            fig_path = Some(path);
        }
    }
    Ok(EvalOutcome {
        summary,
        csv,
        json,
        figure: fig_path,
    })
}

/// The printed table: per label count and means, then all, then the box baseline.
pub fn format_table(s: &MetricsSummary) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
    let mut out = format!(
        "{:<8} {:>6} {:>8} {:>8} {:>8}\n",
        "label", "count", "DSC", "IoU", "NSD"
    );
    for (id, l) in &s.per_label {
        out += &format!(
            "{:<8} {:>6} {:>8} {:>8} {:>8}\n",
            id,
            l.count,
            f(l.dsc),
            f(l.miou),
            f(l.nsd)
        );
    }
    out += &format!(
        "{:<8} {:>6} {:>8} {:>8} {:>8}\n",
        "all",
        s.count,
        f(s.dsc),
        f(s.miou),
        f(s.nsd)
    );
    out += &format!(
        "{:<8} {:>6} {:>8} {:>8} {:>8}\n",
        "box",
        s.count,
        f(s.box_baseline.dsc),
        f(s.box_baseline.miou),
        f(s.box_baseline.nsd)
    );
    out
}
