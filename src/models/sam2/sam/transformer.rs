//! SAM 2's `TwoWayTransformer` (`sam2/modeling/sam/transformer.py`): SAM's, except that the block
//! MLP is SAM 2's `MLP` (`mlp.layers.{0,1}`, ReLU).

use super::super::sam2_utils::Mlp;
use crate::error::Result;
use crate::models::common::{join, Init, LayerNorm, Module};
use crate::models::sam::transformer::Attention;
use crate::tensor::Tensor;

/// nn.LayerNorm's default eps.
const LN_EPS: f32 = 1e-5;

pub struct TwoWayAttentionBlock {
    pub self_attn: Attention,
    pub norm1: LayerNorm,
    pub cross_attn_token_to_image: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub norm3: LayerNorm,
    pub norm4: LayerNorm,
    pub cross_attn_image_to_token: Attention,
    pub skip_first_layer_pe: bool,
}

impl Module for TwoWayAttentionBlock {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.self_attn.visit(&join(prefix, "self_attn"), f);
        self.norm1.visit(&join(prefix, "norm1"), f);
        self.cross_attn_token_to_image
            .visit(&join(prefix, "cross_attn_token_to_image"), f);
        self.norm2.visit(&join(prefix, "norm2"), f);
        self.mlp.visit(&join(prefix, "mlp"), f);
        self.norm3.visit(&join(prefix, "norm3"), f);
        self.norm4.visit(&join(prefix, "norm4"), f);
        self.cross_attn_image_to_token
            .visit(&join(prefix, "cross_attn_image_to_token"), f);
    }
}

impl TwoWayAttentionBlock {
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
            queries.add(&self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = queries.add(query_pe)?;
        let k = keys.add(key_pe)?;
        let queries = queries.add(&self.cross_attn_token_to_image.forward(&q, &k, keys)?)?;
        let queries = self.norm2.forward(&queries)?;
        let queries = queries.add(&self.mlp.forward(&queries)?)?;
        let queries = self.norm3.forward(&queries)?;
        let q = queries.add(query_pe)?;
        let keys = keys.add(&self.cross_attn_image_to_token.forward(&k, &q, &queries)?)?;
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

pub struct TwoWayTransformer {
    pub layers: Vec<TwoWayAttentionBlock>,
    pub final_attn_token_to_image: Attention,
    pub norm_final_attn: LayerNorm,
}

impl Module for TwoWayTransformer {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit(&join(prefix, &format!("layers.{i}")), f);
        }
        self.final_attn_token_to_image
            .visit(&join(prefix, "final_attn_token_to_image"), f);
        self.norm_final_attn
            .visit(&join(prefix, "norm_final_attn"), f);
    }
}

impl TwoWayTransformer {
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
                    mlp: Mlp::new(init, dim, mlp_dim, dim, 2, false)?,
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
        let to_tokens = |t: &Tensor| t.flatten_from(2)?.permute(&[0, 2, 1])?.contiguous();
        let image_embedding = to_tokens(image_embedding)?;
        let image_pe = to_tokens(image_pe)?;
        let (mut queries, mut keys) = (point_embedding.clone(), image_embedding);
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, point_embedding, &image_pe)?;
        }
        let q = queries.add(point_embedding)?;
        let k = keys.add(&image_pe)?;
        let queries = queries.add(&self.final_attn_token_to_image.forward(&q, &k, &keys)?)?;
        Ok((self.norm_final_attn.forward(&queries)?, keys))
    }
}
