//! 2-D images and video frames for the video predictor, as `sam2.utils.misc.load_video_frames`
//! reads a folder of frames: each image `convert("RGB").resize((S, S))` (Pillow bicubic), /255,
//! then ImageNet mean/std in float32. Frames are row-major `h × w × 3` uint8; a folder's frames
//! are ordered by their numeric names when all are integers (as the reference requires), else
//! by name.

use super::volume::pil_resize_bicubic;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};

/// Image file extensions read as frames.
pub const FRAME_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// Whether `path` names a 2-D image the predictor reads as a frame.
pub fn is_frame_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| FRAME_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The frame images of a folder in the reference's order; an error naming the folder when it
/// holds none.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_frame_path(p))
        .collect();
    if files.is_empty() {
        return Err(Error::file(
            dir,
            format!(
                "holds no frames ({} files); a video is a folder of PNG/JPEG frames",
                FRAME_EXTENSIONS.join("/")
            ),
        ));
    }
    let stem_num = |p: &PathBuf| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
    };
    if files.iter().all(|p| stem_num(p).is_some()) {
        files.sort_by_key(|p| (stem_num(p), p.clone()));
    } else {
        files.sort();
    }
    Ok(files)
}

/// RGB frames (all `h × w × 3`) → model input `[n, 3, size, size]`.
pub fn rgb_to_frames(frames: &[Vec<u8>], (h, w): (usize, usize), size: usize) -> Result<Tensor> {
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    let mut out = Vec::with_capacity(frames.len() * 3 * size * size);
    for (i, f) in frames.iter().enumerate() {
        if f.len() != h * w * 3 {
            return Err(Error::shape(
                "rgb_to_frames",
                format!("frame {i} has {} bytes, not {h}×{w}×3", f.len()),
            ));
        }
        for c in 0..3 {
            let plane: Vec<u8> = f.iter().skip(c).step_by(3).copied().collect();
            let r = pil_resize_bicubic(&plane, h, w, size, size);
            out.extend(
                r.iter()
                    .map(|&p| ((p as f64 / 255.0) as f32 - mean[c]) / std[c]),
            );
        }
    }
    Tensor::from_vec(out, &[frames.len(), 3, size, size])
}
