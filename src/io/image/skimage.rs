//! Image resizing with the exact semantics of scikit-image 0.26 `skimage.transform.resize`
//! (as installed in the reference environment) for 2-D images with an optional trailing
//! channel axis (HWC layout).
//!
//! `resize(image, (out_h, out_w), order=3, preserve_range=True, mode="constant",
//! anti_aliasing=True)` does, for an `(h, w, c)` input:
//!
//! 1. `factors = (h/out_h, w/out_w, 1)`; anti-aliasing sigma `max(0, (factor - 1) / 2)` per
//!    axis; `ndi.gaussian_filter(image, sigma, mode="grid-constant", cval=0)`. SciPy skips
//!    axes whose sigma is `<= 1e-15`, builds the kernel with radius `int(4 * sigma + 0.5)`,
//!    weights `exp(-0.5 / sigma^2 * x^2)` normalised by their (pairwise) sum, and treats
//!    `grid-constant` as zero padding for filters.
//! 2. `ndi.zoom(filtered, 1/factors, order=3, mode="grid-constant", cval=0, grid_mode=True)`:
//!    the input is zero-padded by 12 samples on every side, cubic B-spline prefiltered
//!    (pole `sqrt(3) - 2`, mirror boundary initialisation on the padded line), and sampled at
//!    `((k + 0.5) * in/out - 0.5) + 12`. Along the channel axis the zoom is the identity
//!    (interpolation at integer positions reproduces the samples), so channels are
//!    processed independently here.
//! 3. Output clipped to `[min(image), max(image)]`, widened to include `cval = 0` when the
//!    input range excludes 0 but the output range contains it.
//!
//! `order=0` (labels) is nearest neighbour on the same grid: source index
//! `floor((k + 0.5) * in/out - 0.5 + 0.5)`.

use rayon::prelude::*;

/// skimage's boundary `mode` for [`resize_cubic_aa_skimage_mode`]: `Constant` (zero outside; what
/// `pre_CT_MR.py` passes) or `Reflect` (skimage's default, SciPy `mirror`; what
/// `MedSAM_Inference.py` gets by not passing a mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    Constant,
    Reflect,
}

/// SciPy's `mirror` extension: reflect about the end samples without repeating them.
fn mirror_index(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut i = i.rem_euclid(period);
    if i >= n as isize {
        i = period - i;
    }
    i as usize
}

/// Zero-padding SciPy applies before the spline prefilter in `grid-constant` mode.
const NPAD: usize = 12;
/// Pole of the cubic B-spline prefilter, `sqrt(3) - 2`.
const POLE3: f64 = -0.267_949_192_431_122_7;

/// NumPy's pairwise summation (`np.add.reduce` on a contiguous f64 array).
fn numpy_pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_pairwise_sum(&a[..n2]) + numpy_pairwise_sum(&a[n2..])
    }
}

/// Anti-aliasing sigma skimage uses for a `n_in -> n_out` axis.
pub fn antialias_sigma(n_in: usize, n_out: usize) -> f64 {
    let factor = n_in as f64 / n_out as f64;
    ((factor - 1.0) / 2.0).max(0.0)
}

/// SciPy `_gaussian_kernel1d(sigma, 0, radius)` with `radius = int(4 * sigma + 0.5)`.
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let coef = -0.5 / (sigma * sigma);
    let phi: Vec<f64> = (-radius..=radius)
        .map(|x| (coef * ((x * x) as f64)).exp())
        .collect();
    let s = numpy_pairwise_sum(&phi);
    phi.iter().map(|v| v / s).collect()
}

/// Correlates one line with a symmetric kernel, zero outside (SciPy `correlate1d`, symmetric
/// branch: centre tap first, then pairs from the outermost inwards).
fn gaussian_line(src: &[f64], dst: &mut [f64], k: &[f64], mode: ResizeMode) {
    let r = k.len() / 2;
    let n = src.len() as isize;
    let at = |i: isize| {
        if i >= 0 && i < n {
            src[i as usize]
        } else if mode == ResizeMode::Reflect {
            src[mirror_index(i, src.len())]
        } else {
            0.0
        }
    };
    for (i, d) in dst.iter_mut().enumerate() {
        let i = i as isize;
        let mut t = src[i as usize] * k[r];
        for j in (1..=r).rev() {
            t += (at(i - j as isize) + at(i + j as isize)) * k[r - j];
        }
        *d = t;
    }
}

/// In-place gaussian along axis 0 (columns) of an `h x w` plane.
fn gaussian_axis0(plane: &mut [f64], h: usize, w: usize, k: &[f64], mode: ResizeMode) {
    let cols: Vec<Vec<f64>> = (0..w)
        .into_par_iter()
        .map(|x| {
            let col: Vec<f64> = (0..h).map(|y| plane[y * w + x]).collect();
            let mut out = vec![0.0; h];
            gaussian_line(&col, &mut out, k, mode);
            out
        })
        .collect();
    for (x, col) in cols.iter().enumerate() {
        for (y, v) in col.iter().enumerate() {
            plane[y * w + x] = *v;
        }
    }
}

/// In-place gaussian along axis 1 (rows) of an `h x w` plane.
fn gaussian_axis1(plane: &mut [f64], w: usize, k: &[f64], mode: ResizeMode) {
    plane.par_chunks_mut(w).for_each(|row| {
        let src = row.to_vec();
        gaussian_line(&src, row, k, mode);
    });
}

/// Cubic B-spline prefilter of one line in place (SciPy `apply_filter`, mirror init).
fn spline_prefilter_line(c: &mut [f64]) {
    let n = c.len();
    if n <= 1 {
        return;
    }
    let z = POLE3;
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    for v in c.iter_mut() {
        *v *= gain;
    }
    // causal initialisation (mirror)
    let z_n_1 = z.powf((n - 1) as f64);
    let mut c0 = c[0] + z_n_1 * c[n - 1];
    let mut z_i = z;
    for i in 1..n - 1 {
        c0 += z_i * (c[i] + z_n_1 * c[n - 1 - i]);
        z_i *= z;
    }
    c[0] = c0 / (1.0 - z_n_1 * z_n_1);
    for i in 1..n {
        c[i] += z * c[i - 1];
    }
    // anti-causal initialisation (mirror)
    c[n - 1] = (z * c[n - 2] + c[n - 1]) * z / (z * z - 1.0);
    for i in (0..n - 1).rev() {
        c[i] = z * (c[i + 1] - c[i]);
    }
}

/// Cubic spline weights and first tap for a coordinate (SciPy
/// `get_spline_interpolation_weights(x, 3)`).
fn cubic_weights(cc: f64) -> (isize, [f64; 4]) {
    let fl = cc.floor();
    let x = cc - fl;
    let y = x;
    let z = 1.0 - x;
    let w1 = (y * y * (y - 2.0) * 3.0 + 4.0) / 6.0;
    let w2 = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0;
    let w0 = z * z * z / 6.0;
    let mut w3 = 1.0;
    w3 -= w0;
    w3 -= w1;
    w3 -= w2;
    (fl as isize - 1, [w0, w1, w2, w3])
}

/// Sample coordinate (in padded input space) of output index `k` for an `n_in -> n_out` zoom.
fn grid_coord(k: usize, n_in: usize, n_out: usize, npad: usize) -> f64 {
    let zoom = n_in as f64 / n_out as f64;
    let mut cc = k as f64;
    cc += 0.5;
    cc *= zoom;
    cc -= 0.5;
    cc + npad as f64
}

/// Resizes one `h x w` plane (already anti-alias filtered) with cubic B-splines.
fn zoom_cubic_plane(
    plane: &[f64],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    mode: ResizeMode,
) -> Vec<f64> {
    // SciPy pads only for grid-constant; mirror works on the samples themselves.
    let npad = if mode == ResizeMode::Constant {
        NPAD
    } else {
        0
    };
    let ph = h + 2 * npad;
    let pw = w + 2 * npad;
    let mut coef = vec![0.0f64; ph * pw];
    // axis 0: only the non-padded columns carry data (zero columns stay zero)
    let cols: Vec<Vec<f64>> = (0..w)
        .into_par_iter()
        .map(|x| {
            let mut line = vec![0.0f64; ph];
            for y in 0..h {
                line[y + npad] = plane[y * w + x];
            }
            spline_prefilter_line(&mut line);
            line
        })
        .collect();
    for (x, col) in cols.iter().enumerate() {
        for (y, v) in col.iter().enumerate() {
            coef[y * pw + x + npad] = *v;
        }
    }
    // axis 1: every padded row
    coef.par_chunks_mut(pw).for_each(spline_prefilter_line);

    let ys: Vec<(isize, [f64; 4])> = (0..out_h)
        .map(|k| cubic_weights(grid_coord(k, h, out_h, npad)))
        .collect();
    let xs: Vec<(isize, [f64; 4])> = (0..out_w)
        .map(|k| cubic_weights(grid_coord(k, w, out_w, npad)))
        .collect();
    let tap = |idx: isize, len: usize| -> Option<usize> {
        if idx >= 0 && (idx as usize) < len {
            Some(idx as usize)
        } else if mode == ResizeMode::Reflect {
            Some(mirror_index(idx, len))
        } else {
            None
        }
    };
    let mut out = vec![0.0f64; out_h * out_w];
    out.par_chunks_mut(out_w)
        .enumerate()
        .for_each(|(oy, orow)| {
            let (ys0, wy) = ys[oy];
            for (ox, o) in orow.iter_mut().enumerate() {
                let (xs0, wx) = xs[ox];
                let mut t = 0.0;
                for (i, wyi) in wy.iter().enumerate() {
                    let Some(yy) = tap(ys0 + i as isize, ph) else {
                        continue;
                    };
                    let row = &coef[yy * pw..(yy + 1) * pw];
                    for (j, wxj) in wx.iter().enumerate() {
                        if let Some(xx) = tap(xs0 + j as isize, pw) {
                            t += row[xx] * wyi * wxj;
                        }
                    }
                }
                *o = t;
            }
        });
    out
}

/// `skimage.transform.resize(img, (out_h, out_w), order=3, preserve_range=True,
/// mode="constant", anti_aliasing=True)` for an HWC f64 image; returns HWC f64.
///
/// # Panics
/// If `src.len() != h * w * channels` or any dimension is zero.
pub fn resize_cubic_aa_skimage(
    src: &[f64],
    h: usize,
    w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f64> {
    resize_cubic_aa_skimage_mode(src, h, w, channels, out_h, out_w, ResizeMode::Constant)
}

/// [`resize_cubic_aa_skimage`] with skimage's `mode` argument.
pub fn resize_cubic_aa_skimage_mode(
    src: &[f64],
    h: usize,
    w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
    mode: ResizeMode,
) -> Vec<f64> {
    assert_eq!(
        src.len(),
        h * w * channels,
        "resize_cubic_aa_skimage: bad source length"
    );
    assert!(h > 0 && w > 0 && channels > 0 && out_h > 0 && out_w > 0);
    let sy = antialias_sigma(h, out_h);
    let sx = antialias_sigma(w, out_w);
    let ky = (sy > 1e-15).then(|| gaussian_kernel(sy));
    let kx = (sx > 1e-15).then(|| gaussian_kernel(sx));

    let mut out = vec![0.0f64; out_h * out_w * channels];
    for ch in 0..channels {
        // A grey image read as RGB has three equal channels: resize one, copy it to the others
        // (the same numbers: each channel is resized on its own).
        let same_as = (0..ch).find(|&c| {
            src.chunks_exact(channels)
                .all(|px| px[c].to_bits() == px[ch].to_bits())
        });
        if let Some(c) = same_as {
            out.chunks_exact_mut(channels).for_each(|px| px[ch] = px[c]);
            continue;
        }
        let mut plane: Vec<f64> = src.iter().skip(ch).step_by(channels).copied().collect();
        if let Some(k) = &ky {
            gaussian_axis0(&mut plane, h, w, k, mode);
        }
        if let Some(k) = &kx {
            gaussian_axis1(&mut plane, w, k, mode);
        }
        let res = zoom_cubic_plane(&plane, h, w, out_h, out_w, mode);
        for (i, v) in res.into_iter().enumerate() {
            out[i * channels + ch] = v;
        }
    }
    clip_like_skimage(src, &mut out, mode);
    out
}

/// `_clip_warp_output(image, out, "constant", cval=0, clip=True)`.
fn clip_like_skimage(input: &[f64], out: &mut [f64], mode: ResizeMode) {
    let (mut lo, mut hi) = min_max(input);
    let (olo, ohi) = min_max(out);
    let cval = 0.0;
    // Only mode "constant" lets cval widen the range.
    if mode == ResizeMode::Constant && !(lo <= cval && cval <= hi) && olo <= cval && cval <= ohi {
        lo = lo.min(cval);
        hi = hi.max(cval);
    }
    out.par_iter_mut().for_each(|v| *v = v.clamp(lo, hi));
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Source index of output `k` for `order=0` resizing on skimage's grid.
fn nearest_index(k: usize, n_in: usize, n_out: usize) -> Option<usize> {
    let cc = grid_coord(k, n_in, n_out, 0);
    let s = (cc + 0.5).floor();
    (s >= 0.0 && (s as usize) < n_in).then_some(s as usize)
}

/// `skimage.transform.resize(img, (out_h, out_w), order=0, preserve_range=True,
/// mode="constant", anti_aliasing=False)` for HWC data of any `Copy` type.
pub fn resize_nearest_skimage<T: Copy + Default + Send + Sync>(
    src: &[T],
    h: usize,
    w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<T> {
    assert_eq!(
        src.len(),
        h * w * channels,
        "resize_nearest_skimage: bad source length"
    );
    let ys: Vec<Option<usize>> = (0..out_h).map(|k| nearest_index(k, h, out_h)).collect();
    let xs: Vec<Option<usize>> = (0..out_w).map(|k| nearest_index(k, w, out_w)).collect();
    let mut out = vec![T::default(); out_h * out_w * channels];
    out.par_chunks_mut(out_w * channels)
        .enumerate()
        .for_each(|(oy, orow)| {
            let Some(y) = ys[oy] else { return };
            for (ox, x) in xs.iter().enumerate() {
                if let Some(x) = x {
                    let s = (y * w + x) * channels;
                    orow[ox * channels..(ox + 1) * channels].copy_from_slice(&src[s..s + channels]);
                }
            }
        });
    out
}

/// [`resize_nearest_skimage`] for u8 labels / images.
pub fn resize_nearest_u8_skimage(
    src: &[u8],
    h: usize,
    w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<u8> {
    resize_nearest_skimage(src, h, w, channels, out_h, out_w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_matches_naive_small() {
        let a: Vec<f64> = (0..5).map(|i| i as f64 * 0.1).collect();
        assert_eq!(
            numpy_pairwise_sum(&a),
            0.0 + 0.1 + 0.2 + 0.30000000000000004 + 0.4
        );
    }

    #[test]
    fn constant_image_is_clipped_to_input_range() {
        // the zero padding of mode "constant" pulls border values below 100, but skimage
        // clips the output to the input range [100, 100] (0 is outside the output range, so
        // the cval rule does not widen it): the result is exactly constant, as in skimage
        let src = vec![100.0; 20 * 20];
        let out = resize_cubic_aa_skimage(&src, 20, 20, 1, 40, 40);
        assert!(out.iter().all(|&v| v == 100.0));
    }

    /// A channel equal to an earlier one is copied, not resized again: `[p, p, q]` gives what
    /// `[p, q]` gives, channel by channel (same clip range: same input and output values).
    #[test]
    fn repeated_channel_matches_its_own_resize() {
        let (h, w) = (13, 17);
        let p = |i: usize| ((i * 37) % 101) as f64;
        let q = |i: usize| ((i * 53) % 97) as f64 + 0.5;
        let two: Vec<f64> = (0..h * w).flat_map(|i| [p(i), q(i)]).collect();
        let three: Vec<f64> = (0..h * w).flat_map(|i| [p(i), p(i), q(i)]).collect();
        let out2 = resize_cubic_aa_skimage(&two, h, w, 2, 29, 11);
        let out3 = resize_cubic_aa_skimage(&three, h, w, 3, 29, 11);
        for (a, b) in out2.chunks_exact(2).zip(out3.chunks_exact(3)) {
            assert_eq!(
                [a[0], a[0], a[1]].map(f64::to_bits),
                [b[0], b[1], b[2]].map(f64::to_bits)
            );
        }
    }

    #[test]
    fn nearest_identity() {
        let src: Vec<u8> = (0..12).collect();
        assert_eq!(resize_nearest_u8_skimage(&src, 3, 4, 1, 3, 4), src);
    }

    #[test]
    fn spline_interpolates_at_knots() {
        let mut line: Vec<f64> = (0..30).map(|i| ((i * 7) % 11) as f64).collect();
        let orig = line.clone();
        spline_prefilter_line(&mut line);
        for k in 1..29 {
            let v = (line[k - 1] + 4.0 * line[k] + line[k + 1]) / 6.0;
            assert!((v - orig[k]).abs() < 1e-12);
        }
    }
}
