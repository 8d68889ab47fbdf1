//! Ascend backend: layerNorm, LayerNorm2d and BatchNorm, with their gradients.

use super::*;

impl NormOps for AscendBackend {
    fn layer_norm(&self, rows: usize, dim: usize, a: NormIn, eps: f32) -> Result<NormOut> {
        let (xb, gb, bb) = (self.buf(a.x)?, self.buf(a.gamma)?, self.buf(a.beta)?);
        let mut y = self.alloc(rows * dim)?;
        let mut mean = self.alloc(rows)?;
        let mut rstd = self.alloc(rows)?;
        if rows * dim > 0 {
            let e = self.err();
            let tx = self.input(xb, contig(&[rows, dim]))?;
            let tg = self.input(gb, contig(&[dim]))?;
            let tb = self.input(bb, contig(&[dim]))?;
            let to = TensorArg::output::<f32>(&mut y, contig(&[rows, dim])).map_err(&e)?;
            let tm = TensorArg::output::<f32>(&mut mean, contig(&[rows, 1])).map_err(&e)?;
            let tr = TensorArg::output::<f32>(&mut rstd, contig(&[rows, 1])).map_err(&e)?;
            let (ops, norm_shape) = (self.ops(), [dim as i64]);
            let (g, b, m, r) = (Some(&tg), Some(&tb), Some(&tm), Some(&tr));
            (ops.layer_norm(&tx, &norm_shape, g, b, eps as f64, &to, m, r)).map_err(&e)?;
        }
        Ok(NormOut {
            y: self.wrap(y, rows * dim),
            mean: self.wrap(mean, rows),
            rstd: self.wrap(rstd, rows),
        })
    }

    fn layer_norm_backward(&self, rows: usize, dim: usize, a: NormGradIn) -> Result<NormGrads> {
        let (xb, gb, db) = (self.buf(a.x)?, self.buf(a.gamma)?, self.buf(a.dy)?);
        let (mb, rb) = (self.buf(a.stats.mean)?, self.buf(a.stats.rstd)?);
        let mut dx = self.alloc(rows * dim)?;
        let mut dg = self.alloc(dim)?;
        let mut dbeta = self.alloc(dim)?;
        if rows == 0 {
            dg.fill_bytes_async(0, &self.stream).map_err(self.err())?;
            dbeta
                .fill_bytes_async(0, &self.stream)
                .map_err(self.err())?;
        } else if dim > 0 {
            let e = self.err();
            let tdy = self.input(db, contig(&[rows, dim]))?;
            let tx = self.input(xb, contig(&[rows, dim]))?;
            let tm = self.input(mb, contig(&[rows, 1]))?;
            let tr = self.input(rb, contig(&[rows, 1]))?;
            let tg = self.input(gb, contig(&[dim]))?;
            let gx = TensorArg::output::<f32>(&mut dx, contig(&[rows, dim])).map_err(&e)?;
            let gg = TensorArg::output::<f32>(&mut dg, contig(&[dim])).map_err(&e)?;
            let gbt = TensorArg::output::<f32>(&mut dbeta, contig(&[dim])).map_err(&e)?;
            let (ops, norm_shape) = (self.ops(), [dim as i64]);
            let grads = (Some(&gx), Some(&gg), Some(&gbt));
            let (ns, g) = (&norm_shape, Some(&tg));
            ops.layer_norm_backward(&tdy, &tx, ns, &tm, &tr, g, None, grads.0, grads.1, grads.2)
                .map_err(&e)?;
        }
        Ok(NormGrads {
            dx: self.wrap(dx, rows * dim),
            dgamma: self.wrap(dg, dim),
            dbeta: self.wrap(dbeta, dim),
        })
    }

    fn layer_norm2d(&self, d: ChannelDims, a: NormIn, eps: f32) -> Result<NormOut> {
        let ChannelDims { n, c, hw } = d;
        if let Some(r) = self.layer_norm2d_custom(d, a, eps)? {
            return Ok(r);
        }
        // [n, c, hw] → [n, hw, c], LayerNorm over c, → [n, c, hw]; all on device.
        let xt = self.swap_last2(self.buf(a.x)?, n, c, hw)?;
        let r = self.layer_norm(n * hw, c, NormIn { x: &xt, ..a }, eps)?;
        let y = self.swap_last2(self.buf(&r.y)?, n, hw, c)?;
        Ok(NormOut {
            y,
            mean: r.mean,
            rstd: r.rstd,
        })
    }

    fn layer_norm2d_backward(&self, d: ChannelDims, a: NormGradIn) -> Result<NormGrads> {
        let ChannelDims { n, c, hw } = d;
        let xt = self.swap_last2(self.buf(a.x)?, n, c, hw)?;
        let dyt = self.swap_last2(self.buf(a.dy)?, n, c, hw)?;
        let a = NormGradIn {
            x: &xt,
            dy: &dyt,
            ..a
        };
        let r = self.layer_norm_backward(n * hw, c, a)?;
        Ok(NormGrads {
            dx: self.swap_last2(self.buf(&r.dx)?, n, hw, c)?,
            dgamma: r.dgamma,
            dbeta: r.dbeta,
        })
    }

    fn batch_norm_stats(&self, d: ChannelDims, x: &Storage) -> Result<(Storage, Storage)> {
        let ChannelDims { n, c, hw } = d;
        // Two passes like the CPU kernel: mean = Σx/N, var = Σ(x − mean)²/N (N = n·hw), sums
        // as ones-vector matmuls.
        let xb = self.buf(x)?;
        let inv = 1.0 / (n * hw).max(1) as f32;
        let sum = self.channel_sum(xb, n, c, hw)?;
        let mean = self.scaled(self.buf(&sum)?, c, inv)?;
        let xc = self.per_channel(xb, self.buf(&mean)?, (n, c, hw), Some(-1.0))?;
        let sq = self.mul_n(self.buf(&xc)?, self.buf(&xc)?, n * c * hw)?;
        let ssq = self.channel_sum(self.buf(&sq)?, n, c, hw)?;
        let var = self.scaled(self.buf(&ssq)?, c, inv)?;
        Ok((mean, var))
    }

    fn batch_norm_apply(&self, d: ChannelDims, a: NormIn, stats: NormStats) -> Result<Storage> {
        let ChannelDims { n, c, hw } = d;
        // y = (x − mean)·(rstd·γ) + β, per channel.
        let (xb, gb, bb) = (self.buf(a.x)?, self.buf(a.gamma)?, self.buf(a.beta)?);
        let (mb, rb) = (self.buf(stats.mean)?, self.buf(stats.rstd)?);
        let k = self.mul_n(rb, gb, c)?;
        let xc = self.per_channel(xb, mb, (n, c, hw), Some(-1.0))?;
        let y1 = self.per_channel(self.buf(&xc)?, self.buf(&k)?, (n, c, hw), None)?;
        self.per_channel(self.buf(&y1)?, bb, (n, c, hw), Some(1.0))
    }

    fn batch_norm_backward(&self, d: ChannelDims, a: NormGradIn, batch: bool) -> Result<NormGrads> {
        let ChannelDims { n, c, hw } = d;
        let (xb, gb, db) = (self.buf(a.x)?, self.buf(a.gamma)?, self.buf(a.dy)?);
        let (mb, rb) = (self.buf(a.stats.mean)?, self.buf(a.stats.rstd)?);
        let d = (n, c, hw);
        let total = n * c * hw;
        // dβ = Σ dy, dγ = Σ dy·x̂ with x̂ = (x − mean)·rstd.
        let dbeta = self.channel_sum(db, n, c, hw)?;
        let xc = self.per_channel(xb, mb, d, Some(-1.0))?;
        let xhat = self.per_channel(self.buf(&xc)?, rb, d, None)?;
        let p = self.mul_n(db, self.buf(&xhat)?, total)?;
        let dgamma = self.channel_sum(self.buf(&p)?, n, c, hw)?;
        let k = self.mul_n(gb, rb, c)?;
        let dx = if batch {
            // dx = k·(dy − Σdy/N − x̂·Σ(dy·x̂)/N)
            let inv = 1.0 / (n * hw).max(1) as f32;
            let t = self.per_channel(db, self.buf(&dbeta)?, d, Some(-inv))?;
            let u = self.per_channel(self.buf(&xhat)?, self.buf(&dgamma)?, d, None)?;
            let t2 = self.add_n(self.buf(&t)?, self.buf(&u)?, -inv, total)?;
            self.per_channel(self.buf(&t2)?, self.buf(&k)?, d, None)?
        } else {
            self.per_channel(db, self.buf(&k)?, d, None)?
        };
        Ok(NormGrads { dx, dgamma, dbeta })
    }
}
