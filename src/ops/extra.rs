//! Operators TinyViT (LiteMedSAM's image encoder) needs beyond SAM's: depthwise and grouped
//! conv2d, and BatchNorm2d in inference (running statistics) and training (batch statistics)
//! form, each with its backward; and, inference only, Hiera's (MedSAM2's) 2×2 max pooling and
//! the row gathers of the windowed attention blocks.

use super::nn::{conv_op, ConvKind, NormBackward, NormKind};
use super::{conv_in, dense, norm_in, same_device, then_gelu, wrap};
use crate::autograd::{record, records};
use crate::backend::ops::memory::{GatherIn, RowAt, RowPick, RowTable};
use crate::backend::{Backend, ChannelDims, ConvIn, NormStats, Storage};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use medsam_kernels::conv::Conv2dGeom;

/// Batch statistics a training-mode batch norm computed, for the running-average update.
pub struct BatchStats {
    /// `[c]`
    pub mean: Tensor,
    /// `[c]`, biased (divided by the number of values).
    pub var: Tensor,
    /// Values per channel (`n·h·w`).
    pub count: usize,
}

impl Tensor {
    /// `nn.MaxPool2d(2, 2)` (floor mode) on channels-last `[n, h, w, c]` → `[n, h/2, w/2, c]`;
    /// a NaN in a window gives NaN, as in PyTorch. Any view whose channels are contiguous (the
    /// queries sliced out of a q/k/v projection) is read in place. Inference only: an error if
    /// autograd would record it (Hiera pools only in inference here).
    pub fn max_pool2x2_nhwc(&self) -> Result<Tensor> {
        if self.rank() != 4 {
            return Err(Error::shape(
                "max_pool2x2_nhwc",
                format!("expected [n, h, w, c], got {:?}", self.shape()),
            ));
        }
        if records(&[Some(self)]) {
            return Err(Error::Autograd(
                "max_pool2x2_nhwc has no gradient (inference only); run it under no_grad".into(),
            ));
        }
        let x = if self.dim(3) > 1 && self.strides()[3] != 1 {
            self.contiguous()?
        } else {
            self.clone()
        };
        let v = x.view();
        let out_shape = [v.shape[0], v.shape[1] / 2, v.shape[2] / 2, v.shape[3]];
        let s = x.backend()?.max_pool2x2_nhwc((x.storage(), v))?;
        Tensor::from_storage(s, &out_shape, self.device())
    }

    /// Rows picked from row tables: `parts` are read as `[rows, pick.width]` (any views;
    /// contiguous ones in place), `index` names a part and a row or [`RowAt::FILL`] (the row
    /// `fill`, `pick.width` elements); the output is `[index.len() / block, groups, block, len]`
    /// as [`RowPick`] describes: whole rows (`RowPick::rows`), or column groups of each row in
    /// blocks (q, k or v of a q/k/v projection split into per-head windows). One pass over the
    /// picked values, on the tables' device. Inference only: an error if autograd would record
    /// it.
    pub fn pick_rows(
        parts: &[&Tensor],
        fill: Option<&Tensor>,
        index: &[RowAt],
        pick: RowPick,
    ) -> Result<Tensor> {
        let op = "pick_rows";
        let first = parts.first().copied().or(fill);
        let Some(first) = first else {
            return Err(Error::shape(op, "no row table"));
        };
        let all = || parts.iter().copied().chain(fill);
        if all().any(|t| records(&[Some(t)])) {
            return Err(Error::Autograd(
                "pick_rows has no gradient (inference only); run it under no_grad".into(),
            ));
        }
        for t in all() {
            same_device(op, first, t)?;
        }
        let width = pick.width;
        let whole = |t: &Tensor| width > 0 && t.numel().is_multiple_of(width);
        if !parts.iter().all(|t| whole(t)) || fill.is_some_and(|f| f.numel() != width) {
            let shapes: Vec<&[usize]> = all().map(|t| t.shape()).collect();
            return Err(Error::shape(
                op,
                format!("row tables {shapes:?} (fill last if any) are not rows of {width}"),
            ));
        }
        let rows: Vec<usize> = parts.iter().map(|t| t.numel() / width).collect();
        if let Some(why) = pick.mismatch(&rows, fill.is_some(), index) {
            return Err(Error::shape(op, why));
        }
        let parts = parts
            .iter()
            .map(|t| t.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let fill = fill.map(|f| f.contiguous()).transpose()?;
        fn table(t: &Tensor, width: usize) -> RowTable<'_> {
            RowTable {
                storage: t.storage(),
                offset: t.offset(),
                rows: t.numel() / width,
            }
        }
        let tables: Vec<RowTable> = parts.iter().map(|t| table(t, width)).collect();
        let s = first.backend()?.gather_rows(GatherIn {
            parts: &tables,
            fill: fill.as_ref().map(|f| table(f, width)),
            index,
            pick,
        })?;
        let shape = [index.len() / pick.block, pick.groups, pick.block, pick.len];
        Tensor::from_storage(s, &shape, first.device())
    }

    /// Depthwise conv2d on NCHW: weight `[c, 1, kh, kw]`, `groups = c`.
    pub fn depthwise_conv2d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor> {
        self.depthwise_conv2d_act(w, bias, stride, pad, false)
    }

    /// Depthwise conv2d on channels-last `[n, h, w, c]` (weight `[c, 1, kh, kw]`) →
    /// `[n, oh, ow, c]`, then GELU if `gelu`. One kernel without autograd recording; otherwise
    /// the NCHW op between permutes (differentiable).
    pub fn depthwise_conv2d_nhwc(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: usize,
        gelu: bool,
    ) -> Result<Tensor> {
        let recording = records(&[Some(self), Some(w), bias]);
        let (s, ws) = (self.shape(), w.shape());
        if recording || !depthwise_fits(s, [3, 1, 2], w, bias, (stride, pad)) {
            return self
                .permute(&[0, 3, 1, 2])?
                .depthwise_conv2d_act(w, bias, stride, pad, gelu)?
                .permute(&[0, 2, 3, 1]);
        }
        super::same_device("depthwise_conv2d", self, w)?;
        let g = depthwise_geom([s[0], s[3], s[1], s[2]], ws, stride, pad);
        let (oh, ow) = g.out_hw();
        depthwise_kernel(self, w, bias, &[g.n, oh, ow, g.c_out], |b, a| {
            b.depthwise_conv2d_nhwc(g, a, gelu)
        })
    }

    /// [`Tensor::depthwise_conv2d`] then exact GELU if `gelu` (fused when nothing records a
    /// gradient).
    /// TinyViT's MBConv block in inference, fused (see `medsam_kernels::mbconv`): `self`
    /// `[n, c, h, w]` (stored NCHW, or channels-last — then so is the result), `w1 [hid, c, 1, 1]`, `w2 [hid, 1, 3, 3]`, `w3 [c, hid, 1, 1]` with their
    /// biases, BatchNorm folded in. `Ok(None)` if the backend has no fused kernel or autograd is
    /// recording; the caller then composes the ops.
    pub fn mbconv_fused(
        &self,
        w1: &Tensor,
        b1: &Tensor,
        w2: &Tensor,
        b2: &Tensor,
        w3: &Tensor,
        b3: &Tensor,
    ) -> Result<Option<Tensor>> {
        let s = self.shape();
        let (c, hid) = (w3.dim(0), w1.dim(0));
        let ok = self.rank() == 4
            && s[1] == c
            && w1.shape() == [hid, c, 1, 1]
            && b1.shape() == [hid]
            && w2.shape() == [hid, 1, 3, 3]
            && b2.shape() == [hid]
            && w3.shape() == [c, hid, 1, 1]
            && b3.shape() == [c];
        if !ok {
            return Err(Error::shape(
                "mbconv",
                format!(
                    "input {s:?}, w1 {:?}, w2 {:?}, w3 {:?}",
                    w1.shape(),
                    w2.shape(),
                    w3.shape()
                ),
            ));
        }
        let params = [w1, b1, w2, b2, w3, b3];
        if records(&[self, w1, b1, w2, b2, w3, b3].map(Some)) {
            return Ok(None);
        }
        for p in params {
            super::same_device("mbconv", self, p)?;
        }
        let dims = medsam_kernels::mbconv::MbConvDims {
            n: s[0],
            c,
            hid,
            h: s[2],
            w: s[3],
        };
        // A channels-last view (tokens seen as NCHW) runs the channels-last kernel in place
        // and gives a channels-last view back; anything else runs as dense NCHW.
        let nhwc = self.permute(&[0, 2, 3, 1])?;
        let channels_last = nhwc.is_dense();
        let x = if channels_last { nhwc } else { dense(self)? };
        let pd = params.map(dense).into_iter().collect::<Result<Vec<_>>>()?;
        let ws = [0, 1, 2, 3, 4, 5].map(|i| pd[i].storage());
        let Some(y) = self
            .backend()?
            .mbconv(dims, x.storage(), ws, channels_last)?
        else {
            return Ok(None);
        };
        if channels_last {
            let y = wrap(y, x.shape(), self)?;
            Ok(Some(y.permute(&[0, 3, 1, 2])?))
        } else {
            Ok(Some(wrap(y, s, self)?))
        }
    }

    pub fn depthwise_conv2d_act(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: usize,
        gelu: bool,
    ) -> Result<Tensor> {
        let (s, ws) = (self.shape(), w.shape());
        if !depthwise_fits(s, [1, 2, 3], w, bias, (stride, pad)) {
            return Err(Error::shape(
                "depthwise_conv2d",
                format!(
                    "input {s:?}, weight {ws:?}, bias {:?}, stride {stride}, pad {pad}",
                    bias.map(|b| b.shape().to_vec())
                ),
            ));
        }
        super::same_device("depthwise_conv2d", self, w)?;
        let g = depthwise_geom([s[0], s[1], s[2], s[3]], ws, stride, pad);
        if gelu && !records(&[Some(self), Some(w), bias]) {
            let (oh, ow) = g.out_hw();
            return depthwise_kernel(self, w, bias, &[g.n, g.c_out, oh, ow], |b, a| {
                b.depthwise_conv2d_gelu(g, a)
            });
        }
        then_gelu(conv_op(self, w, bias, g, ConvKind::Depthwise)?, gelu)
    }

    /// conv2d with `groups` (weight `[c_out, c_in/groups, kh, kw]`, as `nn.Conv2d`): plain conv2d
    /// for 1, the depthwise kernel when every group is one channel in and one out, otherwise one
    /// conv2d per group.
    pub fn conv2d_grouped(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<Tensor> {
        if groups <= 1 {
            return self.conv2d(w, bias, stride, pad);
        }
        let (c_in, c_out) = (
            self.shape().get(1).copied().unwrap_or(0),
            w.shape().first().copied().unwrap_or(0),
        );
        if self.rank() != 4
            || w.rank() != 4
            || !c_in.is_multiple_of(groups)
            || !c_out.is_multiple_of(groups)
            || w.dim(1) * groups != c_in
        {
            return Err(Error::shape(
                "conv2d_grouped",
                format!(
                    "input {:?}, weight {:?}, groups {groups}",
                    self.shape(),
                    w.shape()
                ),
            ));
        }
        if c_in == groups && c_out == groups {
            return self.depthwise_conv2d(w, bias, stride, pad);
        }
        let (gi, go) = (c_in / groups, c_out / groups);
        let parts = (0..groups)
            .map(|i| {
                let b = bias.map(|b| b.narrow(0, i * go, go)).transpose()?;
                self.narrow(1, i * gi, gi)?.conv2d(
                    &w.narrow(0, i * go, go)?,
                    b.as_ref(),
                    stride,
                    pad,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }

    /// `nn.BatchNorm2d` over the channels (axis 1) of `[n, c, ...]`. In training mode
    /// (`running = None`) it normalises with the batch's statistics and returns them (for the
    /// caller's running averages); otherwise with the given running mean and variance.
    pub fn batch_norm(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running: Option<(&Tensor, &Tensor)>,
        eps: f32,
    ) -> Result<(Tensor, Option<BatchStats>)> {
        let s = self.shape();
        let c = if self.rank() >= 2 { s[1] } else { 0 };
        let shapes_ok = self.rank() >= 2
            && gamma.shape() == [c]
            && beta.shape() == [c]
            && running.is_none_or(|(m, v)| m.shape() == [c] && v.shape() == [c]);
        if !shapes_ok {
            return Err(Error::shape(
                "batch_norm",
                format!(
                    "input {s:?}, weight {:?}, bias {:?}, running {:?}",
                    gamma.shape(),
                    beta.shape(),
                    running.map(|(m, v)| (m.shape().to_vec(), v.shape().to_vec()))
                ),
            ));
        }
        let (n, hw) = (s[0], s[2..].iter().product::<usize>());
        if running.is_none() && n * hw < 2 {
            return Err(Error::shape(
                "batch_norm",
                format!("training needs more than one value per channel, got input {s:?}"),
            ));
        }
        let b = self.backend()?;
        let (x, g, bt) = (dense(self)?, dense(gamma)?, dense(beta)?);
        let (mean, var) = match running {
            Some((m, v)) => (dense(m)?, dense(v)?),
            None => {
                let (m, v) = b.batch_norm_stats(ChannelDims { n, c, hw }, x.storage())?;
                (wrap(m, &[c], self)?, wrap(v, &[c], self)?)
            }
        };
        // rstd from the variance: a [c]-sized host computation.
        let rstd: Vec<f32> = var
            .to_vec()?
            .iter()
            .map(|v| 1.0 / (v + eps).sqrt())
            .collect();
        let rstd = Tensor::from_slice(&rstd, &[c], self.device())?;
        let stats = NormStats {
            mean: mean.storage(),
            rstd: rstd.storage(),
        };
        let d = ChannelDims { n, c, hw };
        let y = b.batch_norm_apply(d, norm_in(&x, &g, &bt), stats)?;
        let out = wrap(y, s, self)?;
        let batch_stats = running.is_none();
        let kind = NormKind::Batch(d, batch_stats);
        let op = NormBackward::new(kind, (&x, &g), [mean.detach(), rstd]);
        let out = record(out, &[self, gamma, beta], || Box::new(op));
        let stats = batch_stats.then(|| BatchStats {
            mean: mean.detach(),
            var: var.detach(),
            count: n * hw,
        });
        Ok((out, stats))
    }
}

/// Whether `w` (and `bias`) fit a depthwise conv of a rank-4 input of shape `s` whose channel,
/// height and width axes are `chw`.
fn depthwise_fits(
    s: &[usize],
    chw: [usize; 3],
    w: &Tensor,
    bias: Option<&Tensor>,
    (stride, pad): (usize, usize),
) -> bool {
    let (ws, [c, h, wd]) = (w.shape(), chw);
    s.len() == 4
        && w.rank() == 4
        && ws[0] == s[c]
        && ws[1] == 1
        && s[h] + 2 * pad >= ws[2]
        && s[wd] + 2 * pad >= ws[3]
        && stride > 0
        && bias.is_none_or(|b| b.shape() == [s[c]])
}

/// `run` (a fused depthwise kernel of `x`'s backend) on dense copies of `x`, `w` and `bias`; its
/// output shaped `out_shape`.
fn depthwise_kernel(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    out_shape: &[usize],
    run: impl FnOnce(&dyn Backend, ConvIn) -> Result<Storage>,
) -> Result<Tensor> {
    let (xd, wd) = (dense(x)?, dense(w)?);
    let bd = bias.map(dense).transpose()?;
    let y = run(&*x.backend()?, conv_in(&xd, &wd, bd.as_ref()))?;
    wrap(y, out_shape, x)
}

/// The geometry of a depthwise conv of an `[n, c, h, w]` input (`nchw`) with weight shape `ws`.
fn depthwise_geom(nchw: [usize; 4], ws: &[usize], stride: usize, pad: usize) -> Conv2dGeom {
    let [n, c, h, w] = nchw;
    Conv2dGeom {
        n,
        c_in: c,
        h,
        w,
        c_out: c,
        kh: ws[2],
        kw: ws[3],
        stride: (stride, stride),
        pad: (pad, pad),
        groups: c,
    }
}
