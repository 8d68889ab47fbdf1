//! `ImageEncoderViT` (segment_anything/modeling/image_encoder.py): patch embedding, absolute
//! position embedding, windowed/global attention blocks with decomposed relative positions, neck.

use crate::autograd::records;
use crate::error::{Error, Result};
use crate::models::common::{
    gather_token_rows, picked_heads, Act, Conv2d, Init, LayerNorm, LayerNorm2d, Linear, MlpBlock,
};
use crate::models::config::ImageEncoderConfig;
use crate::ops::linalg::autocast_bf16;
use crate::ops::nn::{attention, attention_picked, decomposed_rel_pos_fused, RelPosArgs};
use crate::ops::quant::autocast_int8;
use crate::tensor::Tensor;
use crate::Device;
use medsam_kernels::window::{unwindow_index, window_index, RowAt};

/// The image encoder's LayerNorm eps, as SAM's builder sets it.
const VIT_LN_EPS: f32 = 1e-6;

pub struct PatchEmbed {
    pub proj: Conv2d,
}

crate::models::common::module_parts!(PatchEmbed: proj);

impl PatchEmbed {
    /// In inference on the CPU: the patch embedding plus `pos_embed`, channel-last
    /// `[B, H/p, W/p, C]`, as one linear layer over the image's `p × p` patches (the conv's
    /// stride equals its kernel, so each output token sees one patch), with the position
    /// embedding added in the GEMM's epilogue. Upstream's conv, permute and add would hold a
    /// 12 MB im2col matrix, a channel-first output and its channel-last sum at 1024². In f32
    /// whatever the precision, as the convolution it replaces. `None` where this does not apply
    /// (autograd recording, a device, a kernel that is not its stride, no bias).
    fn forward_inference(&self, x: &Tensor, pos_embed: Option<&Tensor>) -> Result<Option<Tensor>> {
        let (w, bias) = (&self.proj.weight, self.proj.bias.as_ref());
        let (c_out, c_in, k) = (w.dim(0), w.dim(1), w.dim(2));
        let applies = x.device() == Device::Cpu
            && !records(&[Some(x), Some(w), bias, pos_embed])
            && bias.is_some()
            && w.dim(3) == k
            && self.proj.stride == k
            && self.proj.padding == 0
            && x.rank() == 4
            && x.dim(1) == c_in
            && k > 0
            && x.dim(2).is_multiple_of(k)
            && x.dim(3).is_multiple_of(k);
        if !applies {
            return Ok(None);
        }
        let (b, gh, gw) = (x.dim(0), x.dim(2) / k, x.dim(3) / k);
        let pos = match pos_embed {
            Some(p) if p.shape() != [1, gh, gw, c_out] || b != 1 => return Ok(None),
            Some(p) => Some(p.reshape(&[gh * gw, c_out])?),
            None => None,
        };
        // Row (b, gy, gx) holds its patch in the weight's (c, ky, kx) order.
        let patches = x
            .reshape(&[b, c_in, gh, k, gw, k])?
            .permute(&[0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape(&[b * gh * gw, c_in * k * k])?;
        let w = w.reshape(&[c_out, c_in * k * k])?;
        let y = autocast_bf16(false, || {
            autocast_int8(false, || {
                patches.linear_fused(&w, bias, pos.as_ref(), false)
            })
        })?;
        Ok(Some(y.reshape(&[b, gh, gw, c_out])?))
    }
}

/// Multi-head attention with optional decomposed relative-position bias.
pub struct Attention {
    pub num_heads: usize,
    pub qkv: Linear,
    pub proj: Linear,
    pub rel_pos_h: Option<Tensor>,
    pub rel_pos_w: Option<Tensor>,
}

crate::models::common::module_parts!(Attention: opt_param rel_pos_h, opt_param rel_pos_w, qkv, proj);

/// Linear-interpolation matrix `[out_len, in_len]` of `F.interpolate(mode="linear",
/// align_corners=False)`, so resizing a rel-pos table is a matmul (and differentiable).
fn linear_resize_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out_len * in_len];
    let scale = in_len as f32 / out_len as f32;
    for i in 0..out_len {
        let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let l1 = src - i0 as f32;
        m[i * in_len + i0] += 1.0 - l1;
        m[i * in_len + i1] += l1;
    }
    m
}

/// SAM's `get_rel_pos`: the `[q_size, k_size, c]` embeddings for every query/key offset,
/// resizing the table first when its length does not fit.
pub fn get_rel_pos(q_size: usize, k_size: usize, rel_pos: &Tensor) -> Result<Tensor> {
    let max_rel = 2 * q_size.max(k_size) - 1;
    let len = rel_pos.dim(0);
    let table = if len != max_rel {
        let m = Tensor::from_slice(
            &linear_resize_matrix(len, max_rel),
            &[max_rel, len],
            rel_pos.device(),
        )?;
        m.matmul(rel_pos)?
    } else {
        rel_pos.clone()
    };
    let qs = (k_size as f64 / q_size as f64).max(1.0);
    let ks = (q_size as f64 / k_size as f64).max(1.0);
    let mut index = Vec::with_capacity(q_size * k_size);
    for i in 0..q_size {
        for j in 0..k_size {
            let c = (i as f64 * qs - j as f64 * ks) + (k_size as f64 - 1.0) * ks;
            index.push(c as usize);
        }
    }
    table.gather_rows(&index, &[q_size, k_size])
}

impl Attention {
    /// x `[B, H, W, C]` → `[B, H, W, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.attend(x)?)
    }

    /// The attention of x `[B, H, W, C]` before the output projection, `[B, H, W, C]`.
    fn attend(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (nh, hd) = (self.num_heads, c / self.num_heads);
        self.attend_qkv(&self.qkv.forward(x)?, b, (h, w), c)?
            .reshape(&[b, nh, h, w, hd])?
            .permute(&[0, 2, 3, 1, 4])?
            .reshape(&[b, h, w, c])
    }

    /// Attention over the projected q/k/v (`b·h·w` rows of `3c`, any shape with that many
    /// elements) of `b` maps of `h × w` tokens → `[b·heads, h·w, c/heads]`.
    fn attend_qkv(
        &self,
        qkv: &Tensor,
        b: usize,
        (h, w): (usize, usize),
        c: usize,
    ) -> Result<Tensor> {
        let (nh, n) = (self.num_heads, h * w);
        let hd = c / nh;
        let qkv = qkv.reshape(&[b, n, 3, nh, hd])?.permute(&[2, 0, 3, 1, 4])?;
        let take = |i: usize| qkv.narrow(0, i, 1)?.reshape(&[b * nh, n, hd]);
        self.attend_heads(&take(0)?, &take(1)?, &take(2)?, (h, w))
    }

    /// Attention of q, k, v `[maps·heads, h·w, c/heads]` over maps of `h × w` tokens (with
    /// the decomposed relative positions when the block has them), same shape.
    fn attend_heads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (h, w): (usize, usize),
    ) -> Result<Tensor> {
        let scale = (q.dim(2) as f32).powf(-0.5);
        let rel = match (&self.rel_pos_h, &self.rel_pos_w) {
            (Some(ph), Some(pw)) => Some(self.decomposed_rel_pos(q, ph, pw, (h, w))?),
            _ => None,
        };
        attention(q, k, v, scale, rel.as_ref())
    }

    /// [`Self::attend_heads`] on q, k and v picked from the rows `[rows, 3c]` of the q/k/v
    /// projection: map `m`'s token `t` is row `index[m·h·w + t]`, or the row `fill` where that
    /// is [`RowAt::FILL`]. The attention reads all three in place; q is also gathered into its
    /// own tensor, which the rel-pos terms are computed from. Inference only.
    fn attend_picked(
        &self,
        qkv: &Tensor,
        fill: Option<&Tensor>,
        c: usize,
        index: &[RowAt],
        (h, w): (usize, usize),
    ) -> Result<Tensor> {
        let nh = self.num_heads;
        let part = |s: usize| picked_heads(qkv, fill, (3 * c, s * c, c), nh, index, h * w);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scale = ((c / nh) as f32).powf(-0.5);
        let rel = match (&self.rel_pos_h, &self.rel_pos_w) {
            (Some(ph), Some(pw)) => Some(self.decomposed_rel_pos(&q.gather()?, ph, pw, (h, w))?),
            _ => None,
        };
        attention_picked(q, k, v, scale, rel.as_ref())
    }

    /// `rel_h [BH, HW, H]` and `rel_w [BH, HW, W]` from the unscaled queries (SAM's einsums).
    fn decomposed_rel_pos(
        &self,
        q: &Tensor,
        ph: &Tensor,
        pw: &Tensor,
        (h, w): (usize, usize),
    ) -> Result<RelPosArgs> {
        let (bh, hd) = (q.dim(0), q.dim(2));
        let rh = get_rel_pos(h, h, ph)?; // [h, kh, c]
        let rw = get_rel_pos(w, w, pw)?; // [w, kw, c]
        if let Some(rel) = decomposed_rel_pos_fused(q, &rh, &rw, (h, w))? {
            return Ok(rel);
        }
        let rq = q.reshape(&[bh, h, w, hd])?;
        // rel_h[b, y, x, k] = Σ_c rq[b, y, x, c]·rh[y, k, c]: a batch over y.
        let rq_y = rq.permute(&[1, 0, 2, 3])?.reshape(&[h, bh * w, hd])?;
        let rel_h = rq_y.matmul(&rh.transpose(1, 2)?)?; // [h, bh*w, kh]
        let rel_h = rel_h
            .reshape(&[h, bh, w, h])?
            .permute(&[1, 0, 2, 3])?
            .reshape(&[bh, h * w, h])?;
        // rel_w[b, y, x, k] = Σ_c rq[b, y, x, c]·rw[x, k, c]: a batch over x.
        let rq_x = rq.permute(&[2, 0, 1, 3])?.reshape(&[w, bh * h, hd])?;
        let rel_w = rq_x.matmul(&rw.transpose(1, 2)?)?; // [w, bh*h, kw]
        let rel_w = rel_w
            .reshape(&[w, bh, h, w])?
            .permute(&[1, 2, 0, 3])?
            .reshape(&[bh, h * w, w])?;
        Ok(RelPosArgs {
            rel_h,
            rel_w,
            kh: h,
            kw: w,
        })
    }
}

pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: MlpBlock,
    pub window_size: usize,
}

crate::models::common::module_parts!(Block: norm1, attn, norm2, mlp);

/// `[B, H, W, C]` → `[B·nW, ws, ws, C]`, zero-padding H and W up to multiples of `ws`.
pub fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let x = x.pad_end(&[0, ph, pw, 0])?;
    let (hp, wp) = (h + ph, w + pw);
    let x = x
        .reshape(&[b, hp / ws, ws, wp / ws, ws, c])?
        .permute(&[0, 1, 3, 2, 4, 5])?;
    Ok((x.reshape(&[usize::MAX, ws, ws, c])?, (hp, wp)))
}

/// Inverse of [`window_partition`], cropping the padding.
pub fn window_unpartition(
    x: &Tensor,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let c = x.dim(3);
    let b = x.dim(0) / (hp * wp / ws / ws);
    let x = x
        .reshape(&[b, hp / ws, wp / ws, ws, ws, c])?
        .permute(&[0, 1, 3, 2, 4, 5])?
        .reshape(&[b, hp, wp, c])?;
    if hp > h || wp > w {
        return x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous();
    }
    Ok(x)
}

impl Block {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.norm1.forward(x)?;
        // The attention before its output projection, back on the map's own tokens: the
        // projection is per token, so it runs on those only (not on the windows' padding),
        // with the residual add in its GEMM epilogue (in inference).
        let o = match self.attend_inference(&y)? {
            Some(o) => o,
            None if self.window_size > 0 => {
                let (h, w) = (y.dim(1), y.dim(2));
                let (win, pad_hw) = window_partition(&y, self.window_size)?;
                window_unpartition(&self.attn.attend(&win)?, self.window_size, pad_hw, (h, w))?
            }
            None => self.attn.attend(&y)?,
        };
        let proj = &self.attn.proj;
        let x = o.linear_fused(&proj.weight, proj.bias.as_ref(), Some(x), false)?;
        let h = self.norm2.forward(&x)?;
        let (lin1, lin2) = (&self.mlp.lin1, &self.mlp.lin2);
        let h = match self.mlp.act {
            Act::Gelu => h.linear_act(&lin1.weight, lin1.bias.as_ref(), true)?,
            act => act.apply(&lin1.forward(&h)?)?,
        };
        h.linear_fused(&lin2.weight, lin2.bias.as_ref(), Some(&x), false)
    }

    /// The attention of the normed tokens `y` `[B, H, W, C]` before the output projection, in
    /// inference on the CPU: q, k and v go from the projection's rows straight into their own
    /// per-head buffers, in windows for a windowed block. The q/k/v projection runs on the
    /// map's tokens only: upstream pads the normed map with zero tokens, whose q/k/v row (that
    /// of a zero token: the bias) fills the edge windows' padding; the windows' outputs are
    /// gathered straight back to the map's tokens. A view `[B, H, W, C]` (the global block's
    /// head-major output permuted), or None when this path does not apply (autograd
    /// recording, a device).
    fn attend_inference(&self, y: &Tensor) -> Result<Option<Tensor>> {
        let (ws, attn) = (self.window_size, &self.attn);
        let params = [
            Some(y),
            Some(&attn.qkv.weight),
            attn.qkv.bias.as_ref(),
            attn.rel_pos_h.as_ref(),
            attn.rel_pos_w.as_ref(),
        ];
        if y.device() != Device::Cpu || records(&params) {
            return Ok(None);
        }
        let (b, h, w, c) = (y.dim(0), y.dim(1), y.dim(2), y.dim(3));
        let nh = attn.num_heads;
        let qkv = attn.qkv.forward(y)?; // [b, h, w, 3c]
        if ws == 0 {
            let index: Vec<RowAt> = (0..b * h * w).map(RowAt::row).collect();
            let o = attn.attend_picked(&qkv, None, c, &index, (h, w))?; // [b·nh, h·w, c/nh]
            let o = o
                .reshape(&[b, nh, h, w, c / nh])?
                .permute(&[0, 2, 3, 1, 4])?;
            return Ok(Some(o.reshape(&[b, h, w, c])?));
        }
        let pad = attn.qkv.forward(&Tensor::zeros(&[1, c], y.device())?)?; // [1, 3c]
        let index: Vec<RowAt> = window_index(b, (h, w), ws)
            .into_iter()
            .map(RowAt::from)
            .collect();
        // The windows in a few passes, each with its own q and output buffers (reused by the
        // next pass; k and v are read in place): window-sized buffers for the whole map at once
        // would be the block's largest memory, and each buffer's first use costs page faults.
        let n = ws * ws;
        let windows = index.len() / n;
        let per_pass = windows.div_ceil(windows.div_ceil(WINDOWS_PER_PASS));
        let mut outs = Vec::with_capacity(windows.div_ceil(per_pass));
        for pass in index.chunks(per_pass * n) {
            // [windows·nh, ws², c/nh]
            outs.push(attn.attend_picked(&qkv, Some(&pad), c, pass, (ws, ws))?);
        }
        let block = per_pass * nh * n; // rows of a pass's output
        let back: Vec<RowAt> = unwindow_index(b, (h, w), ws, nh)
            .into_iter()
            .map(|row| RowAt {
                part: row / block,
                row: row % block,
            })
            .collect();
        let outs: Vec<&Tensor> = outs.iter().collect();
        let o = gather_token_rows(&outs, None, &back, c / nh)?;
        Ok(Some(o.reshape(&[b, h, w, c])?))
    }
}

/// Windows per pass of a windowed block's attention in inference: a fifth of ViT-B's 25 at
/// 1024², about 3 MB per q or output buffer.
const WINDOWS_PER_PASS: usize = 5;

pub struct Neck {
    pub conv0: Conv2d,
    pub norm1: LayerNorm2d,
    pub conv2: Conv2d,
    pub norm3: LayerNorm2d,
}

crate::models::common::module_parts!(Neck: conv0 as "0", norm1 as "1", conv2 as "2", norm3 as "3");

impl Neck {
    /// 1×1 conv `c_in → c_out`, LayerNorm2d, 3×3 conv, LayerNorm2d (no conv biases).
    pub fn new(init: &mut Init, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Neck {
            conv0: Conv2d::new(init, c_in, c_out, 1, 1, 0, false)?,
            norm1: LayerNorm2d::new(init, c_out)?,
            conv2: Conv2d::new(init, c_out, c_out, 3, 1, 1, false)?,
            norm3: LayerNorm2d::new(init, c_out)?,
        })
    }
}

pub struct ImageEncoderViT {
    pub cfg: ImageEncoderConfig,
    pub patch_embed: PatchEmbed,
    pub pos_embed: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub neck: Neck,
}

crate::models::common::module_parts!(ImageEncoderViT: opt_param pos_embed, patch_embed, list blocks, neck);

impl ImageEncoderViT {
    pub fn new(init: &mut Init, cfg: &ImageEncoderConfig) -> Result<Self> {
        let (e, grid) = (cfg.embed_dim, cfg.img_size / cfg.patch_size);
        let hd = e / cfg.num_heads;
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let global = cfg.global_attn_indexes.contains(&i);
            let window = if global { 0 } else { cfg.window_size };
            let size = if window == 0 { grid } else { window };
            let (rel_pos_h, rel_pos_w) = if cfg.use_rel_pos {
                (
                    Some(init.zeros(&[2 * size - 1, hd])?),
                    Some(init.zeros(&[2 * size - 1, hd])?),
                )
            } else {
                (None, None)
            };
            blocks.push(Block {
                norm1: LayerNorm::new(init, e, VIT_LN_EPS)?,
                attn: Attention {
                    num_heads: cfg.num_heads,
                    qkv: Linear::new(init, e, 3 * e, cfg.qkv_bias)?,
                    proj: Linear::new(init, e, e, true)?,
                    rel_pos_h,
                    rel_pos_w,
                },
                norm2: LayerNorm::new(init, e, VIT_LN_EPS)?,
                mlp: MlpBlock::new(init, e, (e as f64 * cfg.mlp_ratio) as usize, Act::Gelu)?,
                window_size: window,
            });
        }
        Ok(ImageEncoderViT {
            cfg: cfg.clone(),
            patch_embed: PatchEmbed {
                proj: Conv2d::new(init, 3, e, cfg.patch_size, cfg.patch_size, 0, true)?,
            },
            pos_embed: Some(init.zeros(&[1, grid, grid, e])?),
            blocks,
            neck: Neck::new(init, e, cfg.out_chans)?,
        })
    }

    /// Images `[B, 3, S, S]` (S = img_size) → embeddings `[B, out_chans, S/p, S/p]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.cfg.img_size;
        if x.rank() != 4 || x.dim(1) != 3 || x.dim(2) != s || x.dim(3) != s {
            return Err(Error::shape(
                "image_encoder",
                format!("expected [B, 3, {s}, {s}], got {:?}", x.shape()),
            ));
        }
        let mut x = match self
            .patch_embed
            .forward_inference(x, self.pos_embed.as_ref())?
        {
            Some(x) => x,
            None => {
                let x = self.patch_embed.proj.forward(x)?.permute(&[0, 2, 3, 1])?;
                match &self.pos_embed {
                    Some(p) => x.add(p)?,
                    None => x,
                }
            }
        };
        for blk in &self.blocks {
            x = blk.forward(&x)?;
        }
        let x = x.permute(&[0, 3, 1, 2])?;
        let x = self.neck.norm1.forward(&self.neck.conv0.forward(&x)?)?;
        self.neck.norm3.forward(&self.neck.conv2.forward(&x)?)
    }
}
