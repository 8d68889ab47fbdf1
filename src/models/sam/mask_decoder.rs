//! `MaskDecoder` (segment_anything/modeling/mask_decoder.py) with MedSAM's batch pairing: when the
//! batch holds as many image embeddings as prompts, image `i` is decoded with prompt `i`.
//! SAM 2's decoder (`crate::models::sam2::sam::mask_decoder`) wraps this one and shares its body,
//! [`MaskDecoder::decode`].

use super::transformer::{BlockMlp, TwoWayTransformer};
use crate::error::{Error, Result};
use crate::models::common::ConvTranspose2d;
use crate::models::common::{Embedding, Init, LayerNorm2d, MlpBlock};
use crate::models::config::MaskDecoderConfig;
use crate::tensor::Tensor;

pub use crate::models::common::Mlp;

pub struct OutputUpscaling {
    pub conv0: ConvTranspose2d,
    pub norm1: LayerNorm2d,
    pub conv3: ConvTranspose2d,
}

crate::models::common::module_parts!(OutputUpscaling: conv0 as "0", norm1 as "1", conv3 as "3");

impl OutputUpscaling {
    /// ConvTranspose 2× → LayerNorm2d → GELU → ConvTranspose 2× → GELU, from `d` to `d/8`.
    pub fn new(init: &mut Init, d: usize) -> Result<Self> {
        Ok(OutputUpscaling {
            conv0: ConvTranspose2d::new(init, d, d / 4, 2)?,
            norm1: LayerNorm2d::new(init, d / 4)?,
            conv3: ConvTranspose2d::new(init, d / 4, d / 8, 2)?,
        })
    }

    /// Token-major `src [b, h·w, d]` (the `h × w` grid row-major) → the upscaled features
    /// `[b, 16·h·w, d/8]`, channel-last in block order (see [`from_block_order`]). SAM 2 adds its
    /// high-resolution features (s0 `[b, d/8, 4h, 4w]`, s1 `[b, d/4, 2h, 2w]`) before each
    /// activation.
    ///
    /// A transposed convolution whose kernel equals its stride maps each input pixel to its own
    /// `k × k` output block, so both run as GEMMs on channel-last rows with no im2col and no
    /// layout change between them, and LayerNorm2d is a LayerNorm over those rows.
    pub fn forward(
        &self,
        src: &Tensor,
        (h, w): (usize, usize),
        high_res: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let b = src.dim(0);
        let (s0, s1) = match high_res {
            Some((s0, s1)) => (
                Some(to_block_order(s0, (h, w), 2)?),
                Some(to_block_order(s1, (h, w), 1)?),
            ),
            None => (None, None),
        };
        let x = conv_transpose_rows(&self.conv0, src, s1.as_ref(), false)?;
        let x = x.reshape(&[b, 4 * h * w, self.conv0.weight.dim(1)])?;
        let n = &self.norm1;
        let x = x.layer_norm(&n.weight, &n.bias, n.eps)?.gelu()?;
        let x = conv_transpose_rows(&self.conv3, &x, s0.as_ref(), true)?;
        x.reshape(&[b, 16 * h * w, self.conv3.weight.dim(1)])
    }
}

/// `act(ConvTranspose2d(x) + residual)` for a kernel equal to its stride `k`, on channel-last
/// pixel rows `x [.., c_in]` → `[.., k·k·c_out]`, each row the `k × k` output block of its input
/// pixel: columns ordered (kh, kw, c_out).
fn conv_transpose_rows(
    conv: &ConvTranspose2d,
    x: &Tensor,
    residual: Option<&Tensor>,
    gelu: bool,
) -> Result<Tensor> {
    let ws = conv.weight.shape(); // [c_in, c_out, k, k]
    let (c_in, c_out, kk) = (ws[0], ws[1], ws[2] * ws[3]);
    let weight = conv
        .weight
        .permute(&[2, 3, 1, 0])?
        .reshape(&[kk * c_out, c_in])?;
    let bias = conv
        .bias
        .unsqueeze(0)?
        .broadcast_to(&[kk, c_out])?
        .reshape(&[kk * c_out])?;
    x.linear_fused(&weight, Some(&bias), residual, gelu)
}

/// The permutation from an NCHW map `[b, c, 2ˡ·h, 2ˡ·w]` split into its 2× levels, axes
/// (b, c, y, kh₀ … kh₍ₗ₋₁₎, x, kw₀ … kw₍ₗ₋₁₎), to block order (b, y, x, kh₀, kw₀, …, c).
fn block_perm(levels: usize) -> Vec<usize> {
    let x_axis = 3 + levels;
    let mut perm = vec![0, 2, x_axis];
    for i in 0..levels {
        perm.extend([3 + i, x_axis + 1 + i]);
    }
    perm.push(1);
    perm
}

/// `[b, c, 2ˡ·h, 2ˡ·w]` → `[b, 4ˡ⁻¹·h·w, 4·c]` in block order: row (y, x, kh₀, kw₀, …), columns
/// (kh₍ₗ₋₁₎, kw₍ₗ₋₁₎, c) — the layout of [`OutputUpscaling::forward`]'s `l`-th upscaling output.
fn to_block_order(t: &Tensor, (h, w): (usize, usize), levels: usize) -> Result<Tensor> {
    let (b, c, f) = (t.dim(0), t.dim(1), 1usize << levels);
    if t.rank() != 4 || t.dim(2) != f * h || t.dim(3) != f * w {
        return Err(Error::shape(
            "mask_decoder high-res features",
            format!("{:?} for a {h}×{w} grid at {f}×", t.shape()),
        ));
    }
    let mut split = vec![b, c, h];
    split.extend(std::iter::repeat_n(2, levels));
    split.push(w);
    split.extend(std::iter::repeat_n(2, levels));
    t.reshape(&split)?
        .permute(&block_perm(levels))?
        .reshape(&[b, h * w * f * f / 4, 4 * c])
}

/// Block-order rows `[b, 16·h·w, m]` (row (y, x, kh₀, kw₀, kh₁, kw₁) is pixel
/// (4y + 2kh₀ + kh₁, 4x + 2kw₀ + kw₁)) → NCHW `[b, m, 4h, 4w]`.
pub fn from_block_order(t: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let (b, m) = (t.dim(0), t.dim(2));
    // The inverse of the block-order permutation maps block order back to split NCHW axes.
    let mut inverse = vec![0; 8];
    for (i, &p) in block_perm(2).iter().enumerate() {
        inverse[p] = i;
    }
    t.reshape(&[b, h, w, 2, 2, 2, 2, m])?
        .permute(&inverse)?
        .reshape(&[b, m, 4 * h, 4 * w])
}

/// The hypernetwork MLPs, one per mask token: `d` → `d/8`.
pub fn hypernetworks_mlps(init: &mut Init, d: usize, n: usize) -> Result<Vec<Mlp>> {
    (0..n)
        .map(|_| Mlp::new(init, d, d, d / 8, 3, false))
        .collect()
}

pub struct MaskDecoder<M = MlpBlock> {
    pub transformer: TwoWayTransformer<M>,
    pub iou_token: Embedding,
    pub mask_tokens: Embedding,
    pub output_upscaling: OutputUpscaling,
    pub output_hypernetworks_mlps: Vec<Mlp>,
    pub iou_prediction_head: Mlp,
    pub num_mask_tokens: usize,
}

crate::models::common::module_parts!(MaskDecoder<M: BlockMlp>: transformer, iou_token, mask_tokens, output_upscaling, list output_hypernetworks_mlps, iou_prediction_head);

impl MaskDecoder {
    pub fn new(init: &mut Init, cfg: &MaskDecoderConfig) -> Result<Self> {
        let d = cfg.transformer_dim;
        let n = cfg.num_multimask_outputs + 1;
        Ok(MaskDecoder {
            transformer: TwoWayTransformer::new(
                init,
                cfg.transformer_depth,
                d,
                cfg.transformer_num_heads,
                cfg.transformer_mlp_dim,
            )?,
            iou_token: Embedding::new(init, 1, d)?,
            mask_tokens: Embedding::new(init, n, d)?,
            output_upscaling: OutputUpscaling::new(init, d)?,
            output_hypernetworks_mlps: hypernetworks_mlps(init, d, n)?,
            iou_prediction_head: Mlp::new(
                init,
                d,
                cfg.iou_head_hidden_dim,
                n,
                cfg.iou_head_depth,
                false,
            )?,
            num_mask_tokens: n,
        })
    }
}

impl<M: BlockMlp> MaskDecoder<M> {
    /// Returns low-res mask logits `[B, M, 4h, 4w]` and IoU predictions `[B, M]`; `M` is 1, or the
    /// multimask outputs when `multimask_output`.
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (masks, iou) = self.predict_masks(image_embeddings, image_pe, sparse, dense)?;
        let (start, len) = if multimask_output {
            (1, self.num_mask_tokens - 1)
        } else {
            (0, 1)
        };
        Ok((masks.narrow(1, start, len)?, iou.narrow(1, start, len)?))
    }

    fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let bs = sparse.dim(0);
        let nb = image_embeddings.dim(0);
        let src = if nb == bs {
            image_embeddings.clone()
        } else if nb == 1 {
            image_embeddings.broadcast_to(&[
                bs,
                image_embeddings.dim(1),
                image_embeddings.dim(2),
                image_embeddings.dim(3),
            ])?
        } else {
            return Err(Error::shape(
                "mask_decoder",
                format!("{nb} image embeddings for {bs} prompts"),
            ));
        };
        let (hs, masks) = self.decode(None, &src.add(dense)?, image_pe, sparse, None)?;
        let (b, d) = (hs.dim(0), hs.dim(2));
        let iou_token_out = hs.narrow(1, 0, 1)?.reshape(&[b, d])?;
        let iou_pred = self.iou_prediction_head.forward(&iou_token_out)?;
        Ok((masks, iou_pred))
    }

    /// The body shared with SAM 2: the output tokens (`first_token`, SAM 2's object-score token,
    /// when given, then the IoU and mask tokens) and the `sparse` prompt tokens attend to `src`
    /// `[b, C, h, w]` (image embeddings plus dense prompt, one per prompt); each mask token's
    /// hypernetwork MLP weights the upscaled features (plus `high_res`, see
    /// [`OutputUpscaling::forward`]). Returns the token outputs `hs` `[b, T, C]` and the masks
    /// `[b, M, 4h, 4w]`.
    pub fn decode(
        &self,
        first_token: Option<&Embedding>,
        src: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        high_res: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let bs = sparse.dim(0);
        let mut parts: Vec<Tensor> = first_token.iter().map(|t| t.weight.clone()).collect();
        parts.push(self.iou_token.weight.clone());
        parts.push(self.mask_tokens.weight.clone());
        let output_tokens = Tensor::cat(&parts, 0)?;
        let (nt, d) = (output_tokens.dim(0), output_tokens.dim(1));
        let output_tokens = output_tokens.unsqueeze(0)?.broadcast_to(&[bs, nt, d])?;
        let tokens = Tensor::cat(&[output_tokens, sparse.clone()], 1)?;
        let (b, c, h, w) = (src.dim(0), src.dim(1), src.dim(2), src.dim(3));
        let pos_src = image_pe.broadcast_to(&[b, c, h, w])?;
        let (hs, keys) = self.transformer.forward(src, &pos_src, &tokens)?;
        let upscaled = self.output_upscaling.forward(&keys, (h, w), high_res)?;
        let first_mask = nt - self.num_mask_tokens;
        let hyper: Vec<Tensor> = (0..self.num_mask_tokens)
            .map(|i| {
                self.output_hypernetworks_mlps[i]
                    .forward(&hs.narrow(1, first_mask + i, 1)?.reshape(&[b, d])?)
            })
            .collect::<Result<_>>()?;
        let hyper_in = Tensor::stack(&hyper, 1)?; // [b, M, c']
        let masks = upscaled.matmul(&hyper_in.transpose(1, 2)?)?; // [b, 16·h·w, M]
        Ok((hs, from_block_order(&masks, (h, w))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use medsam_kernels::testing::assert_close;

    /// The block-order upscaling (GEMMs on channel-last rows) against SAM's NCHW composition
    /// (`conv_transpose2d` → LayerNorm2d → GELU → `conv_transpose2d` → GELU), with and without
    /// SAM 2's high-resolution features, for a batch of two on a non-square grid.
    #[test]
    fn block_order_upscaling_matches_nchw_convolutions() {
        let mut init = Init::new(3, Device::Cpu);
        let (b, d, h, w) = (2, 32, 3, 5);
        let mut up = OutputUpscaling::new(&mut init, d).unwrap();
        // LayerNorm2d's default affine is the identity; make it count.
        up.norm1.weight = init.normal(&[d / 4], 1.0).unwrap();
        up.norm1.bias = init.normal(&[d / 4], 1.0).unwrap();
        let src = init.normal(&[b, d, h, w], 1.0).unwrap();
        let s0 = init.normal(&[b, d / 8, 4 * h, 4 * w], 1.0).unwrap();
        let s1 = init.normal(&[b, d / 4, 2 * h, 2 * w], 1.0).unwrap();
        let tokens = src
            .permute(&[0, 2, 3, 1])
            .unwrap()
            .reshape(&[b, h * w, d])
            .unwrap();
        for high_res in [None, Some((&s0, &s1))] {
            let mut x = up.conv0.forward(&src).unwrap();
            if let Some((_, s1)) = high_res {
                x = x.add(s1).unwrap();
            }
            let x = up.norm1.forward(&x).unwrap().gelu().unwrap();
            let mut x = up.conv3.forward(&x).unwrap();
            if let Some((s0, _)) = high_res {
                x = x.add(s0).unwrap();
            }
            let want = x.gelu().unwrap();
            let rows = up.forward(&tokens, (h, w), high_res).unwrap();
            assert_eq!(rows.shape(), [b, 16 * h * w, d / 8]);
            // Each channel through the block-order → NCHW reorder the mask logits use.
            let got = from_block_order(&rows, (h, w)).unwrap();
            assert_eq!(got.shape(), want.shape());
            let what = if high_res.is_some() {
                "with high-res"
            } else {
                "plain"
            };
            assert_close(
                what,
                &got.to_vec().unwrap(),
                &want.to_vec().unwrap(),
                1e-5,
                1e-4,
            );
        }
    }
}
