//! Selection and use of the hand-written Ascend C kernels (`kernels/ascend/`) in the NPU
//! backend.
//!
//! Selection, once per backend at creation: when [`acl::CustomKernels::locate`] finds a kernel
//! binary (`$MEDSAM_ASCEND_KERNELS`, or the binary `ffi/build.rs` compiled with a CANN
//! toolchain; `MEDSAM_ASCEND_KERNELS=off` disables), it is loaded — a binary that is named but
//! fails to load, or lacks a kernel, is an error of backend creation, not a silent fallback.
//! Then, per call:
//! * `attention` runs `rel_pos_attention` (flash-style, saves the log-sum-exp `[bh, nq]`)
//!   unless the tiling glue rejects the shape (e.g. `d` too large for the UB), in which case
//!   the aclnn composition runs (saves the probabilities `[bh, nq, nk]`);
//! * `attention_backward` given a saved log-sum-exp recomputes the probabilities with the
//!   aclnn composition (scores → softmax), then runs the usual aclnn backward, so the
//!   `nq × nk` matrix lives only during the backward of one layer;
//! * `layer_norm2d` runs `layer_norm2d` (no transposes) unless the tiling rejects the shape;
//!   its mean/rstd `[n, hw]` are what the aclnn backward expects.
//!
//! Without a binary every call takes the aclnn path, as before.

use super::*;
use std::path::Path;

impl AscendBackend {
    /// Loads the custom kernel binary of `dev` when one is located (see the module docs).
    pub(super) fn load_custom_kernels(dev: &acl::Device) -> Result<Option<acl::CustomKernels>> {
        let Some(path) = acl::CustomKernels::locate() else {
            return Ok(None);
        };
        acl::CustomKernels::load(dev, &path)
            .map(Some)
            .map_err(|e| Error::Device {
                device: format!("npu:{}", dev.id()),
                detail: format!(
                    "custom kernel binary {} ({}): {e}; set {}=off to use the aclnn compositions",
                    path.display(),
                    acl::KERNELS_ENV,
                    acl::KERNELS_ENV
                ),
            })
    }

    /// The custom kernel binary this backend launches, if any.
    pub fn custom_kernels(&self) -> Option<&Path> {
        self.kernels.as_ref().map(|k| k.path())
    }

    /// Custom kernels launched by this backend so far (0 without a binary).
    pub fn custom_kernel_launches(&self) -> u64 {
        self.kernels.as_ref().map_or(0, |k| k.launches())
    }

    /// `rel_pos_attention` when a binary is loaded and the shape can be tiled:
    /// `(out [bh, nq, dv], lse [bh, nq])`.
    pub(super) fn attention_custom(
        &self,
        dims: AttnDims,
        q: &Storage,
        k: &Storage,
        v: &Storage,
        scale: f32,
        rel: Option<RelPos>,
    ) -> Result<Option<(Storage, Storage)>> {
        let Some(kern) = &self.kernels else {
            return Ok(None);
        };
        let AttnDims { bh, nq, nk, d, dv } = dims;
        let u = |x: usize| u32::try_from(x).ok();
        let (Some(bh32), Some(nq32), Some(nk32), Some(d32), Some(dv32)) =
            (u(bh), u(nq), u(nk), u(d), u(dv))
        else {
            return Ok(None);
        };
        if bh * nq == 0 {
            return Ok(None);
        }
        let (kh, kw) = rel.map_or((0, 0), |r| (r.kh as u32, r.kw as u32));
        let shape = acl::AttnShape {
            bh: bh32,
            nq: nq32,
            nk: nk32,
            d: d32,
            dv: dv32,
            kh,
            kw,
            has_rel: rel.is_some(),
            scale,
        };
        if acl::plan_rel_pos_attention(&shape, &acl::Hardware::from_env()).is_err() {
            return Ok(None); // not tileable: aclnn composition
        }
        let relb = match rel {
            Some(r) => Some((self.buf(r.rel_h)?, self.buf(r.rel_w)?)),
            None => None,
        };
        let ops = acl::AttnOperands {
            q: self.buf(q)?,
            k: self.buf(k)?,
            v: self.buf(v)?,
            rel: relb,
        };
        let mut out = self.alloc(bh * nq * dv)?;
        let mut lse = self.alloc(bh * nq)?;
        kern.rel_pos_attention(&self.stream, &shape, &ops, &mut out, &mut lse)
            .map_err(self.err())?;
        Ok(Some((
            self.wrap(out, bh * nq * dv),
            self.wrap(lse, bh * nq),
        )))
    }

    /// The attention scores `S = (scale·q)·kᵀ (+ rel_h[.., kh, ·] + rel_w[.., ·, kw])`
    /// `[bh, nq, nk]` as an aclnn composition: the forward's fallback, and the backward's
    /// recomputation of the probabilities after the custom kernel saved only a log-sum-exp.
    pub(super) fn attention_scores(
        &self,
        dims: AttnDims,
        (qb, kb): (&acl::DeviceBuffer, &acl::DeviceBuffer),
        scale: f32,
        rel: Option<RelPos>,
    ) -> Result<Storage> {
        let AttnDims { bh, nq, nk, d, .. } = dims;
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
        Ok(s)
    }

    /// `layer_norm2d` when a binary is loaded and the shape can be tiled.
    pub(super) fn layer_norm2d_custom(
        &self,
        d: ChannelDims,
        a: NormIn,
        eps: f32,
    ) -> Result<Option<NormOut>> {
        let ChannelDims { n, c, hw } = d;
        let Some(kern) = &self.kernels else {
            return Ok(None);
        };
        let u = |x: usize| u32::try_from(x).ok();
        let (Some(n32), Some(c32), Some(hw32)) = (u(n), u(c), u(hw)) else {
            return Ok(None);
        };
        if n * hw == 0 {
            return Ok(None);
        }
        let shape = acl::Ln2dShape {
            n: n32,
            c: c32,
            hw: hw32,
            eps,
        };
        if acl::plan_layer_norm2d(&shape, &acl::Hardware::from_env()).is_err() {
            return Ok(None);
        }
        let mut y = self.alloc(n * c * hw)?;
        let mut mean = self.alloc(n * hw)?;
        let mut rstd = self.alloc(n * hw)?;
        let (x, g, b) = (self.buf(a.x)?, self.buf(a.gamma)?, self.buf(a.beta)?);
        let out = (&mut y, &mut mean, &mut rstd);
        (kern.layer_norm2d(&self.stream, &shape, x, g, b, out.0, out.1, out.2))
            .map_err(self.err())?;
        Ok(Some(NormOut {
            y: self.wrap(y, n * c * hw),
            mean: self.wrap(mean, n * hw),
            rstd: self.wrap(rstd, n * hw),
        }))
    }
}
