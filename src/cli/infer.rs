//! `medsam infer`: MedSAM_Inference.py on an image and one or more boxes.

use super::common::{load_model, show, ModelArgs};
use medsam::infer::{check_box, read_input_image, InferPrecision, Predictor};
use medsam::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// Input image: PNG/JPEG/BMP/TIFF (grey or RGB) or .npy (H×W×3 in [0, 1]).
    #[arg(short = 'i', long = "data-path")]
    pub data_path: PathBuf,
    /// Output directory.
    #[arg(short = 'o', long = "seg-path", default_value = "assets/")]
    pub seg_path: PathBuf,
    /// Box "[x0,y0,x1,y1]" in original-image pixels; repeat for several boxes.
    #[arg(long = "box", required = true)]
    pub boxes: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Also write the low-res mask logits (float32 [n_boxes, 1, 4g, 4g]) to this .npy.
    #[arg(long)]
    pub logits: Option<PathBuf>,
    /// Image-encoder precision.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: InferPrecision,
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

pub fn run(a: &InferArgs) -> Result<()> {
    let img = read_input_image(&a.data_path)?;
    let mut boxes = Vec::new();
    for s in &a.boxes {
        let checked = check_box(parse_box(s)?, img.h, img.w)?;
        if let Some(w) = &checked.warning {
            eprintln!("warning: {w}");
        }
        boxes.push(checked.bbox);
    }
    let model = load_model(&a.model)?;
    let t0 = std::time::Instant::now();
    let predictor = Predictor::new(&model, &img, a.precision)?;
    let mut union = vec![false; img.h * img.w];
    let mut logits = Vec::new();
    for b in &boxes {
        let p = predictor.predict_box(*b)?;
        union.iter_mut().zip(&p.mask).for_each(|(u, &m)| *u |= m);
        logits.push(p.low_res_logits);
    }
    let secs = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.seg_path).map_err(|e| Error::io(&a.seg_path, e))?;
    let stem = a
        .data_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let seg = a.seg_path.join(format!("seg_{stem}.png"));
    medsam::viz::save_mask_png(&seg, &union, img.h, img.w)
        .map_err(|e| Error::Other(e.to_string()))?;
    let rgb = display_rgb(&img);
    let ub: Vec<[usize; 4]> = boxes.iter().map(|b| b.map(|v| v as usize)).collect();
    let overlay = a.seg_path.join(format!("overlay_{stem}.png"));
    medsam::viz::save_overlay_png(&overlay, &rgb, img.h, img.w, &union, &ub)
        .map_err(|e| Error::Other(e.to_string()))?;
    println!("segmentation: {}", show(&seg));
    println!("overlay:      {}", show(&overlay));
    if let Some(path) = &a.logits {
        let parts: Vec<medsam::Tensor> = logits;
        let all = medsam::Tensor::cat(&parts, 0)?;
        medsam::npy::write_npy_f32(path, all.shape(), &all.to_vec()?)
            .map_err(|e| Error::file(path, e.to_string()))?;
        println!("logits:       {} {:?}", show(path), all.shape());
    }
    println!("{} box(es) in {secs:.2} s (encode + decode)", boxes.len());
    Ok(())
}

/// The image as 8-bit RGB for figures (min-max scaled).
fn display_rgb(img: &medsam::infer::InputImage) -> Vec<u8> {
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
