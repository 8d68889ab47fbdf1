//! The Hiera trunk (`sam2/modeling/backbones/hieradet.py`): a 7×7/4 patch embedding, a bicubic
//! background position embedding plus a tiled window embedding, and multi-scale blocks whose
//! stage changes pool the queries 2×2 (and the shortcut through `proj`). Activations are NHWC
//! inside the trunk; each stage's output is returned NCHW, highest resolution first.

use super::config::TrunkConfig;
use super::sam2_utils::{interpolate_bicubic, max_pool2x2_nhwc, Mlp};
use crate::error::{Error, Result};
use crate::models::common::{join, Conv2d, Init, LayerNorm, Linear, Module};
use crate::models::sam::image_encoder::{window_partition, window_unpartition};
use crate::ops::nn::attention;
use crate::tensor::Tensor;

/// Hiera's LayerNorm eps (`partial(nn.LayerNorm, eps=1e-6)`).
const LN_EPS: f32 = 1e-6;

pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl Module for PatchEmbed {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.proj.visit(&join(prefix, "proj"), f);
    }
}

pub struct MultiScaleAttention {
    pub num_heads: usize,
    pub dim_out: usize,
    pub q_pool: bool,
    pub qkv: Linear,
    pub proj: Linear,
}

impl Module for MultiScaleAttention {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.qkv.visit(&join(prefix, "qkv"), f);
        self.proj.visit(&join(prefix, "proj"), f);
    }
}

impl MultiScaleAttention {
    /// x `[B, H, W, dim]` → `[B, H', W', dim_out]` (H' = H/2 when the queries are pooled).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w) = (x.dim(0), x.dim(1), x.dim(2));
        let (nh, d) = (self.num_heads, self.dim_out);
        let hd = d / nh;
        let qkv = self.qkv.forward(x)?.reshape(&[b, h * w, 3, nh, hd])?;
        let part = |i: usize| qkv.select(2, i);
        let (mut q, k, v) = (part(0)?, part(1)?, part(2)?);
        let (mut qh, mut qw) = (h, w);
        if self.q_pool {
            let pooled = max_pool2x2_nhwc(&q.reshape(&[b, h, w, d])?)?;
            (qh, qw) = (pooled.dim(1), pooled.dim(2));
            q = pooled.reshape(&[b, qh * qw, nh, hd])?;
        }
        let heads = |t: &Tensor, n: usize| t.permute(&[0, 2, 1, 3])?.reshape(&[b * nh, n, hd]);
        let o = attention(
            &heads(&q, qh * qw)?,
            &heads(&k, h * w)?,
            &heads(&v, h * w)?,
            (hd as f32).powf(-0.5),
            None,
        )?;
        let o = o
            .reshape(&[b, nh, qh * qw, hd])?
            .permute(&[0, 2, 1, 3])?
            .reshape(&[b, qh, qw, d])?;
        self.proj.forward(&o)
    }
}

pub struct MultiScaleBlock {
    pub dim: usize,
    pub dim_out: usize,
    pub window_size: usize,
    pub q_stride: Option<usize>,
    pub norm1: LayerNorm,
    pub attn: MultiScaleAttention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub proj: Option<Linear>,
}

impl Module for MultiScaleBlock {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.norm1.visit(&join(prefix, "norm1"), f);
        self.attn.visit(&join(prefix, "attn"), f);
        self.norm2.visit(&join(prefix, "norm2"), f);
        self.mlp.visit(&join(prefix, "mlp"), f);
        if let Some(p) = &mut self.proj {
            p.visit(&join(prefix, "proj"), f);
        }
    }
}

impl MultiScaleBlock {
    /// `[B, H, W, dim]` → `[B, H', W', dim_out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xn = self.norm1.forward(x)?;
        let shortcut = match &self.proj {
            Some(p) => {
                let s = p.forward(&xn)?;
                if self.q_stride.is_some() {
                    max_pool2x2_nhwc(&s)?
                } else {
                    s
                }
            }
            None => x.clone(),
        };
        let (h, w) = (x.dim(1), x.dim(2));
        let mut ws = self.window_size;
        let (xw, mut pad_hw) = if ws > 0 {
            window_partition(&xn, ws)?
        } else {
            (xn, (h, w))
        };
        let a = self.attn.forward(&xw)?;
        let (mut oh, mut ow) = (h, w);
        if let Some(q) = self.q_stride {
            ws /= q;
            (oh, ow) = (shortcut.dim(1), shortcut.dim(2));
            if ws > 0 {
                pad_hw = (oh + (ws - oh % ws) % ws, ow + (ws - ow % ws) % ws);
            }
        }
        let a = if self.window_size > 0 {
            window_unpartition(&a, ws, pad_hw, (oh, ow))?
        } else {
            a
        };
        let x = shortcut.add(&a)?;
        x.add(&self.mlp.forward(&self.norm2.forward(&x)?)?)
    }
}

pub struct Hiera {
    pub patch_embed: PatchEmbed,
    pub pos_embed: Tensor,
    pub pos_embed_window: Tensor,
    pub blocks: Vec<MultiScaleBlock>,
    pub stage_ends: Vec<usize>,
}

impl Module for Hiera {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "pos_embed"), &mut self.pos_embed);
        f(
            &join(prefix, "pos_embed_window"),
            &mut self.pos_embed_window,
        );
        self.patch_embed.visit(&join(prefix, "patch_embed"), f);
        for (i, b) in self.blocks.iter_mut().enumerate() {
            b.visit(&join(prefix, &format!("blocks.{i}")), f);
        }
    }
}

impl Hiera {
    pub fn new(init: &mut Init, cfg: &TrunkConfig) -> Result<Self> {
        let depth: usize = cfg.stages.iter().sum();
        let stage_ends: Vec<usize> = (1..=cfg.stages.len())
            .map(|i| cfg.stages[..i].iter().sum::<usize>() - 1)
            .collect();
        let q_pool_blocks: Vec<usize> = stage_ends[..stage_ends.len() - 1]
            .iter()
            .map(|e| e + 1)
            .take(cfg.q_pool)
            .collect();
        let mut embed_dim = cfg.embed_dim;
        let mut num_heads = cfg.num_heads;
        let mut cur_stage = 1;
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let mut dim_out = embed_dim;
            // The first block of a stage still uses the previous stage's window size.
            let mut window_size = cfg.window_spec[cur_stage - 1];
            if cfg.global_att_blocks.contains(&i) {
                window_size = 0;
            }
            if i > 0 && stage_ends.contains(&(i - 1)) {
                dim_out = (embed_dim as f64 * cfg.dim_mul) as usize;
                num_heads = (num_heads as f64 * cfg.head_mul) as usize;
                cur_stage += 1;
            }
            let q_stride = q_pool_blocks.contains(&i).then_some(cfg.q_stride[0]);
            blocks.push(MultiScaleBlock {
                dim: embed_dim,
                dim_out,
                window_size,
                q_stride,
                norm1: LayerNorm::new(init, embed_dim, LN_EPS)?,
                attn: MultiScaleAttention {
                    num_heads,
                    dim_out,
                    q_pool: q_stride.is_some(),
                    qkv: Linear::new(init, embed_dim, 3 * dim_out, true)?,
                    proj: Linear::new(init, dim_out, dim_out, true)?,
                },
                norm2: LayerNorm::new(init, dim_out, LN_EPS)?,
                mlp: Mlp::new(init, dim_out, 4 * dim_out, dim_out, 2, true)?,
                proj: (embed_dim != dim_out)
                    .then(|| Linear::new(init, embed_dim, dim_out, true))
                    .transpose()?,
            });
            embed_dim = dim_out;
        }
        let [bh, bw] = cfg.window_pos_embed_bkg_spatial_size;
        let w0 = cfg.window_spec[0];
        Ok(Hiera {
            patch_embed: PatchEmbed {
                proj: Conv2d::new(init, 3, cfg.embed_dim, 7, 4, 3, true)?,
            },
            pos_embed: init.zeros(&[1, cfg.embed_dim, bh, bw])?,
            pos_embed_window: init.zeros(&[1, cfg.embed_dim, w0, w0])?,
            blocks,
            stage_ends,
        })
    }

    /// Output widths, lowest resolution first (`Hiera.channel_list`).
    pub fn channel_list(&self) -> Vec<usize> {
        self.stage_ends
            .iter()
            .rev()
            .map(|&i| self.blocks[i].dim_out)
            .collect()
    }

    /// `_get_pos_embed`: `[1, h, w, C]`.
    fn get_pos_embed(&self, h: usize, w: usize) -> Result<Tensor> {
        let ws = self.pos_embed_window.dim(2);
        if !h.is_multiple_of(ws) || !w.is_multiple_of(ws) {
            return Err(Error::shape(
                "hiera pos_embed",
                format!("a {h}×{w} patch grid does not tile by the {ws}×{ws} window embedding"),
            ));
        }
        let c = self.pos_embed.dim(1);
        let bkg = interpolate_bicubic(&self.pos_embed, h, w)?;
        let win = self
            .pos_embed_window
            .reshape(&[1, c, 1, ws, 1, ws])?
            .broadcast_to(&[1, c, h / ws, ws, w / ws, ws])?
            .reshape(&[1, c, h, w])?;
        bkg.add(&win)?.permute(&[0, 2, 3, 1])?.contiguous()
    }

    /// Images `[B, 3, S, S]` → one NCHW map per stage, highest resolution first.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let x = self.patch_embed.proj.forward(x)?.permute(&[0, 2, 3, 1])?;
        let mut x = x.add(&self.get_pos_embed(x.dim(1), x.dim(2))?)?;
        let mut outputs = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x)?;
            if self.stage_ends.contains(&i) {
                outputs.push(x.permute(&[0, 3, 1, 2])?.contiguous()?);
            }
        }
        Ok(outputs)
    }
}
