//! Strided copies between a view of a flat buffer and a dense row-major buffer. A view's element
//! `idx` sits at `offset + Σ idx[d]·strides[d]`; a zero stride repeats (broadcasts) an axis.
//! Outputs are written in full (callers may pass reused, uninitialised-looking buffers); rows
//! (all axes but the last) run in parallel when large, and every output element is written by
//! one thread, so results do not depend on the thread count.

use rayon::prelude::*;

/// Below this many elements a loop is not worth splitting across threads.
const PAR_MIN: usize = 1 << 15;

/// A strided window onto a flat buffer.
#[derive(Clone, Copy, Debug)]
pub struct StridedView<'a> {
    pub shape: &'a [usize],
    pub strides: &'a [usize],
    pub offset: usize,
}

impl StridedView<'_> {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Offset in the source of the first element of outer row `row` (all axes but the last).
fn row_offset(view: StridedView, mut row: usize) -> usize {
    let nd = view.shape.len();
    let mut off = view.offset;
    for d in (0..nd.saturating_sub(1)).rev() {
        let s = view.shape[d];
        off += (row % s) * view.strides[d];
        row /= s;
    }
    off
}

/// Visits every element of a view in row-major order, handing out runs along the last axis:
/// `f(out_start, src_start, run_len)`, the source advancing by the last stride.
pub fn for_each_run(view: StridedView, mut f: impl FnMut(usize, usize, usize)) {
    let nd = view.shape.len();
    if nd == 0 {
        f(0, view.offset, 1);
        return;
    }
    let inner = view.shape[nd - 1];
    let outer: usize = view.shape[..nd - 1].iter().product();
    if inner == 0 || outer == 0 {
        return;
    }
    let mut idx = vec![0usize; nd - 1];
    let mut src = view.offset;
    for o in 0..outer {
        f(o * inner, src, inner);
        // advance the multi-index over the outer axes
        for d in (0..nd - 1).rev() {
            idx[d] += 1;
            src += view.strides[d];
            if idx[d] < view.shape[d] {
                break;
            }
            src -= view.strides[d] * view.shape[d];
            idx[d] = 0;
        }
    }
}

/// `out = src[view]`, `out` dense with the view's element count.
pub fn gather(src: &[f32], view: StridedView, out: &mut [f32]) {
    let n = view.numel();
    assert_eq!(out.len(), n, "gather: output length");
    if n == 0 {
        return;
    }
    let inner = view.shape.last().copied().unwrap_or(1).max(1);
    let stride = view.strides.last().copied().unwrap_or(1);
    let nd = view.shape.len();
    if nd >= 2 && view.strides[nd - 2] == 1 && stride > 1 && view.shape[nd - 2] > 1 {
        gather_transposed(src, view, out);
        return;
    }
    let copy_row = |(row, dst): (usize, &mut [f32])| {
        let s = row_offset(view, row);
        if stride == 1 {
            dst.copy_from_slice(&src[s..s + dst.len()]);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[s + i * stride];
            }
        }
    };
    for_each_row(out, inner, n, copy_row);
}

/// [`gather`] for a view whose last two axes are transposed (the second-last has stride 1):
/// copies 16-row × 64-column tiles so every source cache line is used while it is loaded.
fn gather_transposed(src: &[f32], view: StridedView, out: &mut [f32]) {
    const RB: usize = 16;
    const CB: usize = 64;
    let inner = view.shape[view.shape.len() - 1];
    let stride = view.strides[view.strides.len() - 1];
    let block = |(bi, dst): (usize, &mut [f32])| {
        let r0 = bi * RB;
        let nr = dst.len() / inner;
        let mut bases = [0usize; RB];
        for (i, b) in bases.iter_mut().enumerate().take(nr) {
            *b = row_offset(view, r0 + i);
        }
        for c0 in (0..inner).step_by(CB) {
            let c1 = (c0 + CB).min(inner);
            for (i, &b) in bases.iter().enumerate().take(nr) {
                let d = &mut dst[i * inner + c0..i * inner + c1];
                for (j, d) in d.iter_mut().enumerate() {
                    *d = src[b + (c0 + j) * stride];
                }
            }
        }
    };
    if out.len() < PAR_MIN {
        out.chunks_mut(RB * inner).enumerate().for_each(block);
    } else {
        out.par_chunks_mut(RB * inner).enumerate().for_each(block);
    }
}

/// `out[view] += src` for a dense `src` with the view's element count (serial: a view may
/// address an element more than once, and then the sums must not race).
pub fn scatter_add(src: &[f32], view: StridedView, out: &mut [f32]) {
    assert!(src.len() >= view.numel(), "scatter_add: source too short");
    let inner_stride = view.strides.last().copied().unwrap_or(1);
    for_each_run(view, |o, d, run| {
        for i in 0..run {
            out[d + i * inner_stride] += src[o + i];
        }
    });
}

/// `out = f(a[va], b[vb])` elementwise over two views of `va`'s shape (zero strides where an
/// operand broadcasts), without materialising the operands. Generic over `f` so each operator
/// gets its own (vectorised) loops.
pub fn zip_broadcast<F>(
    a: &[f32],
    va: StridedView,
    b: &[f32],
    vb: StridedView,
    f: F,
    out: &mut [f32],
) where
    F: Fn(f32, f32) -> f32 + Sync,
{
    let n = va.numel();
    assert_eq!(out.len(), n, "zip_broadcast: output length");
    if n == 0 {
        return;
    }
    let inner = va.shape.last().copied().unwrap_or(1).max(1);
    let (sa, sb) = (
        va.strides.last().copied().unwrap_or(1),
        vb.strides.last().copied().unwrap_or(1),
    );
    let row = |(r, dst): (usize, &mut [f32])| {
        let (oa, ob) = (row_offset(va, r), row_offset(vb, r));
        let len = dst.len();
        match (sa, sb) {
            (1, 1) => dst
                .iter_mut()
                .zip(&a[oa..oa + len])
                .zip(&b[ob..ob + len])
                .for_each(|((d, &x), &y)| *d = f(x, y)),
            (1, 0) => {
                let y = b[ob];
                dst.iter_mut()
                    .zip(&a[oa..oa + len])
                    .for_each(|(d, &x)| *d = f(x, y))
            }
            (0, 1) => {
                let x = a[oa];
                dst.iter_mut()
                    .zip(&b[ob..ob + len])
                    .for_each(|(d, &y)| *d = f(x, y))
            }
            _ => dst
                .iter_mut()
                .enumerate()
                .for_each(|(i, d)| *d = f(a[oa + i * sa], b[ob + i * sb])),
        }
    };
    for_each_row(out, inner, n, row);
}

/// Calls `f((r, row))` for each `inner`-long row of `out` (`n` elements in all), in parallel
/// once the work is worth it.
fn for_each_row<F>(out: &mut [f32], inner: usize, n: usize, f: F)
where
    F: Fn((usize, &mut [f32])) + Send + Sync,
{
    if n < PAR_MIN {
        out.chunks_mut(inner).enumerate().for_each(f);
    } else {
        out.par_chunks_mut(inner)
            .enumerate()
            .with_min_len((PAR_MIN / inner).max(1))
            .for_each(f);
    }
}

/// The oracles: every element by its multi-index.
pub mod reference {
    use super::StridedView;

    /// The source offset of each element of `view`, in row-major order.
    fn offsets(view: StridedView) -> Vec<usize> {
        let n: usize = view.shape.iter().product();
        (0..n)
            .map(|mut flat| {
                let mut off = view.offset;
                for d in (0..view.shape.len()).rev() {
                    off += (flat % view.shape[d]) * view.strides[d];
                    flat /= view.shape[d];
                }
                off
            })
            .collect()
    }

    pub fn gather(src: &[f32], view: StridedView, out: &mut [f32]) {
        for (o, s) in out.iter_mut().zip(offsets(view)) {
            *o = src[s];
        }
    }

    pub fn scatter_add(src: &[f32], view: StridedView, out: &mut [f32]) {
        for (x, d) in src.iter().zip(offsets(view)) {
            out[d] += x;
        }
    }

    pub fn zip_broadcast(
        a: &[f32],
        va: StridedView,
        b: &[f32],
        vb: StridedView,
        f: impl Fn(f32, f32) -> f32,
        out: &mut [f32],
    ) {
        for ((o, i), j) in out.iter_mut().zip(offsets(va)).zip(offsets(vb)) {
            *o = f(a[i], b[j]);
        }
    }
}
