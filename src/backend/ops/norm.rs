//! LayerNorm, LayerNorm2d and BatchNorm, with their gradients.

use crate::backend::*;
use crate::error::Result;

pub trait NormOps {
    /// LayerNorm over the last `dim` of `rows × dim`.
    fn layer_norm(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut>;

    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        saved: (&Storage, &Storage),
        dy: &Storage,
    ) -> Result<NormGrads>;

    /// SAM's LayerNorm2d: `[n, c, hw]` normalised over `c`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm2d(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut>;

    #[allow(clippy::too_many_arguments)]
    fn layer_norm2d_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        g: &Storage,
        saved: (&Storage, &Storage),
        dy: &Storage,
    ) -> Result<NormGrads>;

    /// Per-channel batch mean and biased variance of `[n, c, hw]`: `(mean, var)`, each `[c]`.
    fn batch_norm_stats(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
    ) -> Result<(Storage, Storage)>;

    /// `y = (x - mean)·rstd·gamma + beta` per channel of `[n, c, hw]`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_apply(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        stats: (&Storage, &Storage),
    ) -> Result<Storage>;

    /// Backward of `batch_norm_apply`; `batch_stats`: mean/rstd were the batch's (training mode).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        gamma: &Storage,
        stats: (&Storage, &Storage),
        dy: &Storage,
        batch_stats: bool,
    ) -> Result<NormGrads>;
}
