//! CPU backend: layerNorm, LayerNorm2d and BatchNorm, with their gradients.

use super::*;
use medsam_kernels::norm;

fn norm_out(y: Vec<f32>, mean: Vec<f32>, rstd: Vec<f32>) -> NormOut {
    let (y, mean, rstd) = (Storage::Cpu(y), Storage::Cpu(mean), Storage::Cpu(rstd));
    NormOut { y, mean, rstd }
}

fn norm_grads(dx: Vec<f32>, dgamma: Vec<f32>, dbeta: Vec<f32>) -> NormGrads {
    let (dx, dgamma, dbeta) = (Storage::Cpu(dx), Storage::Cpu(dgamma), Storage::Cpu(dbeta));
    NormGrads { dx, dgamma, dbeta }
}

/// The host slices of a norm input: `(x, gamma, beta)`.
fn norm_in(a: NormIn<'_>) -> Result<(&[f32], &[f32], &[f32])> {
    Ok((host(a.x)?, host(a.gamma)?, host(a.beta)?))
}

/// The host slices of a norm backward input: `(x, gamma, mean, rstd, dy)`.
fn grad_in(a: NormGradIn<'_>) -> Result<[&[f32]; 5]> {
    let (mean, rstd) = (host(a.stats.mean)?, host(a.stats.rstd)?);
    Ok([host(a.x)?, host(a.gamma)?, mean, rstd, host(a.dy)?])
}

impl NormOps for CpuBackend {
    fn layer_norm(&self, rows: usize, dim: usize, a: NormIn, eps: f32) -> Result<NormOut> {
        let mut y = buffer(rows * dim);
        let (mut mean, mut rstd) = (super::zeroed(rows), super::zeroed(rows));
        let (x, g, b) = norm_in(a)?;
        norm::layer_norm_forward(rows, dim, x, g, b, eps, &mut y, &mut mean, &mut rstd);
        Ok(norm_out(y, mean, rstd))
    }

    fn layer_norm_backward(&self, rows: usize, dim: usize, a: NormGradIn) -> Result<NormGrads> {
        let mut dx = super::zeroed(rows * dim);
        let (mut dg, mut db) = (super::zeroed(dim), super::zeroed(dim));
        let [x, g, mean, rstd, dy] = grad_in(a)?;
        let grads = (&mut dx[..], &mut dg[..], &mut db[..]);
        norm::layer_norm_backward(rows, dim, x, g, mean, rstd, dy, grads.0, grads.1, grads.2);
        Ok(norm_grads(dx, dg, db))
    }

    fn layer_norm2d(&self, d: ChannelDims, a: NormIn, eps: f32) -> Result<NormOut> {
        let ChannelDims { n, c, hw } = d;
        let mut y = super::zeroed(n * c * hw);
        let (mut mean, mut rstd) = (super::zeroed(n * hw), super::zeroed(n * hw));
        let (x, g, b) = norm_in(a)?;
        let out = (&mut y[..], &mut mean[..], &mut rstd[..]);
        norm::layer_norm2d_forward(n, c, hw, x, g, b, eps, out.0, out.1, out.2);
        Ok(norm_out(y, mean, rstd))
    }

    fn layer_norm2d_backward(&self, d: ChannelDims, a: NormGradIn) -> Result<NormGrads> {
        let ChannelDims { n, c, hw } = d;
        let mut dx = super::zeroed(n * c * hw);
        let (mut dg, mut db) = (super::zeroed(c), super::zeroed(c));
        let [x, g, mean, rstd, dy] = grad_in(a)?;
        let grads = (&mut dx[..], &mut dg[..], &mut db[..]);
        norm::layer_norm2d_backward(n, c, hw, x, g, mean, rstd, dy, grads.0, grads.1, grads.2);
        Ok(norm_grads(dx, dg, db))
    }

    fn batch_norm_stats(&self, d: ChannelDims, x: &Storage) -> Result<(Storage, Storage)> {
        let ChannelDims { n, c, hw } = d;
        let (mut m, mut v) = (super::zeroed(c), super::zeroed(c));
        batchnorm::stats(n, c, hw, host(x)?, &mut m, &mut v);
        Ok((Storage::Cpu(m), Storage::Cpu(v)))
    }

    fn batch_norm_apply(&self, d: ChannelDims, a: NormIn, stats: NormStats) -> Result<Storage> {
        let ChannelDims { n, c, hw } = d;
        let (x, g, b) = norm_in(a)?;
        let mut y = super::zeroed(x.len());
        let (mean, rstd) = (host(stats.mean)?, host(stats.rstd)?);
        batchnorm::apply(n, c, hw, x, g, b, mean, rstd, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn batch_norm_backward(&self, d: ChannelDims, a: NormGradIn, batch: bool) -> Result<NormGrads> {
        let ChannelDims { n, c, hw } = d;
        let [x, g, mean, rstd, dy] = grad_in(a)?;
        let (mut dx, mut dg, mut db) = (super::zeroed(x.len()), super::zeroed(c), super::zeroed(c));
        let grads = (&mut dx[..], &mut dg[..], &mut db[..]);
        batchnorm::backward(
            n, c, hw, x, g, mean, rstd, dy, batch, grads.0, grads.1, grads.2,
        );
        Ok(norm_grads(dx, dg, db))
    }
}
