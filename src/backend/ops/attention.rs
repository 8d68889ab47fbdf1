//! Attention (SAM's decomposed rel-pos bias, TinyViT's bias table) and its gradients.

use crate::backend::*;
use crate::error::Result;

/// One attention call, `softmax((q·scale)·kᵀ + rel)·v`, apart from its buffers.
#[derive(Clone, Copy)]
pub struct AttnArgs<'a> {
    pub dims: AttnDims,
    pub scale: f32,
    /// SAM's decomposed rel-pos bias, when the layer has one.
    pub rel: Option<RelPos<'a>>,
    /// The forward's arithmetic: `Bf16` (inference under bf16 autocast) is a request a backend
    /// may run in f32 where bf16 would not be faster; the backward is always f32.
    pub precision: Precision,
}

/// Attention operands, contiguous: q `[bh, nq, d]`, k `[bh, nk, d]`, v `[bh, nk, dv]`.
#[derive(Clone, Copy)]
pub struct Qkv<'a> {
    pub q: &'a Storage,
    pub k: &'a Storage,
    pub v: &'a Storage,
}

/// What an attention forward saved for its backward. Only the backend that made it reads it.
#[derive(Debug)]
pub enum AttnSaved {
    /// The per-row log-sum-exp `[bh, nq]` of the biased, scaled scores; the backward recomputes
    /// the probabilities from it (tile by tile on the CPU, never N×N).
    Lse(Storage),
    /// The softmax probabilities `P [bh, nq, nk]` of a forward that materialised them.
    Probs(Storage),
    /// A backend's own state (the NPU's flash-attention softmax max and sum), downcast by it.
    Device(Box<dyn DeviceBuffer>),
}

/// TinyViT's window attention apart from its operands: `softmax((q·scale)·kᵀ + table[b % heads])·v`
/// with a learned `table [heads, nq, nk]`.
#[derive(Clone, Copy)]
pub struct BiasTableArgs<'a> {
    pub dims: AttnDims,
    pub scale: f32,
    pub table: &'a Storage,
    pub heads: usize,
}

/// Attention on operands read in place, `softmax((q·scale)·kᵀ + rel)·v`, apart from its
/// operands (inference).
#[derive(Clone, Copy)]
pub struct ViewAttnArgs<'a> {
    pub dims: AttnDims,
    pub scale: f32,
    /// SAM's decomposed rel-pos bias, when the layer has one.
    pub rel: Option<RelPos<'a>>,
    /// As [`AttnArgs::precision`].
    pub precision: Precision,
}

/// Attention operands read in place through their [`HeadView`]s.
#[derive(Clone, Copy)]
pub struct HeadQkv<'a> {
    pub q: HeadView<'a>,
    pub k: HeadView<'a>,
    pub v: HeadView<'a>,
}

/// The operands of SAM's decomposed rel-pos terms (sizes in a [`RelPosDims`]): q
/// `[maps, h, w, c]`, `rh [h, kh, c]`, `rw [w, kw, c]`, all contiguous.
#[derive(Clone, Copy)]
pub struct RelPosIn<'a> {
    pub q: &'a Storage,
    pub rh: &'a Storage,
    pub rw: &'a Storage,
}

pub trait AttentionOps {
    /// Returns the output `[bh, nq, dv]` and what the backward needs.
    fn attention(&self, a: AttnArgs, x: Qkv) -> Result<(Storage, AttnSaved)>;

    /// Gradients for the forward that returned `g.out` and `g.saved`.
    fn attention_backward(&self, a: AttnArgs, x: Qkv, g: AttnGradIn) -> Result<AttnGrads>;

    /// Inference attention with a bias table, returning a dense `out [bh, nq, dv]`. `Ok(None)`
    /// when the backend has no fused kernel for it; the caller then composes matmul and softmax.
    /// The views may have their rows gathered through an index (`HeadView::gather`, TinyViT's
    /// windows read in place): a backend that implements this reads them so, or returns
    /// `Ok(None)` for such views.
    fn attention_bias_table(&self, a: BiasTableArgs, x: HeadQkv) -> Result<Option<Storage>> {
        let _ = (a, x);
        Ok(None)
    }

    /// Inference attention (SAM's rel-pos bias or none) on operands read in place (strided
    /// [`HeadView`]s, or rows gathered through an index: the windows of a projection), returning
    /// a dense `out [bh, nq, dv]`. `Ok(None)` when the backend has no such kernel; the caller
    /// then gathers the operands into dense tensors and calls [`Self::attention`].
    fn attention_views(&self, a: ViewAttnArgs, x: HeadQkv) -> Result<Option<Storage>> {
        let _ = (a, x);
        Ok(None)
    }

    /// Inference: SAM's decomposed rel-pos terms `[rel_h [maps, h·w, kh], rel_w [maps, h·w, kw]]`
    /// straight from q (no permuted copies of it). `Ok(None)` when the backend has no kernel for
    /// them; the caller then composes them from matmuls (`image_encoder::Attention`).
    fn decomposed_rel_pos(&self, d: RelPosDims, x: RelPosIn) -> Result<Option<[Storage; 2]>> {
        let _ = (d, x);
        Ok(None)
    }
}

/// What an attention backward reads besides the operands: the forward's output and saved state,
/// and the output gradient `dout`.
#[derive(Clone, Copy)]
pub struct AttnGradIn<'a> {
    pub out: &'a Storage,
    pub saved: &'a AttnSaved,
    pub dout: &'a Storage,
}
