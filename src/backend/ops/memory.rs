//! Buffers: upload, download, fill, and strided copies in and out of views.

use crate::backend::*;
use crate::error::Result;

pub trait MemoryOps {
    fn upload(&self, host: &[f32]) -> Result<Storage>;

    fn download(&self, s: &Storage) -> Result<Vec<f32>>;

    fn zeros(&self, len: usize) -> Result<Storage>;

    fn fill(&self, len: usize, value: f32) -> Result<Storage>;

    /// Copies a strided view into a new contiguous buffer.
    fn materialize(&self, s: &Storage, view: &View) -> Result<Storage>;

    /// Writes `src` (contiguous, `view.shape`) into a zero buffer of `len` elements at `view`.
    fn scatter_into_zeros(&self, src: &Storage, view: &View, len: usize) -> Result<Storage>;
}
