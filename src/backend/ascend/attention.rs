//! Ascend backend: attention (SAM's decomposed rel-pos bias, TinyViT's bias table) and its gradients.

use super::*;

impl AttentionOps for AscendBackend {
    /// On the NPU the second result is this backend's saved state for
    /// [`AttentionOps::attention_backward`]: without rel-pos, when `aclnnFlashAttentionScore` runs, a
    /// [`FlashAttnState`] (softmax max / sum); else the log-sum-exp `[bh, nq]` when the custom
    /// `rel_pos_attention` kernel ran (see `ascend/custom.rs`); else the softmax probabilities
    /// `P [bh, nq, nk]` of the aclnn composition. Only this backend's `attention_backward`
    /// consumes it.
    fn attention(
        &self,
        dims: AttnDims,
        q: &Storage,
        k: &Storage,
        v: &Storage,
        scale: f32,
        rel: Option<RelPos>,
    ) -> Result<(Storage, Storage)> {
        // Without rel-pos, CANN's flash attention (cube unit) first; then the custom
        // `rel_pos_attention` kernel (vector unit) when loaded; else the aclnn composition.
        let AttnDims { bh, nq, nk, d, dv } = dims;
        let (qb, kb, vb) = (self.buf(q)?, self.buf(k)?, self.buf(v)?);
        if rel.is_none() {
            if let Some(r) = self.flash_attention(dims, (qb, kb, vb), scale)? {
                return Ok(r);
            }
        }
        if let Some(r) = self.attention_custom(dims, q, k, v, scale, rel)? {
            return Ok(r);
        }
        // S = (scale·q)·kᵀ (+ rel_h[.., kh, ·] + rel_w[.., ·, kw])
        let qs = self.scaled(qb, bh * nq * d, scale)?;
        let mut s = self.bmm(
            (self.buf(&qs)?, contig(&[bh, nq, d])),
            (kb, lay(&[bh, d, nk], &[nk * d, 1, d], 0)),
            [bh, nq, nk],
        )?;
        if let Some(r) = rel {
            let (kh, kw) = (r.kh, r.kw);
            let d4 = [bh, nq, kh, kw];
            let s1 = self.add_views(
                (self.buf(&s)?, contig(&d4)),
                (self.buf(r.rel_h)?, lay(&d4, &[nq * kh, kh, 1, 0], 0)),
                1.0,
                &d4,
            )?;
            s = self.add_views(
                (self.buf(&s1)?, contig(&d4)),
                (self.buf(r.rel_w)?, lay(&d4, &[nq * kw, kw, 0, 1], 0)),
                1.0,
                &d4,
            )?;
        }
        let p = self.softmax(bh * nq, nk, &s)?;
        let out = self.bmm(
            (self.buf(&p)?, contig(&[bh, nq, nk])),
            (vb, contig(&[bh, nk, dv])),
            [bh, nq, dv],
        )?;
        Ok((out, p))
    }

    fn attention_backward(
        &self,
        dims: AttnDims,
        q: &Storage,
        k: &Storage,
        v: &Storage,
        scale: f32,
        rel: Option<RelPos>,
        out: &Storage,
        lse: &Storage,
        dout: &Storage,
    ) -> Result<AttnGrads> {
        if let Storage::Device(s) = lse {
            if let Some(st) = s.as_any().downcast_ref::<FlashAttnState>() {
                if rel.is_some() {
                    return Err(Error::Device {
                        device: format!("npu:{}", self.id),
                        detail: "attention_backward: flash-attention state with rel-pos".into(),
                    });
                }
                return self.flash_attention_backward(dims, (q, k, v), scale, out, st, dout);
            }
        }
        let recomputed = self.probs_from_lse(dims, q, k, scale, rel, lse)?;
        let lse = recomputed.as_ref().unwrap_or(lse);
        let AttnDims { bh, nq, nk, d, dv } = dims;
        if lse.len() != bh * nq * nk {
            return Err(Error::Device {
                device: format!("npu:{}", self.id),
                detail: format!(
                    "attention_backward: saved state has {} elements, expected the {}·{}·{} \
                     probabilities saved by this backend's attention forward",
                    lse.len(),
                    bh,
                    nq,
                    nk
                ),
            });
        }
        let (qb, kb, vb, pb, gb) = (
            self.buf(q)?,
            self.buf(k)?,
            self.buf(v)?,
            self.buf(lse)?,
            self.buf(dout)?,
        );
        let pt = lay(&[bh, nk, nq], &[nq * nk, 1, nk], 0);
        // dV = Pᵀ·dO, dP = dO·Vᵀ, dS = softmax_backward(P, dP)
        let dvv = self.bmm((pb, pt.clone()), (gb, contig(&[bh, nq, dv])), [bh, nk, dv])?;
        let dp = self.bmm(
            (gb, contig(&[bh, nq, dv])),
            (vb, lay(&[bh, dv, nk], &[nk * dv, 1, dv], 0)),
            [bh, nq, nk],
        )?;
        let ds = self.softmax_backward(bh * nq, nk, lse, &dp)?;
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
