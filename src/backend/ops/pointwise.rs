//! Pointwise functions, broadcast arithmetic, reductions, softmax and bilinear resampling.

use crate::backend::*;
use crate::error::Result;
use medsam_kernels::rope::RopeDims;

/// A `[rows, dim]` matrix worked on row by row (softmax over each row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowDims {
    pub rows: usize,
    pub dim: usize,
}

/// A bilinear resize of `planes` planes from `hw` to `ohw` (align_corners=False).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeDims {
    pub planes: usize,
    pub hw: (usize, usize),
    pub ohw: (usize, usize),
}

pub trait PointwiseOps {
    fn unary(&self, op: Unary, x: &Storage) -> Result<Storage>;

    /// `dx = dy · f'(x)`.
    fn unary_backward(&self, op: Unary, x: &Storage, dy: &Storage) -> Result<Storage>;

    /// `out[shape] = a.0[a.1] ∘ b.0[b.1]`; the views carry zero strides where they broadcast.
    fn binary(&self, op: Binary, a: (&Storage, &View), b: (&Storage, &View)) -> Result<Storage>;

    /// Sums a contiguous `shape` tensor over the axes where `reduce[d]` is true (kept as size 1).
    fn sum_axes(&self, x: &Storage, shape: &[usize], reduce: &[bool]) -> Result<Storage>;

    fn softmax(&self, d: RowDims, x: &Storage) -> Result<Storage>;

    /// Softmax of `x + table` over rows of `dim`, `bias = (table, bias_rows)` a `[bias_rows, dim]`
    /// table repeated over the rows (`rows` a multiple of `bias_rows`); inference only. Default:
    /// add, then softmax.
    fn softmax_bias(&self, d: RowDims, x: &Storage, bias: (&Storage, usize)) -> Result<Storage> {
        let (RowDims { rows, dim }, (bias, bias_rows)) = (d, bias);
        let reps = rows / bias_rows.max(1);
        let vx = View {
            shape: vec![reps, bias_rows, dim],
            strides: vec![bias_rows * dim, dim, 1],
            offset: 0,
        };
        let vb = View {
            shape: vec![reps, bias_rows, dim],
            strides: vec![0, dim, 1],
            offset: 0,
        };
        let s = self.binary(Binary::Add, (x, &vx), (bias, &vb))?;
        self.softmax(d, &s)
    }

    fn softmax_backward(&self, d: RowDims, y: &Storage, dy: &Storage) -> Result<Storage>;

    /// Bilinear resize of `[planes, h, w]` to `[planes, oh, ow]`.
    fn bilinear(&self, r: ResizeDims, x: &Storage) -> Result<Storage>;

    fn bilinear_backward(&self, r: ResizeDims, dy: &Storage) -> Result<Storage>;

    // ---- depthwise conv and batch norm (TinyViT / LiteMedSAM). The defaults run the CPU kernels
    // on host copies, so a device backend works unchanged and may override them for speed. ----

    /// Rotary position embedding (see `medsam_kernels::rope`): `x [rows, n, dim]` rotated by
    /// `cos`/`sin` tables `[table_len, dim/2]`; inference only.
    fn rope(&self, d: RopeDims, x: &Storage, cos: &Storage, sin: &Storage) -> Result<Storage>;
}
