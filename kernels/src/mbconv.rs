//! TinyViT's MBConv (inverted residual) block for inference, fused over row bands:
//!
//! ```text
//! h1 = gelu(W1·x + b1)            1×1 expand,   c → hid
//! h2 = gelu(dw3×3(h1) + b2)       depthwise,    zero padding 1
//! y  = gelu(W3·h2 + b3 + x)       1×1 project,  hid → c, residual
//! ```
//!
//! with BatchNorm already folded into the weights. Run op by op, LiteMedSAM's first stage (256×256
//! pixels, c = 64, hid = 256) writes and re-reads two 64 MiB hidden tensors per block, so it runs
//! at DRAM speed. Here each task owns a range of output rows and walks it in bands of
//! `BAND` rows: it computes the band's hidden rows (plus the one-row halo the 3×3 needs, carried
//! over from the previous band) into a small buffer that stays in cache, then the depthwise conv,
//! then the projection with bias, residual and GELU — the hidden tensors never reach memory.
//!
//! The arithmetic per element is the same as the unfused ops' (same GEMM micro-kernel and k
//! order, same depthwise tap order), so results agree with them to rounding of the epilogue.
//! [`mod@reference`] is the plain composition of the reference ops.
//!
//! [`mbconv_forward_nhwc`] is the same block on channels-last data (`[n, h, w, c]`): the pixels
//! are the GEMM rows, so the activations are read in place (row-major A) and only the small
//! weight matrices are packed, the depthwise conv is vectorised over channels, and each task
//! writes its output rows straight into `y`. Each GEMM element sums over the same k in the same
//! order as in the NCHW kernel, so the two differ only in the depthwise conv's rounding.

use crate::activation::simd::SyncPtr;
use crate::conv::Conv2dGeom;
use crate::depthwise::{nhwc_row3x3, plane_forward};
use crate::gemm::{gemm_fused_serial, Epilogue, GemmDims, Layout, Precision};
use crate::scratch::scratch_overwritten;
use rayon::prelude::*;

/// Output rows per band: the hidden band (`hid × (BAND + 2) × w` floats) should sit in L2/L3
/// (256 × 6 × 256 × 4 B = 1.5 MiB for LiteMedSAM).
const BAND: usize = 4;
/// Fewest output rows per parallel task. Each task recomputes the expansion of the halo row at
/// its top edge and starts its band pipeline afresh, so tasks are made as long as balance allows.
const MIN_TASK_ROWS: usize = 16;

/// The folded weights of one block.
#[derive(Clone, Copy, Debug)]
pub struct MbConvWeights<'a> {
    /// `[hid, c]` and `[hid]`: the 1×1 expansion.
    pub w1: &'a [f32],
    pub b1: &'a [f32],
    /// `[hid, 3, 3]` and `[hid]`: the depthwise 3×3.
    pub w2: &'a [f32],
    pub b2: &'a [f32],
    /// `[c, hid]` and `[c]`: the 1×1 projection.
    pub w3: &'a [f32],
    pub b3: &'a [f32],
}

/// Sizes: `n` images of `c` channels, `h × w` pixels, `hid` hidden channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MbConvDims {
    pub n: usize,
    pub c: usize,
    pub hid: usize,
    pub h: usize,
    pub w: usize,
}

fn check(d: &MbConvDims, x: &[f32], wt: &MbConvWeights, y: &[f32]) {
    let MbConvDims { n, c, hid, h, w } = *d;
    assert_eq!(x.len(), n * c * h * w, "mbconv: x");
    assert_eq!(y.len(), x.len(), "mbconv: y");
    assert_eq!(wt.w1.len(), hid * c, "mbconv: w1");
    assert_eq!(wt.b1.len(), hid, "mbconv: b1");
    assert_eq!(wt.w2.len(), hid * 9, "mbconv: w2");
    assert_eq!(wt.b2.len(), hid, "mbconv: b2");
    assert_eq!(wt.w3.len(), c * hid, "mbconv: w3");
    assert_eq!(wt.b3.len(), c, "mbconv: b3");
}

/// The parallel tasks: `(image, first row, rows)`, about two per thread over all images (at
/// least [`MIN_TASK_ROWS`] rows each). LiteMedSAM's 256-row stage on 2 threads: 4 tasks of 64
/// rows, 9 % faster than 16 tasks of 16. Every output row is computed the same way whatever task
/// holds it (the GEMMs' sums do not depend on how the rows are split), so the result does not
/// depend on the thread count.
fn row_tasks(n: usize, h: usize) -> Vec<(usize, usize, usize)> {
    let per_image = (2 * rayon::current_num_threads()).div_ceil(n.max(1));
    let rows = h.div_ceil(per_image.max(1)).max(MIN_TASK_ROWS);
    (0..n)
        .flat_map(|b| (0..h).step_by(rows).map(move |r| (b, r, rows.min(h - r))))
        .collect()
}

/// `y [n, c, h, w]` = the block applied to `x [n, c, h, w]` (NCHW).
pub fn mbconv_forward(d: MbConvDims, x: &[f32], wt: MbConvWeights, y: &mut [f32]) {
    check(&d, x, &wt, y);
    let MbConvDims { n, c, h, w, .. } = d;
    if n * c * h * w == 0 || d.hid == 0 {
        return mbconv_degenerate(d, x, wt, y);
    }
    let yp = SyncPtr::new(y);
    row_tasks(n, h).par_iter().for_each(|&(b, r0, rows)| {
        let xb = &x[b * c * h * w..(b + 1) * c * h * w];
        let mut out = scratch_overwritten(c * rows * w);
        rows_forward(&d, xb, &wt, r0, rows, &mut out);
        // A task's rows of one channel are contiguous in NCHW; copy them into place.
        for ch in 0..c {
            let dst = (b * c + ch) * h * w + r0 * w;
            // SAFETY: tasks own disjoint row ranges `r0..r0+rows` of image `b`, so these
            // ranges of `y` (in bounds: `dst + rows·w ≤ (b·c + ch + 1)·h·w`) never overlap.
            unsafe { yp.slice(dst, rows * w) }
                .copy_from_slice(&out[ch * rows * w..(ch + 1) * rows * w]);
        }
    });
}

/// `y [n, h, w, c]` = the block applied to `x [n, h, w, c]` (channels-last).
pub fn mbconv_forward_nhwc(d: MbConvDims, x: &[f32], wt: MbConvWeights, y: &mut [f32]) {
    check(&d, x, &wt, y);
    let MbConvDims { n, c, hid, h, w } = d;
    if n * c * h * w == 0 || hid == 0 {
        // y = gelu(b3 + x), with the channel the fastest index.
        for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            *y = crate::activation::gelu_f32(wt.b3[i % c.max(1)] + x);
        }
        return;
    }
    // Depthwise taps as [tap][hid]: one tap is a vector over channels.
    let mut taps = vec![0.0f32; 9 * hid];
    for ch in 0..hid {
        for t in 0..9 {
            taps[t * hid + ch] = wt.w2[ch * 9 + t];
        }
    }
    let yp = SyncPtr::new(y);
    row_tasks(n, h).par_iter().for_each(|&(b, r0, rows)| {
        let xb = &x[b * h * w * c..(b + 1) * h * w * c];
        // SAFETY: tasks own disjoint row ranges `r0..r0+rows` of image `b`; in channels-last
        // layout those rows are one contiguous, in-bounds range of `y`.
        let out = unsafe { yp.slice((b * h + r0) * w * c, rows * w * c) };
        rows_forward_nhwc(&d, xb, &wt, &taps, r0, out);
    });
}

/// Output rows `r0..r0 + out.len() / (w·c)` of one image `xb [h, w, c]` into `out [rows, w, c]`.
///
/// The expanded rows live in a ring of `BAND + 2` row slots (image row `r` in slot `r mod
/// slots`): each band expands only the rows it adds, and the depthwise conv reads its three
/// input rows wherever they sit, so nothing is copied between bands.
fn rows_forward_nhwc(
    d: &MbConvDims,
    xb: &[f32],
    wt: &MbConvWeights,
    taps: &[f32],
    r0: usize,
    out: &mut [f32],
) {
    let MbConvDims { c, hid, h, w, .. } = *d;
    let rows = out.len() / (w * c);
    let slots = BAND + 2;
    let row_len = w * hid;
    // Hidden rows from the thread's scratch pool (allocating them per task cost page faults on
    // every call); every element is written before it is read.
    let (mut h1_buf, mut h2_buf) = (
        scratch_overwritten(slots * row_len),
        scratch_overwritten(BAND * row_len),
    );
    let (h1, h2): (&mut [f32], &mut [f32]) = (&mut h1_buf, &mut h2_buf);
    // Expanded image rows lo..hi (inside the image) into their ring slots, one GEMM per run of
    // consecutive slots.
    let expand = |h1: &mut [f32], lo: usize, hi: usize| {
        let mut r = lo;
        while r < hi {
            let slot = r % slots;
            let run = (hi - r).min(slots - slot);
            gemm_fused_serial(
                GemmDims {
                    batch: 1,
                    m: run * w,
                    n: hid,
                    k: c,
                },
                &xb[r * w * c..(r + run) * w * c],
                Layout::row_major(run * w, c),
                wt.w1,
                // w1 is [hid, c]: element (k, j) of its transpose at j·c + k.
                Layout {
                    batch_stride: 0,
                    row_stride: 1,
                    col_stride: c,
                },
                &mut h1[slot * row_len..(slot + run) * row_len],
                Layout::row_major(run * w, hid),
                Precision::F32,
                Epilogue {
                    col_bias: Some(wt.b1),
                    gelu: true,
                    ..Epilogue::default()
                },
            );
            r += run;
        }
    };
    // Hidden rows b0-1 ..= b0+br of the first band, then br more per band.
    expand(h1, r0.saturating_sub(1), (r0 + 1).min(h));
    let mut b0 = r0;
    while b0 < r0 + rows {
        let br = BAND.min(r0 + rows - b0);
        expand(h1, (b0 + 1).min(h), (b0 + br + 1).min(h));
        let h1: &[f32] = h1;
        let row = |r: isize| {
            (r >= 0 && (r as usize) < h).then(|| {
                let slot = r as usize % slots;
                &h1[slot * row_len..(slot + 1) * row_len]
            })
        };
        for oy in 0..br {
            let r = (b0 + oy) as isize;
            let dst = &mut h2[oy * row_len..(oy + 1) * row_len];
            nhwc_row3x3(
                [row(r - 1), row(r), row(r + 1)],
                w,
                hid,
                taps,
                Some(wt.b2),
                true,
                dst,
            );
        }
        // Projection + bias + residual + GELU, straight into this task's output rows.
        let orow = b0 - r0;
        gemm_fused_serial(
            GemmDims {
                batch: 1,
                m: br * w,
                n: c,
                k: hid,
            },
            &h2[..br * row_len],
            Layout::row_major(br * w, hid),
            wt.w3,
            // w3 is [c, hid]: element (k, j) of its transpose at j·hid + k.
            Layout {
                batch_stride: 0,
                row_stride: 1,
                col_stride: hid,
            },
            &mut out[orow * w * c..(orow + br) * w * c],
            Layout::row_major(br * w, c),
            Precision::F32,
            Epilogue {
                col_bias: Some(wt.b3),
                residual: Some((&xb[b0 * w * c..(b0 + br) * w * c], c)),
                gelu: true,
                ..Epilogue::default()
            },
        );
        b0 += br;
    }
}

/// Empty tensors or no hidden channels: `y = gelu(b3 + x)` (what the composition gives).
fn mbconv_degenerate(d: MbConvDims, x: &[f32], wt: MbConvWeights, y: &mut [f32]) {
    let plane = d.h * d.w;
    for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        let ch = (i / plane.max(1)) % d.c.max(1);
        *y = crate::activation::gelu_f32(wt.b3[ch] + x);
    }
}

/// Output rows `r0..r0+rows` of one image `xb [c, h, w]` into `out [c, rows, w]`.
fn rows_forward(
    d: &MbConvDims,
    xb: &[f32],
    wt: &MbConvWeights,
    r0: usize,
    rows: usize,
    out: &mut [f32],
) {
    let MbConvDims { c, hid, h, w, .. } = *d;
    let plane = h * w;
    let slots = BAND + 2;
    // h1 rows r-1 .. r+BAND+1 of the current band, per hidden channel: [hid][slots][w].
    let (mut h1_buf, mut h2_buf) = (
        scratch_overwritten(hid * slots * w),
        scratch_overwritten(hid * BAND * w),
    );
    let (h1, h2): (&mut [f32], &mut [f32]) = (&mut h1_buf, &mut h2_buf);
    // Hidden row `row` (may be -1 or h: zero padding) into slot `slot`.
    let expand = |h1: &mut [f32], first_row: isize, first_slot: usize, count: usize| {
        // Rows outside the image are the depthwise conv's zero padding.
        let lo = first_row.max(0) as usize;
        let hi = ((first_row + count as isize).max(0) as usize).min(h);
        for s in 0..count {
            let row = first_row + s as isize;
            if row < 0 || row as usize >= h {
                for ch in 0..hid {
                    let o = (ch * slots + first_slot + s) * w;
                    h1[o..o + w].fill(0.0);
                }
            }
        }
        if lo >= hi {
            return;
        }
        let slot0 = first_slot + (lo as isize - first_row) as usize;
        gemm_fused_serial(
            GemmDims {
                batch: 1,
                m: hid,
                n: (hi - lo) * w,
                k: c,
            },
            wt.w1,
            Layout::row_major(hid, c),
            &xb[lo * w..],
            Layout {
                batch_stride: 0,
                row_stride: plane,
                col_stride: 1,
            },
            &mut h1[slot0 * w..],
            Layout {
                batch_stride: 0,
                row_stride: slots * w,
                col_stride: 1,
            },
            Precision::F32,
            Epilogue {
                row_bias: Some(wt.b1),
                gelu: true,
                ..Epilogue::default()
            },
        );
    };
    let mut b0 = r0;
    while b0 < r0 + rows {
        let br = BAND.min(r0 + rows - b0);
        if b0 == r0 {
            // First band: hidden rows b0-1 ..= b0+br.
            expand(h1, b0 as isize - 1, 0, br + 2);
        } else {
            // The previous band's last two hidden rows are this band's first two.
            for ch in 0..hid {
                let base = ch * slots * w;
                h1.copy_within(base + BAND * w..base + (BAND + 2) * w, base);
            }
            expand(h1, b0 as isize + 1, 2, br);
        }
        // Depthwise 3×3 over the band: input rows = slots 0..br+2, no vertical padding left.
        let g = Conv2dGeom::new([1, 1, br + 2, w], 1, (3, 3), (1, 1), (0, 1), 1);
        for ch in 0..hid {
            let src = &h1[ch * slots * w..ch * slots * w + (br + 2) * w];
            let dst = &mut h2[ch * br * w..(ch + 1) * br * w];
            plane_forward(&g, src, &wt.w2[ch * 9..ch * 9 + 9], wt.b2[ch], true, dst);
        }
        // Projection + bias + residual + GELU, into this task's output rows.
        let orow = b0 - r0;
        gemm_fused_serial(
            GemmDims {
                batch: 1,
                m: c,
                n: br * w,
                k: hid,
            },
            wt.w3,
            Layout::row_major(c, hid),
            &h2[..hid * br * w],
            Layout::row_major(hid, br * w),
            &mut out[orow * w..],
            Layout {
                batch_stride: 0,
                row_stride: rows * w,
                col_stride: 1,
            },
            Precision::F32,
            Epilogue {
                row_bias: Some(wt.b3),
                residual: Some((&xb[b0 * w..], plane)),
                gelu: true,
                ..Epilogue::default()
            },
        );
        b0 += br;
    }
}

/// The block as the composition of the reference ops (GEMM, depthwise conv, GELU), f32.
pub mod reference {
    use super::{MbConvDims, MbConvWeights};
    use crate::activation::reference::gelu_forward;
    use crate::conv::Conv2dGeom;
    use crate::depthwise::reference::depthwise_forward;

    /// `y [rows, cols] = a [rows, k] · b [k, cols] + bias[row]`, f64 accumulation.
    fn matmul_bias(
        a: &[f32],
        b: &[f32],
        bias: &[f32],
        rows: usize,
        k: usize,
        cols: usize,
    ) -> Vec<f32> {
        let mut y = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let mut acc = bias[i] as f64;
                for t in 0..k {
                    acc += a[i * k + t] as f64 * b[t * cols + j] as f64;
                }
                y[i * cols + j] = acc as f32;
            }
        }
        y
    }

    pub fn mbconv_forward(d: MbConvDims, x: &[f32], wt: MbConvWeights, y: &mut [f32]) {
        let MbConvDims { n, c, hid, h, w } = d;
        let plane = h * w;
        for b in 0..n {
            let xb = &x[b * c * plane..(b + 1) * c * plane];
            let pre1 = matmul_bias(wt.w1, xb, wt.b1, hid, c, plane);
            let mut h1 = vec![0.0; hid * plane];
            gelu_forward(&pre1, &mut h1);
            let g = Conv2dGeom::new([1, hid, h, w], hid, (3, 3), (1, 1), (1, 1), hid);
            let mut pre2 = vec![0.0; hid * plane];
            depthwise_forward(g, &h1, wt.w2, Some(wt.b2), &mut pre2);
            let mut h2 = vec![0.0; hid * plane];
            gelu_forward(&pre2, &mut h2);
            let mut pre3 = matmul_bias(wt.w3, &h2, wt.b3, c, hid, plane);
            for (p, &xv) in pre3.iter_mut().zip(xb) {
                *p += xv;
            }
            gelu_forward(&pre3, &mut y[b * c * plane..(b + 1) * c * plane]);
        }
    }
}
