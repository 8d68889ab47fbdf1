//! Segmentation metrics on binary 2-D masks: Dice (DSC), IoU, normalised
//! surface Dice (NSD), the fill-the-box baseline, and mergeable aggregation.
//!
//! # Mask layout
//! Masks are row-major `h × w` slices of [`MaskValue`] (`bool`, or `u8` where
//! any non-zero value is foreground). Every function checks the slice length
//! against `h * w` and reports the offending argument by name.
//!
//! # Empty-mask conventions (follow MedSAM's `utils/SurfaceDice.py`)
//! | case | DSC | IoU | NSD |
//! |---|---|---|---|
//! | both empty | NaN | NaN | NaN (`0/0`, as SurfaceDice.py) |
//! | exactly one empty | 0.0 | 0.0 | 0.0 |
//!
//! `compute_dice_coefficient` in SurfaceDice.py returns NaN when both masks
//! are empty; IoU is given the same convention. `compute_surface_dice_at_tolerance`
//! divides the in-tolerance surfel area by the total surfel area, which is
//! `0/0 = NaN` for two empty masks and `0/x = 0` when only one is empty
//! (its distances are all `+inf`).
//!
//! The aggregation helpers ([`MeanAcc`], [`MetricsAccumulator`]) **skip NaN**
//! values (they are counted separately in `nan_count`), i.e. means are
//! NaN-safe means over the defined values; a mean with no defined value is
//! reported as `null` in JSON.
//!
//! # NSD
//! [`normalized_surface_dice`] reproduces what MedSAM computes for 2-D images:
//! its evaluation code (`compute_metrics.py`, LiteMedSAM branch) calls the 3-D
//! `compute_surface_distances` of SurfaceDice.py on `np.expand_dims(mask, -1)`
//! with spacing `[1, 1, 1]` and tolerance 2. On such a one-slice volume the
//! 2×2×2 neighbour codes only take the 32 "planar" configurations (one z-side
//! holds the 2×2 pixel pattern, the other side is empty), so *every* corner
//! point touching the mask is a surfel (the slab's flat faces count), and
//! distances are plain 2-D Euclidean distances between the two sets of
//! corner points. [`NsdMode::MedSamSlab`] implements exactly that (z spacing
//! fixed to 1). [`NsdMode::Contour2d`] is the genuinely 2-D variant of the
//! DeepMind `surface-distance` library (2×2 kernel, codes 0 and 15 are not
//! surface, contour lengths instead of areas).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("mask `{field}` has {got} elements, expected {expected} (h={h}, w={w})")]
    MaskLength {
        field: &'static str,
        got: usize,
        expected: usize,
        h: usize,
        w: usize,
    },
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("json error on {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, MetricsError>;

crate::error::wrap_into_error!(MetricsError);

/// Element type of a binary mask.
pub trait MaskValue: Copy + Send + Sync {
    fn is_on(self) -> bool;
}
impl MaskValue for bool {
    #[inline]
    fn is_on(self) -> bool {
        self
    }
}
impl MaskValue for u8 {
    #[inline]
    fn is_on(self) -> bool {
        self != 0
    }
}

pub(crate) fn check_mask<T>(field: &'static str, m: &[T], h: usize, w: usize) -> Result<()> {
    let expected = h.checked_mul(w).ok_or(MetricsError::InvalidArgument {
        field: "h*w",
        reason: "overflow".into(),
    })?;
    if m.len() != expected {
        return Err(MetricsError::MaskLength {
            field,
            got: m.len(),
            expected,
            h,
            w,
        });
    }
    Ok(())
}

/// Pixel counts of two masks and of their intersection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overlap {
    pub gt: u64,
    pub pred: u64,
    pub inter: u64,
}

impl Overlap {
    /// DSC = 2|A∩B| / (|A|+|B|); NaN when both are empty.
    pub fn dice(&self) -> f64 {
        let s = self.gt + self.pred;
        if s == 0 {
            f64::NAN
        } else {
            2.0 * self.inter as f64 / s as f64
        }
    }
    /// IoU = |A∩B| / |A∪B|; NaN when both are empty.
    pub fn iou(&self) -> f64 {
        let u = self.gt + self.pred - self.inter;
        if u == 0 {
            f64::NAN
        } else {
            self.inter as f64 / u as f64
        }
    }
}

/// Counts |gt|, |pred|, |gt∩pred|.
pub fn overlap<A: MaskValue, B: MaskValue>(
    gt: &[A],
    pred: &[B],
    h: usize,
    w: usize,
) -> Result<Overlap> {
    check_mask("gt", gt, h, w)?;
    check_mask("pred", pred, h, w)?;
    let mut o = Overlap::default();
    for (&g, &p) in gt.iter().zip(pred) {
        let (g, p) = (g.is_on(), p.is_on());
        o.gt += g as u64;
        o.pred += p as u64;
        o.inter += (g && p) as u64;
    }
    Ok(o)
}

/// Dice similarity coefficient (NaN when both masks are empty).
pub fn dice<A: MaskValue, B: MaskValue>(gt: &[A], pred: &[B], h: usize, w: usize) -> Result<f64> {
    Ok(overlap(gt, pred, h, w)?.dice())
}

/// Intersection over union (NaN when both masks are empty).
pub fn iou<A: MaskValue, B: MaskValue>(gt: &[A], pred: &[B], h: usize, w: usize) -> Result<f64> {
    Ok(overlap(gt, pred, h, w)?.iou())
}

/// Inclusive bounding box `[x0, y0, x1, y1]` (x = column, y = row) of the
/// foreground, i.e. `np.min/np.max` of the foreground coordinates as MedSAM
/// derives its box prompts (before any random perturbation). `None` if empty.
pub fn mask_bbox<T: MaskValue>(mask: &[T], h: usize, w: usize) -> Result<Option<[usize; 4]>> {
    check_mask("mask", mask, h, w)?;
    let mut b: Option<[usize; 4]> = None;
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x].is_on() {
                b = Some(match b {
                    None => [x, y, x, y],
                    Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
                });
            }
        }
    }
    Ok(b)
}

/// Fill-the-box baseline: a mask that is true on the *inclusive* box
/// `[x0, y0, x1, y1]` (columns `x0..=x1`, rows `y0..=y1`), clipped to the image.
/// A box with `x1 < x0` or `y1 < y0`, or lying fully outside, gives an empty mask.
pub fn box_mask(h: usize, w: usize, bbox: [usize; 4]) -> Vec<bool> {
    let mut m = vec![false; h * w];
    let [x0, y0, x1, y1] = bbox;
    if w == 0 || h == 0 || x0 > x1 || y0 > y1 || x0 >= w || y0 >= h {
        return m;
    }
    let (x1, y1) = (x1.min(w - 1), y1.min(h - 1));
    for y in y0..=y1 {
        m[y * w + x0..=y * w + x1].fill(true);
    }
    m
}

// ---------------------------------------------------------------------------
// Surface distances
// ---------------------------------------------------------------------------

/// Which surfel definition is used for the surface distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NsdMode {
    /// MedSAM's 2-D evaluation: the 3-D algorithm on a one-slice volume
    /// (z spacing 1). Default.
    #[default]
    MedSamSlab,
    /// 2-D marching-squares contour (DeepMind `surface-distance` with 2-D input).
    Contour2d,
}

/// Surfel distances and sizes (areas in slab mode, lengths in contour mode).
/// Not sorted. In slab mode each 2-D corner point stands for the two surfels
/// (z = 0 and z = 1 layer) of SurfaceDice.py; both have the same distance, so
/// they are merged into one entry carrying the summed area.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SurfaceDistances {
    pub distances_gt_to_pred: Vec<f64>,
    pub distances_pred_to_gt: Vec<f64>,
    pub surfel_areas_gt: Vec<f64>,
    pub surfel_areas_pred: Vec<f64>,
}

/// Surfel area in slab mode for a 2×2 pixel pattern (bit `2*a + b` set when
/// the pixel at row offset `a`, column offset `b` is foreground), summed over
/// both z layers. The normals are those the 256-entry marching-cubes table of
/// SurfaceDice.py lists for the planar codes (absolute components, sign does
/// not affect the norm):
/// one pixel: (1/8,1/8,1/8); two pixels in a row: 2×(1/4,0,1/4); two in a
/// column: 2×(0,1/4,1/4); two diagonal: 2×(1/8,1/8,1/8); three:
/// (0,0,1/2)+(1/4,1/4,1/4)+(1/8,1/8,1/8); four: 2×(0,0,1/2).
/// Each normal `n` is scaled to `(n0*s1*s2, n1*s0*s2, n2*s0*s1)` (s2 = 1).
fn slab_area_table(s0: f64, s1: f64) -> [f64; 16] {
    let s2 = 1.0;
    let norm = |n: [f64; 3]| -> f64 {
        let v = [n[0] * s1 * s2, n[1] * s0 * s2, n[2] * s0 * s1];
        (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
    };
    let e = 0.125;
    let q = 0.25;
    let mut t = [0.0; 16];
    for (pat, slot) in t.iter_mut().enumerate() {
        let layer = match pat.count_ones() {
            0 => 0.0,
            1 => norm([e, e, e]),
            2 => {
                if pat == 0b0011 || pat == 0b1100 {
                    // same row a, columns 0 and 1
                    2.0 * norm([q, 0.0, q])
                } else if pat == 0b0101 || pat == 0b1010 {
                    // same column b, rows 0 and 1
                    2.0 * norm([0.0, q, q])
                } else {
                    2.0 * norm([e, e, e])
                }
            }
            3 => norm([0.0, 0.0, 0.5]) + norm([q, q, q]) + norm([e, e, e]),
            _ => 2.0 * norm([0.0, 0.0, 0.5]),
        };
        // two layers (z=0 and z=1) with mirrored, equal-norm normals
        *slot = 2.0 * layer;
    }
    t
}

/// Contour length for a 2×2 pattern (same bit convention as above):
/// marching squares, as DeepMind's `create_table_neighbour_code_to_contour_length`.
fn contour_length_table(s0: f64, s1: f64) -> [f64; 16] {
    let diag = 0.5 * (s0 * s0 + s1 * s1).sqrt();
    let mut t = [0.0; 16];
    for (pat, slot) in t.iter_mut().enumerate() {
        *slot = match pat.count_ones() {
            1 | 3 => diag,
            2 => match pat {
                0b0011 | 0b1100 => s1, // a row pair: horizontal edge
                0b0101 | 0b1010 => s0, // a column pair: vertical edge
                _ => 2.0 * diag,
            },
            _ => 0.0,
        };
    }
    t
}

/// 1-D squared-distance transform (Felzenszwalb–Huttenlocher lower envelope)
/// with sample spacing `s`: out[p] = min_q ((p-q)·s)² + f[q]. `f` may hold +inf.
fn edt_1d(f: &[f64], s: f64, out: &mut [f64], v: &mut Vec<usize>, z: &mut Vec<f64>) {
    let n = f.len();
    v.clear();
    z.clear();
    for q in 0..n {
        if !f[q].is_finite() {
            continue;
        }
        let xq = q as f64 * s;
        loop {
            match v.last() {
                None => {
                    v.push(q);
                    z.push(f64::NEG_INFINITY);
                    break;
                }
                Some(&p) => {
                    let xp = p as f64 * s;
                    let inter = ((f[q] + xq * xq) - (f[p] + xp * xp)) / (2.0 * (xq - xp));
                    if inter <= *z.last().unwrap() {
                        v.pop();
                        z.pop();
                    } else {
                        v.push(q);
                        z.push(inter);
                        break;
                    }
                }
            }
        }
    }
    if v.is_empty() {
        out.fill(f64::INFINITY);
        return;
    }
    let mut k = 0;
    for (p, o) in out.iter_mut().enumerate() {
        let x = p as f64 * s;
        while k + 1 < v.len() && z[k + 1] < x {
            k += 1;
        }
        let d = (p as f64 - v[k] as f64) * s;
        *o = d * d + f[v[k]];
    }
}

/// Exact Euclidean distance (not squared) from every grid point to the nearest
/// `true` point of `feat` (`rows × cols`, row-major), with row spacing `s0` and
/// column spacing `s1` — the same as scipy's `distance_transform_edt(~feat,
/// sampling=(s0, s1))`. All +inf if `feat` has no true point.
pub fn euclidean_distance_to(
    feat: &[bool],
    rows: usize,
    cols: usize,
    s0: f64,
    s1: f64,
) -> Vec<f64> {
    assert_eq!(feat.len(), rows * cols);
    let mut g: Vec<f64> = feat.iter().map(|&f| feature_distance(f)).collect();
    edt_plane_sqrt(&mut g, rows, cols, s0, s1);
    g
}

/// Squared distance of a point to the feature before any pass: 0 on the feature, +inf elsewhere.
#[inline(always)]
fn feature_distance(on: bool) -> f64 {
    if on {
        0.0
    } else {
        f64::INFINITY
    }
}

/// The last two separable passes of the exact EDT over each `h × w` plane of `g` (squared
/// distances so far, row-major): along the rows axis (spacing `s_row`, per column), then along
/// the columns axis (spacing `s_col`, contiguous), then the square root. Planes and rows run in
/// parallel; the result does not depend on the thread count.
fn edt_plane_sqrt(g: &mut [f64], h: usize, w: usize, s_row: f64, s_col: f64) {
    use rayon::prelude::*;
    if g.is_empty() {
        return;
    }
    g.par_chunks_mut(h * w).for_each(|pl| {
        let (mut f, mut out, mut v, mut z) = (vec![0.0; h], vec![0.0; h], Vec::new(), Vec::new());
        for x in 0..w {
            for y in 0..h {
                f[y] = pl[y * w + x];
            }
            edt_1d(&f, s_row, &mut out, &mut v, &mut z);
            for y in 0..h {
                pl[y * w + x] = out[y];
            }
        }
    });
    g.par_chunks_mut(w).for_each(|row| {
        let (mut out, mut v, mut z) = (vec![0.0; w], Vec::new(), Vec::new());
        edt_1d(row, s_col, &mut out, &mut v, &mut z);
        for (dst, &d2) in row.iter_mut().zip(&out) {
            *dst = d2.sqrt();
        }
    });
}

fn check_spacing<const N: usize>(spacing: [f64; N]) -> Result<()> {
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(MetricsError::InvalidArgument {
            field: "spacing",
            reason: format!("must be finite and > 0 along every axis, got {spacing:?}"),
        });
    }
    Ok(())
}

fn check_tolerance(tolerance: f64) -> Result<()> {
    if tolerance.is_nan() || tolerance < 0.0 {
        return Err(MetricsError::InvalidArgument {
            field: "tolerance",
            reason: format!("must be >= 0, got {tolerance}"),
        });
    }
    Ok(())
}

/// Inclusive bounds `(lo, hi)` per axis of the union of two masks of row-major `shape`;
/// `None` when both are empty.
fn union_bounds<A: MaskValue, B: MaskValue, const N: usize>(
    gt: &[A],
    pred: &[B],
    shape: [usize; N],
) -> Option<([usize; N], [usize; N])> {
    let (mut lo, mut hi) = ([usize::MAX; N], [0usize; N]);
    for (i, (g, p)) in gt.iter().zip(pred).enumerate() {
        if g.is_on() || p.is_on() {
            let mut rest = i;
            for k in (0..N).rev() {
                let c = rest % shape[k];
                rest /= shape[k];
                lo[k] = lo[k].min(c);
                hi[k] = hi[k].max(c);
            }
        }
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

/// Surface distances from the neighbour codes of both masks on one corner grid: `is_border`
/// picks the surfels, `distance_to` is the exact EDT to a grid's `true` points, `table` the
/// surfel size of each code.
fn surface_distances_from_codes(
    code_gt: &[u8],
    code_pred: &[u8],
    is_border: impl Fn(u8) -> bool,
    distance_to: impl Fn(&[bool]) -> Vec<f64>,
    table: &[f64],
) -> SurfaceDistances {
    let border_gt: Vec<bool> = code_gt.iter().map(|&c| is_border(c)).collect();
    let border_pred: Vec<bool> = code_pred.iter().map(|&c| is_border(c)).collect();
    let dist_gt = distance_to(&border_gt);
    let dist_pred = distance_to(&border_pred);
    gather_surfels(
        [code_gt, code_pred],
        [&border_gt, &border_pred],
        [&dist_gt, &dist_pred],
        table,
    )
}

/// Surface distances between `gt` and `pred` (`h × w`), `spacing = [row, col]`
/// in mm (or `[1.0, 1.0]` for pixels). Mirrors SurfaceDice.py's
/// `compute_surface_distances`: crop to the union bounding box padded by one at
/// the high end, 2×2 neighbour codes at the pixel corners, border points are
/// codes other than "empty" (and "full" in contour mode), distances from each
/// border point of one mask to the nearest border point of the other.
/// If one mask is empty its lists are empty and the other's distances are +inf;
/// if both are empty all lists are empty.
pub fn compute_surface_distances<A: MaskValue, B: MaskValue>(
    gt: &[A],
    pred: &[B],
    h: usize,
    w: usize,
    spacing: [f64; 2],
    mode: NsdMode,
) -> Result<SurfaceDistances> {
    check_mask("gt", gt, h, w)?;
    check_mask("pred", pred, h, w)?;
    check_spacing(spacing)?;
    let Some(([y0, x0], [y1, x1])) = union_bounds(gt, pred, [h, w]) else {
        return Ok(SurfaceDistances::default());
    };
    // corner grid: point (r, c) sees pixels rows y0+r-1..=y0+r, cols x0+c-1..=x0+c
    let rows = y1 - y0 + 2;
    let cols = x1 - x0 + 2;
    let table = match mode {
        NsdMode::MedSamSlab => slab_area_table(spacing[0], spacing[1]),
        NsdMode::Contour2d => contour_length_table(spacing[0], spacing[1]),
    };
    let full_is_border = mode == NsdMode::MedSamSlab;
    let codes = |get: &dyn Fn(usize) -> bool| -> Vec<u8> {
        let px = |r: isize, c: isize| -> bool {
            let (yy, xx) = (y0 as isize + r, x0 as isize + c);
            // outside the crop (incl. the high-end pad) is zero
            r >= 0
                && c >= 0
                && yy <= y1 as isize
                && xx <= x1 as isize
                && get(yy as usize * w + xx as usize)
        };
        let mut out = vec![0u8; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let (ri, ci) = (r as isize, c as isize);
                let mut code = 0u8;
                for a in 0..2 {
                    for b in 0..2 {
                        if px(ri + a - 1, ci + b - 1) {
                            code |= 1 << (2 * a + b);
                        }
                    }
                }
                out[r * cols + c] = code;
            }
        }
        out
    };
    let code_gt = codes(&|i| gt[i].is_on());
    let code_pred = codes(&|i| pred[i].is_on());
    Ok(surface_distances_from_codes(
        &code_gt,
        &code_pred,
        |c| c != 0 && (full_is_border || c != 15),
        |border| euclidean_distance_to(border, rows, cols, spacing[0], spacing[1]),
        &table,
    ))
}

/// The surfels of both masks with their distance to the other mask's surface and their area:
/// `codes`, `borders` and `dists` (distance to that mask's surface) are `[gt, pred]` grids.
fn gather_surfels(
    codes: [&[u8]; 2],
    borders: [&[bool]; 2],
    dists: [&[f64]; 2],
    table: &[f64],
) -> SurfaceDistances {
    let mut sd = SurfaceDistances::default();
    for i in 0..borders[0].len() {
        if borders[0][i] {
            sd.distances_gt_to_pred.push(dists[1][i]);
            sd.surfel_areas_gt.push(table[codes[0][i] as usize]);
        }
        if borders[1][i] {
            sd.distances_pred_to_gt.push(dists[0][i]);
            sd.surfel_areas_pred.push(table[codes[1][i] as usize]);
        }
    }
    sd
}

/// `compute_surface_dice_at_tolerance`: (in-tolerance gt area + in-tolerance
/// pred area) / (total gt area + total pred area); distances `<= tolerance`
/// count. NaN when both surfaces are empty.
pub fn surface_dice_at_tolerance(sd: &SurfaceDistances, tolerance: f64) -> f64 {
    let within = |d: &[f64], a: &[f64]| -> f64 {
        d.iter()
            .zip(a)
            .filter(|(d, _)| **d <= tolerance)
            .map(|(_, a)| *a)
            .sum()
    };
    let num = within(&sd.distances_gt_to_pred, &sd.surfel_areas_gt)
        + within(&sd.distances_pred_to_gt, &sd.surfel_areas_pred);
    let den: f64 =
        sd.surfel_areas_gt.iter().sum::<f64>() + sd.surfel_areas_pred.iter().sum::<f64>();
    num / den
}

/// Normalised surface Dice at `tolerance` (same unit as `spacing`), MedSAM's
/// 2-D convention ([`NsdMode::MedSamSlab`]). MedSAM uses tolerance 2 with
/// spacing `[1, 1]` for 2-D images.
pub fn normalized_surface_dice<A: MaskValue, B: MaskValue>(
    gt: &[A],
    pred: &[B],
    h: usize,
    w: usize,
    spacing: [f64; 2],
    tolerance: f64,
) -> Result<f64> {
    normalized_surface_dice_with(gt, pred, h, w, spacing, tolerance, NsdMode::MedSamSlab)
}

/// Like [`normalized_surface_dice`] with an explicit [`NsdMode`].
pub fn normalized_surface_dice_with<A: MaskValue, B: MaskValue>(
    gt: &[A],
    pred: &[B],
    h: usize,
    w: usize,
    spacing: [f64; 2],
    tolerance: f64,
    mode: NsdMode,
) -> Result<f64> {
    check_tolerance(tolerance)?;
    let sd = compute_surface_distances(gt, pred, h, w, spacing, mode)?;
    Ok(surface_dice_at_tolerance(&sd, tolerance))
}

// ---------------------------------------------------------------------------
// Per-sample bundle
// ---------------------------------------------------------------------------

/// DSC, IoU and NSD of one (image, label) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleMetrics {
    pub dsc: f64,
    pub iou: f64,
    pub nsd: f64,
}

/// DSC, IoU and NSD (MedSAM slab mode) in one call.
pub fn sample_metrics<A: MaskValue, B: MaskValue>(
    gt: &[A],
    pred: &[B],
    h: usize,
    w: usize,
    spacing: [f64; 2],
    tolerance: f64,
) -> Result<SampleMetrics> {
    let o = overlap(gt, pred, h, w)?;
    Ok(SampleMetrics {
        dsc: o.dice(),
        iou: o.iou(),
        nsd: normalized_surface_dice(gt, pred, h, w, spacing, tolerance)?,
    })
}

// ---------------------------------------------------------------------------
// Aggregation
// ---------------------------------------------------------------------------

/// NaN-skipping mean accumulator (sum + count), mergeable across shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanAcc {
    pub sum: f64,
    pub count: u64,
    /// Number of NaN values pushed (skipped).
    pub nan_count: u64,
}

impl MeanAcc {
    pub fn push(&mut self, v: f64) {
        if v.is_nan() {
            self.nan_count += 1;
        } else {
            self.sum += v;
            self.count += 1;
        }
    }
    pub fn merge(&mut self, o: &MeanAcc) {
        self.sum += o.sum;
        self.count += o.count;
        self.nan_count += o.nan_count;
    }
    /// Mean of the non-NaN values; `None` if there are none.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// Accumulates DSC / IoU / NSD for one group (a label, everything, or the box baseline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupAcc {
    pub dsc: MeanAcc,
    pub iou: MeanAcc,
    pub nsd: MeanAcc,
    /// Number of samples added (including those with NaN metrics).
    pub count: u64,
}

impl GroupAcc {
    pub fn push(&mut self, m: &SampleMetrics) {
        self.dsc.push(m.dsc);
        self.iou.push(m.iou);
        self.nsd.push(m.nsd);
        self.count += 1;
    }
    pub fn merge(&mut self, o: &GroupAcc) {
        self.dsc.merge(&o.dsc);
        self.iou.merge(&o.iou);
        self.nsd.merge(&o.nsd);
        self.count += o.count;
    }
}

/// Mergeable accumulator for a whole evaluation (one per rank / shard).
/// Merge shards with [`MetricsAccumulator::merge`]; it is serde-serialisable so
/// shards can be exchanged as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsAccumulator {
    pub overall: GroupAcc,
    pub per_label: BTreeMap<u32, GroupAcc>,
    pub box_baseline: GroupAcc,
    /// Images processed (for throughput).
    pub images: u64,
    /// Wall-clock seconds spent. Merging takes the max (shards run in parallel).
    pub elapsed_seconds: f64,
}

impl MetricsAccumulator {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds one (image, label) sample with the model's metrics and optionally
    /// the fill-the-box baseline's.
    pub fn add(&mut self, label: u32, pred: &SampleMetrics, box_baseline: Option<&SampleMetrics>) {
        self.overall.push(pred);
        self.per_label.entry(label).or_default().push(pred);
        if let Some(b) = box_baseline {
            self.box_baseline.push(b);
        }
    }
    /// Records `n` processed images taking `seconds` of wall time.
    pub fn add_timing(&mut self, n: u64, seconds: f64) {
        self.images += n;
        self.elapsed_seconds += seconds;
    }
    /// Merges another shard: sums and counts add; elapsed is the max.
    pub fn merge(&mut self, o: &MetricsAccumulator) {
        self.overall.merge(&o.overall);
        for (k, v) in &o.per_label {
            self.per_label.entry(*k).or_default().merge(v);
        }
        self.box_baseline.merge(&o.box_baseline);
        self.images += o.images;
        self.elapsed_seconds = self.elapsed_seconds.max(o.elapsed_seconds);
    }
    pub fn summary(&self) -> MetricsSummary {
        MetricsSummary {
            dsc: self.overall.dsc.mean(),
            miou: self.overall.iou.mean(),
            nsd: self.overall.nsd.mean(),
            count: self.overall.count,
            per_label: self
                .per_label
                .iter()
                .map(|(k, g)| {
                    (
                        k.to_string(),
                        LabelSummary {
                            dsc: g.dsc.mean(),
                            miou: g.iou.mean(),
                            nsd: g.nsd.mean(),
                            count: g.count,
                        },
                    )
                })
                .collect(),
            box_baseline: BoxSummary {
                dsc: self.box_baseline.dsc.mean(),
                miou: self.box_baseline.iou.mean(),
                nsd: self.box_baseline.nsd.mean(),
            },
            images_per_second: (self.elapsed_seconds > 0.0)
                .then(|| self.images as f64 / self.elapsed_seconds),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSummary {
    pub dsc: Option<f64>,
    pub miou: Option<f64>,
    pub nsd: Option<f64>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxSummary {
    pub dsc: Option<f64>,
    pub miou: Option<f64>,
    pub nsd: Option<f64>,
}

/// JSON shape: `{"dsc","miou","nsd","count","per_label":{"<id>":{"dsc","miou","nsd","count"}},
/// "box_baseline":{"dsc","miou","nsd"},"images_per_second"}`. Means are over
/// non-NaN samples; `null` when undefined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    pub dsc: Option<f64>,
    pub miou: Option<f64>,
    pub nsd: Option<f64>,
    pub count: u64,
    pub per_label: BTreeMap<String, LabelSummary>,
    pub box_baseline: BoxSummary,
    pub images_per_second: Option<f64>,
}

impl MetricsSummary {
    /// Writes pretty JSON atomically (temp file in the same dir, then rename).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let s = serde_json::to_vec_pretty(self).map_err(|source| MetricsError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomic(path, &s)
    }
    pub fn read_json(path: &Path) -> Result<Self> {
        let b = std::fs::read(path).map_err(|source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&b).map_err(|source| MetricsError::Json {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// CSV header matching [`csv_row`].
pub const CSV_HEADER: &str = "image,label,dsc,iou,nsd,box_dsc,box_iou,box_nsd";

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        format!("{v:.6}")
    }
}

/// One CSV row `image,label,dsc,iou,nsd,box_dsc,box_iou,box_nsd` (no newline).
/// Numbers use 6 decimals, NaN is `nan`, a missing box baseline leaves the
/// three box fields empty. The image name is quoted (RFC 4180) if it contains
/// a comma, quote or newline.
pub fn csv_row(image: &str, label: u32, m: &SampleMetrics, b: Option<&SampleMetrics>) -> String {
    let name = if image.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", image.replace('"', "\"\""))
    } else {
        image.to_string()
    };
    let bx = match b {
        Some(b) => format!("{},{},{}", fmt_num(b.dsc), fmt_num(b.iou), fmt_num(b.nsd)),
        None => ",,".to_string(),
    };
    format!(
        "{name},{label},{},{},{},{bx}",
        fmt_num(m.dsc),
        fmt_num(m.iou),
        fmt_num(m.nsd)
    )
}
/// Writes `bytes` to `path` atomically ([`crate::io::atomic`]).
/// Writes `header` and `rows`, one a line, atomically.
pub fn write_csv(path: &Path, header: &str, rows: impl IntoIterator<Item = String>) -> Result<()> {
    let text = std::iter::once(header.to_string())
        .chain(rows)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    write_atomic(path, text.as_bytes())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::io::atomic::write_bytes_atomic(path, bytes).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------
// 3-D surface distances (DeepMind `surface-distance`, as MedSAM's SurfaceDice.py and the CVPR24
// challenge's `compute_metrics.py` use it on volumes)
// ---------------------------------------------------------------------------

/// Absolute surfel normals of the 256 2×2×2 neighbour codes, from the marching-cubes table
/// `_NEIGHBOUR_CODE_TO_NORMALS` of DeepMind's `surface-distance` (Apache-2.0), in the order the
/// table lists them. Each entry packs one normal as `25·a + 5·b + c`, where `a, b, c` are the
/// absolute components in eighths (0..=4); unused slots are 0 (a zero normal adds no area). Signs
/// are dropped because only the norm is used.
const NEIGHBOUR_CODE_TO_NORMALS_8THS: [[u8; 4]; 256] = [
    [0, 0, 0, 0],
    [31, 0, 0, 0],
    [31, 0, 0, 0],
    [60, 60, 0, 0],
    [31, 0, 0, 0],
    [52, 52, 0, 0],
    [31, 31, 0, 0],
    [100, 62, 31, 0],
    [31, 0, 0, 0],
    [31, 31, 0, 0],
    [52, 52, 0, 0],
    [100, 62, 31, 0],
    [60, 60, 0, 0],
    [100, 62, 31, 0],
    [100, 62, 31, 0],
    [100, 100, 0, 0],
    [31, 0, 0, 0],
    [12, 12, 0, 0],
    [31, 31, 0, 0],
    [20, 62, 31, 0],
    [31, 31, 0, 0],
    [4, 62, 31, 0],
    [31, 31, 31, 0],
    [31, 62, 62, 31],
    [31, 31, 0, 0],
    [12, 12, 31, 0],
    [52, 52, 31, 0],
    [31, 93, 12, 52],
    [31, 60, 60, 0],
    [93, 12, 31, 60],
    [100, 31, 62, 31],
    [100, 31, 62, 0],
    [31, 0, 0, 0],
    [31, 31, 0, 0],
    [12, 12, 0, 0],
    [20, 31, 62, 0],
    [31, 31, 0, 0],
    [31, 52, 52, 0],
    [12, 12, 31, 0],
    [93, 12, 31, 52],
    [31, 31, 0, 0],
    [31, 31, 31, 0],
    [4, 62, 31, 0],
    [62, 62, 31, 31],
    [31, 60, 60, 0],
    [100, 62, 31, 31],
    [12, 93, 31, 60],
    [100, 62, 31, 0],
    [60, 60, 0, 0],
    [20, 62, 31, 0],
    [20, 31, 62, 0],
    [20, 20, 0, 0],
    [60, 60, 31, 0],
    [93, 52, 31, 60],
    [31, 20, 62, 31],
    [20, 62, 31, 0],
    [31, 60, 60, 0],
    [20, 62, 31, 31],
    [93, 60, 31, 52],
    [20, 62, 31, 0],
    [60, 60, 60, 60],
    [60, 60, 31, 0],
    [31, 60, 60, 0],
    [60, 60, 0, 0],
    [31, 0, 0, 0],
    [31, 31, 0, 0],
    [31, 31, 0, 0],
    [31, 60, 60, 0],
    [12, 12, 0, 0],
    [4, 62, 31, 0],
    [12, 12, 31, 0],
    [93, 12, 31, 60],
    [31, 31, 0, 0],
    [31, 31, 31, 0],
    [31, 52, 52, 0],
    [100, 62, 31, 31],
    [20, 62, 31, 0],
    [62, 62, 31, 31],
    [52, 93, 12, 31],
    [100, 62, 31, 0],
    [52, 52, 0, 0],
    [4, 62, 31, 0],
    [31, 52, 52, 0],
    [52, 93, 60, 31],
    [4, 62, 31, 0],
    [4, 4, 0, 0],
    [31, 31, 62, 4],
    [31, 62, 4, 0],
    [52, 52, 31, 0],
    [4, 62, 31, 31],
    [52, 52, 52, 52],
    [31, 52, 52, 0],
    [52, 93, 60, 31],
    [4, 62, 31, 0],
    [31, 52, 52, 0],
    [52, 52, 0, 0],
    [31, 31, 0, 0],
    [31, 31, 31, 0],
    [31, 12, 12, 0],
    [20, 31, 62, 31],
    [12, 12, 31, 0],
    [4, 62, 31, 31],
    [12, 12, 12, 12],
    [12, 12, 31, 0],
    [31, 31, 31, 0],
    [31, 31, 31, 31],
    [4, 62, 31, 31],
    [31, 31, 31, 0],
    [20, 62, 31, 31],
    [31, 31, 31, 0],
    [12, 12, 31, 0],
    [31, 31, 0, 0],
    [100, 62, 31, 0],
    [62, 31, 62, 31],
    [93, 12, 31, 52],
    [20, 62, 31, 0],
    [93, 60, 12, 31],
    [31, 62, 4, 0],
    [31, 12, 12, 0],
    [12, 12, 0, 0],
    [100, 62, 31, 31],
    [31, 31, 31, 0],
    [52, 52, 31, 0],
    [31, 31, 0, 0],
    [60, 60, 31, 0],
    [31, 31, 0, 0],
    [31, 31, 0, 0],
    [31, 0, 0, 0],
    [31, 0, 0, 0],
    [31, 31, 0, 0],
    [31, 31, 0, 0],
    [60, 60, 31, 0],
    [31, 31, 0, 0],
    [52, 52, 31, 0],
    [31, 31, 31, 0],
    [100, 62, 31, 31],
    [12, 12, 0, 0],
    [31, 12, 12, 0],
    [31, 62, 4, 0],
    [93, 60, 12, 31],
    [20, 62, 31, 0],
    [93, 12, 31, 52],
    [62, 31, 62, 31],
    [100, 62, 31, 0],
    [31, 31, 0, 0],
    [12, 12, 31, 0],
    [31, 31, 31, 0],
    [20, 62, 31, 31],
    [31, 31, 31, 0],
    [4, 62, 31, 31],
    [31, 31, 31, 31],
    [31, 31, 31, 0],
    [12, 12, 31, 0],
    [12, 12, 12, 12],
    [4, 62, 31, 31],
    [12, 12, 31, 0],
    [20, 31, 62, 31],
    [31, 12, 12, 0],
    [31, 31, 31, 0],
    [31, 31, 0, 0],
    [52, 52, 0, 0],
    [31, 52, 52, 0],
    [4, 62, 31, 0],
    [52, 93, 60, 31],
    [31, 52, 52, 0],
    [52, 52, 52, 52],
    [4, 62, 31, 31],
    [52, 52, 31, 0],
    [31, 62, 4, 0],
    [31, 31, 62, 4],
    [4, 4, 0, 0],
    [4, 62, 31, 0],
    [52, 93, 60, 31],
    [31, 52, 52, 0],
    [4, 62, 31, 0],
    [52, 52, 0, 0],
    [100, 62, 31, 0],
    [52, 93, 12, 31],
    [62, 62, 31, 31],
    [20, 62, 31, 0],
    [100, 62, 31, 31],
    [31, 52, 52, 0],
    [31, 31, 31, 0],
    [31, 31, 0, 0],
    [93, 12, 31, 60],
    [12, 12, 31, 0],
    [4, 62, 31, 0],
    [12, 12, 0, 0],
    [31, 60, 60, 0],
    [31, 31, 0, 0],
    [31, 31, 0, 0],
    [31, 0, 0, 0],
    [60, 60, 0, 0],
    [31, 60, 60, 0],
    [60, 60, 31, 0],
    [60, 60, 60, 60],
    [20, 62, 31, 0],
    [93, 60, 31, 52],
    [20, 62, 31, 31],
    [31, 60, 60, 0],
    [20, 62, 31, 0],
    [31, 20, 62, 31],
    [93, 52, 31, 60],
    [60, 60, 31, 0],
    [20, 20, 0, 0],
    [20, 31, 62, 0],
    [20, 62, 31, 0],
    [60, 60, 0, 0],
    [100, 62, 31, 0],
    [12, 93, 31, 60],
    [100, 62, 31, 31],
    [31, 60, 60, 0],
    [62, 62, 31, 31],
    [4, 62, 31, 0],
    [31, 31, 31, 0],
    [31, 31, 0, 0],
    [93, 12, 31, 52],
    [12, 12, 31, 0],
    [31, 52, 52, 0],
    [31, 31, 0, 0],
    [20, 31, 62, 0],
    [12, 12, 0, 0],
    [31, 31, 0, 0],
    [31, 0, 0, 0],
    [100, 31, 62, 0],
    [100, 31, 62, 31],
    [93, 12, 31, 60],
    [31, 60, 60, 0],
    [31, 93, 12, 52],
    [52, 52, 31, 0],
    [12, 12, 31, 0],
    [31, 31, 0, 0],
    [31, 62, 62, 31],
    [31, 31, 31, 0],
    [4, 62, 31, 0],
    [31, 31, 0, 0],
    [20, 62, 31, 0],
    [31, 31, 0, 0],
    [12, 12, 0, 0],
    [31, 0, 0, 0],
    [100, 100, 0, 0],
    [100, 62, 31, 0],
    [100, 62, 31, 0],
    [60, 60, 0, 0],
    [100, 62, 31, 0],
    [52, 52, 0, 0],
    [31, 31, 0, 0],
    [31, 0, 0, 0],
    [100, 62, 31, 0],
    [31, 31, 0, 0],
    [52, 52, 0, 0],
    [31, 0, 0, 0],
    [60, 60, 0, 0],
    [31, 0, 0, 0],
    [31, 0, 0, 0],
    [0, 0, 0, 0],
];

/// `create_table_neighbour_code_to_surface_area(spacing)`: the surfel area of each 2×2×2 code,
/// `Σ ‖(n0·s1·s2, n1·s0·s2, n2·s0·s1)‖` over the code's normals, `spacing = [s0, s1, s2]` along
/// the array axes.
pub fn surface_area_table_3d(spacing: [f64; 3]) -> [f64; 256] {
    let [s0, s1, s2] = spacing;
    let mut t = [0.0; 256];
    for (slot, normals) in t.iter_mut().zip(NEIGHBOUR_CODE_TO_NORMALS_8THS.iter()) {
        let mut sum = 0.0;
        for &p in normals {
            let n = [p / 25, p / 5 % 5, p % 5].map(|v| v as f64 / 8.0);
            let v = [n[0] * s1 * s2, n[1] * s0 * s2, n[2] * s0 * s1];
            sum += (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        }
        *slot = sum;
    }
    t
}

fn check_volume<T>(field: &'static str, m: &[T], shape: [usize; 3]) -> Result<()> {
    let [d, h, w] = shape;
    check_mask(field, m, d.saturating_mul(h), w)
}

/// Exact Euclidean distance from every point of a `shape` grid (row-major `(d, h, w)`) to the
/// nearest `true` point of `feat`, with `spacing` along the three axes — scipy's
/// `distance_transform_edt(~feat, sampling=spacing)`. Separable (one Felzenszwalb–Huttenlocher
/// pass per axis, squared distances summed in axis order 0, 1, 2 as scipy sums them), so linear in
/// the number of points; all +inf when `feat` has no true point. Lines run in parallel; the result
/// does not depend on the thread count.
pub fn euclidean_distance_to_3d(feat: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    use rayon::prelude::*;
    let [d, h, w] = shape;
    assert_eq!(feat.len(), d * h * w);
    let plane = h * w;
    if feat.is_empty() {
        return Vec::new();
    }
    // Axis 0: one line per (y, x), computed in parallel, then scattered.
    let lines: Vec<Vec<f64>> = (0..plane)
        .into_par_iter()
        .map_init(
            || (vec![0.0; d], Vec::new(), Vec::new()),
            |(f, v, z), p| {
                for (k, slot) in f.iter_mut().enumerate() {
                    *slot = feature_distance(feat[k * plane + p]);
                }
                let mut out = vec![0.0; d];
                edt_1d(f, spacing[0], &mut out, v, z);
                out
            },
        )
        .collect();
    let mut g = vec![0.0; d * plane];
    for (p, line) in lines.iter().enumerate() {
        for (k, &x) in line.iter().enumerate() {
            g[k * plane + p] = x;
        }
    }
    drop(lines);
    // Axis 1 within each z plane, then axis 2 along each row (contiguous); sqrt at the end.
    edt_plane_sqrt(&mut g, h, w, spacing[1], spacing[2]);
    g
}

/// 2×2×2 neighbour codes at the voxel corners of the crop `lo..=hi` of a `(d, h, w)` mask, as
/// `scipy.ndimage.correlate(crop, [[[128, 64], [32, 16]], [[8, 4], [2, 1]]])` on the crop padded
/// by one zero voxel at the high end: corner `(a, b, c)` sees voxels `lo + (a, b, c) - 1 + δ`,
/// `δ ∈ {0, 1}³`, and voxel `δ` sets bit `7 - (4δ0 + 2δ1 + δ2)`. Grid shape is `hi - lo + 2`.
fn neighbour_codes_3d(
    on: &(dyn Fn(usize) -> bool + Sync),
    shape: [usize; 3],
    lo: [usize; 3],
    hi: [usize; 3],
) -> (Vec<u8>, [usize; 3]) {
    use rayon::prelude::*;
    let [_, h, w] = shape;
    let g = [0, 1, 2].map(|i| hi[i] - lo[i] + 2);
    let inside = |i: usize, c: usize| c >= 1 && c - 1 + lo[i] <= hi[i];
    let mut codes = vec![0u8; g[0] * g[1] * g[2]];
    codes
        .par_chunks_mut(g[1] * g[2])
        .enumerate()
        .for_each(|(a, pl)| {
            for b in 0..g[1] {
                for c in 0..g[2] {
                    let mut code = 0u8;
                    for (bit, (da, db, dc)) in (0..8).map(|k| (k, (k >> 2, (k >> 1) & 1, k & 1))) {
                        let (pa, pb, pc) = (a + da, b + db, c + dc);
                        if inside(0, pa) && inside(1, pb) && inside(2, pc) {
                            let (z, y, x) = (pa - 1 + lo[0], pb - 1 + lo[1], pc - 1 + lo[2]);
                            if on((z * h + y) * w + x) {
                                code |= 1 << (7 - bit);
                            }
                        }
                    }
                    pl[b * g[2] + c] = code;
                }
            }
        });
    (codes, g)
}

/// `compute_surface_distances(mask_gt, mask_pred, spacing_mm)` of DeepMind's `surface-distance`
/// for 3-D masks (row-major `shape = [d, h, w]`, `spacing` in mm along those axes — for a `(z, y,
/// x)` volume that is `[sz, sy, sx]`): crop to the union's bounding box, neighbour codes at the
/// voxel corners, surfels = codes other than 0 and 255, each surfel's distance to the nearest
/// surfel of the other mask (exact EDT), areas from [`surface_area_table_3d`]. Lists are in grid
/// order (not sorted by distance; sums do not depend on the order). One mask empty: its lists are
/// empty and the other's distances are +inf; both empty: all lists empty.
pub fn compute_surface_distances_3d<A: MaskValue, B: MaskValue>(
    gt: &[A],
    pred: &[B],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<SurfaceDistances> {
    check_volume("gt", gt, shape)?;
    check_volume("pred", pred, shape)?;
    check_spacing(spacing)?;
    let Some((lo, hi)) = union_bounds(gt, pred, shape) else {
        return Ok(SurfaceDistances::default());
    };
    let (code_gt, grid) = neighbour_codes_3d(&|i| gt[i].is_on(), shape, lo, hi);
    let (code_pred, _) = neighbour_codes_3d(&|i| pred[i].is_on(), shape, lo, hi);
    Ok(surface_distances_from_codes(
        &code_gt,
        &code_pred,
        |c| c != 0 && c != 255,
        |border| euclidean_distance_to_3d(border, grid, spacing),
        &surface_area_table_3d(spacing),
    ))
}

/// 3-D DSC and NSD at `tolerance` mm (`compute_dice_coefficient` and
/// `compute_surface_dice_at_tolerance(compute_surface_distances(...))`), with the module's
/// empty-mask conventions: both empty → NaN, one empty → 0. `iou` is filled too.
pub fn volume_metrics<A: MaskValue, B: MaskValue>(
    gt: &[A],
    pred: &[B],
    shape: [usize; 3],
    spacing: [f64; 3],
    tolerance: f64,
) -> Result<SampleMetrics> {
    check_tolerance(tolerance)?;
    check_volume("gt", gt, shape)?;
    let o = overlap(gt, pred, shape[0] * shape[1], shape[2])?;
    let sd = compute_surface_distances_3d(gt, pred, shape, spacing)?;
    Ok(SampleMetrics {
        dsc: o.dice(),
        iou: o.iou(),
        nsd: surface_dice_at_tolerance(&sd, tolerance),
    })
}
