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
        Layout { batch_stride: rows * cols, row_stride: cols, col_stride: 1 }
    }
    /// The transpose of a dense row-major `rows × cols` matrix, seen as `cols × rows`.
    pub fn transposed(rows: usize, cols: usize) -> Self {
        Layout { batch_stride: rows * cols, row_stride: 1, col_stride: cols }
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
