//! LayerNorm, LayerNorm2d and BatchNorm, with their gradients.

use crate::backend::*;
use crate::error::Result;

/// A norm's saved statistics: the mean and `1/σ` (per row for LayerNorm, per channel for
/// BatchNorm).
#[derive(Clone, Copy)]
pub struct NormStats<'a> {
    pub mean: &'a Storage,
    pub rstd: &'a Storage,
}

/// A norm's input `x` and its affine parameters `gamma` and `beta`.
#[derive(Clone, Copy)]
pub struct NormIn<'a> {
    pub x: &'a Storage,
    pub gamma: &'a Storage,
    pub beta: &'a Storage,
}

/// What a norm's backward reads: the forward's `x`, `gamma` and statistics, and the output
/// gradient `dy`.
#[derive(Clone, Copy)]
pub struct NormGradIn<'a> {
    pub x: &'a Storage,
    pub gamma: &'a Storage,
    pub stats: NormStats<'a>,
    pub dy: &'a Storage,
}

/// A `[n, c, hw]` tensor normalised per channel: LayerNorm2d over `c` at each of the `n·hw`
/// positions, BatchNorm each channel over its `n·hw` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

pub trait NormOps {
    /// LayerNorm over the last `dim` of `rows × dim`.
    fn layer_norm(&self, rows: usize, dim: usize, a: NormIn, eps: f32) -> Result<NormOut>;

    fn layer_norm_backward(&self, rows: usize, dim: usize, a: NormGradIn) -> Result<NormGrads>;

    /// SAM's LayerNorm2d: `[n, c, hw]` normalised over `c`.
    fn layer_norm2d(&self, d: ChannelDims, a: NormIn, eps: f32) -> Result<NormOut>;

    fn layer_norm2d_backward(&self, d: ChannelDims, a: NormGradIn) -> Result<NormGrads>;

    /// Per-channel batch mean and biased variance of `[n, c, hw]`: `(mean, var)`, each `[c]`.
    fn batch_norm_stats(&self, d: ChannelDims, x: &Storage) -> Result<(Storage, Storage)>;

    /// `y = (x - mean)·rstd·gamma + beta` per channel of `[n, c, hw]`.
    fn batch_norm_apply(&self, d: ChannelDims, a: NormIn, stats: NormStats) -> Result<Storage>;

    /// Backward of `batch_norm_apply`; `batch`: mean/rstd were the batch's (training mode).
    fn batch_norm_backward(&self, d: ChannelDims, a: NormGradIn, batch: bool) -> Result<NormGrads>;
}
