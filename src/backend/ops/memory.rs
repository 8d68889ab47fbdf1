//! Buffers: upload, download, fill, strided copies in and out of views, and row gathers.

use crate::backend::*;
use crate::error::Result;

pub trait MemoryOps: PointwiseOps {
    fn upload(&self, host: &[f32]) -> Result<Storage>;

    fn download(&self, s: &Storage) -> Result<Vec<f32>>;

    fn zeros(&self, len: usize) -> Result<Storage>;

    fn fill(&self, len: usize, value: f32) -> Result<Storage>;

    /// Copies a strided view into a new contiguous buffer.
    fn materialize(&self, s: &Storage, view: &View) -> Result<Storage>;

    /// Writes `src` (contiguous, `view.shape`) into a zero buffer of `len` elements at `view`.
    fn scatter_into_zeros(&self, src: &Storage, view: &View, len: usize) -> Result<Storage>;

    /// Rows (or column groups of rows) picked from row tables by index, into a new buffer laid
    /// out as [`RowPick`] says (`medsam_kernels::window::gather_rows`). The caller has checked
    /// the index against the tables ([`RowPick::mismatch`]).
    fn gather_rows(&self, a: GatherIn) -> Result<Storage>;

    /// `parts` concatenated along `dim` into a new contiguous buffer of `out_shape` (the parts
    /// shaped like it except along `dim`, in order). The default composes the ops every backend
    /// has: each part written into a zero buffer of the output's size, the buffers added (so a
    /// `-0.0` comes out as `0.0`); a backend overrides it with one copy per part.
    fn concat(
        &self,
        parts: &[(&Storage, &View)],
        dim: usize,
        out_shape: &[usize],
    ) -> Result<Storage> {
        let n: usize = out_shape.iter().product();
        let strides = crate::tensor::contiguous_strides(out_shape);
        let flat = View {
            shape: vec![n],
            strides: vec![1],
            offset: 0,
        };
        let mut acc: Option<Storage> = None;
        let mut start = 0;
        for &(storage, view) in parts {
            let dense = self.materialize(storage, view)?;
            let placement = View {
                shape: view.shape.clone(),
                strides: strides.clone(),
                offset: start * strides[dim],
            };
            let placed = self.scatter_into_zeros(&dense, &placement, n)?;
            acc = Some(match acc {
                None => placed,
                Some(prev) => self.binary(Binary::Add, (&prev, &flat), (&placed, &flat))?,
            });
            start += view.shape[dim];
        }
        match acc {
            Some(out) => Ok(out),
            None => self.zeros(n),
        }
    }
}

pub use medsam_kernels::window::{RowAt, RowPick};

/// A row table `[rows, width]` stored contiguously from element `offset` of a buffer.
#[derive(Clone, Copy)]
pub struct RowTable<'a> {
    pub storage: &'a Storage,
    pub offset: usize,
    pub rows: usize,
}

/// Operands of [`MemoryOps::gather_rows`]: the source row tables (`index` entries name a part
/// and a row), the row for [`RowAt::FILL`] (a table of one row), and which columns go where
/// ([`RowPick`]: the output is `[index.len() / block, groups, block, len]`).
#[derive(Clone, Copy)]
pub struct GatherIn<'a> {
    pub parts: &'a [RowTable<'a>],
    pub fill: Option<RowTable<'a>>,
    pub index: &'a [RowAt],
    pub pick: RowPick,
}
