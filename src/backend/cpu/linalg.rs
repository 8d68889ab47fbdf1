//! CPU backend: matrix products (batched, strided operands) and their fused inference epilogues.

use super::*;

impl LinalgOps for CpuBackend {
    fn gemm(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
    ) -> Result<Storage> {
        let mut c = buffer(dims.batch * dims.m * dims.n);
        let a_data = &host(a.storage)?[a.offset..];
        let b_data = &host(b.storage)?[b.offset..];
        gemm::gemm(
            dims,
            a_data,
            a.layout,
            b_data,
            b.layout,
            &mut c,
            Layout::row_major(dims.m, dims.n),
            false,
            precision,
        );
        Ok(Storage::Cpu(c))
    }

    fn gemm_bias_act(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
        epilogue: Epilogue,
    ) -> Result<Storage> {
        let mut c = buffer(dims.batch * dims.m * dims.n);
        let epilogue = gemm::Epilogue {
            col_bias: epilogue.col_bias.map(host).transpose()?,
            row_bias: epilogue.row_bias.map(host).transpose()?,
            residual: (epilogue.residual)
                .map(|r| host(r).map(|r| (r, dims.n)))
                .transpose()?,
            gelu: epilogue.gelu,
        };
        gemm::gemm_fused(
            dims,
            &host(a.storage)?[a.offset..],
            a.layout,
            &host(b.storage)?[b.offset..],
            b.layout,
            &mut c,
            Layout::row_major(dims.m, dims.n),
            precision,
            epilogue,
        );
        Ok(Storage::Cpu(c))
    }
}
