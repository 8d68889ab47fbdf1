//! CPU backend: matrix products (batched, strided operands) and their fused inference epilogues.

use super::*;

impl LinalgOps for CpuBackend {
    fn gemm(&self, g: GemmArgs) -> Result<Storage> {
        let GemmArgs { dims, a, b, .. } = g;
        let mut c = buffer(dims.batch * dims.m * dims.n);
        let (a_data, b_data) = (&host(a.storage)?[a.offset..], &host(b.storage)?[b.offset..]);
        let lc = Layout::row_major(dims.m, dims.n);
        let (la, lb, p) = (a.layout, b.layout, g.precision);
        gemm::gemm(dims, a_data, la, b_data, lb, &mut c, lc, false, p);
        Ok(Storage::Cpu(c))
    }

    fn gemm_bias_act(&self, g: GemmArgs, epilogue: Epilogue) -> Result<Storage> {
        let GemmArgs { dims, a, b, .. } = g;
        let mut c = buffer(dims.batch * dims.m * dims.n);
        let epilogue = gemm::Epilogue {
            col_bias: epilogue.col_bias.map(host).transpose()?,
            row_bias: epilogue.row_bias.map(host).transpose()?,
            residual: (epilogue.residual)
                .map(|r| host(r).map(|r| (r, dims.n)))
                .transpose()?,
            gelu: epilogue.gelu,
        };
        let (a_data, b_data) = (&host(a.storage)?[a.offset..], &host(b.storage)?[b.offset..]);
        let lc = Layout::row_major(dims.m, dims.n);
        let (la, lb, p) = (a.layout, b.layout, g.precision);
        gemm::gemm_fused(dims, a_data, la, b_data, lb, &mut c, lc, p, epilogue);
        Ok(Storage::Cpu(c))
    }
}
