//! Per-image latency of each model and precision on this machine (`medsam bench`), optionally
//! beside the PyTorch reference run on the same input in the same process tree.
//!
//! One "image" is the path a user's one-box 2D call takes: `preprocess` (the model's own resize
//! and normalisation of a uint8 grey image), `encode` (image encoder, under the chosen
//! precision), `decode` (prompt encoder + mask decoder for one box, upsampling, threshold).
//! `load` is the model's construction from its checkpoint (or from random weights of the real
//! config when there is none). Each model × precision runs `rounds` rounds of `repeats` calls;
//! with a PyTorch reference, a round of ours and a round of PyTorch's alternate, so both see the
//! same machine state. `first` is the first call of that model × precision in the process (cold
//! caches, weights quantized on first use); best and median are over the remaining calls.
//! Figures only: nothing here checks a timing.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::config::{ModelType, SamConfig};
use crate::models::lite::{LiteConfig, LiteMedSam};
use crate::models::sam2::{Prompt, Sam2Base, Sam2Config, VideoPredictor};
use crate::models::Sam;
use crate::pipeline::infer::lite::{ImageU8, LitePredictor};
use crate::pipeline::infer::sam::{InferPrecision, InputImage, Predictor};
use crate::Device;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The PyTorch side: one worker process per round (`python -c`), reading the raw image.
const TORCH_WORKER: &str = include_str!("bench_torch.py");

/// A model family the bench knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchFamily {
    Lite,
    Sam,
    Medsam2,
}

impl BenchFamily {
    fn name(self) -> &'static str {
        match self {
            BenchFamily::Lite => "lite",
            BenchFamily::Sam => "sam",
            BenchFamily::Medsam2 => "medsam2",
        }
    }
}

/// A model to time: its family and, optionally, a checkpoint (and config JSON for odd sizes).
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub family: BenchFamily,
    pub checkpoint: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

impl ModelSpec {
    /// `KIND[=[CHECKPOINT][,CONFIG]]` with KIND one of `lite`, `sam`, `medsam2`; without a
    /// checkpoint, random weights of CONFIG (default: the family's real size).
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, rest) = match s.split_once('=') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        let family = match kind.trim() {
            "lite" => BenchFamily::Lite,
            "sam" => BenchFamily::Sam,
            "medsam2" => BenchFamily::Medsam2,
            other => {
                return Err(Error::arg(
                    "--model",
                    format!(
                        "'{other}' is not lite, sam or medsam2 (form KIND[=[CHECKPOINT][,CONFIG]])"
                    ),
                ))
            }
        };
        let (checkpoint, config) = match rest.map(|r| r.split_once(',').unwrap_or((r, ""))) {
            None => (None, None),
            Some((c, j)) => (
                (!c.is_empty()).then(|| PathBuf::from(c)),
                (!j.is_empty()).then(|| PathBuf::from(j)),
            ),
        };
        Ok(ModelSpec {
            family,
            checkpoint,
            config,
        })
    }
}

/// How much to run and on what.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed calls per round (after the process's first call).
    pub repeats: usize,
    pub rounds: usize,
    /// Size `(h, w)` of the generated grey test image.
    pub image_hw: (usize, usize),
    /// Python with torch (and the family's reference package) for the PyTorch column.
    pub torch_python: Option<String>,
    /// Time only the loading (one row per model, other columns empty).
    pub load_only: bool,
}

/// Best and median of a set of seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stat {
    pub best: f64,
    pub median: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Stat {
        if v.is_empty() {
            return Stat {
                best: f64::NAN,
                median: f64::NAN,
            };
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        Stat {
            best: s[0],
            median: s[s.len() / 2],
        }
    }
}

/// One implementation's figures for a model × precision (seconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub load: f64,
    pub first: f64,
    pub preprocess: Stat,
    pub encode: Stat,
    pub decode: Stat,
    pub total: Stat,
}

/// A row of the table.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// E.g. "LiteMedSAM (lite_medsam.pth)" or "SAM ViT-B (random weights)".
    pub model: String,
    pub precision: InferPrecision,
    pub ours: Figures,
    /// PyTorch's figures, or why there are none.
    pub torch: std::result::Result<Figures, String>,
}

/// A generated grey uint8 image: smooth texture and a bright disk to segment, with the disk's
/// box `[x0, y0, x1, y1]`.
pub fn test_image((h, w): (usize, usize)) -> (Vec<u8>, [f32; 4]) {
    let (cy, cx, r) = (h as f64 / 2.0, w as f64 / 2.0, h.min(w) as f64 / 4.0);
    let mut img = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let (yf, xf) = (y as f64, x as f64);
            let base = 60.0 + 30.0 * ((xf / 9.0).sin() + (yf / 13.0).cos());
            let inside = (yf - cy).powi(2) + (xf - cx).powi(2) < r * r;
            img.push(if inside { base + 110.0 } else { base } as u8);
        }
    }
    let bbox = [
        (cx - r * 1.1).max(0.0) as f32,
        (cy - r * 1.1).max(0.0) as f32,
        (cx + r * 1.1).min(w as f64) as f32,
        (cy + r * 1.1).min(h as f64) as f32,
    ];
    (img, bbox)
}

/// A loaded model of any family the bench knows.
enum Loaded {
    Lite(Box<LiteMedSam>),
    Sam(Box<Sam>),
    Medsam2(Box<VideoPredictor>),
}

fn load(spec: &ModelSpec) -> Result<(Loaded, String)> {
    let d = Device::Cpu;
    let file = |p: &Path| {
        p.file_name()
            .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
    };
    let cfg = spec.config.as_deref();
    // "SAM ViT-B" for the real size, "SAM" with a config of another size.
    let random = |real: &str| match cfg {
        Some(c) => format!(
            "{} ({}, random weights)",
            real.split(' ').next().unwrap_or(real),
            file(c)
        ),
        None => format!("{real} (random weights)"),
    };
    Ok(match (spec.family, &spec.checkpoint) {
        (BenchFamily::Lite, Some(p)) => {
            let (m, _) = crate::models::load::load_lite_model(p, cfg, d)?;
            (
                Loaded::Lite(Box::new(m)),
                format!("LiteMedSAM ({})", file(p)),
            )
        }
        (BenchFamily::Lite, None) => {
            let c = match cfg {
                Some(c) => LiteConfig::from_json_file(c)?,
                None => LiteConfig::lite_medsam(),
            };
            let m = LiteMedSam::new(&c, 0, d)?;
            (Loaded::Lite(Box::new(m)), random("LiteMedSAM"))
        }
        (BenchFamily::Sam, Some(p)) => {
            let (m, _) = crate::models::load::load_model(p, None, cfg, d)?;
            (Loaded::Sam(Box::new(m)), format!("SAM ({})", file(p)))
        }
        (BenchFamily::Sam, None) => {
            let c = match cfg {
                Some(c) => SamConfig::from_json_file(c)?,
                None => SamConfig::preset(ModelType::VitB),
            };
            let m = Sam::new(&c, 0, d)?;
            (Loaded::Sam(Box::new(m)), random("SAM ViT-B"))
        }
        (BenchFamily::Medsam2, Some(p)) => {
            let (m, _) = crate::models::sam2::load_sam2(p, cfg, None, d)?;
            let name = format!("MedSAM2 ({})", file(p));
            (Loaded::Medsam2(Box::new(VideoPredictor::new(m))), name)
        }
        (BenchFamily::Medsam2, None) => {
            let c = match cfg {
                Some(c) => Sam2Config::from_json_file(c)?,
                None => Sam2Config::medsam2_t512(),
            };
            let m = Sam2Base::new(&c, 0, d)?;
            (
                Loaded::Medsam2(Box::new(VideoPredictor::new(m))),
                random("MedSAM2 t512"),
            )
        }
    })
}

/// Seconds of one call: preprocess, encode, decode.
type Call = [f64; 3];

fn lap(t: &mut Instant) -> f64 {
    let s = t.elapsed().as_secs_f64();
    *t = Instant::now();
    s
}

/// The preprocessing time (since `t`), `encode` run at precision `p`, and its time.
fn timed_encode<T>(
    t: &mut Instant,
    p: InferPrecision,
    encode: impl FnOnce() -> Result<T>,
) -> Result<(f64, T, f64)> {
    let pre = lap(t);
    let encoded = p.autocast(encode)?;
    Ok((pre, encoded, lap(t)))
}

/// One image through the model; returns the timings and the mask's foreground pixel count.
fn call(
    m: &Loaded,
    p: InferPrecision,
    img: &[u8],
    hw: (usize, usize),
    bbox: [f32; 4],
) -> Result<(Call, usize)> {
    let (h, w) = hw;
    let mut t = Instant::now();
    no_grad(|| match m {
        Loaded::Lite(model) => {
            let u8img = ImageU8::new(h, w, 1, img.to_vec())?;
            let (input, new_hw) =
                crate::pipeline::infer::lite::prepare_input(&u8img, model.img_size())?;
            let (pre, embedding, enc) =
                timed_encode(&mut t, p, || model.image_encoder.forward(&input))?;
            let pred = LitePredictor {
                model,
                embedding,
                orig_hw: hw,
                new_hw,
            };
            let mask = pred.predict_box(bbox.map(f64::from))?.mask;
            Ok(([pre, enc, lap(&mut t)], mask.iter().filter(|&&b| b).count()))
        }
        Loaded::Sam(model) => {
            let rgb = InputImage {
                h,
                w,
                hwc: img.iter().flat_map(|&v| [f64::from(v); 3]).collect(),
                is_npy: false,
            };
            let size = model.config.image_encoder.img_size;
            let input = crate::pipeline::infer::sam::prepare_input(&rgb, size)?;
            let (pre, embedding, enc) =
                timed_encode(&mut t, p, || model.image_encoder.forward(&input))?;
            let pred = Predictor {
                model,
                embedding,
                orig_hw: hw,
            };
            let mask = pred.predict_box(bbox)?.mask;
            Ok(([pre, enc, lap(&mut t)], mask.iter().filter(|&&b| b).count()))
        }
        Loaded::Medsam2(pred) => {
            let size = pred.model.config.image_size;
            let frames = crate::models::sam2::volume::volume_to_frames(img, (1, h, w), size)?;
            let (pre, mut state, enc) = timed_encode(&mut t, p, || pred.init_state(frames, h, w))?;
            let prompt = Prompt {
                bbox: Some(bbox),
                ..Prompt::default()
            };
            let logits = pred.add_new_points_or_box(&mut state, 0, 1, &prompt, true, true)?;
            let fg = logits.to_vec()?.iter().filter(|&&v| v > 0.0).count();
            Ok(([pre, enc, lap(&mut t)], fg))
        }
    })
}

fn figures(load: f64, calls: &[Call]) -> Figures {
    let warm = calls.get(1..).unwrap_or(&[]);
    let col = |i: usize| -> Vec<f64> { warm.iter().map(|c| c[i]).collect() };
    let totals: Vec<f64> = warm.iter().map(|c| c.iter().sum()).collect();
    Figures {
        load,
        first: calls.first().map_or(f64::NAN, |c| c.iter().sum()),
        preprocess: Stat::of(&col(0)),
        encode: Stat::of(&col(1)),
        decode: Stat::of(&col(2)),
        total: Stat::of(&totals),
    }
}

/// Runs the bench; `on_row` sees each row as soon as it is measured.
pub fn run_bench(
    specs: &[ModelSpec],
    precisions: &[InferPrecision],
    opts: &BenchOptions,
    on_row: &mut dyn FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    if opts.repeats == 0 || opts.rounds == 0 {
        return Err(Error::arg(
            "--repeats",
            "repeats and rounds must be at least 1",
        ));
    }
    let (img, bbox) = test_image(opts.image_hw);
    let raw = match &opts.torch_python {
        Some(_) => Some(RawImage::write(&img, opts.image_hw)?),
        None => None,
    };
    let mut rows = Vec::new();
    for spec in specs {
        let t = Instant::now();
        let (mut model, name) = load(spec)?;
        let load_s = t.elapsed().as_secs_f64();
        if opts.load_only {
            let row = BenchRow {
                model: name,
                precision: InferPrecision::F32,
                ours: figures(load_s, &[]),
                torch: Err("not run (load only)".into()),
            };
            on_row(&row);
            rows.push(row);
            continue;
        }
        for &p in precisions {
            if let Loaded::Medsam2(pred) = &mut model {
                pred.precision = p; // the predictor's own encoder precision, as users run it
            }
            let mut calls = Vec::new();
            let mut torch_runs: Vec<std::result::Result<Figures, String>> = Vec::new();
            for round in 0..opts.rounds {
                let n = opts.repeats + usize::from(round == 0);
                for _ in 0..n {
                    calls.push(call(&model, p, &img, opts.image_hw, bbox)?.0);
                }
                if let (Some(py), Some(raw)) = (&opts.torch_python, &raw) {
                    torch_runs.push(torch_round(py, spec, p, raw, bbox, opts.repeats));
                }
            }
            let torch = match torch_runs.first() {
                None => Err("not run (give --torch)".into()),
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(_)) => merge_torch(&torch_runs),
            };
            let row = BenchRow {
                model: name.clone(),
                precision: p,
                ours: figures(load_s, &calls),
                torch,
            };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The test image as a raw uint8 file for the PyTorch worker, removed on drop.
struct RawImage {
    path: PathBuf,
    hw: (usize, usize),
}

impl RawImage {
    fn write(img: &[u8], hw: (usize, usize)) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("medsam-bench-{}.u8", std::process::id()));
        crate::io::atomic::write_atomic(
            &path,
            |p, e| Error::io(p, e),
            |f| f.write_all(img).map_err(|e| Error::io(&path, e)),
        )?;
        Ok(RawImage { path, hw })
    }
}

impl Drop for RawImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One PyTorch worker process: `RESULT key=value ...` on its last such line, or why not.
fn torch_round(
    python: &str,
    spec: &ModelSpec,
    p: InferPrecision,
    raw: &RawImage,
    bbox: [f32; 4],
    repeats: usize,
) -> std::result::Result<Figures, String> {
    if spec.config.is_some() {
        return Err("runs the families' real configs only (no CONFIG)".into());
    }
    let ckpt = spec
        .checkpoint
        .as_ref()
        .map_or(String::new(), |c| c.display().to_string());
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(TORCH_WORKER)
        .args([
            spec.family.name(),
            &ckpt,
            p.name(),
            &repeats.to_string(),
            &raw.path.display().to_string(),
            &raw.hw.0.to_string(),
            &raw.hw.1.to_string(),
            &bbox.map(|v| v.to_string()).join(","),
        ])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = stdout.lines().rev().find(|l| l.starts_with("SKIP ")) {
        return Err(line[5..].to_string());
    }
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with("RESULT ")) else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("PyTorch worker failed: {tail}"));
    };
    let kv: std::collections::HashMap<&str, f64> = line[7..]
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let g = |k: &str| kv.get(k).copied().unwrap_or(f64::NAN);
    let stat = |k: &str| Stat {
        best: g(&format!("{k}_best")),
        median: g(&format!("{k}_median")),
    };
    Ok(Figures {
        load: g("load"),
        first: g("first"),
        preprocess: stat("preprocess"),
        encode: stat("encode"),
        decode: stat("decode"),
        total: stat("total"),
    })
}

/// Rounds of PyTorch merged: best of bests, median of medians; load and first from the first
/// round (a fresh process each round, so every round's first call is cold).
fn merge_torch(
    runs: &[std::result::Result<Figures, String>],
) -> std::result::Result<Figures, String> {
    let ok: Vec<&Figures> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
    let merge = |f: &dyn Fn(&Figures) -> Stat| {
        let bests: Vec<f64> = ok.iter().map(|x| f(x).best).collect();
        let meds: Vec<f64> = ok.iter().map(|x| f(x).median).collect();
        Stat {
            best: Stat::of(&bests).best,
            median: Stat::of(&meds).median,
        }
    };
    Ok(Figures {
        load: Stat::of(&ok.iter().map(|x| x.load).collect::<Vec<_>>()).median,
        first: Stat::of(&ok.iter().map(|x| x.first).collect::<Vec<_>>()).median,
        preprocess: merge(&|x| x.preprocess),
        encode: merge(&|x| x.encode),
        decode: merge(&|x| x.decode),
        total: merge(&|x| x.total),
    })
}

fn ms(s: f64) -> String {
    if s.is_nan() {
        "—".into()
    } else {
        format!("{:.0}", s * 1e3)
    }
}

/// This row's median encode time over that of the same model's f32 row (what the lower
/// precision buys on this CPU), "—" without an f32 row or encode times (`--load-only`).
fn encode_vs_f32(rows: &[BenchRow], r: &BenchRow) -> String {
    let f32_row = rows
        .iter()
        .find(|x| x.model == r.model && x.precision == InferPrecision::F32);
    let ratio = f32_row.map_or(f64::NAN, |f| r.ours.encode.median / f.ours.encode.median);
    if ratio.is_finite() {
        format!("{ratio:.2}")
    } else {
        "—".into()
    }
}

/// The rows as a Markdown table (milliseconds; "encode / f32" = this row's median encode over
/// the same model's f32 row's; ratio = ours / PyTorch on the median total).
pub fn markdown_table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| model | precision | load ms | preprocess ms | encode ms | encode / f32 | decode ms | total best ms | total median ms | first call ms | PyTorch median ms | PyTorch first ms | ours / PyTorch |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let o = &r.ours;
        let (t_med, t_first, ratio) = match &r.torch {
            Ok(t) => (
                ms(t.total.median),
                ms(t.first),
                format!("{:.2}×", o.total.median / t.total.median),
            ),
            Err(_) => ("—".into(), "—".into(), "—".into()),
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.model,
            r.precision.name(),
            ms(o.load),
            ms(o.preprocess.median),
            ms(o.encode.median),
            encode_vs_f32(rows, r),
            ms(o.decode.median),
            ms(o.total.best),
            ms(o.total.median),
            ms(o.first),
            t_med,
            t_first,
            ratio
        );
    }
    s
}

/// Why PyTorch figures are missing from some rows, one line each (empty when none are).
pub fn torch_notes(rows: &[BenchRow]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| match &r.torch {
            Err(e) => Some(format!("{} {}: PyTorch {e}", r.model, r.precision.name())),
            Ok(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, precision: InferPrecision, encode_s: f64) -> BenchRow {
        let stat = |v: f64| Stat { best: v, median: v };
        BenchRow {
            model: model.into(),
            precision,
            ours: Figures {
                load: 0.01,
                first: 0.3,
                preprocess: stat(0.001),
                encode: stat(encode_s),
                decode: stat(0.02),
                total: stat(encode_s + 0.021),
            },
            torch: Err("not run".into()),
        }
    }

    /// Each row's encode is divided by its own model's f32 row, whatever the row order; a
    /// model timed without f32 gets "—".
    #[test]
    fn encode_ratio_is_against_the_same_models_f32_row() {
        let rows = [
            row("A", InferPrecision::Bf16, 0.15),
            row("A", InferPrecision::F32, 0.25),
            row("B", InferPrecision::F32, 1.0),
            row("B", InferPrecision::Int8, 0.4),
            row("C", InferPrecision::Int8, 0.5),
            row("D", InferPrecision::F32, f64::NAN),
        ];
        let table = markdown_table(&rows);
        let cells = |i: usize| -> Vec<String> {
            let line = table.lines().nth(2 + i).unwrap();
            line.split('|').map(|c| c.trim().to_string()).collect()
        };
        let header: Vec<String> = table
            .lines()
            .next()
            .unwrap()
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        let col = header.iter().position(|c| c == "encode / f32").unwrap();
        let got: Vec<String> = (0..rows.len()).map(|i| cells(i)[col].clone()).collect();
        assert_eq!(got, ["0.60", "1.00", "1.00", "0.40", "—", "—"]);
        assert_eq!(header.len(), cells(0).len(), "every row has every column");
    }
}
