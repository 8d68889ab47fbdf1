//! `medsam infer --model-type medsam2`: MedSAM2's 3D recipe (`medsam2_infer_3D_CT.py`) on a
//! NIfTI or challenge `.npz` volume with one `--box3d` per object; a 2D challenge `.npz`, an
//! image or a folder of frames as a video, with `--box` (or the `.npz`'s `boxes`).

use super::common::{parse_device, show};
use super::infer::{
    is_npz_path, npz_2d_boxes, parse_box, parse_box3d, prompt_kind, refuse_input, stem_of,
    write_npz_2d, InferArgs,
};
use medsam::io::volume::{
    read_challenge_npz, read_npz_spacing, write_nifti_segs, write_npz_segs, ChallengeNpz,
    NpzImage2d, Volume,
};
use medsam::models::sam2::frames::{is_frame_path, list_frames, Uint8Frames};
use medsam::models::sam2::sam2_video_predictor::encoder_seconds_total;
use medsam::models::sam2::volume::{segment_volume_medsam2, to_uint8, Intensity, VolumePrompt};
use medsam::models::sam2::{licence_note, load_sam2, Prompt, VideoPredictor};
use medsam::pipeline::infer::challenge2d::segment_image_medsam2;
use medsam::pipeline::infer::lite::{check_box3d, ImageU8};
use medsam::pipeline::infer::sam::{check_box, read_input_image};
use medsam::{Error, Result};
use std::path::Path;

#[derive(clap::Args, Debug, Default)]
pub struct Sam2Args {
    /// MedSAM2: slice carrying the box prompt (default: the middle of the box's z range).
    #[arg(long = "key-slice")]
    pub key_slice: Option<usize>,
    /// MedSAM2: CT window "level,width" (e.g. "40,400"); otherwise values already in 0–255 are
    /// kept and others are clipped to their 0.5–99.5th percentiles.
    #[arg(long = "window")]
    pub window: Option<String>,
    /// MedSAM2: extra points on the key slice, "x,y,label;x,y,label" (label 1 fg, 0 bg).
    #[arg(long = "points")]
    pub points: Option<String>,
    /// MedSAM2: model input size (default: 512 for MedSAM2 files, 1024 for SAM 2.1 files).
    #[arg(long = "image-size")]
    pub image_size: Option<usize>,
    /// MedSAM2: do not fill small holes in the low-res masks (the reference fills holes of
    /// up to 8 pixels on CUDA and skips it on CPU).
    #[arg(long = "no-fill-holes")]
    pub no_fill_holes: bool,
    /// MedSAM2: keep every connected component instead of the largest.
    #[arg(long = "all-components")]
    pub all_components: bool,
}

fn parse_window(s: &str) -> Result<Intensity> {
    let v: Vec<f64> = s
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::arg("--window", format!("'{s}' is not \"level,width\"")))?;
    match v.as_slice() {
        &[level, width] if width > 0.0 && level.is_finite() => {
            Ok(Intensity::Window { level, width })
        }
        _ => Err(Error::arg(
            "--window",
            format!("'{s}' needs a level and a positive width"),
        )),
    }
}

fn parse_points(s: &str) -> Result<(Vec<[f32; 2]>, Vec<i32>)> {
    let mut pts = Vec::new();
    let mut labels = Vec::new();
    for item in s.split(';').filter(|t| !t.trim().is_empty()) {
        let v: Vec<f32> = item
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|t| t.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::arg("--points", format!("'{item}' is not x,y,label")))?;
        let &[x, y, l] = v.as_slice() else {
            return Err(Error::arg("--points", format!("'{item}' needs x,y,label")));
        };
        if l != 0.0 && l != 1.0 {
            return Err(Error::arg(
                "--points",
                format!("label {l} in '{item}' is not 0 or 1"),
            ));
        }
        pts.push([x, y]);
        labels.push(l as i32);
    }
    Ok((pts, labels))
}

/// Shape `(d, h, w)`, raw voxels, spacing `(x, y, z)` and the file's boxes.
type RawVolume = (
    (usize, usize, usize),
    Vec<f64>,
    [f64; 3],
    Option<Vec<[i64; 6]>>,
);

/// Raw voxels `(d, h, w)` and spacing of a NIfTI volume at `path`, or of the `.npz` volume read
/// from it (`npz`).
fn read_raw(path: &Path, npz: Option<Volume>) -> Result<RawVolume> {
    if let Some(v) = npz {
        if let Some(sp) = read_npz_spacing(path)? {
            if let Some((i, x)) = sp
                .iter()
                .enumerate()
                .find(|(_, x)| !(x.is_finite() && **x > 0.0))
            {
                return Err(Error::file(
                    path,
                    format!("`spacing`[{i}] is {x}: voxel spacing must be positive"),
                ));
            }
        }
        let data = v.data.iter().map(|&x| x as f64).collect();
        return Ok((v.shape, data, v.spacing, v.boxes));
    }
    let geometry = medsam::io::nifti::read_nifti_geometry(path)?;
    if let Err((i, v)) = geometry.positive_spacing() {
        return Err(Error::file(
            path,
            format!("header field pixdim[{i}] is {v}: voxel spacing must be positive"),
        ));
    }
    let v = medsam::io::nifti::read_nifti(path)?;
    let [d, h, w] = v.shape;
    Ok(((d, h, w), v.data, v.spacing, None))
}

pub fn run(a: &InferArgs) -> Result<()> {
    let path = &a.data_path;
    if !path.exists() {
        return Err(Error::file(path, "no such file or folder"));
    }
    if path.is_dir() || is_frame_path(path) {
        return run_frames(a);
    }
    let npz_volume = if is_npz_path(path) {
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
            "MedSAM2 segments volumes with --box3d [x_min,y_min,z_min,x_max,y_max,z_max] (--box is for 2D images and video frames)",
        ));
    }
    let m = &a.medsam2;
    let (shape, raw, spacing, file_boxes) = read_raw(path, npz_volume)?;
    let (d, h, w) = shape;
    let raw_boxes: Vec<[i64; 6]> = if !a.boxes3d.is_empty() {
        a.boxes3d
            .iter()
            .map(|s| parse_box3d(s))
            .collect::<Result<_>>()?
    } else {
        file_boxes.ok_or_else(|| {
            Error::arg(
                "--box3d",
                "at least one --box3d [x_min,y_min,z_min,x_max,y_max,z_max] is required",
            )
        })?
    };
    let (points, labels) = match &m.points {
        Some(s) => parse_points(s)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut objects = Vec::new();
    for (i, b) in raw_boxes.into_iter().enumerate() {
        let (b, warning) = check_box3d(i, b, shape)?;
        if let Some(wn) = warning {
            eprintln!("warning: {wn}");
        }
        let key = match m.key_slice {
            Some(k) if (b[2]..=b[5]).contains(&(k as i64)) => k,
            Some(k) => {
                return Err(Error::arg(
                    "--key-slice",
                    format!("{k} is outside box {i}'s z range {}..={}", b[2], b[5]),
                ))
            }
            // The middle of the inclusive z range (as evaluation's MedSAM2 key slice).
            None => ((b[2] + b[5]) / 2) as usize,
        };
        objects.push(VolumePrompt {
            key_slice: key,
            prompt: Prompt {
                points: points.clone(),
                labels: labels.clone(),
                bbox: Some([b[0] as f32, b[1] as f32, b[3] as f32, b[4] as f32]),
            },
        });
    }
    let intensity = match &m.window {
        Some(s) => parse_window(s)?,
        None if raw
            .iter()
            .all(|&x| x.fract() == 0.0 && (0.0..=255.0).contains(&x)) =>
        {
            Intensity::AsIs
        }
        None => {
            eprintln!(
                "note: {} is not uint8; clipped to its 0.5–99.5th percentiles (give --window L,W for CT)",
                path.display()
            );
            Intensity::Percentile
        }
    };
    let vol = to_uint8(&raw, intensity);
    drop(raw);
    let predictor = load_predictor(a)?;
    let size = predictor.model.config.image_size;
    // uint8 at the model size, normalised slice by slice as the encoder reads them
    let frames = Uint8Frames::from_volume(&vol, shape, size)?;
    drop(vol);
    let t0 = std::time::Instant::now();
    let mut steps = 0usize;
    let segs = segment_volume_medsam2(
        &predictor,
        frames,
        shape,
        &objects,
        !m.all_components,
        &mut |_, _| steps += 1,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    medsam::io::paths::create_output_dir(&a.seg_path, "--seg-path")?;
    let stem = stem_of(path);
    let nii = a.seg_path.join(format!("seg_{stem}.nii.gz"));
    refuse_input(a, &nii, "--seg-path")?;
    write_nifti_segs(&nii, path, shape, &segs, spacing)?;
    println!(
        "segmentation: {} ({d}×{h}×{w} D×H×W, labels 1..={})",
        show(&nii),
        objects.len()
    );
    if is_npz_path(path) {
        let npz = a.seg_path.join(format!("seg_{stem}.npz"));
        refuse_input(a, &npz, "--seg-path")?;
        write_npz_segs(&npz, shape, &segs)?;
        println!("segmentation: {} (key `segs`)", show(&npz));
    }
    for label in 1..=objects.len() {
        let n = segs.iter().filter(|&&s| s as usize == label).count();
        println!(
            "label {label}: {n} voxels (key slice {})",
            objects[label - 1].key_slice
        );
    }
    println!(
        "{} object(s), {steps} slice step(s) in {secs:.2} s (image encoder {:.2} s)",
        objects.len(),
        encoder_seconds_total()
    );
    Ok(())
}

/// The model of `--checkpoint` in a predictor set up as the CLI runs it; prints the licence of
/// a recognised MedSAM2 file.
fn load_predictor(a: &InferArgs) -> Result<VideoPredictor> {
    let device = parse_device(&a.model.device)?;
    let (model, _report) = load_sam2(
        &a.model.checkpoint,
        a.model.model_config.as_deref(),
        a.medsam2.image_size,
        device,
    )?;
    if let Some(note) = licence_note(&a.model.checkpoint) {
        println!("licence: {note}");
    }
    // The CPU buffer cache keeps its default bound (512 MiB): a 64 MiB cap, once taken for a
    // lower peak, no longer lowered it (473-484 vs 493-506 MiB on a 64-slice volume) but made
    // each slice fault its buffers in again (755 k vs 150 k page faults, 6-10 % more time).
    let mut predictor = VideoPredictor::new(model);
    predictor.fill_hole_area = if a.medsam2.no_fill_holes { 0 } else { 8 };
    predictor.precision = a.precision;
    super::infer::note_precision(a.precision);
    Ok(predictor)
}

/// A 2D challenge `.npz` as a one-frame video: each box (with `--points`, if any) an object on
/// frame 0, labels 1..=N in box order → `seg_<name>.npz`.
fn run_npz_2d(a: &InferArgs, img: NpzImage2d) -> Result<()> {
    let m = &a.medsam2;
    if let Some(k) = m.key_slice.filter(|&k| k != 0) {
        return Err(Error::arg(
            "--key-slice",
            format!(
                "{} is a 2D image: its only frame is 0, not {k}",
                a.data_path.display()
            ),
        ));
    }
    let boxes = npz_2d_boxes(a, &img)?;
    let (points, labels) = match &m.points {
        Some(s) => parse_points(s)?,
        None => (Vec::new(), Vec::new()),
    };
    let prompts: Vec<Prompt> = boxes
        .iter()
        .map(|&b| Prompt {
            points: points.clone(),
            labels: labels.clone(),
            bbox: Some(b),
        })
        .collect();
    let (h, w) = (img.h, img.w);
    let image = ImageU8::new(h, w, img.channels, img.data)?;
    let predictor = load_predictor(a)?;
    let t0 = std::time::Instant::now();
    let segs = segment_image_medsam2(&predictor, &image, &prompts, !m.all_components)?;
    write_npz_2d(a, (h, w), &segs, prompts.len(), t0.elapsed().as_secs_f64())
}

/// One uint8 RGB image (`h × w × 3`) and its size.
fn read_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let img = read_input_image(path)?;
    let rgb = img
        .hwc
        .iter()
        .map(|&x| x.round().clamp(0.0, 255.0) as u8)
        .collect();
    Ok((rgb, img.h, img.w))
}

/// A 2-D image (one frame) or a folder of PNG/JPEG frames (a video), with `--box` (and
/// `--points`) on frame `--key-slice` (default 0): a PNG mask per frame and an overlay.
fn run_frames(a: &InferArgs) -> Result<()> {
    let path = &a.data_path;
    let m = &a.medsam2;
    let video = path.is_dir();
    if !a.boxes3d.is_empty() {
        return Err(Error::arg(
            "--box3d",
            format!(
                "{} is a 2D image or a folder of frames: give --box [x0,y0,x1,y1] (on --key-slice for a video)",
                path.display()
            ),
        ));
    }
    if a.boxes.is_empty() {
        return Err(Error::arg(
            "--box",
            "at least one --box [x0,y0,x1,y1] is required for a 2D image or video frames",
        ));
    }
    let files = if video {
        list_frames(path)?
    } else {
        vec![path.clone()]
    };
    let (first, h, w) = read_rgb(&files[0])?;
    let mut rgb = vec![first];
    for f in &files[1..] {
        let (img, fh, fw) = read_rgb(f)?;
        if (fh, fw) != (h, w) {
            return Err(Error::file(
                f,
                format!("is {fh}×{fw} (H×W) but the first frame is {h}×{w}; all frames must have one size"),
            ));
        }
        rgb.push(img);
    }
    let n = rgb.len();
    let key = m.key_slice.unwrap_or(0);
    if key >= n {
        return Err(Error::arg(
            "--key-slice",
            format!(
                "frame {key} is outside the {n} frame(s) of {}",
                path.display()
            ),
        ));
    }
    let (points, labels) = match &m.points {
        Some(s) => parse_points(s)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut objects = Vec::new();
    for s in &a.boxes {
        let checked = check_box(parse_box(s)?, h, w)?;
        if let Some(wn) = &checked.warning {
            eprintln!("warning: {wn}");
        }
        objects.push(VolumePrompt {
            key_slice: key,
            prompt: Prompt {
                points: points.clone(),
                labels: labels.clone(),
                bbox: Some(checked.bbox),
            },
        });
    }
    let predictor = load_predictor(a)?;
    let frames = Uint8Frames::from_rgb(&rgb, (h, w), predictor.model.config.image_size)?;
    let t0 = std::time::Instant::now();
    let segs = segment_volume_medsam2(
        &predictor,
        frames,
        (n, h, w),
        &objects,
        !m.all_components,
        &mut |_, _| {},
    )?;
    let secs = t0.elapsed().as_secs_f64();
    medsam::io::paths::create_output_dir(&a.seg_path, "--seg-path")?;
    let stem = stem_of(path);
    let boxes: Vec<[usize; 4]> = objects
        .iter()
        .filter_map(|o| o.prompt.bbox.map(|b| b.map(|v| v as usize)))
        .collect();
    let plane = |t: usize| &segs[t * h * w..(t + 1) * h * w];
    if video {
        let dir = a.seg_path.join(format!("seg_{stem}"));
        medsam::io::paths::create_output_dir(&dir, "--seg-path")?;
        for (t, f) in files.iter().enumerate() {
            let name = f.file_stem().map(|s| s.to_string_lossy().into_owned());
            let out = dir.join(format!("{}.png", name.unwrap_or_else(|| t.to_string())));
            refuse_input(a, &out, "--seg-path")?;
            medsam::viz::save_mask_png(&out, plane(t), h, w)?;
        }
        println!("segmentation: {} ({n} PNG masks)", show(&dir));
    } else {
        let out = a.seg_path.join(format!("seg_{stem}.png"));
        refuse_input(a, &out, "--seg-path")?;
        medsam::viz::save_mask_png(&out, plane(0), h, w)?;
        println!("segmentation: {}", show(&out));
    }
    let overlay = a.seg_path.join(format!("overlay_{stem}.png"));
    refuse_input(a, &overlay, "--seg-path")?;
    let picks = strip_frames(n, key);
    let (strip, strip_mask, strip_boxes) = frame_strip(&rgb, &segs, (h, w), &picks, key, &boxes);
    medsam::viz::save_overlay_png(
        &overlay,
        &strip,
        h,
        w * picks.len(),
        &strip_mask,
        &strip_boxes,
    )?;
    println!(
        "overlay:      {} (frames {picks:?}, box on frame {key})",
        show(&overlay)
    );
    let fg = (0..n).filter(|&t| plane(t).iter().any(|&v| v > 0)).count();
    println!(
        "{} object(s) on {n} frame(s) ({fg} with a mask) in {secs:.2} s",
        objects.len()
    );
    Ok(())
}

/// At most 8 frames, evenly spaced, always including the key frame.
fn strip_frames(n: usize, key: usize) -> Vec<usize> {
    let k = n.min(8);
    let mut picks: Vec<usize> = (0..k).map(|i| i * (n - 1) / (k - 1).max(1)).collect();
    if !picks.contains(&key) {
        let nearest = (0..picks.len())
            .min_by_key(|&i| picks[i].abs_diff(key))
            .unwrap_or(0);
        picks[nearest] = key;
    }
    picks.sort_unstable();
    picks.dedup();
    picks
}

/// Frames `picks` side by side (RGB, mask, and the boxes on the key frame).
fn frame_strip(
    rgb: &[Vec<u8>],
    segs: &[u8],
    (h, w): (usize, usize),
    picks: &[usize],
    key: usize,
    boxes: &[[usize; 4]],
) -> (Vec<u8>, Vec<u8>, Vec<[usize; 4]>) {
    let sw = w * picks.len();
    let mut img = vec![0u8; h * sw * 3];
    let mut mask = vec![0u8; h * sw];
    let mut out_boxes = Vec::new();
    for (i, &t) in picks.iter().enumerate() {
        for y in 0..h {
            let dst = (y * sw + i * w) * 3;
            img[dst..dst + w * 3].copy_from_slice(&rgb[t][y * w * 3..(y + 1) * w * 3]);
            let src = t * h * w + y * w;
            mask[y * sw + i * w..y * sw + (i + 1) * w].copy_from_slice(&segs[src..src + w]);
        }
        if t == key {
            out_boxes.extend(
                boxes
                    .iter()
                    .map(|b| [b[0] + i * w, b[1], b[2] + i * w, b[3]]),
            );
        }
    }
    (img, mask, out_boxes)
}
