//! Attention (SAM's decomposed rel-pos bias, TinyViT's bias table) and its gradients.

use crate::backend::*;
use crate::error::Result;

pub trait AttentionOps {
    /// Returns `(out, lse)`.
    fn attention(
        &self,
        dims: AttnDims,
        q: &Storage,
        k: &Storage,
        v: &Storage,
        scale: f32,
        rel: Option<RelPos>,
    ) -> Result<(Storage, Storage)>;

    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dims: AttnDims,
        q: &Storage,
        k: &Storage,
        v: &Storage,
        scale: f32,
        rel: Option<RelPos>,
        out: &Storage,
        lse: &Storage,
        dout: &Storage,
    ) -> Result<AttnGrads>;

    /// Inference attention with a `[heads, nq, nk]` bias table (TinyViT's window attention):
    /// `softmax((q·scale)·kᵀ + table[b % heads])·v`, returns a dense `out [bh, nq, dv]`. The
    /// operands are read in place through their [`HeadView`]s. `Ok(None)` when the backend has
    /// no fused kernel for it; the caller then composes matmul and softmax.
    #[allow(clippy::too_many_arguments)]
    fn attention_bias_table(
        &self,
        dims: AttnDims,
        q: HeadView,
        k: HeadView,
        v: HeadView,
        scale: f32,
        table: &Storage,
        heads: usize,
    ) -> Result<Option<Storage>> {
        let _ = (dims, q, k, v, scale, table, heads);
        Ok(None)
    }
}
