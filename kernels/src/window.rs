//! Row gathers for windowed attention: a row table indexed by position, with a fill row for the
//! positions that fall outside the map (window padding). Partitioning the projected tokens this
//! way lets the per-token work (norm, q/k/v projection, output projection) run on the map's own
//! tokens only, not on the padding of the edge windows.
//!
//! Every output row is written by one thread, so results do not depend on the thread count (a
//! gather is an exact copy in any case).

use rayon::prelude::*;

/// Index of an output row that takes the fill row instead of a source row.
pub const FILL: usize = usize::MAX;

/// Below this many output elements the gather is not worth splitting across threads.
const PAR_MIN: usize = 1 << 15;

/// `out` row `r` (of `len` elements) = `src` row `index[r]`, or `fill` where `index[r] == FILL`.
///
/// # Panics
/// If `out` is not `index.len() × len`, `fill` is not `len` long, or an index is past `src`.
pub fn gather_rows_fill(src: &[f32], len: usize, index: &[usize], fill: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), index.len() * len, "gather_rows_fill: out");
    assert_eq!(fill.len(), len, "gather_rows_fill: fill row");
    if len == 0 {
        return;
    }
    let rows = src.len() / len;
    assert!(
        index.iter().all(|&i| i == FILL || i < rows),
        "gather_rows_fill: index past {rows} source rows"
    );
    let run = |out: &mut [f32], index: &[usize]| {
        for (o, &i) in out.chunks_exact_mut(len).zip(index) {
            let row = if i == FILL {
                fill
            } else {
                &src[i * len..(i + 1) * len]
            };
            copy_row(o, row);
        }
    };
    if out.len() < PAR_MIN {
        run(out, index);
    } else {
        let per = (PAR_MIN / 4 / len).max(1);
        out.par_chunks_mut(per * len)
            .zip(index.par_chunks(per))
            .for_each(|(o, ix)| run(o, ix));
    }
}

/// `o = row`: a fixed-size (inlined) move for the short rows of per-head values, where a
/// `memcpy` call per row would cost more than the copy itself.
#[inline(always)]
fn copy_row(o: &mut [f32], row: &[f32]) {
    #[inline(always)]
    fn fixed<const L: usize>(o: &mut [f32], row: &[f32]) {
        let r: &[f32; L] = row.try_into().expect("row length");
        let o: &mut [f32; L] = o.try_into().expect("row length");
        *o = *r;
    }
    match o.len() {
        16 => fixed::<16>(o, row),
        32 => fixed::<32>(o, row),
        64 => fixed::<64>(o, row),
        _ => o.copy_from_slice(row),
    }
}

/// Row indices that partition a `[b, h, w]` map of rows into `ws × ws` windows (row-major over
/// batch, window row, window column, then position in the window), padded at the bottom and
/// right to whole windows with [`FILL`]; source row of `(bi, y, x)` is `(bi·h + y)·w + x`.
pub fn window_index(b: usize, (h, w): (usize, usize), ws: usize) -> Vec<usize> {
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let mut idx = Vec::with_capacity(b * nh * nw * ws * ws);
    for bi in 0..b {
        for wy in 0..nh {
            for wx in 0..nw {
                for iy in 0..ws {
                    for ix in 0..ws {
                        let (y, x) = (wy * ws + iy, wx * ws + ix);
                        idx.push(if y < h && x < w {
                            (bi * h + y) * w + x
                        } else {
                            FILL
                        });
                    }
                }
            }
        }
    }
    idx
}

/// Row indices that undo a window partition of per-head rows: the attention output of the
/// windows of [`window_index`], laid out `[windows, heads, ws·ws, d]`, back to the map's tokens
/// `[b, h, w, heads·d]` (padding dropped); output row `((bi·h + y)·w + x)·heads + head` of `d`
/// values comes from row `(window·heads + head)·ws² + position`.
pub fn unwindow_index(b: usize, (h, w): (usize, usize), ws: usize, heads: usize) -> Vec<usize> {
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let n = ws * ws;
    let mut idx = Vec::with_capacity(b * h * w * heads);
    for bi in 0..b {
        for y in 0..h {
            for x in 0..w {
                let win = (bi * nh + y / ws) * nw + x / ws;
                let pos = (y % ws) * ws + x % ws;
                for hd in 0..heads {
                    idx.push((win * heads + hd) * n + pos);
                }
            }
        }
    }
    idx
}

/// Plain-loop oracle.
pub mod reference {
    use super::FILL;

    pub fn gather_rows_fill(src: &[f32], len: usize, index: &[usize], fill: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(index.len() * len);
        for &i in index {
            for j in 0..len {
                out.push(if i == FILL { fill[j] } else { src[i * len + j] });
            }
        }
        out
    }
}
