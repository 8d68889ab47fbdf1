//! Matrix products (batched, strided operands) and their fused inference epilogues.

use crate::backend::*;
use crate::error::Result;

pub trait LinalgOps: PointwiseOps {
    /// `C[b] = A[b]·B[b]`, C contiguous `[batch, m, n]`.
    fn gemm(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
    ) -> Result<Storage>;

    /// `act(A[b]·B[b] + bias + residual)`, C contiguous `[batch, m, n]`: a bias per column
    /// (`col_bias`, length n) and/or per row (`row_bias`, length m), the same for every batch,
    /// then a contiguous `[m, n]` residual (batch 1 only), then GELU if `gelu`. Inference only
    /// (no gradient); backends may fuse it into the GEMM. The default runs the separate ops.
    #[allow(clippy::too_many_arguments)]
    fn gemm_bias_act(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
        col_bias: Option<&Storage>,
        row_bias: Option<&Storage>,
        residual: Option<&Storage>,
        gelu: bool,
    ) -> Result<Storage> {
        let (bt, m, n) = (dims.batch, dims.m, dims.n);
        let mut c = self.gemm(dims, a, b, precision)?;
        let vc = View {
            shape: vec![bt, m, n],
            strides: vec![m * n, n, 1],
            offset: 0,
        };
        for (bias, strides) in [(col_bias, vec![0, 0, 1]), (row_bias, vec![0, 1, 0])] {
            if let Some(bias) = bias {
                let vb = View {
                    shape: vec![bt, m, n],
                    strides,
                    offset: 0,
                };
                c = self.binary(Binary::Add, &c, &vc, bias, &vb)?;
            }
        }
        if let Some(r) = residual {
            c = self.binary(Binary::Add, &c, &vc, r, &vc)?;
        }
        if gelu {
            c = self.unary(Unary::Gelu, &c)?;
        }
        Ok(c)
    }
}
