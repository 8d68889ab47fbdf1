//! `MemoryAttention` (`sam2/modeling/memory_attention.py`) and `RoPEAttention`
//! (`sam2/modeling/sam/transformer.py`): the current frame's stride-16 tokens self-attend, then
//! cross-attend to the memory bank (spatial memories of past frames, then object-pointer tokens),
//! both with 2-D axial rotary position encodings. Tokens are `[B, N, C]` (batch first).
//!
//! The rotary encoding here is the reference implementation (`compute_axial_cis`,
//! `apply_rotary_enc`) on host buffers: consecutive channel pairs are complex numbers rotated by
//! angles `x·f_j` (first half of the pairs) and `y·f_j` (second half), `f_j = θ^(−4j/d)`.

use super::config::{MemoryAttentionConfig, RopeAttentionConfig};
use crate::error::{Error, Result};
use crate::models::common::{join, Init, LayerNorm, Linear, Module};
use crate::models::sam::transformer::Attention;
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex};

/// `compute_axial_cis(dim, end_x, end_y, theta)`: (cos, sin), each `[end_x·end_y, dim/2]`.
pub fn compute_axial_cis(
    dim: usize,
    end_x: usize,
    end_y: usize,
    theta: f32,
) -> (Vec<f32>, Vec<f32>) {
    let nf = dim / 4;
    let freqs: Vec<f32> = (0..nf)
        .map(|j| 1.0 / theta.powf((4 * j) as f32 / dim as f32))
        .collect();
    let n = end_x * end_y;
    let half = dim / 2;
    let (mut cos, mut sin) = (vec![0.0f32; n * half], vec![0.0f32; n * half]);
    for t in 0..n {
        let (tx, ty) = ((t % end_x) as f32, (t / end_x) as f32);
        for j in 0..nf {
            let (ax, ay) = (tx * freqs[j], ty * freqs[j]);
            cos[t * half + j] = ax.cos();
            sin[t * half + j] = ax.sin();
            cos[t * half + nf + j] = ay.cos();
            sin[t * half + nf + j] = ay.sin();
        }
    }
    (cos, sin)
}

/// `apply_rotary_enc` on `x [bh, n, d]` for its first `n_rope` tokens; token `i` uses position
/// `i mod n_pos` (`repeat_freqs_k` tiles the table over several memory frames).
pub fn apply_rotary_enc(
    x: &Tensor,
    cis: &(Vec<f32>, Vec<f32>),
    n_pos: usize,
    n_rope: usize,
) -> Result<Tensor> {
    let (bh, n, d) = (x.dim(0), x.dim(1), x.dim(2));
    let half = d / 2;
    if cis.0.len() != n_pos * half || n_rope > n || !n_rope.is_multiple_of(n_pos.max(1)) {
        return Err(Error::shape(
            "apply_rotary_enc",
            format!("{n_rope} of {n} tokens with a table of {n_pos} positions × {half}"),
        ));
    }
    let mut v = x.contiguous()?.to_vec()?;
    for b in 0..bh {
        for i in 0..n_rope {
            let p = i % n_pos;
            let row = &mut v[(b * n + i) * d..(b * n + i + 1) * d];
            for j in 0..half {
                let (c, s) = (cis.0[p * half + j], cis.1[p * half + j]);
                let (re, im) = (row[2 * j], row[2 * j + 1]);
                row[2 * j] = re * c - im * s;
                row[2 * j + 1] = re * s + im * c;
            }
        }
    }
    Tensor::from_slice(&v, &[bh, n, d], x.device())
}

/// SAM's [`Attention`] (same `q_proj`, `k_proj`, `v_proj`, `out_proj` keys, keys and values of
/// width `kv_in_dim`) with axial rotary encoding of the queries and keys.
pub struct RoPEAttention {
    pub attn: Attention,
    pub rope_theta: f32,
    pub rope_k_repeat: bool,
    /// The last rotary table (see [`CisTable`]).
    cis: Mutex<Option<CisTable>>,
}

/// A `compute_axial_cis` table and what it was computed for (head dim, grid side, θ's bits):
/// upstream computes `freqs_cis` once and keeps it; recomputing it on every call was ~1 % of a
/// MedSAM2 volume (eight tables of 1024 × 128 angles per slice).
struct CisTable {
    key: (usize, usize, u32),
    table: Arc<(Vec<f32>, Vec<f32>)>,
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

    /// `compute_axial_cis(hd, side, side, θ)`, computed once per size.
    fn axial_cis(&self, hd: usize, side: usize) -> Arc<(Vec<f32>, Vec<f32>)> {
        let key = (hd, side, self.rope_theta.to_bits());
        let mut cached = self.cis.lock().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some(c) if c.key == key => c.table.clone(),
            _ => {
                let table = Arc::new(compute_axial_cis(hd, side, side, self.rope_theta));
                *cached = Some(CisTable {
                    key,
                    table: table.clone(),
                });
                table
            }
        }
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
            let cis = self.axial_cis(hd, side);
            let q = apply_rotary_enc(&q, &cis, nq, nq)?;
            let n_rope = nk
                .checked_sub(num_k_exclude_rope)
                .ok_or_else(|| Error::shape("RoPEAttention", "more excluded keys than keys"))?;
            let k = apply_rotary_enc(&k, &cis, nq, n_rope)?;
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
