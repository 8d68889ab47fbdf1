//! One client's state: the image as a uint8 volume, the mask being edited, the prompts per slice,
//! an undo stack and a small cache of slice embeddings.
//!
//! Conventions: a volume is C-ordered `[n0, n1, n2]` (the client's array axes, whatever they mean
//! anatomically). A plane is `(axis, index)`; its 2D image has the two other axes in order as rows
//! and columns, so a box on it is `[x0, y0, x1, y1]` = `[col0, row0, col1, row1]` in half-open
//! pixel coordinates, exactly what `medsam infer --box` takes for that slice saved as an image.
//! Masks hold one byte per voxel: a label (0 = background).

use super::engine::{Embedding, Engine, Prompt};
use crate::error::{Error, Result};
use crate::pipeline::infer::lite::ImageU8;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Undo steps kept per session (older ones are dropped).
pub const MAX_UNDO: usize = 64;

/// `(axis, index)` of a 2D slice through the volume.
pub type Plane = (usize, usize);

/// A uint8 volume; `channels` is 3 only for a single RGB image (shape `[1, h, w]`).
#[derive(Clone, Debug)]
pub struct Volume {
    pub shape: [usize; 3],
    pub channels: usize,
    pub data: Vec<u8>,
    pub spacing: [f64; 3],
    /// The uploaded file's NIfTI geometry (a NIfTI file's header, a DICOM series' position and
    /// orientation), given to the downloaded mask as `medsam infer` gives it to its output;
    /// `None`: axis-aligned with `spacing`.
    pub geometry: Option<crate::io::nifti::NiftiGeometry>,
}

impl Volume {
    pub fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    /// Rows and columns of a plane's image.
    pub fn plane_dims(&self, axis: usize) -> (usize, usize) {
        let (r, c) = plane_axes(axis);
        (self.shape[r], self.shape[c])
    }

    /// Flat voxel index of pixel `(r, c)` of a plane.
    pub fn index(&self, (axis, i): Plane, r: usize, c: usize) -> usize {
        let [_, n1, n2] = self.shape;
        let (x, y, z) = match axis {
            0 => (i, r, c),
            1 => (r, i, c),
            _ => (r, c, i),
        };
        (x * n1 + y) * n2 + z
    }

    /// The plane's image.
    pub fn slice_image(&self, plane: Plane) -> Result<ImageU8> {
        let (h, w) = self.plane_dims(plane.0);
        if self.channels == 3 {
            return ImageU8::new(h, w, 3, self.data.clone());
        }
        let mut v = Vec::with_capacity(h * w);
        for r in 0..h {
            for c in 0..w {
                v.push(self.data[self.index(plane, r, c)]);
            }
        }
        ImageU8::new(h, w, 1, v)
    }
}

/// Row and column axes of a plane's image (the two other axes, in order).
pub fn plane_axes(axis: usize) -> (usize, usize) {
    match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    }
}

impl Volume {
    /// A 2D box on slice `lo[axis]` from half-open voxel bounds `lo..hi` (the extent along
    /// `axis` is ignored): the plane and `[x0, y0, x1, y1]` in its image, checked as
    /// `medsam infer --box` checks boxes.
    pub fn plane_box(&self, axis: usize, lo: [i64; 3], hi: [i64; 3]) -> Result<(Plane, [f32; 4])> {
        let shape = self.shape;
        if lo[axis] < 0 || lo[axis] >= shape[axis] as i64 {
            return Err(Error::arg(
                "box",
                format!(
                    "slice {} on axis {axis} lies outside the image {shape:?}",
                    lo[axis]
                ),
            ));
        }
        let (ra, ca) = plane_axes(axis);
        let raw = [lo[ca], lo[ra], hi[ca], hi[ra]].map(|v| v as f32);
        let checked = crate::pipeline::infer::sam::check_box(raw, shape[ra], shape[ca])?;
        Ok(((axis, lo[axis] as usize), checked.bbox))
    }
}

/// Values as uint8: integers in 0–255 as they are, anything else min-max scaled to 0–255 over the
/// whole volume (what `medsam infer` does with a NIfTI volume).
pub fn to_u8(values: impl Fn(usize) -> f64, n: usize) -> Vec<u8> {
    let mut integral = true;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..n {
        let x = values(i);
        if x.is_finite() {
            lo = lo.min(x);
            hi = hi.max(x);
        }
        integral &= x.fract() == 0.0 && (0.0..=255.0).contains(&x);
    }
    if integral {
        return (0..n).map(|i| values(i) as u8).collect();
    }
    let r = (hi - lo).max(1e-8);
    (0..n)
        .map(|i| {
            let x = values(i);
            let x = if x.is_finite() { x } else { lo };
            ((x - lo) / r * 255.0).round().clamp(0.0, 255.0) as u8
        })
        .collect()
}

/// A changed region `[[lo, hi]; 3]` (half-open, voxel indices) and its previous labels.
#[derive(Clone, Debug)]
pub struct Patch {
    pub bbox: [[usize; 2]; 3],
    pub before: Vec<u8>,
    pub prompt_plane: Option<(Plane, u8, Option<Prompt>)>,
}

/// A volume model's propagation of one object: progress and the mask tracked so far.
#[derive(Debug, Default)]
pub struct Propagation {
    /// The object's label and the slice it was prompted on.
    pub label: u8,
    pub key: usize,
    /// Frames tracked so far, and in all (both passes).
    pub frames: [usize; 2],
    /// `d·h·w` 0/1: every frame's mask as last reported (final once it has ended).
    pub live: Vec<u8>,
    /// `None` while it runs; then its success or error.
    pub outcome: Option<std::result::Result<(), String>>,
}

/// A grey volume as the stack of one axis' slices, for a volume model.
pub struct Stack {
    /// `d·h·w` uint8, slice after slice.
    pub voxels: Vec<u8>,
    /// `(d, h, w)`: slices along the axis, then the plane's rows and columns.
    pub dims: (usize, usize, usize),
    /// The session's [`Session::generation`] it was taken from.
    pub generation: u64,
}

/// One session.
pub struct Session {
    pub created: Instant,
    /// Last real action (drives the idle timeout).
    pub last_active: Instant,
    /// Last sign of life, heartbeats included (drives the liveness timeout).
    pub last_seen: Instant,
    pub volume: Option<Volume>,
    /// Label per voxel (nnInteractive: 0/1 for the one object being edited).
    pub labels: Vec<u8>,
    /// Prompts gathered per (plane, label), so clicks refine the box drawn on that slice.
    pub prompts: HashMap<(Plane, u8), Prompt>,
    pub undo: Vec<Patch>,
    pub last_plane: Option<Plane>,
    /// nnInteractive: the client's target-buffer type (how masks go back on the wire).
    pub target_dtype: Option<super::nnia::DType>,
    /// nnInteractive: a prompt added with `run_prediction = false`, run by `/predict`.
    pub pending: Option<(Plane, Prompt, bool)>,
    /// A volume model's propagation running in the background (the last one started).
    pub propagation: Option<Arc<Mutex<Propagation>>>,
    /// Counts the changes other requests make while a volume model's job runs unlocked (a new
    /// image, a reset, an undo, an initial segmentation), so that job's result is not written over
    /// them.
    pub generation: u64,
    /// Model jobs running on this session without holding its lock (a session with one is alive).
    pub jobs: usize,
    /// Whether the client sends heartbeats (claimed through `/claim`): then silence expires it too.
    pub heartbeats: bool,
    /// Slice embeddings computed (cache misses).
    pub encodes: u64,
    cache: Vec<(Plane, Embedding)>,
    cache_cap: usize,
}

impl Session {
    pub fn new(cache_cap: usize) -> Session {
        let now = Instant::now();
        Session {
            created: now,
            last_active: now,
            last_seen: now,
            volume: None,
            labels: Vec::new(),
            prompts: HashMap::new(),
            undo: Vec::new(),
            last_plane: None,
            target_dtype: None,
            pending: None,
            propagation: None,
            generation: 0,
            jobs: 0,
            heartbeats: false,
            encodes: 0,
            cache: Vec::new(),
            cache_cap: cache_cap.max(1),
        }
    }

    pub fn touch(&mut self) {
        self.last_active = Instant::now();
        self.last_seen = self.last_active;
    }

    /// Replaces the image; the mask, prompts, undo history and cache start afresh.
    pub fn set_volume(&mut self, v: Volume) {
        self.labels = vec![0; v.voxels()];
        self.volume = Some(v);
        self.generation += 1;
        self.reset();
        self.cache.clear();
    }

    /// Clears the mask, prompts and undo history (keeps the image and its embeddings).
    pub fn reset(&mut self) {
        self.generation += 1;
        self.labels.iter_mut().for_each(|l| *l = 0);
        self.prompts.clear();
        self.undo.clear();
        self.last_plane = None;
        self.pending = None;
    }

    /// Checks that an array of `shape` (`what`, named in the error) matches the image's.
    pub fn check_shape(&self, shape: &[usize], what: &str) -> Result<()> {
        let want = self.volume()?.shape;
        if shape != want {
            return Err(Error::arg(
                "shape",
                format!("{what} shape {shape:?} differs from the image's {want:?}"),
            ));
        }
        Ok(())
    }

    pub fn volume(&self) -> Result<&Volume> {
        self.volume.as_ref().ok_or_else(|| {
            Error::arg(
                "image",
                "no image set in this session: call set_image first",
            )
        })
    }

    /// The plane's embedding, computed under `compute` (one model run at a time) when not cached.
    pub fn embedding(
        &mut self,
        engine: &Engine,
        compute: &Mutex<()>,
        plane: Plane,
    ) -> Result<Embedding> {
        if let Some(i) = self.cache.iter().position(|(p, _)| *p == plane) {
            let hit = self.cache.remove(i);
            let e = hit.1.clone();
            self.cache.push(hit);
            return Ok(e);
        }
        let img = self.volume()?.slice_image(plane)?;
        let e = {
            let _g = compute.lock().unwrap_or_else(|p| p.into_inner());
            engine.encode(&img)?
        };
        self.encodes += 1;
        if self.cache.len() >= self.cache_cap {
            self.cache.remove(0);
        }
        self.cache.push((plane, e.clone()));
        Ok(e)
    }

    /// Runs `prompt` on `plane` and writes the mask as `label` into the labels (replacing that
    /// label's pixels on the plane; `subtract` clears the mask's pixels of that label instead).
    /// Returns the changed region, or `None` when nothing changed.
    pub fn segment_plane(
        &mut self,
        engine: &Engine,
        compute: &Mutex<()>,
        plane: Plane,
        label: u8,
        prompt: Prompt,
        subtract: bool,
    ) -> Result<Option<[[usize; 2]; 3]>> {
        let emb = self.embedding(engine, compute, plane)?;
        let mask = {
            let _g = compute.lock().unwrap_or_else(|p| p.into_inner());
            engine.decode(&emb, &prompt)?
        };
        let vol = self.volume()?;
        let (h, w) = vol.plane_dims(plane.0);
        let mut new = Vec::with_capacity(h * w);
        let mut old = Vec::with_capacity(h * w);
        for r in 0..h {
            for c in 0..w {
                let l = self.labels[vol.index(plane, r, c)];
                let m = mask[r * w + c];
                let n = match (subtract, m) {
                    (false, true) => label,
                    (false, false) if l == label => 0,
                    (true, true) if l == label => 0,
                    _ => l,
                };
                old.push(l);
                new.push(n);
            }
        }
        // A subtracting prompt removes pixels; it is not the object's prompt on this plane.
        let keep = (!subtract).then_some(prompt);
        let Some(bbox) = changed_bbox(&old, &new, h, w, plane) else {
            if let Some(p) = keep {
                self.prompts.insert((plane, label), p);
            }
            return Ok(None);
        };
        let before = self.read_region(bbox);
        let prev_prompt = match keep {
            Some(p) => self.prompts.insert((plane, label), p),
            None => self.prompts.get(&(plane, label)).cloned(),
        };
        let vol = self.volume.as_ref().expect("checked above");
        for r in 0..h {
            for c in 0..w {
                self.labels[vol.index(plane, r, c)] = new[r * w + c];
            }
        }
        self.undo.push(Patch {
            bbox,
            before,
            prompt_plane: Some((plane, label, prev_prompt)),
        });
        if self.undo.len() > MAX_UNDO {
            self.undo.remove(0);
        }
        self.last_plane = Some(plane);
        Ok(Some(bbox))
    }

    /// Reverts the last change; returns its region, or `None` when there is nothing to undo.
    pub fn undo(&mut self) -> Option<[[usize; 2]; 3]> {
        let p = self.undo.pop()?;
        self.generation += 1;
        self.write_region(p.bbox, &p.before);
        if let Some((plane, label, prompt)) = p.prompt_plane {
            match prompt {
                Some(pr) => self.prompts.insert((plane, label), pr),
                None => self.prompts.remove(&(plane, label)),
            };
        }
        Some(p.bbox)
    }

    /// The labels inside a region, C-ordered.
    pub fn read_region(&self, b: [[usize; 2]; 3]) -> Vec<u8> {
        let Some(v) = &self.volume else {
            return Vec::new();
        };
        let [_, n1, n2] = v.shape;
        let mut out = Vec::new();
        for x in b[0][0]..b[0][1] {
            for y in b[1][0]..b[1][1] {
                let s = (x * n1 + y) * n2;
                out.extend_from_slice(&self.labels[s + b[2][0]..s + b[2][1]]);
            }
        }
        out
    }

    fn write_region(&mut self, b: [[usize; 2]; 3], data: &[u8]) {
        let Some(v) = &self.volume else {
            return;
        };
        let [_, n1, n2] = v.shape;
        let len = b[2][1] - b[2][0];
        let mut k = 0;
        for x in b[0][0]..b[0][1] {
            for y in b[1][0]..b[1][1] {
                let s = (x * n1 + y) * n2 + b[2][0];
                self.labels[s..s + len].copy_from_slice(&data[k..k + len]);
                k += len;
            }
        }
    }

    /// A click at voxel `c` added to `label`'s prompt on the plane last prompted when it lies on
    /// it (else on the axial slice through it): the plane and the whole prompt to run.
    pub fn point_prompt(&self, c: [i64; 3], positive: bool, label: u8) -> Result<(Plane, Prompt)> {
        let shape = self.volume()?.shape;
        if (0..3).any(|d| c[d] < 0 || c[d] >= shape[d] as i64) {
            return Err(Error::arg(
                "point",
                format!("{c:?} lies outside the image {shape:?}"),
            ));
        }
        let c = c.map(|v| v as usize);
        let plane = match self.last_plane {
            Some((a, i)) if c[a] == i => (a, i),
            _ => (0, c[0]),
        };
        let (ra, ca) = plane_axes(plane.0);
        let mut prompt = self
            .prompts
            .get(&(plane, label))
            .cloned()
            .unwrap_or_default();
        prompt.points.push((c[ca] as f32, c[ra] as f32, positive));
        Ok((plane, prompt))
    }

    /// Makes `label` cover exactly the voxels of a whole-volume 0/1 `mask` (other labels keep
    /// the rest), as one undo step; returns the region that changed.
    pub fn set_label_mask(&mut self, label: u8, mask: &[u8]) -> Option<[[usize; 2]; 3]> {
        let new = self.labels_with_mask(label, mask, false);
        self.commit_labels(new, None)
    }

    /// The labels after writing a whole-volume 0/1 `mask` as `label`: the mask's voxels become
    /// `label` and the label's others 0 or, with `subtract`, the mask's voxels of `label` become
    /// 0 (per voxel what [`Session::segment_plane`] does on a plane).
    fn labels_with_mask(&self, label: u8, mask: &[u8], subtract: bool) -> Vec<u8> {
        self.labels
            .iter()
            .zip(mask)
            .map(|(&l, &m)| match (subtract, m > 0, l == label) {
                (false, true, _) => label,
                (false, false, true) | (true, true, true) => 0,
                _ => l,
            })
            .collect()
    }

    /// Replaces the labels by `new` as one undo step (restoring `prompt_plane` on undo); returns
    /// the region that changed, or `None` (and no undo step) when nothing did.
    fn commit_labels(
        &mut self,
        new: Vec<u8>,
        prompt_plane: Option<(Plane, u8, Option<Prompt>)>,
    ) -> Option<[[usize; 2]; 3]> {
        let v = self.volume.as_ref()?;
        let [n0, n1, n2] = v.shape;
        let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
        for (i, _) in new
            .iter()
            .zip(&self.labels)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
        {
            let at = [i / (n1 * n2), (i / n2) % n1, i % n2];
            for k in 0..3 {
                lo[k] = lo[k].min(at[k]);
                hi[k] = hi[k].max(at[k] + 1);
            }
        }
        if lo[0] == usize::MAX {
            return None;
        }
        let bbox = [[lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]];
        debug_assert!(hi[0] <= n0);
        let before = self.read_region(bbox);
        self.labels = new;
        self.undo.push(Patch {
            bbox,
            before,
            prompt_plane,
        });
        if self.undo.len() > MAX_UNDO {
            self.undo.remove(0);
        }
        Some(bbox)
    }

    /// A volume model's input for a prompt on a plane of `axis`: the grey volume as the stack of
    /// that axis' slices (the volume itself for axis 0).
    pub fn stack_along(&self, axis: usize) -> Result<Stack> {
        let v = self.volume()?;
        if v.channels != 1 {
            return Err(Error::arg(
                "image",
                "MedSAM2 segments grey volumes; this image is RGB",
            ));
        }
        let (h, w) = v.plane_dims(axis);
        let d = v.shape[axis];
        let stack = if axis == 0 {
            v.data.clone()
        } else {
            let mut s = Vec::with_capacity(v.voxels());
            for i in 0..d {
                s.extend_from_slice(&v.slice_image((axis, i))?.data);
            }
            s
        };
        Ok(Stack {
            voxels: stack,
            dims: (d, h, w),
            generation: self.generation,
        })
    }

    /// Writes a volume model's answer to `prompt` on `plane` (`mask`: 0/1 in the
    /// [`Session::stack_along`] order of the plane's axis) as `label` over the whole volume, as
    /// one undo step: the mask replaces the label or, with `subtract`, clears it. The prompt is
    /// kept as the object's prompt on that plane (so clicks there refine it) unless it subtracts.
    /// Returns the changed region, or `None` when nothing changed.
    pub fn apply_propagation(
        &mut self,
        plane: Plane,
        label: u8,
        prompt: Prompt,
        mask: &[u8],
        subtract: bool,
    ) -> Result<Option<[[usize; 2]; 3]>> {
        let v = self.volume()?;
        if mask.len() != v.voxels() {
            return Err(Error::arg(
                "mask",
                format!("{} voxels for a volume of {}", mask.len(), v.voxels()),
            ));
        }
        let mask = if plane.0 == 0 {
            std::borrow::Cow::Borrowed(mask)
        } else {
            let (h, w) = v.plane_dims(plane.0);
            let mut m = vec![0u8; mask.len()];
            for (k, &x) in mask.iter().enumerate() {
                let (i, r, c) = (k / (h * w), (k / w) % h, k % w);
                m[v.index((plane.0, i), r, c)] = x;
            }
            std::borrow::Cow::Owned(m)
        };
        let new = self.labels_with_mask(label, &mask, subtract);
        let keep = (!subtract).then_some(prompt);
        let prev = match &keep {
            Some(p) => self.prompts.insert((plane, label), p.clone()),
            None => self.prompts.get(&(plane, label)).cloned(),
        };
        let changed = self.commit_labels(new, Some((plane, label, prev)));
        self.last_plane = Some(plane);
        Ok(changed)
    }

    /// Replaces all labels (an initial segmentation); returns the region that changed.
    pub fn set_labels(&mut self, labels: Vec<u8>) -> Option<[[usize; 2]; 3]> {
        let v = self.volume.as_ref()?;
        let [n0, n1, n2] = v.shape;
        let full = [[0, n0], [0, n1], [0, n2]];
        let before = std::mem::replace(&mut self.labels, labels);
        self.generation += 1;
        self.prompts.clear();
        self.undo.push(Patch {
            bbox: full,
            before,
            prompt_plane: None,
        });
        Some(full)
    }
}

/// The bounding box (in volume coordinates) of the pixels where a plane changed.
fn changed_bbox(
    old: &[u8],
    new: &[u8],
    h: usize,
    w: usize,
    plane: Plane,
) -> Option<[[usize; 2]; 3]> {
    let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
    for r in 0..h {
        for c in 0..w {
            if old[r * w + c] != new[r * w + c] {
                r0 = r0.min(r);
                r1 = r1.max(r + 1);
                c0 = c0.min(c);
                c1 = c1.max(c + 1);
            }
        }
    }
    if r0 == usize::MAX {
        return None;
    }
    let (axis, i) = plane;
    let s = [i, i + 1];
    Some(match axis {
        0 => [s, [r0, r1], [c0, c1]],
        1 => [[r0, r1], s, [c0, c1]],
        _ => [[r0, r1], [c0, c1], s],
    })
}
