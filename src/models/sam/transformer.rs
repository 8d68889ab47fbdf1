//! `TwoWayTransformer` (segment_anything/modeling/transformer.py), shared with SAM 2
//! (`sam2/modeling/sam/transformer.py`): the two differ only in the block MLP ([`BlockMlp`]), and
//! SAM 2's `RoPEAttention` is this [`Attention`] with rotated queries and keys.

use crate::error::Result;
use crate::models::common::{Act, Init, LayerNorm, Linear, Mlp, MlpBlock, Module};
use crate::ops::nn::attention;
use crate::tensor::Tensor;

/// The decoder's nn.LayerNorm default eps.
const LN_EPS: f32 = 1e-5;

/// Attention with optional down-projection of the embedding (`downsample_rate`).
pub struct Attention {
    pub num_heads: usize,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
}

crate::models::common::module_parts!(Attention: q_proj, k_proj, v_proj, out_proj);

impl Attention {
    pub fn new(
        init: &mut Init,
        dim: usize,
        num_heads: usize,
        downsample_rate: usize,
    ) -> Result<Self> {
        Self::with_kv_dim(init, dim, dim, num_heads, downsample_rate)
    }

    /// Keys and values of width `kv_dim` (SAM 2's `kv_in_dim`).
    pub fn with_kv_dim(
        init: &mut Init,
        dim: usize,
        kv_dim: usize,
        num_heads: usize,
        downsample_rate: usize,
    ) -> Result<Self> {
        let internal = dim / downsample_rate;
        Ok(Attention {
            num_heads,
            q_proj: Linear::new(init, dim, internal, true)?,
            k_proj: Linear::new(init, kv_dim, internal, true)?,
            v_proj: Linear::new(init, kv_dim, internal, true)?,
            out_proj: Linear::new(init, internal, dim, true)?,
        })
    }

    /// `[b, n, c]` → `[b·heads, n, c/heads]`.
    fn separate_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = (x.dim(0), x.dim(1), x.dim(2));
        let h = self.num_heads;
        x.reshape(&[b, n, h, c / h])?
            .transpose(1, 2)?
            .reshape(&[b * h, n, c / h])
    }

    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.forward_impl([q, k, v], None)
    }

    /// `residual + forward(q, k, v)`; the sum is fused into the last GEMM where one writes the
    /// whole result (many queries, few keys, one batch item).
    pub fn forward_add(
        &self,
        residual: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        self.forward_impl([q, k, v], Some(residual))
    }

    /// `[q, k, v]`, and `residual` added to the result if given.
    fn forward_impl(&self, [q, k, v]: [&Tensor; 3], residual: Option<&Tensor>) -> Result<Tensor> {
        let (nq, nk) = (q.dim(1), k.dim(1));
        let (heads, internal) = (self.num_heads, self.q_proj.weight.dim(0));
        let recording = crate::autograd::is_grad_enabled();
        let out = if !recording && nk > nq && heads * nq < internal {
            self.forward_few_queries(q, k, v)?
        } else if !recording && nq > nk && heads * nk < internal {
            return self.forward_few_keys(q, k, v, residual);
        } else {
            self.forward_rotated(q, k, v, |q, k| Ok((q, k)))?
        };
        match residual {
            Some(r) => r.add(&out),
            None => Ok(out),
        }
    }

    /// `[b, n, c]` → `[b, heads, n, c/heads]`.
    fn heads4(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = (x.dim(0), x.dim(1), x.dim(2));
        let h = self.num_heads;
        x.reshape(&[b, n, h, c / h])?.permute(&[0, 2, 1, 3])
    }

    /// A projection's rows per head, `W [heads·dh, c]` → `[b, heads, dh, c]`, and its bias
    /// `[b, heads, dh, 1]`.
    fn per_head(&self, p: &Linear, b: usize) -> Result<(Tensor, Option<Tensor>)> {
        let (h, c) = (self.num_heads, p.weight.dim(1));
        let dh = p.weight.dim(0) / h;
        let w = p
            .weight
            .reshape(&[1, h, dh, c])?
            .broadcast_to(&[b, h, dh, c])?;
        let bias = p
            .bias
            .as_ref()
            .map(|t| t.reshape(&[1, h, dh, 1])?.broadcast_to(&[b, h, dh, 1]))
            .transpose()?;
        Ok((w, bias))
    }

    /// Inference with few queries against many keys (token → image): the key projection is
    /// folded into the queries and the value projection applied after the weighted sum, so the
    /// `nk` keys and values are read by two GEMMs of `heads·nq` rows instead of being projected.
    /// The same sums as [`Attention::forward_rotated`] in another order (the softmax weights
    /// of a row sum to one, so the value bias passes through unweighted).
    fn forward_few_queries(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, nq, h) = (q.dim(0), q.dim(1), self.num_heads);
        let qh = self.heads4(&self.q_proj.forward(q)?)?; // [b, h, nq, dh]
        let dh = qh.dim(3);
        let scale = 1.0 / (dh as f32).sqrt();
        let (wk, bk) = self.per_head(&self.k_proj, b)?;
        let qk = qh.matmul(&wk)?.scale(scale)?; // [b, h, nq, ck]
        let ck = qk.dim(3);
        let mut scores = qk.reshape(&[b, h * nq, ck])?.matmul(&k.transpose(1, 2)?)?;
        if let Some(bk) = bk {
            let row = qh.matmul(&bk)?.scale(scale)?.reshape(&[b, h * nq, 1])?;
            scores = scores.add(&row)?;
        }
        let pv = scores.softmax_last()?.matmul(v)?; // [b, h·nq, cv]
        let cv = pv.dim(2);
        let (wv, bv) = self.per_head(&self.v_proj, b)?;
        let mut o = pv.reshape(&[b, h, nq, cv])?.matmul(&wv.transpose(2, 3)?)?; // [b, h, nq, dh]
        if let Some(bv) = bv {
            o = o.add(&bv.transpose(2, 3)?)?;
        }
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, nq, h * dh])?;
        self.out_proj.forward(&o)
    }

    /// Inference with many queries against few keys (image → token): the query projection is
    /// folded into the keys and the output projection into the values, so the `nq` queries are
    /// read by one GEMM of `heads·nk` columns and the result written by one of `heads·nk` inner
    /// size, instead of two projections of `nq` rows. The same sums as
    /// [`Attention::forward_rotated`] in another order.
    fn forward_few_keys(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, nq, nk, h) = (q.dim(0), q.dim(1), k.dim(1), self.num_heads);
        let kh = self.heads4(&self.k_proj.forward(k)?)?; // [b, h, nk, dh]
        let vh = self.heads4(&self.v_proj.forward(v)?)?;
        let dh = kh.dim(3);
        let scale = 1.0 / (dh as f32).sqrt();
        let (wq, bq) = self.per_head(&self.q_proj, b)?;
        let kq = kh.matmul(&wq)?.scale(scale)?; // [b, h, nk, cq]
        let cq = kq.dim(3);
        let mut scores = q.matmul(&kq.reshape(&[b, h * nk, cq])?.transpose(1, 2)?)?;
        if let Some(bq) = bq {
            let col = kh.matmul(&bq)?.scale(scale)?.reshape(&[b, 1, h * nk])?;
            scores = scores.add(&col)?;
        }
        let p = scores
            .reshape(&[b, nq, h, nk])?
            .softmax_last()?
            .reshape(&[b, nq, h * nk])?;
        // The output projection per head: `W_o [c, heads·dh]` → `[b, heads, dh, c]`.
        let wo = &self.out_proj.weight;
        let c = wo.dim(0);
        let wo = wo
            .transpose(0, 1)?
            .reshape(&[1, h, dh, c])?
            .broadcast_to(&[b, h, dh, c])?;
        let vo = vh.matmul(&wo)?.reshape(&[b, h * nk, c])?;
        let bias = self.out_proj.bias.as_ref();
        if b == 1 {
            // `residual + (p · vo + bias)` in the GEMM's epilogue, the sum [`Attention::forward_add`]
            // would form.
            let residual = residual.map(|r| r.reshape(&[nq, c])).transpose()?;
            let vo_t = vo.reshape(&[h * nk, c])?.transpose(0, 1)?;
            let out =
                p.reshape(&[nq, h * nk])?
                    .linear_fused(&vo_t, bias, residual.as_ref(), false)?;
            return out.reshape(&[1, nq, c]);
        }
        let out = p.matmul(&vo)?;
        let out = match bias {
            Some(bias) => out.add(bias)?,
            None => out,
        };
        match residual {
            Some(r) => r.add(&out),
            None => Ok(out),
        }
    }

    /// As [`Attention::forward`], with `rotate` applied to the per-head queries and keys
    /// `[b·heads, n, c/heads]` before the scores (SAM 2's rotary encoding).
    pub fn forward_rotated(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rotate: impl FnOnce(Tensor, Tensor) -> Result<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, nq) = (q.dim(0), q.dim(1));
        let q = self.separate_heads(&self.q_proj.forward(q)?)?;
        let k = self.separate_heads(&self.k_proj.forward(k)?)?;
        let v = self.separate_heads(&self.v_proj.forward(v)?)?;
        let (q, k) = rotate(q, k)?;
        let d = q.dim(2);
        let o = attention(&q, &k, &v, 1.0 / (d as f32).sqrt(), None)?;
        let o = o
            .reshape(&[b, self.num_heads, nq, d])?
            .transpose(1, 2)?
            .reshape(&[b, nq, self.num_heads * d])?;
        self.out_proj.forward(&o)
    }
}

/// The MLP of a [`TwoWayAttentionBlock`], linear → ReLU → linear: SAM's `MLPBlock`
/// (`mlp.lin1`, `mlp.lin2`) or SAM 2's `MLP` (`mlp.layers.{0,1}`).
pub trait BlockMlp: Module + Sized {
    fn build(init: &mut Init, dim: usize, hidden: usize) -> Result<Self>;
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

impl BlockMlp for MlpBlock {
    fn build(init: &mut Init, dim: usize, hidden: usize) -> Result<Self> {
        MlpBlock::new(init, dim, hidden, Act::Relu)
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        MlpBlock::forward(self, x)
    }
}

impl BlockMlp for Mlp {
    fn build(init: &mut Init, dim: usize, hidden: usize) -> Result<Self> {
        Mlp::new(init, dim, hidden, dim, 2, false)
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Mlp::forward(self, x)
    }
}

pub struct TwoWayAttentionBlock<M = MlpBlock> {
    pub self_attn: Attention,
    pub norm1: LayerNorm,
    pub cross_attn_token_to_image: Attention,
    pub norm2: LayerNorm,
    pub mlp: M,
    pub norm3: LayerNorm,
    pub norm4: LayerNorm,
    pub cross_attn_image_to_token: Attention,
    pub skip_first_layer_pe: bool,
}

crate::models::common::module_parts!(TwoWayAttentionBlock<M: BlockMlp>: self_attn, norm1, cross_attn_token_to_image, norm2, mlp, norm3, norm4, cross_attn_image_to_token);

impl<M: BlockMlp> TwoWayAttentionBlock<M> {
    pub fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = queries.add(query_pe)?;
            self.self_attn.forward_add(queries, &q, &q, queries)?
        };
        let queries = self.norm1.forward(&queries)?;

        let q = queries.add(query_pe)?;
        // `keys` does not change until the last step, so both cross attentions share `k`.
        let k = keys.add(key_pe)?;
        let queries = self
            .cross_attn_token_to_image
            .forward_add(&queries, &q, &k, keys)?;
        let queries = self.norm2.forward(&queries)?;

        let queries = queries.add(&self.mlp.forward(&queries)?)?;
        let queries = self.norm3.forward(&queries)?;

        let q = queries.add(query_pe)?;
        let keys = self
            .cross_attn_image_to_token
            .forward_add(keys, &k, &q, &queries)?;
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

pub struct TwoWayTransformer<M = MlpBlock> {
    pub layers: Vec<TwoWayAttentionBlock<M>>,
    pub final_attn_token_to_image: Attention,
    pub norm_final_attn: LayerNorm,
}

crate::models::common::module_parts!(TwoWayTransformer<M: BlockMlp>: list layers, final_attn_token_to_image, norm_final_attn);

impl<M: BlockMlp> TwoWayTransformer<M> {
    pub fn new(
        init: &mut Init,
        depth: usize,
        dim: usize,
        num_heads: usize,
        mlp_dim: usize,
    ) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| {
                Ok(TwoWayAttentionBlock {
                    self_attn: Attention::new(init, dim, num_heads, 1)?,
                    norm1: LayerNorm::new(init, dim, LN_EPS)?,
                    cross_attn_token_to_image: Attention::new(init, dim, num_heads, 2)?,
                    norm2: LayerNorm::new(init, dim, LN_EPS)?,
                    mlp: M::build(init, dim, mlp_dim)?,
                    norm3: LayerNorm::new(init, dim, LN_EPS)?,
                    norm4: LayerNorm::new(init, dim, LN_EPS)?,
                    cross_attn_image_to_token: Attention::new(init, dim, num_heads, 2)?,
                    skip_first_layer_pe: i == 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(TwoWayTransformer {
            layers,
            final_attn_token_to_image: Attention::new(init, dim, num_heads, 2)?,
            norm_final_attn: LayerNorm::new(init, dim, LN_EPS)?,
        })
    }

    /// image `[B, C, h, w]`, its PE (same shape), point tokens `[B, N, C]` → (queries, keys).
    pub fn forward(
        &self,
        image_embedding: &Tensor,
        image_pe: &Tensor,
        point_embedding: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // Token-major `[B, h·w, C]`, so the many adds and projections below read contiguous rows:
        // one copy of an NCHW tensor, none of a channel-last view (the cached dense PE).
        let to_tokens = |t: &Tensor| {
            let (b, c, h, w) = (t.dim(0), t.dim(1), t.dim(2), t.dim(3));
            t.permute(&[0, 2, 3, 1])?.reshape(&[b, h * w, c])
        };
        let image_embedding = to_tokens(image_embedding)?;
        let image_pe = to_tokens(image_pe)?;
        let (mut queries, mut keys) = (point_embedding.clone(), image_embedding);
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, point_embedding, &image_pe)?;
        }
        let q = queries.add(point_embedding)?;
        let k = keys.add(&image_pe)?;
        let queries = self
            .final_attn_token_to_image
            .forward_add(&queries, &q, &k, &keys)?;
        Ok((self.norm_final_attn.forward(&queries)?, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::no_grad;
    use crate::Device;
    use medsam_kernels::testing::assert_close;

    /// The inference paths with folded projections against the plain one, for both the
    /// few-queries and the few-keys shapes, with a batch of two and key/value widths that differ
    /// from the query width (SAM 2's `kv_in_dim`).
    #[test]
    fn folded_attention_matches_projected_attention() {
        let mut init = Init::new(7, Device::Cpu);
        let (dim, kv_dim) = (64, 48);
        let to_image = Attention::with_kv_dim(&mut init, dim, kv_dim, 4, 2).unwrap();
        let to_token = Attention::with_kv_dim(&mut init, kv_dim, dim, 4, 2).unwrap();
        let tokens = init.normal(&[2, 3, dim], 1.0).unwrap();
        let image = init.normal(&[2, 150, kv_dim], 1.0).unwrap();
        let image_v = init.normal(&[2, 150, kv_dim], 1.0).unwrap();
        let tokens_v = init.normal(&[2, 3, dim], 1.0).unwrap();
        for (what, a, q, k, v) in [
            ("few queries", &to_image, &tokens, &image, &image_v),
            ("few keys", &to_token, &image, &tokens, &tokens_v),
        ] {
            let plain = no_grad(|| a.forward_rotated(q, k, v, |q, k| Ok((q, k)))).unwrap();
            let folded = no_grad(|| a.forward(q, k, v)).unwrap();
            assert_eq!(folded.shape(), plain.shape(), "{what}");
            let (got, want) = (folded.to_vec().unwrap(), plain.to_vec().unwrap());
            assert_close(what, &got, &want, 1e-5, 1e-4);
            // With a residual, for the batch of two and for one item (the fused epilogue).
            let residual = init.normal(plain.shape(), 1.0).unwrap();
            for b in [2, 1] {
                let one = |t: &Tensor| t.narrow(0, 0, b).unwrap();
                let (r, q, k, v) = (one(&residual), one(q), one(k), one(v));
                let got = no_grad(|| a.forward_add(&r, &q, &k, &v)).unwrap();
                let want = r.add(&one(&plain)).unwrap();
                assert_eq!(got.shape(), want.shape(), "{what}, batch {b}");
                assert_close(
                    &format!("{what} + residual, batch {b}"),
                    &got.to_vec().unwrap(),
                    &want.to_vec().unwrap(),
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}
