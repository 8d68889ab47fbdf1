//! CPU backend: attention (SAM's decomposed rel-pos bias, TinyViT's bias table) and its gradients.

use super::*;
use medsam_kernels::attention;
use medsam_kernels::attention::rel_pos;

impl AttentionOps for CpuBackend {
    fn attention(&self, a: AttnArgs, x: Qkv) -> Result<(Storage, AttnSaved)> {
        let (
            AttnArgs {
                dims,
                scale,
                rel,
                precision,
            },
            Qkv { q, k, v },
        ) = (a, x);
        // Both written in full by the kernel: recycled buffers, no fresh page faults.
        let mut out = buffer(dims.bh * dims.nq * dims.dv);
        let mut lse = buffer(dims.bh * dims.nq);
        let bias = rel.map(rel_pos_bias).transpose()?;
        // bf16 only where it is faster than f32 on this CPU (as the GEMM's bf16 plan).
        let forward = if precision == Precision::Bf16 && attention::bf16_pays() {
            attention::attention_forward_bf16
        } else {
            attention::attention_forward
        };
        forward(
            dims,
            host(q)?,
            host(k)?,
            host(v)?,
            scale,
            bias,
            &mut out,
            &mut lse,
        );
        Ok((Storage::Cpu(out), AttnSaved::Lse(Storage::Cpu(lse))))
    }

    fn attention_backward(&self, a: AttnArgs, x: Qkv, g: AttnGradIn) -> Result<AttnGrads> {
        let (
            AttnArgs {
                dims, scale, rel, ..
            },
            Qkv { q, k, v },
        ) = (a, x);
        let AttnSaved::Lse(lse) = g.saved else {
            return Err(Error::Other(
                "attention_backward: the CPU forward saves a log-sum-exp; this state is another backend's".into(),
            ));
        };
        let (q, k, v) = (host(q)?, host(k)?, host(v)?);
        let mut dq = super::zeroed(q.len());
        let mut dk = super::zeroed(k.len());
        let mut dv = super::zeroed(v.len());
        let (bias, mut drel) = match rel {
            Some(r) => (
                Some(rel_pos_bias(r)?),
                Some((
                    super::zeroed(dims.bh * dims.nq * r.kh),
                    super::zeroed(dims.bh * dims.nq * r.kw),
                )),
            ),
            None => (None, None),
        };
        attention::attention_backward(
            dims,
            q,
            k,
            v,
            scale,
            bias,
            host(g.out)?,
            host(lse)?,
            host(g.dout)?,
            &mut dq,
            &mut dk,
            &mut dv,
            drel.as_mut()
                .map(|(h, w)| (h.as_mut_slice(), w.as_mut_slice())),
        );
        Ok(AttnGrads {
            dq: Storage::Cpu(dq),
            dk: Storage::Cpu(dk),
            dv: Storage::Cpu(dv),
            drel: drel.map(|(h, w)| (Storage::Cpu(h), Storage::Cpu(w))),
        })
    }

    fn attention_bias_table(&self, a: BiasTableArgs, x: HeadQkv) -> Result<Option<Storage>> {
        let BiasTableArgs {
            dims,
            scale,
            table,
            heads,
        } = a;
        let mut out = buffer(dims.bh * dims.nq * dims.dv);
        let mut lse = buffer(dims.bh * dims.nq);
        let table = attention::BiasTable {
            table: host(table)?,
            heads,
        };
        attention::attention_forward_table_rows(
            dims,
            rows(x.q)?,
            rows(x.k)?,
            rows(x.v)?,
            scale,
            table,
            &mut out,
            &mut lse,
        );
        Ok(Some(Storage::Cpu(out)))
    }

    fn attention_views(&self, a: ViewAttnArgs, x: HeadQkv) -> Result<Option<Storage>> {
        let ViewAttnArgs {
            dims,
            scale,
            rel,
            precision,
        } = a;
        let bias = rel.map(rel_pos_bias).transpose()?;
        // Both written in full by the kernel.
        let mut out = buffer(dims.bh * dims.nq * dims.dv);
        let mut lse = buffer(dims.bh * dims.nq);
        // bf16 only where it is faster than f32 on this CPU (as in `attention`).
        let bf16 = precision == Precision::Bf16 && attention::bf16_pays();
        attention::attention_forward_rows(
            dims,
            rows(x.q)?,
            rows(x.k)?,
            rows(x.v)?,
            scale,
            bias,
            bf16,
            &mut out,
            &mut lse,
        );
        Ok(Some(Storage::Cpu(out)))
    }

    fn decomposed_rel_pos(&self, d: RelPosDims, x: RelPosIn) -> Result<Option<[Storage; 2]>> {
        if !rel_pos::fast_available() {
            return Ok(None); // the portable loops are slower than composing matmuls
        }
        let n = d.maps * d.h * d.w;
        // Both written in full by the kernel.
        let (mut rel_h, mut rel_w) = (buffer(n * d.kh), buffer(n * d.kw));
        let (q, rh, rw) = (host(x.q)?, host(x.rh)?, host(x.rw)?);
        let len = |s: &[f32], want: usize| s.len() >= want;
        if !(len(q, n * d.c) && len(rh, d.h * d.kh * d.c) && len(rw, d.w * d.kw * d.c)) {
            return Err(Error::shape(
                "decomposed_rel_pos",
                format!(
                    "{d:?} needs q {}, rh {}, rw {} values; got {}, {}, {}",
                    n * d.c,
                    d.h * d.kh * d.c,
                    d.w * d.kw * d.c,
                    q.len(),
                    rh.len(),
                    rw.len()
                ),
            ));
        }
        let (q, rh, rw) = (
            &q[..n * d.c],
            &rh[..d.h * d.kh * d.c],
            &rw[..d.w * d.kw * d.c],
        );
        rel_pos::decomposed_rel_pos(d, q, rh, rw, &mut rel_h, &mut rel_w);
        Ok(Some([Storage::Cpu(rel_h), Storage::Cpu(rel_w)]))
    }
}

/// A [`HeadView`] of host storage as the kernel's [`attention::HeadRows`].
fn rows(v: HeadView<'_>) -> Result<attention::HeadRows<'_>> {
    let gather = match v.gather {
        Some(g) => Some(attention::RowGather {
            index: g.index,
            block: g.block,
            fill: &host(g.fill)?[g.fill_offset..],
        }),
        None => None,
    };
    Ok(attention::HeadRows {
        data: &host(v.storage)?[v.offset..],
        heads: v.heads,
        batch_stride: v.batch_stride,
        head_stride: v.head_stride,
        row_stride: v.row_stride,
        gather,
    })
}

/// SAM's rel-pos bias operands in host storage as the kernel's [`attention::RelPosBias`].
fn rel_pos_bias(r: RelPos<'_>) -> Result<attention::RelPosBias<'_>> {
    Ok(attention::RelPosBias {
        rel_h: host(r.rel_h)?,
        rel_w: host(r.rel_w)?,
        kh: r.kh,
        kw: r.kw,
    })
}
