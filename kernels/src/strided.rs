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
    gather_on(TileIsa::best(), src, view, out)
}

/// An implementation of the transposing tile copy inside [`gather_on`] (views whose last two
/// axes are swapped); tests force each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileIsa {
    /// Element by element, 16 rows × 64 columns at a time.
    Portable,
    /// 16 × 16 tiles loaded as 16 vectors and transposed in registers. Needs AVX-512F
    /// ([`gather_on`] panics without it).
    Avx512,
}

impl TileIsa {
    /// The fastest implementation this CPU has.
    pub fn best() -> TileIsa {
        if cfg!(target_arch = "x86_64") && crate::cpu::features().avx512f {
            TileIsa::Avx512
        } else {
            TileIsa::Portable
        }
    }
}

/// [`gather`] with the transposing tile copy on a chosen implementation (the other views take
/// the same row copies either way). Both give the same bits: they only move values.
pub fn gather_on(isa: TileIsa, src: &[f32], view: StridedView, out: &mut [f32]) {
    let n = view.numel();
    assert_eq!(out.len(), n, "gather: output length");
    if n == 0 {
        return;
    }
    let inner = view.shape.last().copied().unwrap_or(1).max(1);
    let stride = view.strides.last().copied().unwrap_or(1);
    let nd = view.shape.len();
    if nd >= 2 && view.strides[nd - 2] == 1 && stride > 1 && view.shape[nd - 2] > 1 {
        assert!(
            isa == TileIsa::Portable || TileIsa::best() == TileIsa::Avx512,
            "gather: no AVX-512F"
        );
        let last = view.offset
            + (0..nd)
                .map(|d| (view.shape[d] - 1) * view.strides[d])
                .sum::<usize>();
        assert!(last < src.len(), "gather: view overruns the source");
        gather_transposed(isa, src, view, out);
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

/// Output rows per tile of [`gather_transposed`] (the 16 lanes of an AVX-512 register).
const TILE_ROWS: usize = 16;

/// [`gather`] for a view whose last two axes are transposed (the second-last has stride 1), in
/// tiles of 16 output rows so that every source cache line is used while it is loaded: output
/// row `r0 + i`, column `c` is `src[base(r0 + i) + c·stride]`. Where the tile's 16 rows are 16
/// consecutive source values (`base(r0 + i) = base(r0) + i`, the usual case) the AVX-512 path
/// loads each column's 16 values as one vector and transposes 16 columns at a time; the rest
/// (ragged tiles, leftover columns) is copied element by element. The caller has checked that
/// the view lies inside `src`.
fn gather_transposed(isa: TileIsa, src: &[f32], view: StridedView, out: &mut [f32]) {
    const CB: usize = 64;
    let inner = view.shape[view.shape.len() - 1];
    let stride = view.strides[view.strides.len() - 1];
    let block = |(bi, dst): (usize, &mut [f32])| {
        let r0 = bi * TILE_ROWS;
        let nr = dst.len() / inner;
        let mut bases = [0usize; TILE_ROWS];
        for (i, b) in bases.iter_mut().enumerate().take(nr) {
            *b = row_offset(view, r0 + i);
        }
        let consecutive =
            nr == TILE_ROWS && bases.iter().enumerate().all(|(i, &b)| b == bases[0] + i);
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if isa == TileIsa::Avx512 && consecutive {
            // SAFETY: AVX-512F was checked by `gather_on`; every value read is an element of
            // the view (checked to lie inside `src`), and `dst` holds 16 rows of `inner`.
            done = unsafe { tiles16_avx512(src, bases[0], stride, inner, dst) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (isa, consecutive);
        for c0 in (done..inner).step_by(CB) {
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
        out.chunks_mut(TILE_ROWS * inner)
            .enumerate()
            .for_each(block);
    } else {
        out.par_chunks_mut(TILE_ROWS * inner)
            .enumerate()
            .for_each(block);
    }
}

/// The 16-column tiles of one 16-row block of [`gather_transposed`]: output row `i`, column `c`
/// ← `src[base + i + c·stride]` for the columns below `inner` rounded down to 16; returns how
/// many columns it wrote.
///
/// # Safety
/// AVX-512F must be available, `src[base + c·stride .. base + c·stride + 16]` must lie inside
/// `src` for every such column `c`, and `dst` must hold `16 · inner` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tiles16_avx512(
    src: &[f32],
    base: usize,
    stride: usize,
    inner: usize,
    dst: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let full = inner / TILE_ROWS * TILE_ROWS;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for c0 in (0..full).step_by(TILE_ROWS) {
        let mut t = [_mm512_setzero_ps(); TILE_ROWS];
        for (j, tj) in t.iter_mut().enumerate() {
            *tj = _mm512_loadu_ps(sp.add(base + (c0 + j) * stride));
        }
        crate::attention::avx512::transpose16(&mut t);
        for (i, ti) in t.iter().enumerate() {
            _mm512_storeu_ps(dp.add(i * inner + c0), *ti);
        }
    }
    full
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
