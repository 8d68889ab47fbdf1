//! Row gathers for windowed attention: row tables (one or several sources) indexed by position,
//! with a fill row for the positions that fall outside the map (window padding), optionally a
//! column slice of each row cut into per-head blocks ([`RowPick`]), in one pass. Partitioning the projected tokens this
//! way lets the per-token work (norm, q/k/v projection, output projection) run on the map's own
//! tokens only, not on the padding of the edge windows.
//!
//! Every output row is written by one thread, so results do not depend on the thread count (a
//! gather is an exact copy in any case).

use rayon::prelude::*;

/// Index of an output row that takes the fill row instead of a source row (in the `usize`
/// indices of [`window_index`]; [`RowAt::from`] maps it to [`RowAt::FILL`]).
pub const FILL: usize = usize::MAX;

/// Below this many output elements the gather is not worth splitting across threads.
const PAR_MIN: usize = 1 << 15;

/// Where one output row of a gather comes from: row `row` of source `part`, or the fill row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowAt {
    pub part: usize,
    pub row: usize,
}

impl RowAt {
    /// The fill row.
    pub const FILL: RowAt = RowAt {
        part: usize::MAX,
        row: usize::MAX,
    };

    /// Row `row` of the first (or only) source.
    pub const fn row(row: usize) -> RowAt {
        RowAt { part: 0, row }
    }

    pub fn is_fill(self) -> bool {
        self.part == usize::MAX
    }
}

impl From<usize> for RowAt {
    /// Row `i` of the first source, or the fill row for [`FILL`].
    fn from(i: usize) -> RowAt {
        if i == FILL {
            RowAt::FILL
        } else {
            RowAt::row(i)
        }
    }
}

/// What a gather copies out of each source row, and how the output is laid out. Source rows
/// (and the fill row) are `width` wide; the index is read as `[blocks, block]`; the output is
/// `[blocks, groups, block, len]`: `out[b, g, t, ..]` = columns `col + g·len ..` `col +
/// (g+1)·len` of the row `index[b·block + t]` points at. With `groups = 1` (any `block`) that
/// is a plain row gather `[index.len(), len]`; with the columns of one of q/k/v as `heads`
/// groups of `len = c/heads` and `block = n` tokens per window, it is that projection split
/// into per-head `[windows, heads, n, c/heads]` blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowPick {
    pub width: usize,
    pub col: usize,
    pub len: usize,
    pub groups: usize,
    pub block: usize,
}

impl RowPick {
    /// Whole rows of `width` elements, `[index.len(), width]`.
    pub const fn rows(width: usize) -> RowPick {
        RowPick {
            width,
            col: 0,
            len: width,
            groups: 1,
            block: 1,
        }
    }

    /// Output elements for `indices` index entries.
    pub fn out_len(&self, indices: usize) -> usize {
        indices * self.groups * self.len
    }

    /// Why this pick cannot gather `index` from sources of `part_rows` rows (with a fill row if
    /// `fill`), or `None` if it can.
    pub fn mismatch(&self, part_rows: &[usize], fill: bool, index: &[RowAt]) -> Option<String> {
        if let Some(why) = self.layout_mismatch(index.len()) {
            return Some(why);
        }
        let bad = index.iter().find(|r| {
            if r.is_fill() {
                !fill
            } else {
                part_rows.get(r.part).is_none_or(|&n| r.row >= n)
            }
        });
        bad.map(|r| match r.is_fill() {
            true => "a fill index without a fill row".to_string(),
            false => format!("index {r:?} past sources of {part_rows:?} rows"),
        })
    }

    /// [`RowPick::mismatch`] without the index entries: columns past the row, blocks that do
    /// not divide the index.
    fn layout_mismatch(&self, indices: usize) -> Option<String> {
        let p = self;
        if p.len == 0 || p.groups == 0 || p.block == 0 || p.col + p.groups * p.len > p.width {
            return Some(format!(
                "{} groups of {} columns from column {} of rows of {}, blocks of {}",
                p.groups, p.len, p.col, p.width, p.block
            ));
        }
        if !indices.is_multiple_of(p.block) {
            return Some(format!("{indices} indices in blocks of {}", p.block));
        }
        None
    }
}

/// The gather [`RowPick`] describes: `parts` are row tables `[rows, width]`, `fill` the row
/// for [`RowAt::FILL`]; `out` is overwritten.
///
/// # Panics
/// If `out` is not `pick.out_len(index.len())` long, a part is not whole rows, or
/// [`RowPick::mismatch`] finds a problem (an index entry out of range panics where it is
/// read: callers that want an error check the index first).
pub fn gather_rows(
    parts: &[&[f32]],
    fill: Option<&[f32]>,
    index: &[RowAt],
    pick: RowPick,
    out: &mut [f32],
) {
    let RowPick {
        width,
        col,
        len,
        groups,
        block,
    } = pick;
    assert_eq!(out.len(), pick.out_len(index.len()), "gather_rows: out");
    assert!(
        width > 0 && parts.iter().all(|p| p.len() % width == 0),
        "gather_rows: parts are not rows of {width}"
    );
    assert!(
        fill.is_none_or(|f| f.len() == width),
        "gather_rows: fill row"
    );
    if let Some(why) = pick.layout_mismatch(index.len()) {
        panic!("gather_rows: {why}");
    }
    let src = Rows {
        parts,
        fill: fill.unwrap_or(&[]),
        width,
    };
    // Rows of one head's values are short: a fixed-size move per row (the length dispatched
    // once per task) instead of a memcpy call.
    // Without a fill row the index has no fill entries (checked above): no test per row.
    let copy = |out: &mut [f32], index: &[RowAt], c0: usize| match (len, fill.is_some()) {
        (16, false) => copy_rows::<16, false>(out, index, &src, c0, len),
        (32, false) => copy_rows::<32, false>(out, index, &src, c0, len),
        (64, false) => copy_rows::<64, false>(out, index, &src, c0, len),
        (_, false) => copy_rows::<0, false>(out, index, &src, c0, len),
        (16, true) => copy_rows::<16, true>(out, index, &src, c0, len),
        (32, true) => copy_rows::<32, true>(out, index, &src, c0, len),
        (64, true) => copy_rows::<64, true>(out, index, &src, c0, len),
        (_, true) => copy_rows::<0, true>(out, index, &src, c0, len),
    };
    if groups == 1 {
        // Output rows in index order: tasks of consecutive rows.
        if out.len() < PAR_MIN {
            copy(out, index, col);
        } else {
            let per = (PAR_MIN / len).max(1);
            out.par_chunks_mut(per * len)
                .zip(index.par_chunks(per))
                .for_each(|(o, ix)| copy(o, ix, col));
        }
        return;
    }
    // Units: the `block` rows of one (block, group) pair, contiguous in `out`.
    let unit = block * len;
    let run = |first: usize, out: &mut [f32]| {
        for (u, o) in out.chunks_exact_mut(unit).enumerate() {
            let (b, g) = ((first + u) / groups, (first + u) % groups);
            copy(o, &index[b * block..(b + 1) * block], col + g * len);
        }
    };
    if out.len() < PAR_MIN {
        run(0, out);
    } else {
        let per = (PAR_MIN / 4 / unit).max(1);
        out.par_chunks_mut(per * unit)
            .enumerate()
            .for_each(|(i, o)| run(i * per, o));
    }
}

/// The sources of a gather.
struct Rows<'a> {
    parts: &'a [&'a [f32]],
    fill: &'a [f32],
    width: usize,
}

/// `out` row `k` = columns `c0 .. c0 + len` of the row `index[k]` points at; `L` is `len`
/// for a fixed-size move, or 0 (any length); `FILL_ROWS`: whether the index may hold
/// [`RowAt::FILL`].
#[inline(always)]
fn copy_rows<const L: usize, const FILL_ROWS: bool>(
    out: &mut [f32],
    index: &[RowAt],
    src: &Rows,
    c0: usize,
    len: usize,
) {
    let len = if L == 0 { len } else { L };
    for (o, &r) in out.chunks_exact_mut(len).zip(index) {
        let row = if FILL_ROWS && r.is_fill() {
            &src.fill[c0..c0 + len]
        } else {
            let s = r.row * src.width + c0;
            &src.parts[r.part][s..s + len]
        };
        if L == 0 {
            o.copy_from_slice(row);
        } else {
            let row: &[f32; L] = row.try_into().expect("row length");
            *<&mut [f32; L]>::try_from(o).expect("row length") = *row;
        }
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
    use super::{RowAt, RowPick};

    pub fn gather_rows(
        parts: &[&[f32]],
        fill: Option<&[f32]>,
        index: &[RowAt],
        pick: RowPick,
    ) -> Vec<f32> {
        let mut out = Vec::new();
        for b in 0..index.len() / pick.block {
            for g in 0..pick.groups {
                for t in 0..pick.block {
                    let r = index[b * pick.block + t];
                    for j in 0..pick.len {
                        let c = pick.col + g * pick.len + j;
                        out.push(if r.is_fill() {
                            fill.unwrap()[c]
                        } else {
                            parts[r.part][r.row * pick.width + c]
                        });
                    }
                }
            }
        }
        out
    }
}
