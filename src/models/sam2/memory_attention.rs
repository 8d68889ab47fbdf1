//! `MemoryAttention` (`sam2/modeling/memory_attention.py`) and `RoPEAttention`
//! (`sam2/modeling/sam/transformer.py`): the current frame's stride-16 tokens self-attend, then
//! cross-attend to the memory bank (spatial memories of past frames, then object-pointer tokens),
//! both with 2-D axial rotary position encodings. Tokens are `[B, N, C]` (batch first).
//!
//! The rotary encoding is the device op [`crate::ops::rope`] (upstream's `compute_axial_cis` and
//! `apply_rotary_enc`): consecutive channel pairs are complex numbers rotated by angles `x·f_j`
//! (first half of the pairs) and `y·f_j` (second half), `f_j = θ^(−4j/d)`.

use super::config::{MemoryAttentionConfig, RopeAttentionConfig};
use crate::error::{Error, Result};
use crate::models::common::{join, Init, LayerNorm, Linear, Module};
use crate::models::sam::transformer::Attention;
use crate::ops::rope::{apply_rotary, axial_rope_tables};
use crate::tensor::Tensor;
use crate::Device;
use std::sync::Mutex;

/// SAM's [`Attention`] (same `q_proj`, `k_proj`, `v_proj`, `out_proj` keys, keys and values of
/// width `kv_in_dim`) with axial rotary encoding of the queries and keys.
pub struct RoPEAttention {
    pub attn: Attention,
    pub rope_theta: f32,
    pub rope_k_repeat: bool,
    /// The last rotary table (see [`CisTable`]).
    cis: Mutex<Option<CisTable>>,
}

/// `compute_axial_cis`'s `(cos, sin)` and what they were computed for (head dim, grid side, θ's
/// bits, device): upstream computes `freqs_cis` once and keeps it; recomputing it on every call
/// was ~1 % of a MedSAM2 volume (eight tables of 1024 × 128 angles per slice).
struct CisTable {
    key: (usize, usize, u32, Device),
    cos: Tensor,
    sin: Tensor,
}

impl Module for RoPEAttention {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.attn.visit(prefix, f);
    }
}

impl RoPEAttention {
    pub fn new(init: &mut Init, dim: usize, cfg: &RopeAttentionConfig) -> Result<Self> {
        let kv = cfg.kv_in_dim.unwrap_or(dim);
        Ok(RoPEAttention {
            attn: Attention::with_kv_dim(init, dim, kv, cfg.num_heads, cfg.downsample_rate)?,
            rope_theta: cfg.rope_theta as f32,
            rope_k_repeat: cfg.rope_k_repeat,
            cis: Mutex::new(None),
        })
    }

    /// `compute_axial_cis(hd, side, side, θ)` as `(cos, sin)` on `device`, computed once per size.
    fn axial_cis(&self, hd: usize, side: usize, device: Device) -> Result<(Tensor, Tensor)> {
        let key = (hd, side, self.rope_theta.to_bits(), device);
        let mut cached = self.cis.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| c.key == key) {
            return Ok((c.cos.clone(), c.sin.clone()));
        }
        let (cos, sin) = axial_rope_tables(hd, side, side, self.rope_theta, device)?;
        *cached = Some(CisTable {
            key,
            cos: cos.clone(),
            sin: sin.clone(),
        });
        Ok((cos, sin))
    }

    /// q `[B, Nq, C]` (a square grid), k/v `[B, Nk, kv]`; the last `num_k_exclude_rope` keys
    /// (object pointers) are not rotated.
    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        num_k_exclude_rope: usize,
    ) -> Result<Tensor> {
        self.attn.forward_rotated(q, k, v, |q, k| {
            let (nq, hd) = (q.dim(1), q.dim(2));
            let side = (nq as f64).sqrt().round() as usize;
            if side * side != nq {
                return Err(Error::shape(
                    "RoPEAttention",
                    format!("{nq} query tokens are not a square grid"),
                ));
            }
            let nk = k.dim(1);
            if nq != nk && !self.rope_k_repeat {
                return Err(Error::shape(
                    "RoPEAttention",
                    format!("{nk} keys for {nq} queries without rope_k_repeat"),
                ));
            }
            let (cos, sin) = self.axial_cis(hd, side, q.device())?;
            let q = apply_rotary(&q, &cos, &sin)?;
            let n_rope = nk
                .checked_sub(num_k_exclude_rope)
                .ok_or_else(|| Error::shape("RoPEAttention", "more excluded keys than keys"))?;
            let k = if n_rope == nk {
                apply_rotary(&k, &cos, &sin)?
            } else {
                // The object-pointer keys at the end are not rotated.
                let rotated = apply_rotary(&k.narrow(1, 0, n_rope)?, &cos, &sin)?;
                Tensor::cat(&[rotated, k.narrow(1, n_rope, nk - n_rope)?], 1)?
            };
            Ok((q, k))
        })
    }
}

/// nn.LayerNorm's default eps.
const LN_EPS: f32 = 1e-5;

pub struct MemoryAttentionLayer {
    pub self_attn: RoPEAttention,
    pub cross_attn_image: RoPEAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
    pub pos_enc_at_attn: bool,
    pub pos_enc_at_cross_attn_keys: bool,
    pub pos_enc_at_cross_attn_queries: bool,
}

impl Module for MemoryAttentionLayer {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.self_attn.visit(&join(prefix, "self_attn"), f);
        self.cross_attn_image
            .visit(&join(prefix, "cross_attn_image"), f);
        self.linear1.visit(&join(prefix, "linear1"), f);
        self.linear2.visit(&join(prefix, "linear2"), f);
        self.norm1.visit(&join(prefix, "norm1"), f);
        self.norm2.visit(&join(prefix, "norm2"), f);
        self.norm3.visit(&join(prefix, "norm3"), f);
    }
}

impl MemoryAttentionLayer {
    pub fn forward(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        pos: &Tensor,
        query_pos: &Tensor,
        num_k_exclude_rope: usize,
    ) -> Result<Tensor> {
        let t2 = self.norm1.forward(tgt)?;
        let qk = if self.pos_enc_at_attn {
            t2.add(query_pos)?
        } else {
            t2.clone()
        };
        let tgt = tgt.add(&self.self_attn.forward(&qk, &qk, &t2, 0)?)?;
        let t2 = self.norm2.forward(&tgt)?;
        let q = if self.pos_enc_at_cross_attn_queries {
            t2.add(query_pos)?
        } else {
            t2
        };
        let k = if self.pos_enc_at_cross_attn_keys {
            memory.add(pos)?
        } else {
            memory.clone()
        };
        let tgt = tgt.add(
            &self
                .cross_attn_image
                .forward(&q, &k, memory, num_k_exclude_rope)?,
        )?;
        let t2 = self.norm3.forward(&tgt)?;
        let t2 = self.linear2.forward(&self.linear1.forward(&t2)?.relu()?)?;
        tgt.add(&t2)
    }
}

pub struct MemoryAttention {
    pub layers: Vec<MemoryAttentionLayer>,
    pub norm: LayerNorm,
    pub pos_enc_at_input: bool,
}

impl Module for MemoryAttention {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit(&join(prefix, &format!("layers.{i}")), f);
        }
        self.norm.visit(&join(prefix, "norm"), f);
    }
}

impl MemoryAttention {
    pub fn new(init: &mut Init, cfg: &MemoryAttentionConfig) -> Result<Self> {
        let d = cfg.d_model;
        let l = &cfg.layer;
        let layers = (0..cfg.num_layers)
            .map(|_| {
                Ok(MemoryAttentionLayer {
                    self_attn: RoPEAttention::new(init, d, &l.self_attention)?,
                    cross_attn_image: RoPEAttention::new(init, d, &l.cross_attention)?,
                    linear1: Linear::new(init, d, l.dim_feedforward, true)?,
                    linear2: Linear::new(init, l.dim_feedforward, d, true)?,
                    norm1: LayerNorm::new(init, d, LN_EPS)?,
                    norm2: LayerNorm::new(init, d, LN_EPS)?,
                    norm3: LayerNorm::new(init, d, LN_EPS)?,
                    pos_enc_at_attn: l.pos_enc_at_attn,
                    pos_enc_at_cross_attn_keys: l.pos_enc_at_cross_attn_keys,
                    pos_enc_at_cross_attn_queries: l.pos_enc_at_cross_attn_queries,
                })
            })
            .collect::<Result<_>>()?;
        Ok(MemoryAttention {
            layers,
            norm: LayerNorm::new(init, d, LN_EPS)?,
            pos_enc_at_input: cfg.pos_enc_at_input,
        })
    }

    /// `curr [B, N, C]` with `curr_pos`, `memory [B, M, mem_dim]` with `memory_pos`; the last
    /// `num_obj_ptr_tokens` memory tokens are object pointers (no rotary encoding).
    pub fn forward(
        &self,
        curr: &Tensor,
        memory: &Tensor,
        curr_pos: &Tensor,
        memory_pos: &Tensor,
        num_obj_ptr_tokens: usize,
    ) -> Result<Tensor> {
        let mut output = if self.pos_enc_at_input {
            curr.add(&curr_pos.scale(0.1)?)?
        } else {
            curr.clone()
        };
        for layer in &self.layers {
            output = layer.forward(&output, memory, memory_pos, curr_pos, num_obj_ptr_tokens)?;
        }
        self.norm.forward(&output)
    }
}
