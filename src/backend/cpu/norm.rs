//! CPU backend: layerNorm, LayerNorm2d and BatchNorm, with their gradients.

use super::*;
use medsam_kernels::norm;

impl NormOps for CpuBackend {
    fn layer_norm(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut> {
        let mut y = buffer(rows * dim);
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        norm::layer_norm_forward(
            rows,
            dim,
            host(x)?,
            host(g)?,
            host(b)?,
            eps,
            &mut y,
            &mut mean,
            &mut rstd,
        );
        Ok(NormOut {
            y: Storage::Cpu(y),
            mean: Storage::Cpu(mean),
            rstd: Storage::Cpu(rstd),
        })
    }

    fn layer_norm_backward(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        saved: NormStats,
        dy: &Storage,
    ) -> Result<NormGrads> {
        let mut dx = vec![0.0; rows * dim];
        let (mut dg, mut db) = (vec![0.0; dim], vec![0.0; dim]);
        norm::layer_norm_backward(
            rows,
            dim,
            host(x)?,
            host(g)?,
            host(saved.mean)?,
            host(saved.rstd)?,
            host(dy)?,
            &mut dx,
            &mut dg,
            &mut db,
        );
        Ok(NormGrads {
            dx: Storage::Cpu(dx),
            dgamma: Storage::Cpu(dg),
            dbeta: Storage::Cpu(db),
        })
    }

    fn layer_norm2d(
        &self,
        d: ChannelDims,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut> {
        let ChannelDims { n, c, hw } = d;
        let mut y = vec![0.0; n * c * hw];
        let (mut mean, mut rstd) = (vec![0.0; n * hw], vec![0.0; n * hw]);
        norm::layer_norm2d_forward(
            n,
            c,
            hw,
            host(x)?,
            host(g)?,
            host(b)?,
            eps,
            &mut y,
            &mut mean,
            &mut rstd,
        );
        Ok(NormOut {
            y: Storage::Cpu(y),
            mean: Storage::Cpu(mean),
            rstd: Storage::Cpu(rstd),
        })
    }

    fn layer_norm2d_backward(
        &self,
        d: ChannelDims,
        x: &Storage,
        g: &Storage,
        saved: NormStats,
        dy: &Storage,
    ) -> Result<NormGrads> {
        let ChannelDims { n, c, hw } = d;
        let mut dx = vec![0.0; n * c * hw];
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        norm::layer_norm2d_backward(
            n,
            c,
            hw,
            host(x)?,
            host(g)?,
            host(saved.mean)?,
            host(saved.rstd)?,
            host(dy)?,
            &mut dx,
            &mut dg,
            &mut db,
        );
        Ok(NormGrads {
            dx: Storage::Cpu(dx),
            dgamma: Storage::Cpu(dg),
            dbeta: Storage::Cpu(db),
        })
    }

    fn batch_norm_stats(&self, d: ChannelDims, x: &Storage) -> Result<(Storage, Storage)> {
        let ChannelDims { n, c, hw } = d;
        let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
        batchnorm::stats(n, c, hw, host(x)?, &mut m, &mut v);
        Ok((Storage::Cpu(m), Storage::Cpu(v)))
    }

    fn batch_norm_apply(
        &self,
        d: ChannelDims,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        stats: NormStats,
    ) -> Result<Storage> {
        let ChannelDims { n, c, hw } = d;
        let x = host(x)?;
        let mut y = vec![0.0; x.len()];
        batchnorm::apply(
            n,
            c,
            hw,
            x,
            host(gamma)?,
            host(beta)?,
            host(stats.mean)?,
            host(stats.rstd)?,
            &mut y,
        );
        Ok(Storage::Cpu(y))
    }

    fn batch_norm_backward(
        &self,
        d: ChannelDims,
        x: &Storage,
        gamma: &Storage,
        stats: NormStats,
        dy: &Storage,
        batch_stats: bool,
    ) -> Result<NormGrads> {
        let ChannelDims { n, c, hw } = d;
        let x = host(x)?;
        let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        batchnorm::backward(
            n,
            c,
            hw,
            x,
            host(gamma)?,
            host(stats.mean)?,
            host(stats.rstd)?,
            host(dy)?,
            batch_stats,
            &mut dx,
            &mut dg,
            &mut db,
        );
        Ok(NormGrads {
            dx: Storage::Cpu(dx),
            dgamma: Storage::Cpu(dg),
            dbeta: Storage::Cpu(db),
        })
    }
}
