//! The Hiera trunk (`sam2/modeling/backbones/hieradet.py`): a 7×7/4 patch embedding, a bicubic
//! background position embedding plus a tiled window embedding, and multi-scale blocks whose
//! stage changes pool the queries 2×2 (and the shortcut through `proj`). Activations are NHWC
//! inside the trunk; each stage's output is returned NCHW, highest resolution first.

use super::config::TrunkConfig;
use super::sam2_utils::{interpolate_bicubic, Mlp};
use crate::autograd::{is_grad_enabled, records};
use crate::error::{Error, Result};
use crate::models::common::{
    gather_token_rows, join, picked_heads, Conv2d, EdgeGroups, Init, LayerNorm, Linear, Module,
};
use crate::models::sam::image_encoder::window_partition;
use crate::ops::nn::{attention, attention_picked};
use crate::tensor::Tensor;
use crate::Device;
use std::sync::{Arc, Mutex};

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
        let o = self.attend(x)?;
        let (b, nh, qh, qw, hd) = (o.dim(0), o.dim(1), o.dim(2), o.dim(3), o.dim(4));
        let o = o
            .permute(&[0, 2, 3, 1, 4])?
            .reshape(&[b, qh, qw, nh * hd])?;
        self.proj.forward(&o)
    }

    /// The attention before `proj`: x `[B, H, W, dim]` → the heads' outputs
    /// `[B, heads, H', W', head_dim]` (a view of the attention's `[B·heads, H'·W', head_dim]`).
    pub fn attend(&self, x: &Tensor) -> Result<Tensor> {
        self.attend_windowed(x, 0)
    }

    /// `attend(window_partition(x, ws))` for `ws > 0` (the whole map as one window for 0):
    /// `[B·nW, heads, ws', ws', head_dim]`, windows in `window_partition`'s order. `qkv` runs on
    /// the zero-padded map in place, and the copies that split the heads also cut the windows,
    /// so the map is never partitioned on its own; queries are pooled on the map, which equals
    /// pooling each window when `ws` is even (for an odd `ws` the map is partitioned first).
    pub fn attend_windowed(&self, x: &Tensor, ws: usize) -> Result<Tensor> {
        if ws > 0 && self.q_pool && ws % 2 == 1 {
            let (xw, _) = window_partition(x, ws)?;
            return self.attend_windowed(&xw, 0);
        }
        let (b, h, w) = (x.dim(0), x.dim(1), x.dim(2));
        let (nh, d) = (self.num_heads, self.dim_out);
        let hd = d / nh;
        let (xp, (wh, ww)) = if ws > 0 {
            let pad = |n: usize| (ws - n % ws) % ws;
            (x.pad_end(&[0, pad(h), pad(w), 0])?, (ws, ws))
        } else {
            (x.clone(), (h, w))
        };
        let (hp, wp) = (xp.dim(1), xp.dim(2));
        let (nwh, nww) = (hp / wh.max(1), wp / ww.max(1));
        let qkv = self.qkv.forward(&xp)?; // [B, hp, wp, 3·dim_out]
                                          // `[B, nwh, th, nww, tw, heads, hd]` (a view of qkv or of the pooled queries) →
                                          // `[B·nW·heads, th·tw, hd]`, one copy.
        let heads = |t: &Tensor, (th, tw): (usize, usize)| {
            t.permute(&[0, 1, 3, 5, 2, 4, 6])?
                .reshape(&[b * nwh * nww * nh, th * tw, hd])
        };
        let parts = qkv.reshape(&[b, nwh, wh, nww, ww, 3, nh, hd])?;
        let (q, (qh, qw)) = if self.q_pool {
            let q = qkv.reshape(&[b, hp, wp, 3, d])?.select(3, 0)?;
            let pooled = q.max_pool2x2_nhwc()?;
            let (qh, qw) = (wh / 2, ww / 2);
            let pooled = pooled.reshape(&[b, nwh, qh, nww, qw, nh, hd])?;
            (heads(&pooled, (qh, qw))?, (qh, qw))
        } else {
            (heads(&parts.select(5, 0)?, (wh, ww))?, (wh, ww))
        };
        let o = attention(
            &q,
            &heads(&parts.select(5, 1)?, (wh, ww))?,
            &heads(&parts.select(5, 2)?, (wh, ww))?,
            (hd as f32).powf(-0.5),
            None,
        )?;
        o.reshape(&[b * nwh * nww, nh, qh, qw, hd])
    }

    /// The attention before `proj` in inference on the CPU: the normed map `x` `[B, H, W, dim]`
    /// → the heads' outputs back on the map's tokens, `[B, H', W', dim_out]` (H' = H/2 when
    /// the queries are pooled). Windows are never materialised: q, k and v go from the
    /// projection's rows straight into per-head buffers, and the outputs straight back. The
    /// q/k/v projection runs on the map's tokens only: upstream pads the normed map with zero
    /// tokens, whose q/k/v row (that of a zero token: the bias) fills the edge windows' padding
    /// as keys and values; their queries would be cropped afterwards, so they are not computed
    /// (windows are grouped by the part of them inside the map, as in TinyViT). Pooled queries
    /// are pooled on the map: with H, W and the window even, every 2×2 pool upstream takes
    /// inside a window and inside the map is one on the map, and the others are cropped.
    /// `ws = 0` is global attention over a square map. None when this path does not apply
    /// (odd sizes with pooling, a non-square global map, autograd recording, a device).
    pub fn attend_inference(&self, x: &Tensor, ws: usize) -> Result<Option<Tensor>> {
        let params = [Some(x), Some(&self.qkv.weight), self.qkv.bias.as_ref()];
        let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let ws = if ws == 0 && h == w { h } else { ws };
        let even = |v: usize| v.is_multiple_of(2);
        if ws == 0
            || (self.q_pool && !(even(h) && even(w) && even(ws)))
            || x.device() != Device::Cpu
            || records(&params)
        {
            return Ok(None);
        }
        let (nh, d) = (self.num_heads, self.dim_out);
        let hd = d / nh;
        let n = ws * ws;
        let qkv = self.qkv.forward(x)?; // [b, h, w, 3·d]
        let kv_groups = EdgeGroups::new(b, (h, w), ws);
        let (q_src, q_groups) = if self.q_pool {
            let q = qkv.reshape(&[b, h, w, 3, d])?.select(3, 0)?;
            let pooled = q.max_pool2x2_nhwc()?; // [b, h/2, w/2, d]
            (pooled, EdgeGroups::new(b, (h / 2, w / 2), ws / 2))
        } else {
            (qkv.clone(), EdgeGroups::new(b, (h, w), ws))
        };
        let padded = kv_groups.groups.iter().any(|g| g.inside != (ws, ws));
        let fill = if padded {
            Some(self.qkv.forward(&Tensor::zeros(&[1, c], x.device())?)?)
        } else {
            None
        };
        let windows = kv_groups.window_index();
        let scale = (hd as f32).powf(-0.5);
        let mut outs = Vec::with_capacity(q_groups.groups.len());
        let mut first = 0;
        for (kg, qg) in kv_groups.groups.iter().zip(&q_groups.groups) {
            let count = kg.windows.len();
            if qg.windows != kg.windows {
                return Err(Error::shape(
                    "hiera attention",
                    "pooled query windows do not line up with the key windows",
                ));
            }
            let kv = &windows[first * n..(first + count) * n];
            let nq = qg.inside.0 * qg.inside.1;
            // Head-split q, k and v (the `d` columns from `col` of the rows), `[windows·heads,
            // tokens, hd]`, read in place from the projection's rows.
            let q_index = q_groups.query_index(qg);
            let width = qkv.dim(3);
            let o = attention_picked(
                picked_heads(&q_src, None, (q_src.dim(3), 0, d), nh, &q_index, nq)?,
                picked_heads(&qkv, fill.as_ref(), (width, d, d), nh, kv, n)?,
                picked_heads(&qkv, fill.as_ref(), (width, 2 * d, d), nh, kv, n)?,
                scale,
                None,
            )?;
            outs.push(o.contiguous()?); // [count·heads, inside positions, hd]
            first += count;
        }
        let outs: Vec<&Tensor> = outs.iter().collect();
        let o = gather_token_rows(&outs, None, &q_groups.unwindow_index(nh), hd)?;
        let (oh, ow) = q_groups.hw();
        Ok(Some(o.reshape(&[b, oh, ow, d])?))
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
    ///
    /// As upstream, but `attn.proj` runs after the windows are put back and the padding cropped
    /// (it acts on each token alone, so only the padded tokens' outputs, which upstream crops,
    /// are not computed), and the two residual additions are fused into the GEMMs of `attn.proj`
    /// and the MLP's last layer.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true)
    }

    /// [`Self::forward`] with the attention composed as upstream does it (pad, partition,
    /// attend, unpartition, crop) even where [`MultiScaleAttention::attend_inference`] applies:
    /// the reference that path is tested against.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    fn forward_with(&self, x: &Tensor, inference_path: bool) -> Result<Tensor> {
        let xn = self.norm1.forward(x)?;
        let shortcut = match &self.proj {
            Some(p) => {
                let s = p.forward(&xn)?;
                if self.q_stride.is_some() {
                    s.max_pool2x2_nhwc()?
                } else {
                    s
                }
            }
            None => x.clone(),
        };
        let (b, h, w) = (x.dim(0), x.dim(1), x.dim(2));
        let (oh, ow) = (shortcut.dim(1), shortcut.dim(2));
        let fast = if inference_path {
            self.attn.attend_inference(&xn, self.window_size)?
        } else {
            None
        };
        let a = if let Some(a) = fast {
            a
        } else if self.window_size > 0 {
            let o = self.attn.attend_windowed(&xn, self.window_size)?;
            // [B·nWh·nWw, heads, ws, ws, hd] → [B, nWh·ws, nWw·ws, heads·hd], one gather.
            let (nh, ws, hd) = (o.dim(1), o.dim(2), o.dim(4));
            let (n_wh, n_ww) = (h.div_ceil(self.window_size), w.div_ceil(self.window_size));
            let o = o
                .reshape(&[b, n_wh, n_ww, nh, ws, ws, hd])?
                .permute(&[0, 1, 4, 2, 5, 3, 6])?
                .contiguous()?
                .reshape(&[b, n_wh * ws, n_ww * ws, nh * hd])?;
            if n_wh * ws > oh || n_ww * ws > ow {
                o.narrow(1, 0, oh)?.narrow(2, 0, ow)?
            } else {
                o
            }
        } else {
            let o = self.attn.attend(&xn)?;
            let (nh, hd) = (o.dim(1), o.dim(4));
            o.permute(&[0, 2, 3, 1, 4])?
                .reshape(&[b, oh, ow, nh * hd])?
        };
        let p = &self.attn.proj;
        let x = a.linear_fused(&p.weight, p.bias.as_ref(), Some(&shortcut), false)?;
        let (last, hidden) = self
            .mlp
            .layers
            .split_last()
            .ok_or_else(|| Error::shape("hiera mlp", "no layers"))?;
        let mut y = self.norm2.forward(&x)?;
        for l in hidden {
            y = if self.mlp.gelu {
                y.linear_act(&l.weight, l.bias.as_ref(), true)?
            } else {
                l.forward(&y)?.relu()?
            };
        }
        // Hiera's MLP has no output sigmoid (`MLP(..., act_layer)` in `MultiScaleBlock`).
        y.linear_fused(&last.weight, last.bias.as_ref(), Some(&x), false)
    }
}

pub struct Hiera {
    pub patch_embed: PatchEmbed,
    pub pos_embed: Tensor,
    pub pos_embed_window: Tensor,
    pub blocks: Vec<MultiScaleBlock>,
    pub stage_ends: Vec<usize>,
    /// The last `_get_pos_embed` result (see [`PosEmbedCache`]).
    pos_cache: Mutex<Option<PosEmbedCache>>,
}

/// `_get_pos_embed` for one grid size, with the two parameters it was computed from. Holding
/// them keeps their buffers shared, so an in-place update (the optimizer's copy-on-write
/// `storage_mut`) or an `assign` gives the parameter a new buffer and the entry no longer matches.
struct PosEmbedCache {
    pos_embed: Tensor,
    pos_embed_window: Tensor,
    hw: (usize, usize),
    out: Tensor,
}

fn same_buffer(a: &Tensor, b: &Tensor) -> bool {
    Arc::ptr_eq(a.storage_arc(), b.storage_arc())
        && a.offset() == b.offset()
        && a.shape() == b.shape()
        && a.strides() == b.strides()
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
            pos_cache: Mutex::new(None),
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

    /// `_get_pos_embed`: `[1, h, w, C]`. Without gradient recording the result is kept for the
    /// next call with the same grid and the same parameter buffers.
    fn get_pos_embed(&self, h: usize, w: usize) -> Result<Tensor> {
        let params = [&self.pos_embed, &self.pos_embed_window];
        if is_grad_enabled() && params.iter().any(|p| p.requires_grad()) {
            return self.compute_pos_embed(h, w);
        }
        let mut cache = self.pos_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref() {
            if c.hw == (h, w)
                && same_buffer(&c.pos_embed, &self.pos_embed)
                && same_buffer(&c.pos_embed_window, &self.pos_embed_window)
            {
                return Ok(c.out.clone());
            }
        }
        let out = self.compute_pos_embed(h, w)?.detach();
        *cache = Some(PosEmbedCache {
            pos_embed: self.pos_embed.detach(),
            pos_embed_window: self.pos_embed_window.detach(),
            hw: (h, w),
            out: out.clone(),
        });
        Ok(out)
    }

    fn compute_pos_embed(&self, h: usize, w: usize) -> Result<Tensor> {
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

    /// Images `[B, 3, S, S]` → the blocks' input: patch embedding plus position embedding,
    /// NHWC `[B, S/4, S/4, C]`.
    ///
    /// The convolution's NCHW output is made channels-last by one transposing copy before the
    /// addition: adding it to the NHWC embedding while reading it transposed (a column of the
    /// 128² plane per channel) took 1.6 ms at 512², the copy plus a dense add 0.7.
    pub fn forward_embed(&self, x: &Tensor) -> Result<Tensor> {
        let x = self
            .patch_embed
            .proj
            .forward(x)?
            .permute(&[0, 2, 3, 1])?
            .contiguous()?;
        x.add(&self.get_pos_embed(x.dim(1), x.dim(2))?)
    }

    /// Images `[B, 3, S, S]` → one NCHW map per stage, highest resolution first.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.forward_embed(x)?;
        let mut outputs = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x)?;
            if self.stage_ends.contains(&i) {
                // A channels-last view, as upstream's `permute`: the neck's 1×1 convs read it
                // in place (see `Tensor::conv2d`).
                outputs.push(x.permute(&[0, 3, 1, 2])?);
            }
        }
        Ok(outputs)
    }
}
