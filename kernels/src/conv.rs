//! conv2d (NCHW, weight `[c_out, c_in/groups, kh, kw]`) and conv_transpose2d
//! (weight `[c_in, c_out/groups, kh, kw]`), forward and backward. Fast path: im2col/col2im + `gemm`.
//!
//! The column matrix of an image `[c, h, w]` for a kernel `kh × kw` has rows ordered `(ci, ky, kx)`
//! and one column per output position `(oy, ox)`. A 1×1/stride 1/pad 0 convolution uses the image
//! itself as the column matrix (plain GEMM); non-overlapping patchify (kernel == stride) makes
//! im2col a cheap strided gather and col2im a pure scatter.

#![allow(clippy::needless_range_loop)]

use crate::gemm::{gemm, GemmDims, Layout, Precision};
use rayon::prelude::*;

/// Geometry of a 2-D convolution. For conv_transpose2d, `c_in`/`h`/`w` describe its input and
/// `out_hw` its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub groups: usize,
}

impl Conv2dGeom {
    /// Output height and width of conv2d.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad.0 - self.kh) / self.stride.0 + 1,
            (self.w + 2 * self.pad.1 - self.kw) / self.stride.1 + 1,
        )
    }
    /// Output height and width of conv_transpose2d (no output padding, dilation 1).
    pub fn transpose_out_hw(&self) -> (usize, usize) {
        (
            (self.h - 1) * self.stride.0 + self.kh - 2 * self.pad.0,
            (self.w - 1) * self.stride.1 + self.kw - 2 * self.pad.1,
        )
    }
}

/// Geometry of an im2col: an image `[c, h, w]` seen through a `kh × kw` window on an `oh × ow` grid.
#[derive(Clone, Copy, Debug)]
struct ColGeom {
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
}

impl ColGeom {
    fn for_conv(g: &Conv2dGeom) -> Self {
        let (oh, ow) = g.out_hw();
        ColGeom {
            c: g.c_in,
            h: g.h,
            w: g.w,
            oh,
            ow,
            kh: g.kh,
            kw: g.kw,
            sh: g.stride.0,
            sw: g.stride.1,
            ph: g.pad.0,
            pw: g.pad.1,
        }
    }
    /// conv_transpose2d is the adjoint of a conv whose input is the transpose's output.
    fn for_transpose(g: &Conv2dGeom) -> Self {
        let (oh, ow) = g.transpose_out_hw();
        ColGeom {
            c: g.c_out,
            h: oh,
            w: ow,
            oh: g.h,
            ow: g.w,
            kh: g.kh,
            kw: g.kw,
            sh: g.stride.0,
            sw: g.stride.1,
            ph: g.pad.0,
            pw: g.pad.1,
        }
    }
    fn kk(&self) -> usize {
        self.kh * self.kw
    }
    fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    fn identity(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.ph == 0
            && self.pw == 0
            && self.oh == self.h
            && self.ow == self.w
    }
    /// Output columns `lo..hi` for which `ox*s + k - p` lies inside `0..n`.
    fn valid(o: usize, n: usize, s: usize, k: usize, p: usize) -> (usize, usize) {
        let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
        let hi = if n + p > k {
            (n + p - k).div_ceil(s)
        } else {
            0
        };
        (lo.min(o), hi.min(o).max(lo.min(o)))
    }
}

/// col `[c*kh*kw, oh*ow]` from img `[c, h, w]` (zero padding).
fn im2col(g: &ColGeom, img: &[f32], col: &mut [f32]) {
    let ohw = g.ohw();
    debug_assert_eq!(img.len(), g.c * g.h * g.w);
    debug_assert_eq!(col.len(), g.c * g.kk() * ohw);
    col.par_chunks_mut(ohw).enumerate().for_each(|(row, out)| {
        let ci = row / g.kk();
        let ky = (row / g.kw) % g.kh;
        let kx = row % g.kw;
        let (xlo, xhi) = ColGeom::valid(g.ow, g.w, g.sw, kx, g.pw);
        let plane = &img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (oy, o) in out.chunks_exact_mut(g.ow).enumerate() {
            let iy = (oy * g.sh + ky) as isize - g.ph as isize;
            if iy < 0 || iy >= g.h as isize {
                o.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            o[..xlo].fill(0.0);
            o[xhi..].fill(0.0);
            if xlo >= xhi {
                continue;
            }
            let ix0 = xlo * g.sw + kx - g.pw;
            if g.sw == 1 {
                o[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
            } else {
                for (k, v) in o[xlo..xhi].iter_mut().enumerate() {
                    *v = src[ix0 + k * g.sw];
                }
            }
        }
    });
}

/// img `[c, h, w]` (overwritten) = adjoint of im2col applied to col.
fn col2im(g: &ColGeom, col: &[f32], img: &mut [f32]) {
    let (ohw, kk) = (g.ohw(), g.kk());
    debug_assert_eq!(img.len(), g.c * g.h * g.w);
    debug_assert_eq!(col.len(), g.c * kk * ohw);
    img.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(ci, plane)| {
            plane.fill(0.0);
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &col[(ci * kk + ky * g.kw + kx) * ohw..][..ohw];
                    let (xlo, xhi) = ColGeom::valid(g.ow, g.w, g.sw, kx, g.pw);
                    for (oy, r) in row.chunks_exact(g.ow).enumerate() {
                        let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                        if iy < 0 || iy >= g.h as isize || xlo >= xhi {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let ix0 = xlo * g.sw + kx - g.pw;
                        if g.sw == 1 {
                            dst[ix0..ix0 + (xhi - xlo)]
                                .iter_mut()
                                .zip(&r[xlo..xhi])
                                .for_each(|(d, s)| *d += s);
                        } else {
                            for (k, s) in r[xlo..xhi].iter().enumerate() {
                                dst[ix0 + k * g.sw] += s;
                            }
                        }
                    }
                }
            }
        });
}

/// One `C = A·B` (or `C += A·B`) through the shared GEMM, batch 1.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    accumulate: bool,
) {
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    gemm(
        GemmDims { batch: 1, m, n, k },
        a,
        la,
        b,
        lb,
        c,
        Layout::row_major(m, n),
        accumulate,
        Precision::F32,
    );
}

fn add_bias(y: &mut [f32], bias: &[f32], plane: usize) {
    let c = bias.len();
    y.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(i, p)| p.iter_mut().for_each(|v| *v += bias[i % c]));
}

fn bias_grad(dy: &[f32], c: usize, plane: usize, db: &mut [f32]) {
    db.par_iter_mut().enumerate().for_each(|(co, d)| {
        *d = dy
            .chunks_exact(plane)
            .skip(co)
            .step_by(c)
            .map(|p| p.iter().sum::<f32>())
            .sum();
    });
}

fn check_groups(g: &Conv2dGeom) {
    assert!(g.groups >= 1 && g.c_in.is_multiple_of(g.groups) && g.c_out.is_multiple_of(g.groups));
    assert!(g.stride.0 >= 1 && g.stride.1 >= 1);
}

/// y `[n, c_out, oh, ow]` = conv2d(x `[n, c_in, h, w]`, w) + bias.
pub fn conv2d_forward(g: Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    check_groups(&g);
    if shifted_applies(&g) {
        return conv2d_shifted(g, x, w, bias, y);
    }
    let cg = ColGeom::for_conv(&g);
    let (ohw, hw) = (cg.ohw(), g.h * g.w);
    let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
    let kdim = cin_g * cg.kk();
    assert_eq!(x.len(), g.n * g.c_in * hw);
    assert_eq!(w.len(), g.c_out * kdim);
    assert_eq!(y.len(), g.n * g.c_out * ohw);
    let mut col = if cg.identity() {
        Vec::new()
    } else {
        vec![0.0f32; g.c_in * cg.kk() * ohw]
    };
    for ni in 0..g.n {
        let xi = &x[ni * g.c_in * hw..(ni + 1) * g.c_in * hw];
        let yi = &mut y[ni * g.c_out * ohw..(ni + 1) * g.c_out * ohw];
        let colr: &[f32] = if cg.identity() {
            xi
        } else {
            im2col(&cg, xi, &mut col);
            &col
        };
        for gi in 0..g.groups {
            mm(
                cout_g,
                ohw,
                kdim,
                &w[gi * cout_g * kdim..],
                Layout::row_major(cout_g, kdim),
                &colr[gi * kdim * ohw..],
                Layout::row_major(kdim, ohw),
                &mut yi[gi * cout_g * ohw..],
                false,
            );
        }
    }
    if let Some(b) = bias {
        assert_eq!(b.len(), g.c_out);
        add_bias(y, b, ohw);
    }
}

/// Whether [`conv2d_shifted`] serves `g`: stride 1, one group, a real kernel (not 1×1) and
/// enough input channels for each tap's GEMM to be worth its own call.
fn shifted_applies(g: &Conv2dGeom) -> bool {
    g.stride == (1, 1) && g.groups == 1 && g.kh * g.kw > 1 && g.c_in >= 32
}

/// Stride-1 convolution as one GEMM per kernel tap over a zero-padded copy of the input, with
/// no im2col matrix (for SAM's 3×3 neck conv that matrix is 2304 × 4096 floats, 37 MB, written
/// and then re-read on every call). The output is computed `Wp = w + 2·pw` columns wide, so that
/// tap `(ky, kx)` reads the padded input at the constant offset `ky·Wp + kx` — a plain strided
/// GEMM operand — and the `Wp − ow` extra columns of each row are dropped at the end.
fn conv2d_shifted(g: Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (oh, ow) = g.out_hw();
    let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
    let (plane, pplane, kk) = (g.h * g.w, hp * wp, g.kh * g.kw);
    assert_eq!(x.len(), g.n * g.c_in * plane);
    assert_eq!(w.len(), g.c_out * g.c_in * kk);
    assert_eq!(y.len(), g.n * g.c_out * oh * ow);
    if oh == 0 || ow == 0 {
        return;
    }
    // Columns j = oy·Wp + ox of the wide output; the last row needs only `ow` of them.
    let n_wide = (oh - 1) * wp + ow;
    // Per-tap weights [tap][c_out][c_in], so each tap's A operand is a dense matrix.
    let mut wt = vec![0.0f32; kk * g.c_out * g.c_in];
    wt.par_chunks_mut(g.c_out * g.c_in)
        .enumerate()
        .for_each(|(tap, dst)| {
            for (d, &s) in dst.iter_mut().zip(w[tap..].iter().step_by(kk)) {
                *d = s;
            }
        });
    let mut xpad = vec![0.0f32; g.c_in * pplane];
    let mut wide = vec![0.0f32; g.c_out * oh * wp];
    for ni in 0..g.n {
        let xi = &x[ni * g.c_in * plane..(ni + 1) * g.c_in * plane];
        xpad.par_chunks_mut(pplane)
            .zip(xi.par_chunks(plane))
            .for_each(|(dst, src)| {
                for (r, row) in src.chunks_exact(g.w).enumerate() {
                    let o = (r + g.pad.0) * wp + g.pad.1;
                    dst[o..o + g.w].copy_from_slice(row);
                }
            });
        for tap in 0..kk {
            let (ky, kx) = (tap / g.kw, tap % g.kw);
            gemm(
                GemmDims {
                    batch: 1,
                    m: g.c_out,
                    n: n_wide,
                    k: g.c_in,
                },
                &wt[tap * g.c_out * g.c_in..(tap + 1) * g.c_out * g.c_in],
                Layout::row_major(g.c_out, g.c_in),
                &xpad[ky * wp + kx..],
                Layout {
                    batch_stride: 0,
                    row_stride: pplane,
                    col_stride: 1,
                },
                &mut wide,
                Layout {
                    batch_stride: 0,
                    row_stride: oh * wp,
                    col_stride: 1,
                },
                tap > 0,
                Precision::F32,
            );
        }
        let yi = &mut y[ni * g.c_out * oh * ow..(ni + 1) * g.c_out * oh * ow];
        yi.par_chunks_mut(oh * ow)
            .zip(wide.par_chunks(oh * wp))
            .enumerate()
            .for_each(|(co, (dst, src))| {
                let b = bias.map_or(0.0, |b| b[co]);
                for (d, s) in dst.chunks_exact_mut(ow).zip(src.chunks(wp)) {
                    d.iter_mut().zip(&s[..ow]).for_each(|(d, &s)| *d = s + b);
                }
            });
    }
}

/// dx `[n, c_in, h, w]` (overwritten) from dy `[n, c_out, oh, ow]`.
pub fn conv2d_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_groups(&g);
    let cg = ColGeom::for_conv(&g);
    let (ohw, hw) = (cg.ohw(), g.h * g.w);
    let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
    let kdim = cin_g * cg.kk();
    assert_eq!(dx.len(), g.n * g.c_in * hw);
    assert_eq!(w.len(), g.c_out * kdim);
    assert_eq!(dy.len(), g.n * g.c_out * ohw);
    let mut col = if cg.identity() {
        Vec::new()
    } else {
        vec![0.0f32; g.c_in * cg.kk() * ohw]
    };
    for ni in 0..g.n {
        let dyi = &dy[ni * g.c_out * ohw..(ni + 1) * g.c_out * ohw];
        let dxi = &mut dx[ni * g.c_in * hw..(ni + 1) * g.c_in * hw];
        let ident = cg.identity();
        let dcol: &mut [f32] = if ident { dxi } else { &mut col };
        for gi in 0..g.groups {
            mm(
                kdim,
                ohw,
                cout_g,
                &w[gi * cout_g * kdim..],
                Layout::transposed(cout_g, kdim),
                &dyi[gi * cout_g * ohw..],
                Layout::row_major(cout_g, ohw),
                &mut dcol[gi * kdim * ohw..],
                false,
            );
        }
        if !ident {
            col2im(&cg, &col, &mut dx[ni * g.c_in * hw..(ni + 1) * g.c_in * hw]);
        }
    }
}

/// dw (overwritten) and optionally dbias (overwritten) from x and dy.
pub fn conv2d_backward_weight(
    g: Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    check_groups(&g);
    let cg = ColGeom::for_conv(&g);
    let (ohw, hw) = (cg.ohw(), g.h * g.w);
    let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
    let kdim = cin_g * cg.kk();
    assert_eq!(x.len(), g.n * g.c_in * hw);
    assert_eq!(dw.len(), g.c_out * kdim);
    assert_eq!(dy.len(), g.n * g.c_out * ohw);
    if g.n == 0 {
        dw.fill(0.0);
    }
    let mut col = if cg.identity() {
        Vec::new()
    } else {
        vec![0.0f32; g.c_in * cg.kk() * ohw]
    };
    for ni in 0..g.n {
        let xi = &x[ni * g.c_in * hw..(ni + 1) * g.c_in * hw];
        let dyi = &dy[ni * g.c_out * ohw..(ni + 1) * g.c_out * ohw];
        let colr: &[f32] = if cg.identity() {
            xi
        } else {
            im2col(&cg, xi, &mut col);
            &col
        };
        for gi in 0..g.groups {
            mm(
                cout_g,
                kdim,
                ohw,
                &dyi[gi * cout_g * ohw..],
                Layout::row_major(cout_g, ohw),
                &colr[gi * kdim * ohw..],
                Layout::transposed(kdim, ohw),
                &mut dw[gi * cout_g * kdim..],
                ni > 0,
            );
        }
    }
    if let Some(db) = dbias {
        assert_eq!(db.len(), g.c_out);
        bias_grad(dy, g.c_out, ohw, db);
    }
}

/// y `[n, c_out, oh, ow]` = conv_transpose2d(x `[n, c_in, h, w]`, w `[c_in, c_out, kh, kw]`) + bias.
pub fn conv_transpose2d_forward(
    g: Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    check_groups(&g);
    let cg = ColGeom::for_transpose(&g);
    let (ohw, hw) = (cg.h * cg.w, g.h * g.w);
    let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
    let kdim = cout_g * cg.kk();
    assert_eq!(x.len(), g.n * g.c_in * hw);
    assert_eq!(w.len(), g.c_in * kdim);
    assert_eq!(y.len(), g.n * g.c_out * ohw);
    let mut col = vec![0.0f32; g.c_out * cg.kk() * hw];
    for ni in 0..g.n {
        let xi = &x[ni * g.c_in * hw..(ni + 1) * g.c_in * hw];
        for gi in 0..g.groups {
            mm(
                kdim,
                hw,
                cin_g,
                &w[gi * cin_g * kdim..],
                Layout::transposed(cin_g, kdim),
                &xi[gi * cin_g * hw..],
                Layout::row_major(cin_g, hw),
                &mut col[gi * kdim * hw..],
                false,
            );
        }
        col2im(
            &cg,
            &col,
            &mut y[ni * g.c_out * ohw..(ni + 1) * g.c_out * ohw],
        );
    }
    if let Some(b) = bias {
        assert_eq!(b.len(), g.c_out);
        add_bias(y, b, ohw);
    }
}

/// dx (overwritten) of conv_transpose2d.
pub fn conv_transpose2d_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_groups(&g);
    let cg = ColGeom::for_transpose(&g);
    let (ohw, hw) = (cg.h * cg.w, g.h * g.w);
    let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
    let kdim = cout_g * cg.kk();
    assert_eq!(dx.len(), g.n * g.c_in * hw);
    assert_eq!(w.len(), g.c_in * kdim);
    assert_eq!(dy.len(), g.n * g.c_out * ohw);
    let mut col = vec![0.0f32; g.c_out * cg.kk() * hw];
    for ni in 0..g.n {
        im2col(
            &cg,
            &dy[ni * g.c_out * ohw..(ni + 1) * g.c_out * ohw],
            &mut col,
        );
        let dxi = &mut dx[ni * g.c_in * hw..(ni + 1) * g.c_in * hw];
        for gi in 0..g.groups {
            mm(
                cin_g,
                hw,
                kdim,
                &w[gi * cin_g * kdim..],
                Layout::row_major(cin_g, kdim),
                &col[gi * kdim * hw..],
                Layout::row_major(kdim, hw),
                &mut dxi[gi * cin_g * hw..],
                false,
            );
        }
    }
}

/// dw and optionally dbias (overwritten) of conv_transpose2d.
pub fn conv_transpose2d_backward_weight(
    g: Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    check_groups(&g);
    let cg = ColGeom::for_transpose(&g);
    let (ohw, hw) = (cg.h * cg.w, g.h * g.w);
    let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
    let kdim = cout_g * cg.kk();
    assert_eq!(x.len(), g.n * g.c_in * hw);
    assert_eq!(dw.len(), g.c_in * kdim);
    assert_eq!(dy.len(), g.n * g.c_out * ohw);
    if g.n == 0 {
        dw.fill(0.0);
    }
    let mut col = vec![0.0f32; g.c_out * cg.kk() * hw];
    for ni in 0..g.n {
        im2col(
            &cg,
            &dy[ni * g.c_out * ohw..(ni + 1) * g.c_out * ohw],
            &mut col,
        );
        let xi = &x[ni * g.c_in * hw..(ni + 1) * g.c_in * hw];
        for gi in 0..g.groups {
            mm(
                cin_g,
                kdim,
                hw,
                &xi[gi * cin_g * hw..],
                Layout::row_major(cin_g, hw),
                &col[gi * kdim * hw..],
                Layout::transposed(kdim, hw),
                &mut dw[gi * cin_g * kdim..],
                ni > 0,
            );
        }
    }
    if let Some(db) = dbias {
        assert_eq!(db.len(), g.c_out);
        bias_grad(dy, g.c_out, ohw, db);
    }
}

/// Direct-loop oracles (f64 accumulation), any `groups`.
pub mod reference {
    use super::Conv2dGeom;

    /// Calls `f(ni, ci, co, iy, ix, oy, ox, ky, kx)` for every (input tap, output) pair of conv2d.
    #[allow(clippy::type_complexity)]
    fn for_each_tap(g: &Conv2dGeom, mut f: impl FnMut([usize; 9])) {
        let (oh, ow) = g.out_hw();
        let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
        for ni in 0..g.n {
            for co in 0..g.c_out {
                let grp = co / cout_g;
                for cl in 0..cin_g {
                    let ci = grp * cin_g + cl;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride.0 + ky) as isize - g.pad.0 as isize;
                                    let ix = (ox * g.stride.1 + kx) as isize - g.pad.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    f([ni, ci, co, iy as usize, ix as usize, oy, ox, ky, kx]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn to_f32(src: &[f64], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s as f32);
    }

    pub fn conv2d_forward(
        g: Conv2dGeom,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let (oh, ow) = g.out_hw();
        let cin_g = g.c_in / g.groups;
        let mut acc = vec![0.0f64; y.len()];
        for_each_tap(&g, |[ni, ci, co, iy, ix, oy, ox, ky, kx]| {
            let xv = x[((ni * g.c_in + ci) * g.h + iy) * g.w + ix] as f64;
            let wv = w[((co * cin_g + ci % cin_g) * g.kh + ky) * g.kw + kx] as f64;
            acc[((ni * g.c_out + co) * oh + oy) * ow + ox] += xv * wv;
        });
        if let Some(b) = bias {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += b[(i / (oh * ow)) % g.c_out] as f64;
            }
        }
        to_f32(&acc, y);
    }

    pub fn conv2d_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (oh, ow) = g.out_hw();
        let cin_g = g.c_in / g.groups;
        let mut acc = vec![0.0f64; dx.len()];
        for_each_tap(&g, |[ni, ci, co, iy, ix, oy, ox, ky, kx]| {
            let d = dy[((ni * g.c_out + co) * oh + oy) * ow + ox] as f64;
            let wv = w[((co * cin_g + ci % cin_g) * g.kh + ky) * g.kw + kx] as f64;
            acc[((ni * g.c_in + ci) * g.h + iy) * g.w + ix] += d * wv;
        });
        to_f32(&acc, dx);
    }

    pub fn conv2d_backward_weight(
        g: Conv2dGeom,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
    ) {
        let (oh, ow) = g.out_hw();
        let cin_g = g.c_in / g.groups;
        let mut acc = vec![0.0f64; dw.len()];
        for_each_tap(&g, |[ni, ci, co, iy, ix, oy, ox, ky, kx]| {
            let d = dy[((ni * g.c_out + co) * oh + oy) * ow + ox] as f64;
            let xv = x[((ni * g.c_in + ci) * g.h + iy) * g.w + ix] as f64;
            acc[((co * cin_g + ci % cin_g) * g.kh + ky) * g.kw + kx] += d * xv;
        });
        to_f32(&acc, dw);
        if let Some(db) = dbias {
            let mut b = vec![0.0f64; g.c_out];
            for (i, &d) in dy.iter().enumerate() {
                b[(i / (oh * ow)) % g.c_out] += d as f64;
            }
            to_f32(&b, db);
        }
    }

    /// Calls `f([ni, ci, co, iy, ix, oy, ox, ky, kx])` for every tap of conv_transpose2d
    /// (x at (iy, ix) contributes to y at (oy, ox) = (iy*s + ky - p, ix*s + kx - p)).
    fn for_each_tap_t(g: &Conv2dGeom, mut f: impl FnMut([usize; 9])) {
        let (oh, ow) = g.transpose_out_hw();
        let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
        for ni in 0..g.n {
            for ci in 0..g.c_in {
                let grp = ci / cin_g;
                for cl in 0..cout_g {
                    let co = grp * cout_g + cl;
                    for iy in 0..g.h {
                        for ix in 0..g.w {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let oy = (iy * g.stride.0 + ky) as isize - g.pad.0 as isize;
                                    let ox = (ix * g.stride.1 + kx) as isize - g.pad.1 as isize;
                                    if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                        continue;
                                    }
                                    f([ni, ci, co, iy, ix, oy as usize, ox as usize, ky, kx]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn conv_transpose2d_forward(
        g: Conv2dGeom,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let (oh, ow) = g.transpose_out_hw();
        let cout_g = g.c_out / g.groups;
        let mut acc = vec![0.0f64; y.len()];
        for_each_tap_t(&g, |[ni, ci, co, iy, ix, oy, ox, ky, kx]| {
            let xv = x[((ni * g.c_in + ci) * g.h + iy) * g.w + ix] as f64;
            let wv = w[((ci * cout_g + co % cout_g) * g.kh + ky) * g.kw + kx] as f64;
            acc[((ni * g.c_out + co) * oh + oy) * ow + ox] += xv * wv;
        });
        if let Some(b) = bias {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += b[(i / (oh * ow)) % g.c_out] as f64;
            }
        }
        to_f32(&acc, y);
    }

    pub fn conv_transpose2d_backward_input(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (oh, ow) = g.transpose_out_hw();
        let cout_g = g.c_out / g.groups;
        let mut acc = vec![0.0f64; dx.len()];
        for_each_tap_t(&g, |[ni, ci, co, iy, ix, oy, ox, ky, kx]| {
            let d = dy[((ni * g.c_out + co) * oh + oy) * ow + ox] as f64;
            let wv = w[((ci * cout_g + co % cout_g) * g.kh + ky) * g.kw + kx] as f64;
            acc[((ni * g.c_in + ci) * g.h + iy) * g.w + ix] += d * wv;
        });
        to_f32(&acc, dx);
    }

    pub fn conv_transpose2d_backward_weight(
        g: Conv2dGeom,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
    ) {
        let (oh, ow) = g.transpose_out_hw();
        let cout_g = g.c_out / g.groups;
        let mut acc = vec![0.0f64; dw.len()];
        for_each_tap_t(&g, |[ni, ci, co, iy, ix, oy, ox, ky, kx]| {
            let d = dy[((ni * g.c_out + co) * oh + oy) * ow + ox] as f64;
            let xv = x[((ni * g.c_in + ci) * g.h + iy) * g.w + ix] as f64;
            acc[((ci * cout_g + co % cout_g) * g.kh + ky) * g.kw + kx] += d * xv;
        });
        to_f32(&acc, dw);
        if let Some(db) = dbias {
            let mut b = vec![0.0f64; g.c_out];
            for (i, &d) in dy.iter().enumerate() {
                b[(i / (oh * ow)) % g.c_out] += d as f64;
            }
            to_f32(&b, db);
        }
    }
}
