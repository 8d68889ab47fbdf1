//! conv2d (NCHW, weight `[c_out, c_in/groups, kh, kw]`) and conv_transpose2d
//! (weight `[c_in, c_out/groups, kh, kw]`), forward and backward. Fast path: im2col/col2im + `gemm`.
//!
//! The column matrix of an image `[c, h, w]` for a kernel `kh × kw` has rows ordered `(ci, ky, kx)`
//! and one column per output position `(oy, ox)`. A 1×1/stride 1/pad 0 convolution uses the image
//! itself as the column matrix (plain GEMM); non-overlapping patchify (kernel == stride) makes
//! im2col a cheap strided gather and col2im a pure scatter.

#![allow(clippy::needless_range_loop)]

use crate::gemm::{gemm, GemmDims, Layout, Precision};
use crate::scratch::{scratch, scratch_overwritten, Scratch};
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
    /// `[n, c_in, h, w]` input, `c_out` channels, `(kh, kw)` kernel, `(sh, sw)` stride,
    /// `(ph, pw)` padding, `groups` groups: the fields in one line.
    pub fn new(
        [n, c_in, h, w]: [usize; 4],
        c_out: usize,
        (kh, kw): (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        groups: usize,
    ) -> Self {
        Conv2dGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
            groups,
        }
    }
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
    /// The column geometry of conv2d, or of conv_transpose2d when `transpose`: the transpose is
    /// the adjoint of a conv whose input is the transpose's output.
    fn new(g: &Conv2dGeom, transpose: bool) -> Self {
        let (c, (h, w), (oh, ow)) = if transpose {
            (g.c_out, g.transpose_out_hw(), (g.h, g.w))
        } else {
            (g.c_in, (g.h, g.w), g.out_hw())
        };
        let (kh, kw, (sh, sw), (ph, pw)) = (g.kh, g.kw, g.stride, g.pad);
        ColGeom {
            c,
            h,
            w,
            oh,
            ow,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
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

/// GEMM sizes `(m, n, k)`.
type Dims = (usize, usize, usize);

/// One `C = A·B` (or `C += A·B`) per group through the shared GEMM. Group `gi` of each operand
/// is the dense block after `gi` blocks of its size; `A` is `m × k`, stored transposed (`k × m`)
/// when `ta`, and `B` is `k × n`, stored transposed when `tb`.
fn grouped_mm(
    groups: usize,
    (m, n, k): Dims,
    (a, ta): (&[f32], bool),
    (b, tb): (&[f32], bool),
    c: &mut [f32],
    accumulate: bool,
) {
    let la = if ta {
        Layout::transposed(k, m)
    } else {
        Layout::row_major(m, k)
    };
    let lb = if tb {
        Layout::transposed(n, k)
    } else {
        Layout::row_major(k, n)
    };
    for gi in 0..groups {
        let c = &mut c[gi * m * n..];
        if m * n == 0 {
            continue;
        }
        if k == 0 {
            if !accumulate {
                c[..m * n].fill(0.0);
            }
            continue;
        }
        let (a, b) = (&a[gi * m * k..], &b[gi * k * n..]);
        let dims = GemmDims { batch: 1, m, n, k };
        let lc = Layout::row_major(m, n);
        gemm(dims, a, la, b, lb, c, lc, accumulate, Precision::F32);
    }
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

/// Image `ni` of a batch whose images are `len` floats each.
fn image(v: &[f32], ni: usize, len: usize) -> &[f32] {
    &v[ni * len..(ni + 1) * len]
}

fn image_mut(v: &mut [f32], ni: usize, len: usize) -> &mut [f32] {
    &mut v[ni * len..(ni + 1) * len]
}

/// Sizes shared by the six fast entry points, checked once against the slices. `x_len`, `w_len`
/// and `y_len` are the lengths of the operator's input-side, weight and output-side buffers.
struct Plan {
    cg: ColGeom,
    /// Input and output planes of the operator (conv2d or conv_transpose2d).
    hw: usize,
    ohw: usize,
    cin_g: usize,
    cout_g: usize,
    /// Rows of one group's block of the column matrix: the GEMM inner size.
    kdim: usize,
    groups: usize,
}

impl Plan {
    fn new(g: &Conv2dGeom, transpose: bool, x_len: usize, w_len: usize, y_len: usize) -> Self {
        assert!(
            g.groups >= 1 && g.c_in.is_multiple_of(g.groups) && g.c_out.is_multiple_of(g.groups)
        );
        assert!(g.stride.0 >= 1 && g.stride.1 >= 1);
        let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
        let cg = ColGeom::new(g, transpose);
        let (w_rows, per_group) = if transpose {
            (g.c_in, cout_g)
        } else {
            (g.c_out, cin_g)
        };
        let (hw, kdim) = (g.h * g.w, per_group * cg.kk());
        // The transpose's output is the image its column geometry reads.
        let ohw = if transpose { cg.h * cg.w } else { cg.ohw() };
        assert_eq!(x_len, g.n * g.c_in * hw);
        assert_eq!(w_len, w_rows * kdim);
        assert_eq!(y_len, g.n * g.c_out * ohw);
        Plan {
            cg,
            hw,
            ohw,
            cin_g,
            cout_g,
            kdim,
            groups: g.groups,
        }
    }
    /// A column-matrix buffer (stale contents: im2col and the transpose's GEMM write all of it);
    /// none for an identity conv, whose column matrix is the image.
    fn col_buffer(&self, transpose: bool) -> Scratch {
        if !transpose && self.cg.identity() {
            return scratch_overwritten(0);
        }
        scratch_overwritten(self.cg.c * self.cg.kk() * self.cg.ohw())
    }
    /// [`grouped_mm`] over this convolution's groups.
    fn mm(&self, dims: Dims, a: (&[f32], bool), b: (&[f32], bool), c: &mut [f32], acc: bool) {
        grouped_mm(self.groups, dims, a, b, c, acc)
    }
    /// The column matrix of conv input `xi` (the image itself for an identity conv).
    fn columns<'a>(&self, xi: &'a [f32], col: &'a mut [f32]) -> &'a [f32] {
        if self.cg.identity() {
            return xi;
        }
        im2col(&self.cg, xi, col);
        col
    }
}

/// Defines an implementation's six public entry points over its three passes, `forward`,
/// `backward_input` and `backward_weight`, each taking `transpose` (conv_transpose2d) after `g`.
/// The buffers' shapes are in the file's header.
macro_rules! entry_points {
    ($($transpose:literal => $fwd:ident, $bwd_x:ident, $bwd_w:ident;)*) => {$(
        /// y (overwritten) = the convolution of x with w, plus bias.
        pub fn $fwd(g: Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
            forward(g, $transpose, x, w, bias, y)
        }
        /// dx (overwritten) from dy.
        pub fn $bwd_x(g: Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
            backward_input(g, $transpose, w, dy, dx)
        }
        /// dw and optionally dbias (overwritten) from x and dy.
        pub fn $bwd_w(g: Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32], db: Option<&mut [f32]>) {
            backward_weight(g, $transpose, x, dy, dw);
            if let Some(db) = db {
                bias_backward(&g, $transpose, dy, db);
            }
        }
    )*};
}

entry_points! {
    false => conv2d_forward, conv2d_backward_input, conv2d_backward_weight;
    true => conv_transpose2d_forward, conv_transpose2d_backward_input, conv_transpose2d_backward_weight;
}

fn forward(g: Conv2dGeom, transpose: bool, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
    let p = Plan::new(&g, transpose, x.len(), w.len(), y.len());
    if !transpose && shifted_applies(&g) {
        return conv2d_shifted(g, x, w, b, y);
    }
    let (xlen, ylen) = (g.c_in * p.hw, g.c_out * p.ohw);
    let mut col = p.col_buffer(transpose);
    for ni in 0..g.n {
        let (xi, yi) = (image(x, ni, xlen), image_mut(y, ni, ylen));
        if transpose {
            let d = (p.kdim, p.hw, p.cin_g);
            p.mm(d, (w, true), (xi, false), &mut col, false);
            col2im(&p.cg, &col, yi);
        } else {
            let cols = p.columns(xi, &mut col);
            let d = (p.cout_g, p.ohw, p.kdim);
            p.mm(d, (w, false), (cols, false), yi, false);
        }
    }
    if let Some(b) = b {
        assert_eq!(b.len(), g.c_out);
        add_bias(y, b, p.ohw);
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
/// GEMM operand — and the `Wp − ow` extra columns of each row are dropped at the end. The caller
/// has checked the slice lengths.
fn conv2d_shifted(g: Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (oh, ow) = g.out_hw();
    let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
    let (plane, pplane, kk) = (g.h * g.w, hp * wp, g.kh * g.kw);
    if oh == 0 || ow == 0 {
        return;
    }
    // Columns j = oy·Wp + ox of the wide output; the last row needs only `ow` of them.
    let n_wide = (oh - 1) * wp + ow;
    // Per-tap weights [tap][c_out][c_in], so each tap's A operand is a dense matrix. The three
    // buffers come from the thread's scratch pool: fresh ones page-faulted on every call (the
    // neck of LiteMedSAM: 11 MiB).
    let mut wt = scratch_overwritten(kk * g.c_out * g.c_in);
    wt.par_chunks_mut(g.c_out * g.c_in)
        .enumerate()
        .for_each(|(tap, dst)| {
            for (d, &s) in dst.iter_mut().zip(w[tap..].iter().step_by(kk)) {
                *d = s;
            }
        });
    let mut xpad = scratch(g.c_in * pplane);
    // Only the first `n_wide` columns of each channel row are computed, and read.
    let mut wide = scratch_overwritten(g.c_out * oh * wp);
    for ni in 0..g.n {
        let xi = image(x, ni, g.c_in * plane);
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
            let dims = GemmDims {
                batch: 1,
                m: g.c_out,
                n: n_wide,
                k: g.c_in,
            };
            let wtap = &wt[tap * g.c_out * g.c_in..(tap + 1) * g.c_out * g.c_in];
            let la = Layout::row_major(g.c_out, g.c_in);
            // Each operand and the output are strided views: one row per channel.
            let view = |row_stride| Layout {
                batch_stride: 0,
                row_stride,
                col_stride: 1,
            };
            let (lb, lc) = (view(pplane), view(oh * wp));
            let xtap = &xpad[ky * wp + kx..];
            gemm(
                dims,
                wtap,
                la,
                xtap,
                lb,
                &mut wide,
                lc,
                tap > 0,
                Precision::F32,
            );
        }
        let yi = image_mut(y, ni, g.c_out * oh * ow);
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

fn backward_input(g: Conv2dGeom, transpose: bool, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let p = Plan::new(&g, transpose, dx.len(), w.len(), dy.len());
    let (xlen, ylen) = (g.c_in * p.hw, g.c_out * p.ohw);
    let mut col = p.col_buffer(transpose);
    for ni in 0..g.n {
        let (dyi, dxi) = (image(dy, ni, ylen), image_mut(dx, ni, xlen));
        if transpose {
            im2col(&p.cg, dyi, &mut col);
            let d = (p.cin_g, p.hw, p.kdim);
            p.mm(d, (w, false), (&col, false), dxi, false);
        } else if p.cg.identity() {
            let d = (p.kdim, p.ohw, p.cout_g);
            p.mm(d, (w, true), (dyi, false), dxi, false);
        } else {
            let d = (p.kdim, p.ohw, p.cout_g);
            p.mm(d, (w, true), (dyi, false), &mut col, false);
            col2im(&p.cg, &col, dxi);
        }
    }
}

fn backward_weight(g: Conv2dGeom, transpose: bool, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let p = Plan::new(&g, transpose, x.len(), dw.len(), dy.len());
    if g.n == 0 {
        dw.fill(0.0);
    }
    let (xlen, ylen) = (g.c_in * p.hw, g.c_out * p.ohw);
    let mut col = p.col_buffer(transpose);
    for ni in 0..g.n {
        // Image 0 overwrites dw, the others accumulate into it.
        let (xi, dyi, acc) = (image(x, ni, xlen), image(dy, ni, ylen), ni > 0);
        if transpose {
            im2col(&p.cg, dyi, &mut col);
            p.mm((p.cin_g, p.kdim, p.hw), (xi, false), (&col, true), dw, acc);
        } else {
            let cols = p.columns(xi, &mut col);
            let d = (p.cout_g, p.kdim, p.ohw);
            p.mm(d, (dyi, false), (cols, true), dw, acc);
        }
    }
}

/// dbias (overwritten): the per-channel sums of dy.
fn bias_backward(g: &Conv2dGeom, transpose: bool, dy: &[f32], db: &mut [f32]) {
    assert_eq!(db.len(), g.c_out);
    let (oh, ow) = if transpose {
        g.transpose_out_hw()
    } else {
        g.out_hw()
    };
    bias_grad(dy, g.c_out, oh * ow, db);
}

/// Direct-loop oracles (f64 accumulation), any `groups`. conv2d loops over outputs and finds the
/// input pixel under each kernel tap; conv_transpose2d loops over inputs and finds the output
/// pixel each tap lands on. Both visit taps through `for_each_tap` and differ only there.
pub mod reference {
    use super::Conv2dGeom;

    /// Output height and width of conv2d, or of conv_transpose2d when `transpose`.
    fn out_hw(g: &Conv2dGeom, transpose: bool) -> (usize, usize) {
        if transpose {
            g.transpose_out_hw()
        } else {
            g.out_hw()
        }
    }

    /// Calls `f(xi, wi, yi)` with the flat indices of every (input, weight, output) triple in
    /// which `x[xi] · w[wi]` contributes to `y[yi]`. The weight is `[c_out, c_in/groups, kh, kw]`
    /// for conv2d and `[c_in, c_out/groups, kh, kw]` for conv_transpose2d: its leading index is
    /// the channel this loop walks in the outer position (`a`), the next one the other (`cl`).
    fn for_each_tap(g: &Conv2dGeom, transpose: bool, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = out_hw(g, transpose);
        let (cin_g, cout_g) = (g.c_in / g.groups, g.c_out / g.groups);
        let (outer_c, outer_g, inner_g) = if transpose {
            (g.c_in, cin_g, cout_g)
        } else {
            (g.c_out, cout_g, cin_g)
        };
        // `(ly, lx)` walks the looped side; `(ty, tx) = l·stride + k − pad` is the tapped side.
        let (loop_hw, tap_hw) = if transpose {
            ((g.h, g.w), (oh, ow))
        } else {
            ((oh, ow), (g.h, g.w))
        };
        for ni in 0..g.n {
            for a in 0..outer_c {
                for cl in 0..inner_g {
                    let b = (a / outer_g) * inner_g + cl;
                    let (ci, co) = if transpose { (a, b) } else { (b, a) };
                    for ly in 0..loop_hw.0 {
                        for lx in 0..loop_hw.1 {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let ty = (ly * g.stride.0 + ky) as isize - g.pad.0 as isize;
                                    let tx = (lx * g.stride.1 + kx) as isize - g.pad.1 as isize;
                                    if ty < 0 || tx < 0 {
                                        continue;
                                    }
                                    let (ty, tx) = (ty as usize, tx as usize);
                                    if ty >= tap_hw.0 || tx >= tap_hw.1 {
                                        continue;
                                    }
                                    let ((iy, ix), (oy, ox)) = if transpose {
                                        ((ly, lx), (ty, tx))
                                    } else {
                                        ((ty, tx), (ly, lx))
                                    };
                                    let xi = ((ni * g.c_in + ci) * g.h + iy) * g.w + ix;
                                    let wi = ((a * inner_g + cl) * g.kh + ky) * g.kw + kx;
                                    let yi = ((ni * g.c_out + co) * oh + oy) * ow + ox;
                                    f(xi, wi, yi);
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

    /// Per-channel sums of an `[n, c, plane]` tensor in f64.
    fn channel_sums(t: &[f32], c: usize, plane: usize) -> Vec<f64> {
        let mut b = vec![0.0f64; c];
        for (i, &v) in t.iter().enumerate() {
            b[(i / plane) % c] += v as f64;
        }
        b
    }

    fn forward(
        g: Conv2dGeom,
        transpose: bool,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let (oh, ow) = out_hw(&g, transpose);
        let mut acc = vec![0.0f64; y.len()];
        for_each_tap(&g, transpose, |xi, wi, yi| {
            acc[yi] += x[xi] as f64 * w[wi] as f64
        });
        if let Some(b) = bias {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += b[(i / (oh * ow)) % g.c_out] as f64;
            }
        }
        to_f32(&acc, y);
    }

    fn backward_input(g: Conv2dGeom, transpose: bool, w: &[f32], dy: &[f32], dx: &mut [f32]) {
        let mut acc = vec![0.0f64; dx.len()];
        for_each_tap(&g, transpose, |xi, wi, yi| {
            acc[xi] += dy[yi] as f64 * w[wi] as f64
        });
        to_f32(&acc, dx);
    }

    fn backward_weight(g: Conv2dGeom, transpose: bool, x: &[f32], dy: &[f32], dw: &mut [f32]) {
        let mut acc = vec![0.0f64; dw.len()];
        for_each_tap(&g, transpose, |xi, wi, yi| {
            acc[wi] += dy[yi] as f64 * x[xi] as f64
        });
        to_f32(&acc, dw);
    }

    fn bias_backward(g: &Conv2dGeom, transpose: bool, dy: &[f32], db: &mut [f32]) {
        let (oh, ow) = out_hw(g, transpose);
        to_f32(&channel_sums(dy, g.c_out, oh * ow), db);
    }

    entry_points! {
        false => conv2d_forward, conv2d_backward_input, conv2d_backward_weight;
        true => conv_transpose2d_forward, conv_transpose2d_backward_input, conv_transpose2d_backward_weight;
    }
}
