//! 2×2 max pooling with stride 2 (`nn.MaxPool2d(2, 2)`, floor mode) on channels-last maps.
//!
//! Conventions: the input is a strided view of `src` — element `(b, y, x, ch)` sits at
//! `offset + b·s_batch + y·s_row + x·s_col + ch` (channels contiguous), so the queries sliced out
//! of a fused q/k/v projection are pooled in place, without a copy. The output is a dense
//! `[n, h/2, w/2, c]` buffer that is overwritten; an odd last row or column is dropped. A NaN in
//! a window gives NaN, as in PyTorch. Each output row is written by one thread, so results do
//! not depend on the thread count.

use rayon::prelude::*;

/// A channels-last `[n, h, w, c]` view of a buffer; `strides = [s_batch, s_row, s_col]` in
/// elements (the channel stride is 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NhwcView {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub strides: [usize; 3],
    pub offset: usize,
}

impl NhwcView {
    /// Output elements: `n · (h/2) · (w/2) · c`.
    pub fn pooled_len(&self) -> usize {
        self.n * (self.h / 2) * (self.w / 2) * self.c
    }

    /// One past the last element the view reads (0 for an empty view).
    pub fn extent(&self) -> usize {
        if self.n * self.h * self.w * self.c == 0 {
            return 0;
        }
        let [sb, sy, sx] = self.strides;
        self.offset + (self.n - 1) * sb + (self.h - 1) * sy + (self.w - 1) * sx + self.c
    }
}

/// Below this many output elements the rows are not split across threads.
const PAR_MIN: usize = 1 << 14;

/// `max(a, b)` that returns NaN if either is NaN (`f32::max` would drop it).
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

/// `out = maxpool2x2(view of src)`.
///
/// # Panics
/// If `out` is not `v.pooled_len()` long or the view reads past `src`.
pub fn max_pool2x2_nhwc(src: &[f32], v: &NhwcView, out: &mut [f32]) {
    assert_eq!(out.len(), v.pooled_len(), "max_pool2x2_nhwc: out");
    assert!(v.extent() <= src.len(), "max_pool2x2_nhwc: view past src");
    let (oh, ow, c) = (v.h / 2, v.w / 2, v.c);
    if out.is_empty() {
        return;
    }
    let [sb, sy, sx] = v.strides;
    let pool_row = |r: usize, o: &mut [f32]| {
        let (b, y) = (r / oh, r % oh);
        let row = v.offset + b * sb + 2 * y * sy;
        for (x, o) in o.chunks_exact_mut(c).enumerate() {
            let p = row + 2 * x * sx;
            let (a, b, d, e) = (
                &src[p..p + c],
                &src[p + sx..p + sx + c],
                &src[p + sy..p + sy + c],
                &src[p + sy + sx..p + sy + sx + c],
            );
            for ch in 0..c {
                o[ch] = max_nan(max_nan(a[ch], b[ch]), max_nan(d[ch], e[ch]));
            }
        }
    };
    if out.len() < PAR_MIN {
        out.chunks_exact_mut(ow * c)
            .enumerate()
            .for_each(|(r, o)| pool_row(r, o));
    } else {
        out.par_chunks_exact_mut(ow * c)
            .enumerate()
            .for_each(|(r, o)| pool_row(r, o));
    }
}

/// Plain-loop oracle.
pub mod reference {
    use super::NhwcView;

    /// `maxpool2x2(view of src)` as a fresh `[n, h/2, w/2, c]` buffer, PyTorch's loop: start at
    /// −∞, take a value if it is larger or NaN.
    pub fn max_pool2x2_nhwc(src: &[f32], v: &NhwcView) -> Vec<f32> {
        let (oh, ow) = (v.h / 2, v.w / 2);
        let [sb, sy, sx] = v.strides;
        let mut out = Vec::with_capacity(v.pooled_len());
        for b in 0..v.n {
            for y in 0..oh {
                for x in 0..ow {
                    for ch in 0..v.c {
                        let mut m = f32::NEG_INFINITY;
                        for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let at = v.offset + b * sb + (2 * y + dy) * sy + (2 * x + dx) * sx + ch;
                            let val = src[at];
                            if val > m || val.is_nan() {
                                m = val;
                            }
                        }
                        out.push(m);
                    }
                }
            }
        }
        out
    }
}
