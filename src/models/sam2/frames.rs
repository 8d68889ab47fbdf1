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

/// How a uint8 frame becomes model input (/255, then ImageNet mean/std per channel): the two
/// readers of the reference round differently, and each is kept bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalise {
    /// `medsam2_infer_3D_CT.py`: NumPy/torch float64 arithmetic, then f32.
    Float64,
    /// `load_video_frames`: /255 in float64 to f32, then mean/std in float32.
    Float32,
}

impl Normalise {
    /// The 256 model-input values of each channel.
    fn tables(self) -> [[f32; 256]; 3] {
        let mut t = [[0.0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (p, v) in row.iter_mut().enumerate() {
                *v = match self {
                    Normalise::Float64 => {
                        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
                        ((p as f64 / 255.0 - mean[c]) / std[c]) as f32
                    }
                    Normalise::Float32 => {
                        let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
                        ((p as f64 / 255.0) as f32 - mean[c]) / std[c]
                    }
                };
            }
        }
        t
    }
}

/// A stack of frames already resized to the model size but kept as uint8, normalised one frame
/// at a time when the image encoder reads it: a quarter of the memory of the whole normalised
/// stack, a twelfth for grey slices (whose three bands are equal and stored once).
#[derive(Clone)]
pub struct Uint8Frames {
    /// `n × planes × size × size`
    data: Vec<u8>,
    n: usize,
    /// 1 (grey, read as all three bands) or 3
    planes: usize,
    size: usize,
    normalise: Normalise,
}

impl Uint8Frames {
    /// Grey uint8 slices `(d, h, w)` as MedSAM2's 3D recipe reads them: each
    /// `convert("RGB").resize((size, size))`, normalised in float64.
    pub fn from_volume(vol: &[u8], (d, h, w): (usize, usize, usize), size: usize) -> Result<Self> {
        if vol.len() != d * h * w {
            return Err(Error::shape(
                "volume frames",
                format!("{} voxels for a {d}×{h}×{w} volume", vol.len()),
            ));
        }
        let mut data = Vec::with_capacity(d * size * size);
        for z in 0..d {
            let slice = &vol[z * h * w..(z + 1) * h * w];
            data.extend(pil_resize_bicubic(slice, h, w, size, size));
        }
        Ok(Uint8Frames {
            data,
            n: d,
            planes: 1,
            size,
            normalise: Normalise::Float64,
        })
    }

    /// RGB frames (all `h × w × 3`) as `load_video_frames` reads them: each band resized to
    /// `size²`, normalised in float32.
    pub fn from_rgb(frames: &[Vec<u8>], (h, w): (usize, usize), size: usize) -> Result<Self> {
        let mut data = Vec::with_capacity(frames.len() * 3 * size * size);
        for (i, f) in frames.iter().enumerate() {
            if f.len() != h * w * 3 {
                return Err(Error::shape(
                    "rgb_to_frames",
                    format!("frame {i} has {} bytes, not {h}×{w}×3", f.len()),
                ));
            }
            for c in 0..3 {
                let plane: Vec<u8> = f.iter().skip(c).step_by(3).copied().collect();
                data.extend(pil_resize_bicubic(&plane, h, w, size, size));
            }
        }
        Ok(Uint8Frames {
            data,
            n: frames.len(),
            planes: 3,
            size,
            normalise: Normalise::Float32,
        })
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The model input size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Frames `range` normalised into `out` (`3 · size²` values per frame).
    fn normalise_into(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let tables = self.normalise.tables();
        let hw = self.size * self.size;
        for i in range {
            let frame = &self.data[i * self.planes * hw..(i + 1) * self.planes * hw];
            for (c, table) in tables.iter().enumerate() {
                let plane = &frame[(c % self.planes) * hw..(c % self.planes + 1) * hw];
                out.extend(plane.iter().map(|&p| table[p as usize]));
            }
        }
    }

    /// Frame `i` as model input `[1, 3, size, size]` (a CPU tensor).
    pub fn frame(&self, i: usize) -> Result<Tensor> {
        if i >= self.n {
            return Err(Error::arg(
                "frame_idx",
                format!("{i} is outside the {} frames", self.n),
            ));
        }
        let mut out = Vec::with_capacity(3 * self.size * self.size);
        self.normalise_into(i..i + 1, &mut out);
        Tensor::from_vec(out, &[1, 3, self.size, self.size])
    }

    /// Every frame as model input `[n, 3, size, size]` (a CPU tensor).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let mut out = Vec::with_capacity(self.n * 3 * self.size * self.size);
        self.normalise_into(0..self.n, &mut out);
        Tensor::from_vec(out, &[self.n, 3, self.size, self.size])
    }
}

/// RGB frames (all `h × w × 3`) → model input `[n, 3, size, size]`.
pub fn rgb_to_frames(frames: &[Vec<u8>], (h, w): (usize, usize), size: usize) -> Result<Tensor> {
    Uint8Frames::from_rgb(frames, (h, w), size)?.to_tensor()
}
