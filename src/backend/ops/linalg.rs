//! Matrix products (batched, strided operands) and their fused inference epilogues.

use crate::backend::*;
use crate::error::Result;

/// What follows a GEMM in [`LinalgOps::gemm_bias_act`], in this order: a bias per column
/// (`col_bias`, length n) and/or per row (`row_bias`, length m), the same for every batch; a
/// contiguous `[m, n]` residual (batch 1 only); GELU if `gelu`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub col_bias: Option<&'a Storage>,
    pub row_bias: Option<&'a Storage>,
    pub residual: Option<&'a Storage>,
    pub gelu: bool,
}

/// One batched matrix product `C[b] = A[b]·B[b]`, apart from its output.
#[derive(Clone, Copy)]
pub struct GemmArgs<'a> {
    pub dims: GemmDims,
    pub a: GemmOperand<'a>,
    pub b: GemmOperand<'a>,
    pub precision: Precision,
}

pub trait LinalgOps: PointwiseOps {
    /// `C[b] = A[b]·B[b]`, C contiguous `[batch, m, n]`.
    fn gemm(&self, g: GemmArgs) -> Result<Storage>;

    /// `epilogue(A[b]·B[b])`, C contiguous `[batch, m, n]`. Inference only (no gradient);
    /// backends may fuse the epilogue into the GEMM. The default runs the separate device ops.
    fn gemm_bias_act(&self, g: GemmArgs, epilogue: Epilogue) -> Result<Storage> {
        let Epilogue {
            col_bias,
            row_bias,
            residual,
            gelu,
        } = epilogue;
        let (bt, m, n) = (g.dims.batch, g.dims.m, g.dims.n);
        let mut c = self.gemm(g)?;
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
                c = self.binary(Binary::Add, (&c, &vc), (bias, &vb))?;
            }
        }
        if let Some(r) = residual {
            c = self.binary(Binary::Add, (&c, &vc), (r, &vc))?;
        }
        if gelu {
            c = self.unary(Unary::Gelu, &c)?;
        }
        Ok(c)
    }
}
