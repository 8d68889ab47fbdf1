//! Depthwise conv2d (NCHW, `groups = c_in = c_out`, weight `[c, 1, kh, kw]`), forward and
//! backward. TinyViT's MBConv, patch merging and local convolutions are depthwise 3×3.
//!
//! The fast versions work plane by plane (one `(n, c)` image at a time, in parallel) and tap by
//! tap: for each kernel tap the range of output positions it reaches inside the input is computed
//! once, so the inner loop is a bounds-free multiply-add over a row. The `reference` module is
//! the oracle.

use crate::activation::gelu_f32;
use crate::activation::simd::simd_dispatch;
use crate::conv::Conv2dGeom;
use rayon::prelude::*;

/// The output positions `lo..hi` along one axis whose tap `k` lands inside the input.
fn tap_range(out: usize, inp: usize, k: usize, stride: usize, pad: usize) -> (usize, usize) {
    // Need 0 <= o*stride + k - pad < inp.
    let lo = if pad > k {
        (pad - k).div_ceil(stride)
    } else {
        0
    };
    let hi = if inp + pad > k {
        ((inp + pad - k - 1) / stride + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

fn check(g: &Conv2dGeom) {
    assert!(
        g.c_in == g.c_out && g.groups == g.c_in,
        "depthwise conv needs groups = c_in = c_out, got {g:?}"
    );
}

/// Whether `plane_forward` takes the row-at-a-time 3×3 path: kernel 3×3, stride 1, one column
/// of padding on each side (any row padding).
pub fn is_row3x3(g: &Conv2dGeom) -> bool {
    (g.kh, g.kw) == (3, 3) && g.stride == (1, 1) && g.pad.1 == 1 && g.pad.0 <= 2
}

/// One output plane: `y = bias + Σ_taps w·x` (then GELU if `gelu`). 3×3 stride-1 convolutions
/// with one column of padding (MBConv, patch merging, local convs) go row by row with all taps
/// in registers ([`plane_forward_row3x3`]); anything else tap by tap ([`plane_forward_taps`]).
/// Both add the taps of each output in the same order (row-major over the kernel, skipping
/// taps that fall in the padding), so they give the same bits.
pub(crate) fn plane_forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: f32,
    gelu: bool,
    y: &mut [f32],
) {
    if is_row3x3(g) {
        plane_forward_row3x3(g, x, w, bias, gelu, y)
    } else {
        plane_forward_taps(g, x, w, bias, gelu, y)
    }
}

/// `y = bias + w0·l + w1·c + w2·r` per element over one row for `N` input rows (the valid
/// kernel rows), with the taps added in kernel order; `l`, `c`, `r` are the input row shifted
/// by -1, 0 and +1 columns. Interior columns only (every tap lands inside the input).
#[inline(always)]
fn row3_interior<const N: usize>(rows: [&[f32]; N], ws: [[f32; 3]; N], bias: f32, y: &mut [f32]) {
    let n = y.len();
    for r in &rows {
        assert!(r.len() >= n + 2);
    }
    for (i, o) in y.iter_mut().enumerate() {
        let mut a = bias;
        for t in 0..N {
            a += ws[t][0] * rows[t][i];
            a += ws[t][1] * rows[t][i + 1];
            a += ws[t][2] * rows[t][i + 2];
        }
        *o = a;
    }
}

simd_dispatch! {
    /// `plane_forward` for a 3×3 kernel, stride 1, column padding 1: each output row computed
    /// in one pass with the (up to) three input rows it reads, then GELU while it is in L1.
    pub fn plane_forward_row3x3(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: f32, gelu: bool, y: &mut [f32]) {
        let (oh, ow) = g.out_hw();
        let (h, wd, py) = (g.h, g.w, g.pad.0);
        debug_assert!(is_row3x3(g) && ow == wd);
        for oy in 0..oh {
            let yr = &mut y[oy * ow..(oy + 1) * ow];
            // Valid kernel rows (input row inside the image), in kernel order.
            let mut rows: [&[f32]; 3] = [&[]; 3];
            let mut ws = [[0.0f32; 3]; 3];
            let mut nv = 0;
            for ky in 0..3 {
                let iy = (oy + ky) as isize - py as isize;
                if iy >= 0 && (iy as usize) < h {
                    let iy = iy as usize;
                    rows[nv] = &x[iy * wd..(iy + 1) * wd];
                    ws[nv] = [w[ky * 3], w[ky * 3 + 1], w[ky * 3 + 2]];
                    nv += 1;
                }
            }
            // Border columns: ox = 0 has no left tap, ox = wd-1 no right tap.
            let edge = |ox: usize| {
                let mut a = bias;
                for (row, wr) in rows.iter().zip(&ws).take(nv) {
                    for (kx, &wv) in wr.iter().enumerate() {
                        let ix = (ox + kx) as isize - 1;
                        if ix >= 0 && (ix as usize) < wd {
                            a += wv * row[ix as usize];
                        }
                    }
                }
                a
            };
            yr[0] = edge(0);
            if wd > 1 {
                yr[wd - 1] = edge(wd - 1);
            }
            if wd > 2 {
                let inner = &mut yr[1..wd - 1];
                match nv {
                    3 => row3_interior([rows[0], rows[1], rows[2]], ws, bias, inner),
                    2 => row3_interior([rows[0], rows[1]], [ws[0], ws[1]], bias, inner),
                    1 => row3_interior([rows[0]], [ws[0]], bias, inner),
                    _ => inner.fill(bias),
                }
            }
            if gelu {
                for v in yr.iter_mut() {
                    *v = gelu_f32(*v);
                }
            }
        }
    }
}

simd_dispatch! {
    /// `plane_forward` for any geometry, accumulated tap by tap over whole rows so the inner
    /// loop is a contiguous multiply-add (vectorised) when the stride is 1.
    pub fn plane_forward_taps(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: f32, gelu: bool, y: &mut [f32]) {
        let (oh, ow) = g.out_hw();
        let (sy, sx) = g.stride;
        let (py, px) = g.pad;
        y.fill(bias);
        for ky in 0..g.kh {
            let (ylo, yhi) = tap_range(oh, g.h, ky, sy, py);
            for kx in 0..g.kw {
                let (xlo, xhi) = tap_range(ow, g.w, kx, sx, px);
                if xlo >= xhi {
                    continue;
                }
                let wv = w[ky * g.kw + kx];
                for oy in ylo..yhi {
                    let iy = oy * sy + ky - py;
                    let yr = &mut y[oy * ow + xlo..oy * ow + xhi];
                    let x0 = iy * g.w + xlo * sx + kx - px;
                    if sx == 1 {
                        for (o, &v) in yr.iter_mut().zip(&x[x0..x0 + (xhi - xlo)]) {
                            *o += wv * v;
                        }
                    } else {
                        for (j, o) in yr.iter_mut().enumerate() {
                            *o += wv * x[x0 + j * sx];
                        }
                    }
                }
            }
        }
    if gelu {
            for v in y.iter_mut() {
                *v = gelu_f32(*v);
            }
        }
    }
}

/// y `[n, c, oh, ow]` = depthwise conv of x `[n, c, h, w]` with w `[c, 1, kh, kw]`, plus bias.
pub fn depthwise_forward(g: Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    depthwise_forward_act(g, x, w, bias, false, y)
}

/// [`depthwise_forward`] followed by exact GELU if `gelu`, applied to each plane while it is in
/// cache (inference; there is no fused backward).
pub fn depthwise_forward_act(
    g: Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    gelu: bool,
    y: &mut [f32],
) {
    check(&g);
    let (oh, ow) = g.out_hw();
    let (plane_in, plane_out, kk) = (g.h * g.w, oh * ow, g.kh * g.kw);
    y.par_chunks_mut(plane_out.max(1))
        .enumerate()
        .for_each(|(p, yp)| {
            let c = p % g.c_in;
            let b = bias.map_or(0.0, |b| b[c]);
            plane_forward(
                &g,
                &x[p * plane_in..(p + 1) * plane_in],
                &w[c * kk..(c + 1) * kk],
                b,
                gelu,
                yp,
            );
        });
}

simd_dispatch! {
    /// One output row `oy` of image `b` in channels-last layout: `y[ox, c] = bias[c] +
    /// Σ_taps wt[tap, c]·x[iy, ix, c]` (then GELU), vectorised over channels.
    pub(crate) fn nhwc_row(g: &Conv2dGeom, x: &[f32], wt: &[f32], bias: Option<&[f32]>, gelu: bool, oy: usize, y: &mut [f32]) {
        let c = g.c_in;
        let (_, ow) = g.out_hw();
        for ox in 0..ow {
            let yo = &mut y[ox * c..(ox + 1) * c];
            match bias {
                Some(b) => yo.copy_from_slice(&b[..c]),
                None => yo.fill(0.0),
            }
            for ky in 0..g.kh {
                let iy = (oy * g.stride.0 + ky) as isize - g.pad.0 as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                for kx in 0..g.kw {
                    let ix = (ox * g.stride.1 + kx) as isize - g.pad.1 as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    let xi = (iy as usize * g.w + ix as usize) * c;
                    let wi = (ky * g.kw + kx) * c;
                    for ((o, &xv), &wv) in yo.iter_mut().zip(&x[xi..xi + c]).zip(&wt[wi..wi + c]) {
                        *o += wv * xv;
                    }
                }
            }
            if gelu {
                for v in yo.iter_mut() {
                    *v = gelu_f32(*v);
                }
            }
        }
    }
}

/// One output row of a 3×3, stride-1 depthwise conv with one column of zero padding on each
/// side, channels-last: `y[ox, c] = bias[c] + Σ_taps wt[tap, c]·rows[ky][ox + kx − 1, c]`
/// (then GELU), `rows[ky]` being input row `oy + ky − 1` (`[w, c]`), None for padding. The
/// taps are summed in [`nhwc_row`]'s order (rows top to bottom, columns left to right,
/// padding skipped, each product rounded before it is added), so the two give the same bits;
/// on AVX-512 each block of 16 channels is summed in one register and stored once instead of
/// loaded and stored at every tap.
pub(crate) fn nhwc_row3x3(
    rows: [Option<&[f32]>; 3],
    w: usize,
    c: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    gelu: bool,
    y: &mut [f32],
) {
    let avx512 = cfg!(target_arch = "x86_64") && crate::cpu::features().avx512f;
    let isa = if avx512 {
        RowIsa::Avx512
    } else {
        RowIsa::Portable
    };
    nhwc_row3x3_on(isa, rows, (w, c), wt, (bias, gelu), y);
}

/// An implementation of [`nhwc_row3x3_on`]: tests force each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowIsa {
    Portable,
    /// Needs AVX-512F (panics without it).
    Avx512,
}

/// `nhwc_row3x3` (the 3×3 stride-1 rows of [`depthwise_nhwc_forward`]) on a chosen
/// implementation: `rows` of `w × c` values, `(bias, gelu)` the epilogue.
pub fn nhwc_row3x3_on(
    isa: RowIsa,
    rows: [Option<&[f32]>; 3],
    (w, c): (usize, usize),
    wt: &[f32],
    (bias, gelu): (Option<&[f32]>, bool),
    y: &mut [f32],
) {
    for r in rows.iter().flatten() {
        assert!(r.len() >= w * c, "nhwc_row3x3: input row");
    }
    assert!(
        wt.len() >= 9 * c && y.len() >= w * c,
        "nhwc_row3x3: weights or output"
    );
    assert!(bias.is_none_or(|b| b.len() >= c), "nhwc_row3x3: bias");
    match isa {
        RowIsa::Portable => row3x3_portable(&rows, w, c, wt, bias, y),
        #[cfg(target_arch = "x86_64")]
        RowIsa::Avx512 => {
            assert!(crate::cpu::features().avx512f, "nhwc_row3x3: no AVX-512F");
            // SAFETY: AVX-512F is available; the asserts above bound every access.
            unsafe { row3x3_avx512(&rows, w, c, wt, bias, y) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        RowIsa::Avx512 => panic!("nhwc_row3x3: AVX-512F is x86-64 only"),
    }
    if gelu {
        crate::activation::bias_act_row(&mut y[..w * c], None, 0.0, None, true);
    }
}

fn row3x3_portable(
    rows: &[Option<&[f32]>; 3],
    w: usize,
    c: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    for ox in 0..w {
        let yo = &mut y[ox * c..(ox + 1) * c];
        match bias {
            Some(b) => yo.copy_from_slice(&b[..c]),
            None => yo.fill(0.0),
        }
        for (ky, row) in rows.iter().enumerate() {
            let Some(row) = row else { continue };
            for kx in (1 - ox.min(1))..3.min(w + 1 - ox) {
                let xs = &row[(ox + kx - 1) * c..(ox + kx) * c];
                let ws = &wt[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                for ((o, &xv), &wv) in yo.iter_mut().zip(xs).zip(ws) {
                    *o += wv * xv;
                }
            }
        }
    }
}

/// # Safety
/// AVX-512F; every row holds `w·c` values, `wt` `9·c`, `y` `w·c`, `bias` (if any) `c`.
///
/// Four 16-channel blocks are summed side by side: each output's nine adds form a dependent
/// chain, and four independent chains keep the adder busy where one would wait on its latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row3x3_avx512(
    rows: &[Option<&[f32]>; 3],
    w: usize,
    c: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    const U: usize = 4;
    let (wp, yp) = (wt.as_ptr(), y.as_mut_ptr());
    let bp = bias.map(|b| b.as_ptr());
    for ox in 0..w {
        // Kernel columns that land inside the row.
        let (kx0, kx1) = (1 - ox.min(1), 3.min(w + 1 - ox));
        let mut c0 = 0;
        while c0 + U * 16 <= c {
            let mut acc = [_mm512_setzero_ps(); U];
            if let Some(bp) = bp {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(bp.add(c0 + 16 * u));
                }
            }
            for (ky, row) in rows.iter().enumerate() {
                let Some(row) = row else { continue };
                for kx in kx0..kx1 {
                    let xs = row.as_ptr().add((ox + kx - 1) * c + c0);
                    let ws = wp.add((ky * 3 + kx) * c + c0);
                    for (u, a) in acc.iter_mut().enumerate() {
                        let p = _mm512_mul_ps(
                            _mm512_loadu_ps(ws.add(16 * u)),
                            _mm512_loadu_ps(xs.add(16 * u)),
                        );
                        *a = _mm512_add_ps(*a, p);
                    }
                }
            }
            for (u, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(yp.add(ox * c + c0 + 16 * u), *a);
            }
            c0 += U * 16;
        }
        while c0 < c {
            let m: __mmask16 = if c - c0 >= 16 {
                0xFFFF
            } else {
                ((1u32 << (c - c0)) - 1) as __mmask16
            };
            let mut acc = match bp {
                Some(b) => _mm512_maskz_loadu_ps(m, b.add(c0)),
                None => _mm512_setzero_ps(),
            };
            for (ky, row) in rows.iter().enumerate() {
                let Some(row) = row else { continue };
                for kx in kx0..kx1 {
                    let xv = _mm512_maskz_loadu_ps(m, row.as_ptr().add((ox + kx - 1) * c + c0));
                    let wv = _mm512_maskz_loadu_ps(m, wp.add((ky * 3 + kx) * c + c0));
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(wv, xv));
                }
            }
            _mm512_mask_storeu_ps(yp.add(ox * c + c0), m, acc);
            c0 += 16;
        }
    }
}

/// Depthwise conv on channels-last data: x `[n, h, w, c]`, w `[c, 1, kh, kw]` (PyTorch's
/// layout), y `[n, oh, ow, c]`, plus bias, then exact GELU if `gelu`. TinyViT's local conv runs on
/// token-major features, so this saves the two transposes around an NCHW conv (inference).
pub fn depthwise_nhwc_forward(
    g: Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    gelu: bool,
    y: &mut [f32],
) {
    check(&g);
    let (oh, ow) = g.out_hw();
    let (c, kk) = (g.c_in, g.kh * g.kw);
    assert_eq!(x.len(), g.n * g.h * g.w * c, "depthwise_nhwc: x");
    assert_eq!(y.len(), g.n * oh * ow * c, "depthwise_nhwc: y");
    assert!(w.len() >= c * kk, "depthwise_nhwc: w");
    if let Some(b) = bias {
        assert!(b.len() >= c, "depthwise_nhwc: bias");
    }
    // Weights as [tap][c], so a tap is a contiguous vector over channels.
    let mut wt = vec![0.0f32; kk * c];
    for ch in 0..c {
        for t in 0..kk {
            wt[t * c + ch] = w[ch * kk + t];
        }
    }
    let plane_in = g.h * g.w * c;
    let row3x3 = (g.kh, g.kw) == (3, 3) && g.stride == (1, 1) && g.pad == (1, 1);
    y.par_chunks_mut((ow * c).max(1))
        .enumerate()
        .for_each(|(r, yr)| {
            let (b, oy) = (r / oh, r % oh);
            let xb = &x[b * plane_in..(b + 1) * plane_in];
            if row3x3 {
                let row = |iy: usize| {
                    (iy >= 1 && iy <= g.h).then(|| &xb[(iy - 1) * g.w * c..iy * g.w * c])
                };
                nhwc_row3x3(
                    [row(oy), row(oy + 1), row(oy + 2)],
                    g.w,
                    c,
                    &wt,
                    bias,
                    gelu,
                    yr,
                );
            } else {
                nhwc_row(&g, xb, &wt, bias, gelu, oy, yr);
            }
        });
}

/// Visits every (output, input) pixel pair of a plane with its kernel tap: `f(o, i, k)`.
fn for_each_tap(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = g.out_hw();
    for oy in 0..oh {
        for ky in 0..g.kh {
            let iy = (oy * g.stride.0 + ky) as isize - g.pad.0 as isize;
            if iy < 0 || iy >= g.h as isize {
                continue;
            }
            for ox in 0..ow {
                for kx in 0..g.kw {
                    let ix = (ox * g.stride.1 + kx) as isize - g.pad.1 as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    f(
                        oy * ow + ox,
                        iy as usize * g.w + ix as usize,
                        ky * g.kw + kx,
                    );
                }
            }
        }
    }
}

/// dx `[n, c, h, w]` (overwritten) from dy `[n, c, oh, ow]`.
pub fn depthwise_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    check(&g);
    let (oh, ow) = g.out_hw();
    let (plane_in, plane_out, kk) = (g.h * g.w, oh * ow, g.kh * g.kw);
    dx.par_chunks_mut(plane_in.max(1))
        .enumerate()
        .for_each(|(p, dxp)| {
            let c = p % g.c_in;
            let wc = &w[c * kk..(c + 1) * kk];
            let dyp = &dy[p * plane_out..(p + 1) * plane_out];
            dxp.fill(0.0);
            for ky in 0..g.kh {
                let (ylo, yhi) = tap_range(oh, g.h, ky, g.stride.0, g.pad.0);
                for kx in 0..g.kw {
                    let (xlo, xhi) = tap_range(ow, g.w, kx, g.stride.1, g.pad.1);
                    if xlo >= xhi {
                        continue;
                    }
                    let wv = wc[ky * g.kw + kx];
                    for oy in ylo..yhi {
                        let iy = oy * g.stride.0 + ky - g.pad.0;
                        let d = &dyp[oy * ow + xlo..oy * ow + xhi];
                        let x0 = iy * g.w + xlo * g.stride.1 + kx - g.pad.1;
                        if g.stride.1 == 1 {
                            for (o, &v) in dxp[x0..x0 + d.len()].iter_mut().zip(d) {
                                *o += wv * v;
                            }
                        } else {
                            for (j, &v) in d.iter().enumerate() {
                                dxp[x0 + j * g.stride.1] += wv * v;
                            }
                        }
                    }
                }
            }
        });
}

/// dw `[c, 1, kh, kw]` and optionally dbias `[c]` (overwritten) from x and dy.
pub fn depthwise_backward_weight(
    g: Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    check(&g);
    let (oh, ow) = g.out_hw();
    let (plane_in, plane_out, kk) = (g.h * g.w, oh * ow, g.kh * g.kw);
    dw.par_chunks_mut(kk.max(1))
        .enumerate()
        .for_each(|(c, dwc)| {
            // f64 partial sums per tap keep long reductions (n·oh·ow terms) accurate.
            let mut acc = vec![0.0f64; kk];
            for b in 0..g.n {
                let p = b * g.c_in + c;
                let (xp, dyp) = (
                    &x[p * plane_in..(p + 1) * plane_in],
                    &dy[p * plane_out..(p + 1) * plane_out],
                );
                for_each_tap(&g, |o, i, k| acc[k] += (xp[i] * dyp[o]) as f64);
            }
            for (d, a) in dwc.iter_mut().zip(acc) {
                *d = a as f32;
            }
        });
    if let Some(db) = dbias {
        db.par_iter_mut().enumerate().for_each(|(c, d)| {
            let mut s = 0.0f64;
            for b in 0..g.n {
                let p = b * g.c_in + c;
                s += dy[p * plane_out..(p + 1) * plane_out]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            *d = s as f32;
        });
    }
}

/// Straightforward loops over every index: the oracle for the fast versions.
pub mod reference {
    use crate::conv::Conv2dGeom;

    /// Channels-last depthwise conv (+ GELU): transposes to NCHW, runs [`depthwise_forward`]
    /// and the reference GELU, and transposes back.
    pub fn depthwise_nhwc_forward(
        g: Conv2dGeom,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        gelu: bool,
        y: &mut [f32],
    ) {
        let (oh, ow) = g.out_hw();
        let c = g.c_in;
        let mut xn = vec![0.0; x.len()];
        for b in 0..g.n {
            for p in 0..g.h * g.w {
                for ch in 0..c {
                    xn[(b * c + ch) * g.h * g.w + p] = x[(b * g.h * g.w + p) * c + ch];
                }
            }
        }
        let mut yn = vec![0.0; y.len()];
        depthwise_forward(g, &xn, w, bias, &mut yn);
        if gelu {
            let pre = yn.clone();
            crate::activation::reference::gelu_forward(&pre, &mut yn);
        }
        for b in 0..g.n {
            for p in 0..oh * ow {
                for ch in 0..c {
                    y[(b * oh * ow + p) * c + ch] = yn[(b * c + ch) * oh * ow + p];
                }
            }
        }
    }

    fn at(g: &Conv2dGeom, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let iy = (oy * g.stride.0 + ky) as isize - g.pad.0 as isize;
        let ix = (ox * g.stride.1 + kx) as isize - g.pad.1 as isize;
        (iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w)
            .then(|| iy as usize * g.w + ix as usize)
    }

    pub fn depthwise_forward(
        g: Conv2dGeom,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let (oh, ow) = g.out_hw();
        for b in 0..g.n {
            for c in 0..g.c_in {
                let p = b * g.c_in + c;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |b| b[c]);
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some(i) = at(&g, oy, ox, ky, kx) {
                                    acc += x[p * g.h * g.w + i] * w[(c * g.kh + ky) * g.kw + kx];
                                }
                            }
                        }
                        y[(p * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
    }

    pub fn depthwise_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (oh, ow) = g.out_hw();
        dx.fill(0.0);
        for b in 0..g.n {
            for c in 0..g.c_in {
                let p = b * g.c_in + c;
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some(i) = at(&g, oy, ox, ky, kx) {
                                    dx[p * g.h * g.w + i] += w[(c * g.kh + ky) * g.kw + kx]
                                        * dy[(p * oh + oy) * ow + ox];
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn depthwise_backward_weight(
        g: Conv2dGeom,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
    ) {
        let (oh, ow) = g.out_hw();
        dw.fill(0.0);
        let mut db = vec![0.0f32; g.c_in];
        for b in 0..g.n {
            for c in 0..g.c_in {
                let p = b * g.c_in + c;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let d = dy[(p * oh + oy) * ow + ox];
                        db[c] += d;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some(i) = at(&g, oy, ox, ky, kx) {
                                    dw[(c * g.kh + ky) * g.kw + kx] += x[p * g.h * g.w + i] * d;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(out) = dbias {
            out.copy_from_slice(&db);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), TestCaseError> {
        prop_assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            prop_assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "[{}]: {} vs {}",
                i,
                x,
                y
            );
        }
        Ok(())
    }

    fn geom() -> impl Strategy<Value = Conv2dGeom> {
        (
            1usize..3,
            1usize..5,
            1usize..12,
            1usize..12,
            1usize..5,
            1usize..3,
            0usize..3,
        )
            .prop_filter_map("kernel fits", |(n, c, h, w, k, s, p)| {
                let g = Conv2dGeom::new([n, c, h, w], c, (k, k), (s, s), (p, p), c);
                (h + 2 * p >= k && w + 2 * p >= k).then_some(g)
            })
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        crate::testing::data(len, seed, 1.0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn fast_matches_reference(g in geom(), seed in any::<u64>(), with_bias in any::<bool>()) {
            let (oh, ow) = g.out_hw();
            let x = data(g.n * g.c_in * g.h * g.w, seed);
            let w = data(g.c_in * g.kh * g.kw, seed ^ 1);
            let bias = data(g.c_in, seed ^ 2);
            let dy = data(g.n * g.c_in * oh * ow, seed ^ 3);
            let bias = with_bias.then_some(&bias[..]);
            let (mut y0, mut y1) = (vec![0.0; dy.len()], vec![0.0; dy.len()]);
            reference::depthwise_forward(g, &x, &w, bias, &mut y0);
            depthwise_forward(g, &x, &w, bias, &mut y1);
            close(&y1, &y0, 1e-5)?;
            let (mut g0, mut g1) = (vec![0.0; dy.len()], vec![7.0; dy.len()]);
            crate::activation::reference::gelu_forward(&y0, &mut g0);
            depthwise_forward_act(g, &x, &w, bias, true, &mut g1);
            close(&g1, &g0, 1e-5)?;
            // Channels-last, with and without GELU (x reinterpreted as [n, h, w, c]).
            for gelu in [false, true] {
                let (mut n0, mut n1) = (vec![0.0; dy.len()], vec![7.0; dy.len()]);
                reference::depthwise_nhwc_forward(g, &x, &w, bias, gelu, &mut n0);
                depthwise_nhwc_forward(g, &x, &w, bias, gelu, &mut n1);
                close(&n1, &n0, 1e-5)?;
            }
            let (mut dx0, mut dx1) = (vec![0.0; x.len()], vec![7.0; x.len()]);
            reference::depthwise_backward_input(g, &w, &dy, &mut dx0);
            depthwise_backward_input(g, &w, &dy, &mut dx1);
            close(&dx1, &dx0, 1e-5)?;
            let (mut dw0, mut dw1) = (vec![0.0; w.len()], vec![7.0; w.len()]);
            let (mut db0, mut db1) = (vec![0.0; g.c_in], vec![7.0; g.c_in]);
            reference::depthwise_backward_weight(g, &x, &dy, &mut dw0, Some(&mut db0));
            depthwise_backward_weight(g, &x, &dy, &mut dw1, Some(&mut db1));
            close(&dw1, &dw0, 1e-4)?;
            close(&db1, &db0, 1e-4)?;
        }
    }

    /// The reference against a hand-computed case: a 3×3 box filter with zero padding.
    #[test]
    fn reference_box_filter() {
        let g = Conv2dGeom::new([1, 1, 3, 3], 1, (3, 3), (1, 1), (1, 1), 1);
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut y = vec![0.0; 9];
        reference::depthwise_forward(g, &x, &[1.0; 9], None, &mut y);
        assert_eq!(
            y,
            vec![12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0]
        );
    }

    /// Backward is the adjoint of forward: <dy, conv(x)> = <conv_backward_input(dy), x>.
    #[test]
    fn backward_input_is_adjoint() {
        let g = Conv2dGeom::new([2, 3, 7, 6], 3, (3, 3), (2, 2), (1, 1), 3);
        let (oh, ow) = g.out_hw();
        let x = data(2 * 3 * 7 * 6, 5);
        let w = data(27, 6);
        let dy = data(2 * 3 * oh * ow, 7);
        let mut y = vec![0.0; dy.len()];
        depthwise_forward(g, &x, &w, None, &mut y);
        let mut dx = vec![0.0; x.len()];
        depthwise_backward_input(g, &w, &dy, &mut dx);
        let lhs: f64 = dy.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = dx.iter().zip(&x).map(|(a, b)| (a * b) as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }
}
