//! `medsam infer --model-type medsam2`: MedSAM2's 3D recipe (`medsam2_infer_3D_CT.py`) on a
//! NIfTI or challenge `.npz` volume with one `--box3d` per object.

use super::common::{parse_device, show};
use super::infer::{parse_box3d, stem_of, InferArgs};
use medsam::io::volume::{read_npz_volume, write_nifti_segs, write_npz_segs};
use medsam::models::sam2::volume::{
    segment_volume_medsam2, to_uint8, volume_to_frames, Intensity, VolumePrompt,
};
use medsam::models::sam2::{licence_note, load_sam2, Prompt, VideoPredictor};
use medsam::pipeline::infer::lite::check_box3d;
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

/// Raw voxels `(d, h, w)` and spacing of a NIfTI or `.npz` volume.
fn read_raw(path: &Path) -> Result<RawVolume> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
    {
        let v = read_npz_volume(path)?;
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
        return Err(Error::file(path, "no such file"));
    }
    if !a.boxes.is_empty() {
        return Err(Error::arg(
            "--box",
            "MedSAM2 segments volumes: give --box3d [x_min,y_min,z_min,x_max,y_max,z_max]",
        ));
    }
    let m = &a.medsam2;
    let (shape, raw, spacing, file_boxes) = read_raw(path)?;
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
            Some(k) if (b[2]..b[5]).contains(&(k as i64)) => k,
            Some(k) => {
                return Err(Error::arg(
                    "--key-slice",
                    format!("{k} is outside box {i}'s z range {}..{}", b[2], b[5]),
                ))
            }
            None => ((b[2] + b[5] - 1) / 2) as usize,
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
    let device = parse_device(&a.model.device)?;
    let (model, _report) = load_sam2(
        &a.model.checkpoint,
        a.model.model_config.as_deref(),
        m.image_size,
        device,
    )?;
    if let Some(note) = licence_note(&a.model.checkpoint) {
        println!("licence: {note}");
    }
    let size = model.config.image_size;
    let vol = to_uint8(&raw, intensity);
    let frames = volume_to_frames(&vol, shape, size)?;
    let mut predictor = VideoPredictor::new(model);
    predictor.fill_hole_area = if m.no_fill_holes { 0 } else { 8 };
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
    std::fs::create_dir_all(&a.seg_path).map_err(|e| Error::io(&a.seg_path, e))?;
    let stem = stem_of(path);
    let nii = a.seg_path.join(format!("seg_{stem}.nii.gz"));
    write_nifti_segs(&nii, path, shape, &segs, spacing)?;
    println!(
        "segmentation: {} ({d}×{h}×{w} D×H×W, labels 1..={})",
        show(&nii),
        objects.len()
    );
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
    {
        let npz = a.seg_path.join(format!("seg_{stem}.npz"));
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
        "{} object(s), {steps} slice step(s) in {secs:.2} s",
        objects.len()
    );
    Ok(())
}
