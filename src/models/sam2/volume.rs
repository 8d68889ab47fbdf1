//! MedSAM2's 3D recipe (`medsam2_infer_3D_CT.py`): intensities to uint8 (CT window or
//! percentile clip, then min-max to 0–255 and truncation as `np.uint8`), each slice grey → RGB
//! and resized to the model size with `PIL.Image.resize` (bicubic, Pillow's fixed-point 8-bit
//! resampler), /255, ImageNet mean/std; a box on the key slice; a forward pass, reset, the same
//! prompt and a reverse pass; the OR of both passes; the largest 26-connected component.
//! Volumes are `(z, y, x)` C order.

use super::frames::Uint8Frames;
use super::sam2_video_predictor::{Frames, Prompt, VideoPredictor};
use crate::error::{Error, Result};
use crate::io::image::{resize_u8_pil, PilFilter};
use crate::pipeline::preprocess::components::connected_components_3d;
use crate::tensor::Tensor;

/// How raw intensities become uint8.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Intensity {
    /// Values already integers in 0–255: kept.
    AsIs,
    /// CT window (level, width): clip to `[L − W/2, L + W/2]`, min-max to 0–255.
    Window { level: f64, width: f64 },
    /// Clip to the 0.5th–99.5th percentiles of the non-zero voxels, min-max to 0–255.
    Percentile,
}

/// Raw voxels → uint8 as the reference script does (`np.uint8` truncates).
pub fn to_uint8(data: &[f64], how: Intensity) -> Vec<u8> {
    let clipped: Vec<f64> = match how {
        Intensity::AsIs => return data.iter().map(|&x| x.clamp(0.0, 255.0) as u8).collect(),
        Intensity::Window { level, width } => {
            let (lo, hi) = (level - width / 2.0, level + width / 2.0);
            data.iter().map(|&x| x.clamp(lo, hi)).collect()
        }
        Intensity::Percentile => {
            let mut nz: Vec<f64> = data.iter().copied().filter(|&x| x != 0.0).collect();
            if nz.is_empty() {
                nz = data.to_vec();
            }
            nz.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                // numpy's default linear interpolation between order statistics
                let pos = p / 100.0 * (nz.len() - 1) as f64;
                let (i, f) = (pos.floor() as usize, pos.fract());
                let j = (i + 1).min(nz.len() - 1);
                nz[i] + (nz[j] - nz[i]) * f
            };
            let (lo, hi) = (pct(0.5), pct(99.5));
            data.iter().map(|&x| x.clamp(lo, hi)).collect()
        }
    };
    let (lo, hi) = clipped
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let r = hi - lo;
    clipped
        .iter()
        .map(|&x| {
            if r > 0.0 {
                ((x - lo) / r * 255.0) as u8
            } else {
                0
            }
        })
        .collect()
}

/// `Image.fromarray(slice).convert("RGB").resize((size, size))` for a grey uint8 `h × w` slice
/// (all three bands are equal, so one is computed).
pub fn pil_resize_bicubic(src: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    resize_u8_pil(src, (h, w, 1), (oh, ow), PilFilter::Bicubic)
}

/// uint8 volume `(d, h, w)` → model frames `[d, 3, size, size]`: resize, /255, ImageNet
/// normalisation (computed in f64 as the script's NumPy/torch float64 arrays, then f32).
/// [`Uint8Frames::from_volume`] holds the same frames in a twelfth of the memory.
pub fn volume_to_frames(vol: &[u8], shape: (usize, usize, usize), size: usize) -> Result<Tensor> {
    Uint8Frames::from_volume(vol, shape, size)?.to_tensor()
}

/// Keeps the largest 26-connected foreground component (`getLargestCC`).
pub fn largest_cc(mask: &mut [u8], shape: [usize; 3]) {
    let (labels, n) = connected_components_3d(mask, shape, 26);
    if n <= 1 {
        return;
    }
    let mut counts = vec![0usize; n + 1];
    for &l in &labels {
        counts[l as usize] += 1;
    }
    let best = (1..=n)
        .max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))
        .unwrap_or(1);
    for (m, &l) in mask.iter_mut().zip(&labels) {
        *m = u8::from(l as usize == best);
    }
}

/// One object's 3-D prompt: a box `[x0, y0, x1, y1]` in slice pixels on `key_slice`, plus
/// optional points there.
#[derive(Clone, Debug)]
pub struct VolumePrompt {
    pub key_slice: usize,
    pub prompt: Prompt,
}

/// Segments every object of a preprocessed volume (`frames` from [`volume_to_frames`], or
/// [`Uint8Frames::from_volume`] to hold them in a twelfth of the memory) with
/// MedSAM2's forward/reverse recipe; returns `(d, h, w)` labels (object `i` → `i + 1`, later
/// objects win overlaps). `on_slice(pass, frame)` reports progress.
pub fn segment_volume_medsam2(
    predictor: &VideoPredictor,
    frames: impl Into<Frames>,
    shape: (usize, usize, usize),
    objects: &[VolumePrompt],
    keep_largest_cc: bool,
    on_slice: &mut dyn FnMut(usize, usize),
) -> Result<Vec<u8>> {
    let mut report = |pass, t, _: &[u8]| on_slice(pass, t);
    segment_volume_medsam2_live(
        predictor,
        frames,
        shape,
        objects,
        keep_largest_cc,
        &mut report,
    )
}

/// [`segment_volume_medsam2`] that also shows each frame's mask as it is tracked:
/// `on_slice(pass, frame, mask)` gets the current object's `h·w` 0/1 mask of that frame so far
/// (the OR of the passes run; before the largest-component step), for live display.
pub fn segment_volume_medsam2_live(
    predictor: &VideoPredictor,
    frames: impl Into<Frames>,
    (d, h, w): (usize, usize, usize),
    objects: &[VolumePrompt],
    keep_largest_cc: bool,
    on_slice: &mut dyn FnMut(usize, usize, &[u8]),
) -> Result<Vec<u8>> {
    let frames = frames.into();
    if frames.len() != d {
        return Err(Error::shape(
            "segment_volume_medsam2",
            format!("{} frames for {d} slices", frames.len()),
        ));
    }
    let mut state = predictor.init_state(frames, h, w)?;
    let mut labels = vec![0u8; d * h * w];
    for (oi, obj) in objects.iter().enumerate() {
        if obj.key_slice >= d {
            return Err(Error::arg(
                "key slice",
                format!("{} is outside the {d} slices of the volume", obj.key_slice),
            ));
        }
        let mut seg = vec![0u8; d * h * w];
        for (pass, reverse) in [(0, false), (1, true)] {
            predictor.reset_state(&mut state);
            predictor.add_new_points_or_box(
                &mut state,
                obj.key_slice,
                1,
                &obj.prompt,
                true,
                true,
            )?;
            predictor.propagate_in_video(&mut state, None, None, reverse, &mut |t, m| {
                let v = m.select(0, 0)?.to_vec()?;
                for (dst, &x) in seg[t * h * w..(t + 1) * h * w].iter_mut().zip(&v) {
                    if x > 0.0 {
                        *dst = 1;
                    }
                }
                on_slice(pass, t, &seg[t * h * w..(t + 1) * h * w]);
                Ok(())
            })?;
        }
        predictor.reset_state(&mut state);
        if keep_largest_cc && seg.iter().any(|&s| s > 0) {
            largest_cc(&mut seg, [d, h, w]);
        }
        let label = u8::try_from(oi + 1)
            .map_err(|_| Error::arg("boxes", "at most 255 objects per volume"))?;
        for (l, &s) in labels.iter_mut().zip(&seg) {
            if s > 0 {
                *l = label;
            }
        }
    }
    Ok(labels)
}
