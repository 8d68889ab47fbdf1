//! MedSAM's training data: `DIR/imgs/*.npy` (H×W×3 in [0, 1]) paired by file name with
//! `DIR/gts/*.npy` (uint8 label maps), found recursively like MedSAM's glob. A sample picks one
//! label present in the slice, its binary mask is the target, and its box is the mask's bounds
//! pushed outward by a random 0..=bbox_shift pixels per side, clamped to the image.

use crate::error::{Error, Result};
use crate::io::npy;
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// One (image, label map) pair on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyPair {
    pub image: PathBuf,
    pub gt: PathBuf,
}

/// Files with extension `.npy` under `dir`, recursively, sorted.
fn npy_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for e in entries {
            let p = e.map_err(|e| Error::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "npy") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The pairs of `root/gts/**.npy` whose image `root/imgs/<same name>` exists (MedSAM's rule).
pub fn list_pairs(root: &Path) -> Result<Vec<NpyPair>> {
    let (imgs, gts) = (root.join("imgs"), root.join("gts"));
    for d in [&imgs, &gts] {
        if !d.is_dir() {
            return Err(Error::file(
                d,
                "not a directory (expected the npy layout DIR/imgs, DIR/gts)",
            ));
        }
    }
    let pairs: Vec<NpyPair> = npy_files(&gts)?
        .into_iter()
        .filter_map(|gt| {
            let image = imgs.join(gt.file_name()?);
            image.is_file().then_some(NpyPair { image, gt })
        })
        .collect();
    if pairs.is_empty() {
        return Err(Error::file(
            root,
            "no image/label pairs found under imgs/ and gts/",
        ));
    }
    Ok(pairs)
}

/// An image as CHW f32 in [0, 1].
pub struct Image {
    pub h: usize,
    pub w: usize,
    pub chw: Vec<f32>,
}

/// Reads an `H×W×3` image npy (f64, f32 or uint8; uint8 is scaled by 1/255).
pub fn read_image(path: &Path) -> Result<Image> {
    let a = npy::read_npy(path)?;
    if a.shape.len() != 3 || a.shape[2] != 3 {
        return Err(Error::file(
            path,
            format!("image: expected shape (H, W, 3), found {:?}", a.shape),
        ));
    }
    let (h, w) = (a.shape[0], a.shape[1]);
    let scale = if a.is_u8() { 1.0 / 255.0 } else { 1.0 };
    let hwc = a.to_f32();
    let mut chw = vec![0.0f32; 3 * h * w];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = px[c] * scale;
        }
    }
    Ok(Image { h, w, chw })
}

/// Reads an `H×W` uint8 label map.
pub fn read_labels(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let a = npy::read_npy(path)?;
    if a.shape.len() != 2 {
        return Err(Error::file(
            path,
            format!("label map: expected shape (H, W), found {:?}", a.shape),
        ));
    }
    let labels = a.to_u8().map_err(|e| Error::file(path, e))?;
    Ok((a.shape[0], a.shape[1], labels))
}

/// Sorted distinct nonzero labels.
pub fn label_ids(labels: &[u8]) -> Vec<u8> {
    let mut seen = [false; 256];
    for &l in labels {
        seen[l as usize] = true;
    }
    (1..256).filter(|&i| seen[i]).map(|i| i as u8).collect()
}

/// Inclusive bounds `[x0, y0, x1, y1]` of the nonzero pixels.
pub fn mask_bounds(mask: &[bool], w: usize) -> Option<[usize; 4]> {
    let mut b: Option<[usize; 4]> = None;
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = (i % w, i / w);
        b = Some(match b {
            None => [x, y, x, y],
            Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
        });
    }
    b
}

/// One training sample.
pub struct Sample {
    pub image: Image,
    /// Binary target, `h·w`, 0/1.
    pub mask: Vec<f32>,
    pub bbox: [f32; 4],
    pub label: u8,
    pub name: String,
}

/// A dataset over the npy layout.
#[derive(Clone)]
pub struct NpyDataset {
    pub pairs: Vec<NpyPair>,
    pub bbox_shift: usize,
}

impl NpyDataset {
    pub fn open(root: &Path, bbox_shift: usize) -> Result<Self> {
        Ok(NpyDataset {
            pairs: list_pairs(root)?,
            bbox_shift,
        })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Sample `index`, with its randomness drawn from `rng`.
    pub fn get(&self, index: usize, rng: &mut Rng) -> Result<Sample> {
        let pair = &self.pairs[index];
        let image = read_image(&pair.image)?;
        let (h, w, labels) = read_labels(&pair.gt)?;
        if (h, w) != (image.h, image.w) {
            return Err(Error::file(
                &pair.gt,
                format!(
                    "label map is {h}×{w} but its image is {}×{}",
                    image.h, image.w
                ),
            ));
        }
        let ids = label_ids(&labels);
        if ids.is_empty() {
            return Err(Error::file(
                &pair.gt,
                "label map is empty (no nonzero label to train on)",
            ));
        }
        let label = ids[rng.int_inclusive(ids.len() - 1)];
        let mask: Vec<bool> = labels.iter().map(|&l| l == label).collect();
        let [x0, y0, x1, y1] = mask_bounds(&mask, w).expect("label present");
        let s = self.bbox_shift;
        let x0 = x0.saturating_sub(rng.int_inclusive(s));
        let x1 = (x1 + rng.int_inclusive(s)).min(w);
        let y0 = y0.saturating_sub(rng.int_inclusive(s));
        let y1 = (y1 + rng.int_inclusive(s)).min(h);
        let name = pair
            .gt
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Sample {
            image,
            mask: mask.iter().map(|&m| m as u8 as f32).collect(),
            bbox: [x0 as f32, y0 as f32, x1 as f32, y1 as f32],
            label,
            name,
        })
    }
}

/// A batch ready for the model.
pub struct Batch {
    /// `[B, 3, H, W]`
    pub images: Tensor,
    /// `[B, 1, H, W]`, 0/1
    pub masks: Tensor,
    pub boxes: Vec<[f32; 4]>,
    pub names: Vec<String>,
}

fn collate(samples: Vec<Sample>) -> Result<Batch> {
    let (h, w) = (samples[0].image.h, samples[0].image.w);
    if let Some(s) = samples.iter().find(|s| (s.image.h, s.image.w) != (h, w)) {
        return Err(Error::shape(
            "batch",
            format!(
                "{} is {}×{}, the batch is {h}×{w}",
                s.name, s.image.h, s.image.w
            ),
        ));
    }
    let b = samples.len();
    let mut images = Vec::with_capacity(b * 3 * h * w);
    let mut masks = Vec::with_capacity(b * h * w);
    for s in &samples {
        images.extend_from_slice(&s.image.chw);
        masks.extend_from_slice(&s.mask);
    }
    Ok(Batch {
        images: Tensor::from_vec(images, &[b, 3, h, w])?,
        masks: Tensor::from_vec(masks, &[b, 1, h, w])?,
        boxes: samples.iter().map(|s| s.bbox).collect(),
        names: samples.into_iter().map(|s| s.name).collect(),
    })
}

/// The sample order of one epoch: a seeded shuffle, identical on every run and every rank.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    Rng::derive(seed, 0x5348_5546, epoch as u64).permutation(n)
}

/// Loads the batches of `order` on `num_workers` threads, prefetching a few ahead, and hands them
/// out in order. Each sample's randomness is derived from (seed, epoch, index).
pub fn load_batches(
    ds: &NpyDataset,
    order: Vec<usize>,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    num_workers: usize,
) -> impl Iterator<Item = Result<Batch>> {
    let chunks: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    let workers = num_workers.max(1);
    let (tx, rx) = mpsc::sync_channel::<(usize, Result<Batch>)>(workers * 2);
    let ds = ds.clone();
    let total = chunks.len();
    std::thread::spawn(move || {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(workers).build();
        let make = |i: usize, idx: &Vec<usize>| -> Result<Batch> {
            let samples = idx
                .iter()
                .map(|&j| ds.get(j, &mut Rng::derive(seed, epoch as u64 + 1, j as u64)))
                .collect::<Result<Vec<_>>>()?;
            let _ = i;
            collate(samples)
        };
        let Ok(pool) = pool else { return };
        // Process in windows of `workers` batches so at most a few are in memory at once.
        for (w, window) in chunks.chunks(workers).enumerate() {
            let results: Vec<(usize, Result<Batch>)> = pool.install(|| {
                use rayon::prelude::*;
                window
                    .par_iter()
                    .enumerate()
                    .map(|(k, idx)| (w * workers + k, make(w * workers + k, idx)))
                    .collect()
            });
            for r in results {
                if tx.send(r).is_err() {
                    return;
                }
            }
        }
    });
    let mut next = 0;
    std::iter::from_fn(move || {
        if next >= total {
            return None;
        }
        next += 1;
        rx.recv().ok().map(|(_, b)| b)
    })
}
