//! Rotary position embedding (RoPE), axial 2-D, as SAM2's `sam2/modeling/position_encoding.py`
//! (`compute_axial_cis`, `apply_rotary_enc`) computes it.
//!
//! - Tables: for a `end_x × end_y` grid (position `p = y·end_x + x`) and head width `dim`
//!   (a multiple of 4), `freqs[j] = 1 / theta^(4j / dim)` for `j < dim/4`; the angle of pair `i`
//!   at `p` is `x·freqs[i]` for `i < dim/4` and `y·freqs[i − dim/4]` after. [`axial_tables`]
//!   returns `cos` and `sin` of those angles, each `[end_x·end_y, dim/2]`, in f32 as torch does.
//! - Application: `x [rows, n, dim]` is read as `dim/2` complex pairs `(x[2i], x[2i+1])` per
//!   position, each multiplied by `e^{i·angle[p % n_table][i]}`:
//!   `(a, b) → (a·cos − b·sin, a·sin + b·cos)`. Positions beyond the table repeat it
//!   (`repeat_freqs_k=True` for keys that are several copies of the query grid). The output is a
//!   fresh dense buffer of the same shape; positions run in parallel, each written by one thread.

use rayon::prelude::*;

/// The geometry of one application: `rows` sequences (batch × heads) of `n` positions of width
/// `dim` (even), rotated by a table of `table_len` positions (`n` a multiple of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub rows: usize,
    pub n: usize,
    pub dim: usize,
    pub table_len: usize,
}

impl RopeDims {
    fn check(&self, x: usize, cos: usize, sin: usize, out: usize) {
        let RopeDims {
            rows,
            n,
            dim,
            table_len,
        } = *self;
        assert!(dim.is_multiple_of(2), "rope: dim {dim} is odd");
        assert!(
            table_len > 0 && n.is_multiple_of(table_len),
            "rope: {n} positions do not repeat a table of {table_len}"
        );
        assert_eq!(x, rows * n * dim, "rope: x length");
        assert_eq!(out, x, "rope: out length");
        assert_eq!(cos, table_len * dim / 2, "rope: cos table length");
        assert_eq!(sin, cos, "rope: sin table length");
    }
}

/// `(cos, sin)` of SAM2's axial angles, each `[end_x·end_y, dim/2]` (`compute_axial_cis`).
pub fn axial_tables(dim: usize, end_x: usize, end_y: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    assert!(
        dim.is_multiple_of(4),
        "rope: axial dim {dim} is not a multiple of 4"
    );
    let q = dim / 4;
    // torch: 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim)), in f32.
    let freqs: Vec<f32> = (0..q)
        .map(|j| 1.0 / theta.powf((4 * j) as f32 / dim as f32))
        .collect();
    let n = end_x * end_y;
    let (mut cos, mut sin) = (vec![0.0; n * 2 * q], vec![0.0; n * 2 * q]);
    for p in 0..n {
        let (tx, ty) = ((p % end_x) as f32, (p / end_x) as f32);
        for (i, &f) in freqs.iter().enumerate() {
            for (k, t) in [(i, tx), (q + i, ty)] {
                let a = t * f;
                cos[p * 2 * q + k] = a.cos();
                sin[p * 2 * q + k] = a.sin();
            }
        }
    }
    (cos, sin)
}

/// Positions per parallel task of [`apply`] (a few hundred KiB of a 256-wide operand).
const POSITIONS_PER_TASK: usize = 256;

/// Rotates `x` into `out` (see the module doc). Runs in parallel over positions, not rows:
/// SAM2's memory attention has a single head, i.e. one row of up to 7 × 1024 positions.
pub fn apply(d: RopeDims, x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    d.check(x.len(), cos.len(), sin.len(), out.len());
    let half = d.dim / 2;
    if d.dim == 0 || d.n == 0 {
        return;
    }
    let span = POSITIONS_PER_TASK * d.dim;
    out.par_chunks_mut(span)
        .zip(x.par_chunks(span))
        .enumerate()
        .for_each(|(task, (o, x))| {
            let first = task * POSITIONS_PER_TASK;
            for (k, (xo, oo)) in x
                .chunks_exact(d.dim)
                .zip(o.chunks_exact_mut(d.dim))
                .enumerate()
            {
                // Rows hold whole repeats of the table, so the flat position indexes it directly.
                let t = ((first + k) % d.table_len) * half;
                let (c, s) = (&cos[t..t + half], &sin[t..t + half]);
                for (i, (xp, op)) in xo.chunks_exact(2).zip(oo.chunks_exact_mut(2)).enumerate() {
                    let (a, b) = (xp[0], xp[1]);
                    op[0] = a * c[i] - b * s[i];
                    op[1] = a * s[i] + b * c[i];
                }
            }
        });
}

/// The oracles: angles in f64 from the formula, and the rotation one element at a time.
pub mod reference {
    use super::RopeDims;

    /// The axial angles `[end_x·end_y, dim/2]` in f64.
    pub fn axial_angles(dim: usize, end_x: usize, end_y: usize, theta: f64) -> Vec<f64> {
        let q = dim / 4;
        let mut out = Vec::with_capacity(end_x * end_y * 2 * q);
        for y in 0..end_y {
            for x in 0..end_x {
                for (t, _) in [(x, 0), (y, 1)] {
                    for j in 0..q {
                        let f = 1.0 / theta.powf((4 * j) as f64 / dim as f64);
                        out.push(t as f64 * f);
                    }
                }
            }
        }
        out
    }

    pub fn apply(d: RopeDims, x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
        let half = d.dim / 2;
        for r in 0..d.rows {
            for p in 0..d.n {
                let t = p % d.table_len;
                for i in 0..half {
                    let at = (r * d.n + p) * d.dim + 2 * i;
                    let (a, b) = (x[at], x[at + 1]);
                    let (c, s) = (cos[t * half + i], sin[t * half + i]);
                    out[at] = a * c - b * s;
                    out[at + 1] = a * s + b * c;
                }
            }
        }
    }
}
