//! Ascend backend: attention (SAM's decomposed rel-pos bias, TinyViT's bias table) and its gradients.

use super::*;

impl AttentionOps for AscendBackend {
    /// The saved state for [`AttentionOps::attention_backward`] says which path ran: without
    /// rel-pos, when `aclnnFlashAttentionScore` runs, a [`FlashAttnState`] (softmax max / sum);
    /// else the log-sum-exp when the custom `rel_pos_attention` kernel ran (see
    /// `ascend/custom.rs`); else the probabilities of the aclnn composition.
    fn attention(&self, a: AttnArgs, x: Qkv) -> Result<(Storage, AttnSaved)> {
        // Without rel-pos, CANN's flash attention (cube unit) first; then the custom
        // `rel_pos_attention` kernel (vector unit) when loaded; else the aclnn composition.
        let (
            AttnArgs {
                dims, scale, rel, ..
            },
            Qkv { q, k, v },
        ) = (a, x);
        let AttnDims { bh, nq, nk, dv, .. } = dims;
        let (qb, kb, vb) = (self.buf(q)?, self.buf(k)?, self.buf(v)?);
        if rel.is_none() {
            if let Some(r) = self.flash_attention(dims, (qb, kb, vb), scale)? {
                return Ok(r);
            }
        }
        if let Some((out, lse)) = self.attention_custom(dims, q, k, v, scale, rel)? {
            return Ok((out, AttnSaved::Lse(lse)));
        }
        let s = self.attention_scores(dims, (qb, kb), scale, rel)?;
        let p = self.softmax(
            RowDims {
                rows: bh * nq,
                dim: nk,
            },
            &s,
        )?;
        let out = self.bmm(
            (self.buf(&p)?, contig(&[bh, nq, nk])),
            (vb, contig(&[bh, nk, dv])),
            [bh, nq, dv],
        )?;
        Ok((out, AttnSaved::Probs(p)))
    }

    fn attention_backward(&self, a: AttnArgs, x: Qkv, g: AttnGradIn) -> Result<AttnGrads> {
        let (
            AttnArgs {
                dims, scale, rel, ..
            },
            Qkv { q, k, v },
        ) = (a, x);
        let recomputed;
        let probs = match g.saved {
            AttnSaved::Device(state) => {
                let Some(st) = state.as_any().downcast_ref::<FlashAttnState>() else {
                    return Err(
                        self.device_error("attention_backward: saved state of another backend")
                    );
                };
                if rel.is_some() {
                    return Err(
                        self.device_error("attention_backward: flash-attention state with rel-pos")
                    );
                }
                return self.flash_attention_backward(a, x, g, st);
            }
            AttnSaved::Lse(_) => {
                let s = self.attention_scores(dims, (self.buf(q)?, self.buf(k)?), scale, rel)?;
                recomputed = self.softmax(
                    RowDims {
                        rows: dims.bh * dims.nq,
                        dim: dims.nk,
                    },
                    &s,
                )?;
                &recomputed
            }
            AttnSaved::Probs(p) => p,
        };
        let AttnDims { bh, nq, nk, d, dv } = dims;
        if probs.len() != bh * nq * nk {
            return Err(self.device_error(format!(
                "attention_backward: saved probabilities have {} elements, expected {bh}·{nq}·{nk}",
                probs.len()
            )));
        }
        let (qb, kb, vb) = (self.buf(q)?, self.buf(k)?, self.buf(v)?);
        let (pb, gb) = (self.buf(probs)?, self.buf(g.dout)?);
        let pt = lay(&[bh, nk, nq], &[nq * nk, 1, nk], 0);
        // dV = Pᵀ·dO, dP = dO·Vᵀ, dS = softmax_backward(P, dP)
        let dvv = self.bmm((pb, pt.clone()), (gb, contig(&[bh, nq, dv])), [bh, nk, dv])?;
        let dp = self.bmm(
            (gb, contig(&[bh, nq, dv])),
            (vb, lay(&[bh, dv, nk], &[nk * dv, 1, dv], 0)),
            [bh, nq, nk],
        )?;
        let ds = self.softmax_backward(
            RowDims {
                rows: bh * nq,
                dim: nk,
            },
            probs,
            &dp,
        )?;
        let dsb = self.buf(&ds)?;
        let drel = match rel {
            Some(r) => {
                let (kh, kw) = (r.kh, r.kw);
                let rows = bh * nq;
                // Σ over kw and over kh with ones-vector matmuls.
                let dh = self.bmm(
                    (dsb, contig(&[rows, kh, kw])),
                    (&self.one, bcast(&[rows, kw, 1])),
                    [rows, kh, 1],
                )?;
                let dw = self.reduce_middle(dsb, rows, kh, kw)?;
                Some((dh, dw))
            }
            None => None,
        };
        let dss = self.scaled(dsb, bh * nq * nk, scale)?;
        let dssb = self.buf(&dss)?;
        let dq = self.bmm(
            (dssb, contig(&[bh, nq, nk])),
            (kb, contig(&[bh, nk, d])),
            [bh, nq, d],
        )?;
        let dk = self.bmm((dssb, pt), (qb, contig(&[bh, nq, d])), [bh, nk, d])?;
        Ok(AttnGrads {
            dq,
            dk,
            dv: dvv,
            drel,
        })
    }
}
