//! Pointwise functions, broadcast arithmetic, reductions, softmax and bilinear resampling.

use crate::backend::*;
use crate::error::Result;
use medsam_kernels::rope::RopeDims;

pub trait PointwiseOps {
    fn unary(&self, op: Unary, x: &Storage) -> Result<Storage>;

    /// `dx = dy · f'(x)`.
    fn unary_backward(&self, op: Unary, x: &Storage, dy: &Storage) -> Result<Storage>;

    /// `out[shape] = a[view_a] ∘ b[view_b]`; the views carry zero strides where they broadcast.
    fn binary(&self, op: Binary, a: &Storage, va: &View, b: &Storage, vb: &View)
        -> Result<Storage>;

    /// Sums a contiguous `shape` tensor over the axes where `reduce[d]` is true (kept as size 1).
    fn sum_axes(&self, x: &Storage, shape: &[usize], reduce: &[bool]) -> Result<Storage>;

    fn softmax(&self, rows: usize, dim: usize, x: &Storage) -> Result<Storage>;

    /// Softmax of `x + bias` over rows of `dim`, `bias` a `[bias_rows, dim]` table repeated over
    /// the rows (`rows` a multiple of `bias_rows`); inference only. Default: add, then softmax.
    fn softmax_bias(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        bias: &Storage,
        bias_rows: usize,
    ) -> Result<Storage> {
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
        let s = self.binary(Binary::Add, x, &vx, bias, &vb)?;
        self.softmax(rows, dim, &s)
    }

    fn softmax_backward(
        &self,
        rows: usize,
        dim: usize,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage>;

    /// Bilinear resize of `[planes, h, w]` to `[planes, oh, ow]` (align_corners=False).
    fn bilinear(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        x: &Storage,
    ) -> Result<Storage>;

    fn bilinear_backward(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        dy: &Storage,
    ) -> Result<Storage>;

    // ---- depthwise conv and batch norm (TinyViT / LiteMedSAM). The defaults run the CPU kernels
    // on host copies, so a device backend works unchanged and may override them for speed. ----

    /// Rotary position embedding (see `medsam_kernels::rope`): `x [rows, n, dim]` rotated by
    /// `cos`/`sin` tables `[table_len, dim/2]`; inference only.
    fn rope(&self, d: RopeDims, x: &Storage, cos: &Storage, sin: &Storage) -> Result<Storage>;
}
