//! `medsam infer`: MedSAM_Inference.py on an image and one or more boxes; with a LiteMedSAM
//! checkpoint, CVPR24_LiteMedSAM_infer.py on 2D images and on 3D volumes (`.npz` in the challenge
//! layout, NIfTI with `--box3d`, or a DICOM series folder with `--box3d`, whose segmentation is
//! written as DICOM SEG and/or NIfTI with the series' geometry).

use super::common::{load_any_model, show, AnyModelArgs};
use medsam::io::volume::{
    read_challenge_npz, read_nifti_volume, u8_volume, write_nifti_segs, write_npz_segs,
    write_npz_segs_2d, ChallengeNpz, NpzImage2d, NpzKind, Volume,
};
use medsam::models::{AnyModel, LiteMedSam, Sam};
use medsam::pipeline::infer::challenge2d::{
    check_box_count, segment_image_lite, segment_image_sam,
};
use medsam::pipeline::infer::lite::{
    check_box3d, lite_image, segment_volume, Box3d, ImageU8, LitePredictor,
};
use medsam::pipeline::infer::sam::{
    check_box, prepare_input, read_input_image, InferPrecision, InputImage, Predictor,
};
use medsam::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// Input image: PNG/JPEG/BMP/TIFF (grey or RGB) or .npy (H×W×3 in [0, 1]; uint8 0–255 too
    /// for LiteMedSAM), or a 2D .npz in the CVPR24 challenge layout (`imgs` (H, W, 3) or (H, W)
    /// uint8, `boxes` (N, 4) or --box; every model family; labels 1..=N in `seg_<name>.npz`).
    /// With a LiteMedSAM or MedSAM2 checkpoint also a 3D volume: .npz (challenge layout: `imgs`
    /// (D, H, W) uint8, `boxes` (N, 6)) or .nii/.nii.gz (with --box3d).
    #[arg(short = 'i', long = "data-path")]
    pub data_path: PathBuf,
    /// Output directory.
    #[arg(short = 'o', long = "seg-path", default_value = "assets/")]
    pub seg_path: PathBuf,
    /// Box "[x0,y0,x1,y1]" in original-image pixels (2D images); repeat for several boxes. For a
    /// 2D .npz it replaces the file's `boxes`.
    #[arg(long = "box")]
    pub boxes: Vec<String>,
    /// 3D box "[x_min,y_min,z_min,x_max,y_max,z_max]" in voxels, z_min and z_max inclusive as
    /// the challenge's `boxes` (volumes; LiteMedSAM and MedSAM2);
    /// repeat for several objects (labels 1, 2, …). For .npz inputs it replaces the file's `boxes`.
    #[arg(long = "box3d")]
    pub boxes3d: Vec<String>,
    #[command(flatten)]
    pub model: AnyModelArgs,
    /// Also write the low-res mask logits (float32 [n_boxes, 1, 4g, 4g]) to this .npy (2D only).
    #[arg(long)]
    pub logits: Option<PathBuf>,
    /// Image-encoder precision, every model and input; MedSAM2's memory attention runs in bf16
    /// under bf16 and int8 (prompt encoders, mask decoders, MedSAM2's memory encoder: f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: InferPrecision,
    /// DICOM input: the SeriesInstanceUID to segment when the folder holds several series.
    #[arg(long)]
    pub series: Option<String>,
    /// Volume output: DICOM SEG (`seg_<name>.dcm`, DICOM input only), NIfTI (`seg_<name>.nii.gz`)
    /// or both [default: both for DICOM input, nifti otherwise].
    #[arg(long = "output-format", value_enum)]
    pub output_format: Option<OutputFormat>,
    /// Name of label k (the k-th --box3d) in the DICOM SEG; repeat in box order
    /// [default: "Segment k"].
    #[arg(long = "label-name")]
    pub label_names: Vec<String>,
    #[command(flatten)]
    pub medsam2: super::infer_sam2::Sam2Args,
    /// Print to stderr, on one line, the seconds spent loading the checkpoint, preprocessing the
    /// image (reading, resizing, normalising), encoding it, decoding the boxes and writing the
    /// outputs (2D image files).
    #[arg(long)]
    pub timings: bool,
}

/// Seconds spent in each stage of a 2D inference (`--timings`).
#[derive(Default)]
struct Timings {
    load: f64,
    preprocess: f64,
    encode: f64,
    decode: f64,
    write: f64,
}

impl Timings {
    fn line(&self) -> String {
        let total = self.load + self.preprocess + self.encode + self.decode + self.write;
        format!(
            "timings: load {:.3} s, preprocess {:.3} s, encode {:.3} s, decode {:.3} s, \
             write {:.3} s (total {total:.3} s)",
            self.load, self.preprocess, self.encode, self.decode, self.write
        )
    }
}

/// Seconds since `t`, restarting it.
fn lap(t: &mut std::time::Instant) -> f64 {
    let s = t.elapsed().as_secs_f64();
    *t = std::time::Instant::now();
    s
}

/// How a volume segmentation is written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Seg,
    Nifti,
    Both,
}

pub fn parse_box(s: &str) -> Result<[f32; 4]> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let v: Vec<f32> = inner
        .split(',')
        .map(|t| t.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::arg("--box", format!("'{s}' is not [x0,y0,x1,y1]")))?;
    <[f32; 4]>::try_from(v)
        .map_err(|_| Error::arg("--box", format!("'{s}' needs exactly 4 numbers")))
}

/// Whether the input is a 3D volume (`.nii`, `.nii.gz`, a DICOM folder) or a challenge `.npz`
/// (2D or 3D; [`read_challenge_npz`] tells) rather than a 2D image file.
pub fn is_volume_path(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".npz") || name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// The file name without its extension (both of `.nii.gz`).
pub fn stem_of(path: &Path) -> String {
    if path.is_dir() {
        if let Some(n) = path.file_name() {
            return n.to_string_lossy().into_owned();
        }
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let stem = if lower.ends_with(".nii.gz") {
        &name[..name.len() - 7]
    } else {
        path.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name.as_str())
    };
    if stem.is_empty() {
        "image".into()
    } else {
        stem.into()
    }
}

/// Refuses an output path that is one of the command's input files.
pub(super) fn refuse_input(a: &InferArgs, output: &Path, flag: &str) -> Result<()> {
    let mut inputs: Vec<&Path> = vec![&a.data_path, &a.model.checkpoint];
    inputs.extend(a.model.model_config.as_deref());
    medsam::io::paths::refuse_overwriting_input(output, flag, &inputs)
}

/// Says on stderr which kernels a low precision runs on this CPU (nothing for f32).
pub(super) fn note_precision(p: InferPrecision) {
    if p != InferPrecision::F32 {
        eprintln!("note: {}", medsam_kernels::gemm::precision_summary());
    }
}

/// [`note_precision`] for LiteMedSAM's slice-by-slice volumes, where each slice's mask prompts
/// the next and low-precision differences grow (figures from
/// `lite_real::mri_volume_low_precision_matches_f32`).
pub(super) fn note_lite_volume_precision(p: InferPrecision) {
    note_precision(p);
    if p != InferPrecision::F32 {
        eprintln!(
            "note: LiteMedSAM propagates each slice's mask to the next, so {} differences grow \
             through a volume (labelled-voxel IoU against f32 on a real MRI volume: bf16 0.988, \
             int8 0.918)",
            p.name()
        );
    }
}

pub fn run(a: &InferArgs) -> Result<()> {
    if let Some(l) = &a.logits {
        refuse_input(a, l, "--logits")?;
    }
    let medsam2 = a.model.model_type == Some(super::common::AnyModelType::Medsam2);
    if a.timings && (medsam2 || is_volume_path(&a.data_path)) {
        return Err(Error::arg(
            "--timings",
            "is for SAM/MedSAM and LiteMedSAM on 2D image files (not volumes, challenge .npz \
             files or --model-type medsam2)",
        ));
    }
    if medsam2 {
        return super::infer_sam2::run(a);
    }
    if is_volume_path(&a.data_path) {
        return run_volume(a);
    }
    if !a.boxes3d.is_empty() {
        return Err(Error::arg(
            "--box3d",
            format!(
                "{} is a 2D image: give 2D boxes with --box [x0,y0,x1,y1]",
                a.data_path.display()
            ),
        ));
    }
    if a.boxes.is_empty() {
        return Err(Error::arg(
            "--box",
            "at least one box [x0,y0,x1,y1] is required for a 2D image",
        ));
    }
    let mut times = Timings::default();
    let mut t = std::time::Instant::now();
    let img = read_input_image(&a.data_path)?;
    let mut boxes = Vec::new();
    for s in &a.boxes {
        let checked = check_box(parse_box(s)?, img.h, img.w)?;
        if let Some(w) = &checked.warning {
            eprintln!("warning: {w}");
        }
        boxes.push(checked.bbox);
    }
    times.preprocess = lap(&mut t);
    let model = load_any_model(&a.model)?;
    times.load = lap(&mut t);
    match model {
        AnyModel::Sam(model) => run_sam_2d(a, &model, &img, &boxes, times),
        AnyModel::Lite(model) => {
            let u8img = lite_image(&a.data_path, &img)?;
            times.preprocess += lap(&mut t);
            run_lite_2d(a, &model, &u8img, &boxes, times)
        }
    }
}

/// Masks (union over boxes), the low-res logits of every box, the seconds taken, and the
/// times of every stage so far.
struct Segmentation2d {
    union: Vec<bool>,
    logits: Vec<medsam::Tensor>,
    secs: f64,
    times: Timings,
}

impl Segmentation2d {
    /// Preprocesses the image (`prepare`) and encodes it (`encode`, without gradients at the
    /// command's precision, after a note on the precision if it is not f32), then predicts every
    /// box with the encoded image (`predict`: its mask at the image's `n` pixels and its low-res
    /// logits).
    fn run<I, P>(
        a: &InferArgs,
        n: usize,
        boxes: &[[f32; 4]],
        mut times: Timings,
        prepare: impl FnOnce() -> Result<I>,
        encode: impl FnOnce(I) -> Result<P>,
        predict: impl Fn(&P, [f32; 4]) -> Result<(Vec<bool>, medsam::Tensor)>,
    ) -> Result<Self> {
        let t0 = std::time::Instant::now();
        let p = a.precision;
        note_precision(p);
        let input = prepare()?;
        let pre = t0.elapsed().as_secs_f64();
        let predictor = medsam::autograd::no_grad(|| p.autocast(|| encode(input)))?;
        times.preprocess += pre;
        times.encode = t0.elapsed().as_secs_f64() - pre;
        let t_decode = std::time::Instant::now();
        let mut union = vec![false; n];
        let mut logits = Vec::new();
        for b in boxes {
            let (mask, low_res_logits) = predict(&predictor, *b)?;
            union.iter_mut().zip(&mask).for_each(|(u, &m)| *u |= m);
            logits.push(low_res_logits);
        }
        times.decode = t_decode.elapsed().as_secs_f64();
        Ok(Segmentation2d {
            union,
            logits,
            secs: t0.elapsed().as_secs_f64(),
            times,
        })
    }
}

fn run_sam_2d(
    a: &InferArgs,
    model: &Sam,
    img: &InputImage,
    boxes: &[[f32; 4]],
    times: Timings,
) -> Result<()> {
    // `Predictor::new` in its two steps, timed apart.
    let seg = Segmentation2d::run(
        a,
        img.h * img.w,
        boxes,
        times,
        || prepare_input(img, model.config.image_encoder.img_size),
        |input| {
            Ok(Predictor {
                model,
                embedding: model.image_encoder.forward(&input)?,
                orig_hw: (img.h, img.w),
            })
        },
        |predictor, b| {
            let p = predictor.predict_box(b)?;
            Ok((p.mask, p.low_res_logits))
        },
    )?;
    write_2d(a, (img.h, img.w), &display_rgb(img), boxes, seg)
}

fn run_lite_2d(
    a: &InferArgs,
    model: &LiteMedSam,
    img: &ImageU8,
    boxes: &[[f32; 4]],
    times: Timings,
) -> Result<()> {
    // `LitePredictor::with_precision` in its two steps, timed apart.
    let seg = Segmentation2d::run(
        a,
        img.h * img.w,
        boxes,
        times,
        || medsam::pipeline::infer::lite::prepare_input(img, model.img_size()),
        |(input, new_hw)| {
            Ok(LitePredictor {
                model,
                embedding: model.image_encoder.forward(&input)?,
                orig_hw: (img.h, img.w),
                new_hw,
            })
        },
        |predictor, b| {
            let p = predictor.predict_box(b.map(|v| v as f64))?;
            Ok((p.mask, p.low_res_logits))
        },
    )?;
    let rgb: Vec<u8> = if img.channels == 3 {
        img.data.clone()
    } else {
        img.data.iter().flat_map(|&v| [v; 3]).collect()
    };
    write_2d(a, (img.h, img.w), &rgb, boxes, seg)
}

fn write_2d(
    a: &InferArgs,
    (h, w): (usize, usize),
    rgb: &[u8],
    boxes: &[[f32; 4]],
    seg: Segmentation2d,
) -> Result<()> {
    let t = std::time::Instant::now();
    medsam::io::paths::create_output_dir(&a.seg_path, "--seg-path")?;
    let stem = stem_of(&a.data_path);
    let seg_png = a.seg_path.join(format!("seg_{stem}.png"));
    let overlay = a.seg_path.join(format!("overlay_{stem}.png"));
    refuse_input(a, &seg_png, "--seg-path")?;
    refuse_input(a, &overlay, "--seg-path")?;
    medsam::viz::save_mask_png(&seg_png, &seg.union, h, w)?;
    let ub: Vec<[usize; 4]> = boxes.iter().map(|b| b.map(|v| v as usize)).collect();
    medsam::viz::save_overlay_png(&overlay, rgb, h, w, &seg.union, &ub)?;
    println!("segmentation: {}", show(&seg_png));
    println!("overlay:      {}", show(&overlay));
    if let Some(path) = &a.logits {
        let all = medsam::Tensor::cat(&seg.logits, 0)?;
        medsam::io::npy::write_npy_f32(path, all.shape(), &all.to_vec()?)
            .map_err(|e| Error::file(path, e.to_string()))?;
        println!("logits:       {} {:?}", show(path), all.shape());
    }
    println!(
        "{} box(es) in {:.2} s (encode + decode)",
        boxes.len(),
        seg.secs
    );
    if a.timings {
        let mut times = seg.times;
        times.write = t.elapsed().as_secs_f64();
        eprintln!("{}", times.line());
    }
    Ok(())
}

/// Parses "[x_min,y_min,z_min,x_max,y_max,z_max]" (integers).
pub fn parse_box3d(s: &str) -> Result<Box3d> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let bad = || {
        Error::arg(
            "--box3d",
            format!("'{s}' is not [x_min,y_min,z_min,x_max,y_max,z_max] (6 integers)"),
        )
    };
    let v: Vec<i64> = inner
        .split(',')
        .map(|t| {
            let x = t.trim().parse::<f64>().map_err(|_| bad())?;
            if x.fract() != 0.0 || !x.is_finite() {
                return Err(bad());
            }
            Ok(x as i64)
        })
        .collect::<Result<_>>()?;
    <Box3d>::try_from(v).map_err(|_| bad())
}

/// The kind of boxes given on the command line (`--box`: 2D, `--box3d`: 3D), if any.
pub(super) fn prompt_kind(a: &InferArgs) -> Result<Option<NpzKind>> {
    match (a.boxes.is_empty(), a.boxes3d.is_empty()) {
        (false, false) => Err(Error::arg(
            "--box",
            "give 2D boxes (--box) or 3D boxes (--box3d), not both",
        )),
        (false, true) => Ok(Some(NpzKind::Image2d)),
        (true, false) => Ok(Some(NpzKind::Volume3d)),
        (true, true) => Ok(None),
    }
}

/// Whether `path` names an `.npz` file.
pub(super) fn is_npz_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// The boxes for a 2D challenge `.npz`: `--box` (replacing the file's, with a note) or the file's
/// `boxes`, each checked against the image as `--box` on an image file is (clipped with a
/// warning where it sticks out; an error, naming the file and box, when empty or outside).
pub(super) fn npz_2d_boxes(a: &InferArgs, img: &NpzImage2d) -> Result<Vec<[f32; 4]>> {
    let path = &a.data_path;
    if a.logits.is_some() {
        return Err(Error::arg(
            "--logits",
            format!(
                "{} is a 2D challenge .npz, whose output is the label map `segs`; --logits is for image files",
                path.display()
            ),
        ));
    }
    if a.output_format.is_some() {
        return Err(Error::arg(
            "--output-format",
            format!(
                "{} is a 2D challenge .npz, written as seg_<name>.npz only",
                path.display()
            ),
        ));
    }
    let from_file = a.boxes.is_empty();
    let raw: Vec<[f32; 4]> = if !from_file {
        if img.boxes.is_some() {
            eprintln!(
                "note: --box replaces the `boxes` stored in {}",
                path.display()
            );
        }
        a.boxes
            .iter()
            .map(|s| parse_box(s))
            .collect::<Result<_>>()?
    } else {
        let file_boxes = img.boxes.as_ref().ok_or_else(|| {
            Error::file(
                path,
                "no `boxes` array: a 2D challenge .npz needs boxes (N, 4) [x_min, y_min, x_max, y_max], or pass --box",
            )
        })?;
        // Integer coordinates (the challenge's) are exact in f32, as they are on the command line.
        file_boxes.iter().map(|b| b.map(|v| v as f32)).collect()
    };
    if raw.is_empty() {
        return Err(Error::file(path, "`boxes` is empty: nothing to segment"));
    }
    let in_file = |e: Error, what: String| match e {
        Error::InvalidArgument { detail, .. } if from_file => {
            Error::file(path, format!("{what}: {detail}"))
        }
        e => e,
    };
    check_box_count(raw.len()).map_err(|e| in_file(e, "`boxes`".into()))?;
    let mut boxes = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let checked =
            check_box(b, img.h, img.w).map_err(|e| in_file(e, format!("`boxes`[{i}]")))?;
        if let Some(w) = &checked.warning {
            eprintln!("warning: {w}");
        }
        boxes.push(checked.bbox);
    }
    Ok(boxes)
}

/// Writes the label map of a 2D challenge `.npz` as `seg_<name>.npz` (key `segs`, (H, W) uint8)
/// and prints it with each label's pixel count.
pub(super) fn write_npz_2d(
    a: &InferArgs,
    (h, w): (usize, usize),
    segs: &[u8],
    labels: usize,
    secs: f64,
) -> Result<()> {
    medsam::io::paths::create_output_dir(&a.seg_path, "--seg-path")?;
    let npz = a
        .seg_path
        .join(format!("seg_{}.npz", stem_of(&a.data_path)));
    refuse_input(a, &npz, "--seg-path")?;
    write_npz_segs_2d(&npz, (h, w), segs)?;
    println!(
        "segmentation: {} ({h}×{w} H×W, key `segs`, labels 1..={labels})",
        show(&npz)
    );
    for label in 1..=labels {
        let n = segs.iter().filter(|&&s| s as usize == label).count();
        println!("label {label}: {n} pixels");
    }
    println!("{labels} box(es) in {secs:.2} s (encode + decode)");
    Ok(())
}

/// A 2D challenge `.npz` with LiteMedSAM (upstream's `MedSAM_infer_npz_2D`) or SAM/MedSAM.
fn run_npz_2d(a: &InferArgs, img: NpzImage2d) -> Result<()> {
    let boxes = npz_2d_boxes(a, &img)?;
    let (h, w) = (img.h, img.w);
    let image = ImageU8::new(h, w, img.channels, img.data)?;
    let model = load_any_model(&a.model)?;
    note_precision(a.precision);
    let t0 = std::time::Instant::now();
    let segs = match model {
        AnyModel::Lite(m) => {
            let b: Vec<[f64; 4]> = boxes.iter().map(|b| b.map(f64::from)).collect();
            segment_image_lite(&m, &image, &b, a.precision)?
        }
        AnyModel::Sam(m) => segment_image_sam(&m, &image, &boxes, a.precision)?,
    };
    write_npz_2d(a, (h, w), &segs, boxes.len(), t0.elapsed().as_secs_f64())
}

fn run_volume(a: &InferArgs) -> Result<()> {
    let path = &a.data_path;
    if !path.exists() {
        return Err(Error::file(path, "no such file"));
    }
    let is_npz = is_npz_path(path);
    let npz_volume = if is_npz {
        match read_challenge_npz(path, prompt_kind(a)?)? {
            ChallengeNpz::Image2d(img) => return run_npz_2d(a, img),
            ChallengeNpz::Volume3d(v) => Some(v),
        }
    } else {
        None
    };
    if !a.boxes.is_empty() {
        return Err(Error::arg(
            "--box",
            format!(
                "{} is a 3D volume: give boxes with --box3d [x_min,y_min,z_min,x_max,y_max,z_max]",
                path.display()
            ),
        ));
    }
    if a.logits.is_some() {
        return Err(Error::arg("--logits", "applies to 2D images only"));
    }
    let is_dicom = path.is_dir();
    if !is_dicom && a.series.is_some() {
        return Err(Error::arg("--series", "applies to DICOM folders only"));
    }
    let format = match (a.output_format, is_dicom) {
        (Some(f), true) => f,
        (None, true) => OutputFormat::Both,
        (None | Some(OutputFormat::Nifti), false) => OutputFormat::Nifti,
        (Some(_), false) => {
            return Err(Error::arg(
                "--output-format",
                format!(
                    "DICOM SEG needs a DICOM series as input; {} is not a folder",
                    path.display()
                ),
            ))
        }
    };
    let (vol, dicom) = if let Some(v) = npz_volume {
        (v, None)
    } else if is_dicom {
        let (v, s) = read_dicom_volume(path, a.series.as_deref())?;
        (v, Some(s))
    } else {
        (read_nifti_volume(path)?, None)
    };
    if let Some(note) = &vol.note {
        eprintln!("note: {note}");
    }
    let raw_boxes: Vec<Box3d> = if !a.boxes3d.is_empty() {
        if vol.boxes.is_some() {
            eprintln!(
                "note: --box3d replaces the `boxes` stored in {}",
                path.display()
            );
        }
        a.boxes3d
            .iter()
            .map(|s| parse_box3d(s))
            .collect::<Result<_>>()?
    } else if is_npz {
        vol.boxes.clone().ok_or_else(|| {
            Error::file(
                path,
                "no `boxes` array: the .npz needs boxes (N, 6) [x_min, y_min, z_min, x_max, y_max, z_max], or pass --box3d",
            )
        })?
    } else {
        return Err(Error::arg(
            "--box3d",
            format!(
                "{} is a 3D volume: at least one --box3d [x_min,y_min,z_min,x_max,y_max,z_max] is required",
                path.display()
            ),
        ));
    };
    if raw_boxes.is_empty() {
        return Err(Error::file(path, "`boxes` is empty: nothing to segment"));
    }
    let mut boxes = Vec::new();
    for (i, b) in raw_boxes.into_iter().enumerate() {
        let (b, warning) = check_box3d(i, b, vol.shape)?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        boxes.push(b);
    }
    let model = match load_any_model(&a.model)? {
        AnyModel::Lite(m) => m,
        AnyModel::Sam(_) => {
            return Err(Error::arg(
                "--checkpoint",
                format!(
                "3D volumes ({}) are segmented with LiteMedSAM; {} holds a SAM/MedSAM (ViT) model",
                path.display(),
                a.model.checkpoint.display()
            ),
            ))
        }
    };
    note_lite_volume_precision(a.precision);
    let (d, h, w) = vol.shape;
    let t0 = std::time::Instant::now();
    let mut slices = 0usize;
    let segs = segment_volume(
        &model,
        &vol.data,
        vol.shape,
        &boxes,
        a.precision,
        &mut |_, _| slices += 1,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    medsam::io::paths::create_output_dir(&a.seg_path, "--seg-path")?;
    let stem = stem_of(path);
    if let Some(series) = &dicom {
        write_dicom_outputs(a, series, &stem, format, &segs, boxes.len())?;
    } else {
        let nii = a.seg_path.join(format!("seg_{stem}.nii.gz"));
        refuse_input(a, &nii, "--seg-path")?;
        write_nifti_segs(&nii, path, vol.shape, &segs, vol.spacing)?;
        println!(
            "segmentation: {} ({d}×{h}×{w} D×H×W, labels 1..={})",
            show(&nii),
            boxes.len()
        );
    }
    if is_npz {
        let npz = a.seg_path.join(format!("seg_{stem}.npz"));
        refuse_input(a, &npz, "--seg-path")?;
        write_npz_segs(&npz, vol.shape, &segs)?;
        println!("segmentation: {} (key `segs`)", show(&npz));
    }
    for label in 1..=boxes.len() {
        let n = segs.iter().filter(|&&s| s as usize == label).count();
        println!("label {label}: {n} voxels");
    }
    println!("{} box(es), {slices} slice(s) in {secs:.2} s", boxes.len());
    Ok(())
}

/// Reads a DICOM series folder (printing the reader's warnings) as a uint8 volume.
fn read_dicom_volume(
    path: &Path,
    series: Option<&str>,
) -> Result<(Volume, medsam::io::dicom::DicomSeries)> {
    let s =
        medsam::io::dicom::read_series(path, series).map_err(|e| Error::Other(e.to_string()))?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    let [d, h, w] = s.volume.shape;
    println!(
        "DICOM series {} ({}, {d}×{h}×{w} D×H×W, spacing {:?} mm)",
        s.info.series_instance_uid, s.info.modality, s.geometry.spacing
    );
    medsam::io::volume::check_finite(path, &s.volume)?;
    Ok((u8_volume(path, &s.volume), s))
}

/// Writes the segmentation of a DICOM series as SEG and/or NIfTI with the series' geometry.
fn write_dicom_outputs(
    a: &InferArgs,
    series: &medsam::io::dicom::DicomSeries,
    stem: &str,
    format: OutputFormat,
    segs: &[u8],
    labels: usize,
) -> Result<()> {
    if a.label_names.len() > labels {
        return Err(Error::arg(
            "--label-name",
            format!(
                "{} names for {labels} label(s) (one per --box3d)",
                a.label_names.len()
            ),
        ));
    }
    let [d, h, w] = series.volume.shape;
    if matches!(format, OutputFormat::Seg | OutputFormat::Both) {
        let out = a.seg_path.join(format!("seg_{stem}.dcm"));
        let mut names = a.label_names.clone();
        names.extend((names.len() + 1..=labels).map(|k| format!("Segment {k}")));
        let opts = medsam::io::dicom::SegOptions {
            label_names: names,
            ..Default::default()
        };
        let sum = medsam::io::dicom::write_seg(&out, series, segs, &opts)
            .map_err(|e| Error::Other(e.to_string()))?;
        println!(
            "segmentation: {} (DICOM SEG, {} segment(s), {} frame(s), series {})",
            show(&out),
            sum.segments,
            sum.frames,
            sum.series_instance_uid
        );
    }
    if matches!(format, OutputFormat::Nifti | OutputFormat::Both) {
        let nii = a.seg_path.join(format!("seg_{stem}.nii.gz"));
        medsam::io::dicom::write_nifti_with_geometry(&nii, [d, h, w], segs, &series.geometry)
            .map_err(|e| Error::Other(e.to_string()))?;
        println!(
            "segmentation: {} ({d}×{h}×{w} D×H×W, series geometry, labels 1..={labels})",
            show(&nii)
        );
    }
    Ok(())
}

/// The image as 8-bit RGB for figures (min-max scaled).
fn display_rgb(img: &InputImage) -> Vec<u8> {
    let (lo, hi) = img
        .hwc
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let r = (hi - lo).max(1e-8);
    img.hwc
        .iter()
        .map(|&x| ((x - lo) / r * 255.0).round() as u8)
        .collect()
}
