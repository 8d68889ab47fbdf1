//! Ascend backend: matrix products (batched, strided operands) and their fused inference epilogues.

use super::*;

impl LinalgOps for AscendBackend {
    fn gemm(&self, g: GemmArgs) -> Result<Storage> {
        let GemmArgs {
            dims,
            a,
            b,
            precision,
        } = g;
        let GemmDims { batch, m, n, k } = dims;
        let total = batch * m * n;
        let (ab, bb) = (self.buf(a.storage)?, self.buf(b.storage)?);
        if k == 0 {
            return self.zeros(total);
        }
        // The cubeMathType itself is chosen per SoC and dtype by medsam_ffi (cube_math_type).
        let cube = match precision {
            Precision::F32 => medsam_ffi::ascend::CubePrecision::Exact,
            Precision::Bf16 => medsam_ffi::ascend::CubePrecision::Reduced,
        };
        let (la, lb) = (a.layout, b.layout);
        let mut out = self.alloc(total)?;
        if total > 0 {
            let ops = self.ops().with_precision(cube);
            let e = self.err();
            // A shared right operand with evenly spaced rows of A (linear layers): one 2-D
            // matmul over batch·m rows.
            let fold = batch == 1 || (lb.batch_stride == 0 && la.batch_stride == m * la.row_stride);
            if fold {
                let ta = self.input(
                    ab,
                    lay(&[batch * m, k], &[la.row_stride, la.col_stride], a.offset),
                )?;
                let tb = self.input(bb, lay(&[k, n], &[lb.row_stride, lb.col_stride], b.offset))?;
                let to = TensorArg::output::<f32>(&mut out, contig(&[batch * m, n])).map_err(&e)?;
                ops.matmul(&ta, &tb, &to).map_err(&e)?;
            } else {
                let strides = |l: Layout| [l.batch_stride, l.row_stride, l.col_stride];
                let ta = self.input(ab, lay(&[batch, m, k], &strides(la), a.offset))?;
                let tb = self.input(bb, lay(&[batch, k, n], &strides(lb), b.offset))?;
                let to = TensorArg::output::<f32>(&mut out, contig(&[batch, m, n])).map_err(&e)?;
                ops.batch_matmul(&ta, &tb, &to).map_err(&e)?;
            }
        }
        Ok(self.wrap(out, total))
    }
}
