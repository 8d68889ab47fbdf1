//! Neural-network operators: convolutions, normalisations, attention, softmax, resampling, lookup.

use super::{dense, dense_from_start, norm_in, same_device, wrap};
use crate::autograd::{record, BackwardOp};
use crate::backend::{
    AttnArgs, AttnGradIn, AttnSaved, BiasTableArgs, ChannelDims, ConvGradIn, GatherView, HeadQkv,
    HeadView, NormGradIn, NormStats, Qkv, RelPos, RelPosDims, RelPosIn, ResizeDims, RowAt, RowDims,
    Storage, ViewAttnArgs,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use medsam_kernels::attention::AttnDims;
use medsam_kernels::conv::Conv2dGeom;
use medsam_kernels::gemm::Precision;
use medsam_kernels::window::RowPick;

fn check_rank(op: &'static str, t: &Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::shape(
            op,
            format!("expected a rank-{rank} tensor, got {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Convolution geometry from NCHW input and a weight `[c_out, c_in, kh, kw]`.
fn conv_geom(
    x: &Tensor,
    w_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Conv2dGeom {
    let s = x.shape();
    Conv2dGeom {
        n: s[0],
        c_in: s[1],
        h: s[2],
        w: s[3],
        c_out: w_out,
        kh,
        kw,
        stride: (stride, stride),
        pad: (pad, pad),
        groups: 1,
    }
}

impl Tensor {
    /// conv2d on NCHW with weight `[c_out, c_in, kh, kw]` (groups = 1).
    pub fn conv2d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor> {
        check_rank("conv2d", self, 4)?;
        check_rank("conv2d weight", w, 4)?;
        let ws = w.shape();
        if ws[1] != self.shape()[1]
            || self.shape()[2] + 2 * pad < ws[2]
            || self.shape()[3] + 2 * pad < ws[3]
        {
            return Err(Error::shape(
                "conv2d",
                format!("input {:?} with weight {:?}", self.shape(), ws),
            ));
        }
        if let Some(y) = self.conv1x1_channels_last(w, bias, stride, pad)? {
            return Ok(y);
        }
        let g = conv_geom(self, ws[0], ws[2], ws[3], stride, pad);
        conv_op(self, w, bias, g, ConvKind::Dense)
    }

    /// A 1×1 convolution of a channels-last view (an NHWC buffer seen as NCHW, as Hiera and the
    /// ViT hand their maps to the neck) is a linear layer over the pixels: the GEMM reads the
    /// pixels in place as rows and writes a channels-last view back, with no transposing copy
    /// of the input, no column matrix and no separate bias pass (MedSAM2's neck: 84 → 171
    /// GFLOP/s for its largest 1×1 conv). f32 like every convolution, under any autocast.
    /// `None` for anything else.
    fn conv1x1_channels_last(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Option<Tensor>> {
        let (ws, s) = (w.shape(), self.shape());
        let nhwc = self.permute(&[0, 2, 3, 1])?;
        if ws[2] != 1 || ws[3] != 1 || stride != 1 || pad != 0 || !nhwc.is_dense() {
            return Ok(None);
        }
        let (b, c, h, wd, co) = (s[0], s[1], s[2], s[3], ws[0]);
        let y = crate::ops::linalg::products_in_f32(|| {
            nhwc.reshape(&[b * h * wd, c])?
                .linear(&w.reshape(&[co, c])?, bias)
        })?;
        Ok(Some(y.reshape(&[b, h, wd, co])?.permute(&[0, 3, 1, 2])?))
    }

    /// conv_transpose2d on NCHW with weight `[c_in, c_out, kh, kw]`.
    pub fn conv_transpose2d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
    ) -> Result<Tensor> {
        check_rank("conv_transpose2d", self, 4)?;
        check_rank("conv_transpose2d weight", w, 4)?;
        let ws = w.shape();
        if ws[0] != self.shape()[1] {
            return Err(Error::shape(
                "conv_transpose2d",
                format!("input {:?} with weight {:?}", self.shape(), ws),
            ));
        }
        let g = conv_geom(self, ws[1], ws[2], ws[3], stride, 0);
        conv_op(self, w, bias, g, ConvKind::Transposed)
    }

    /// LayerNorm over the last axis.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let dim = *self
            .shape()
            .last()
            .ok_or_else(|| Error::shape("layer_norm", "scalar input"))?;
        if gamma.shape() != [dim] || beta.shape() != [dim] {
            return Err(Error::shape(
                "layer_norm",
                format!(
                    "input {:?}, weight {:?}, bias {:?}",
                    self.shape(),
                    gamma.shape(),
                    beta.shape()
                ),
            ));
        }
        let rows = self.numel() / dim.max(1);
        let (x, g, bt) = (dense(self)?, dense(gamma)?, dense(beta)?);
        let r = (self.backend()?).layer_norm(rows, dim, norm_in(&x, &g, &bt), eps)?;
        let out = wrap(r.y, self.shape(), self)?;
        let stats = [saved(r.mean, self)?, saved(r.rstd, self)?];
        let op = NormBackward::new(NormKind::Last { rows, dim }, (&x, &g), stats);
        Ok(record(out, &[self, gamma, beta], || Box::new(op)))
    }

    /// SAM's LayerNorm2d: NCHW normalised over C.
    pub fn layer_norm2d(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        check_rank("layer_norm2d", self, 4)?;
        let s = self.shape();
        let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
        if gamma.shape() != [c] || beta.shape() != [c] {
            return Err(Error::shape(
                "layer_norm2d",
                format!("input {:?}, weight {:?}", s, gamma.shape()),
            ));
        }
        // On a channels-last view the channels of a pixel are one contiguous row: LayerNorm over
        // the last axis of the NHWC buffer, and a channels-last view back (no transposing copy).
        let nhwc = self.permute(&[0, 2, 3, 1])?;
        if nhwc.is_dense() && !self.is_dense() {
            return nhwc.layer_norm(gamma, beta, eps)?.permute(&[0, 3, 1, 2]);
        }
        let (x, g, bt) = (dense(self)?, dense(gamma)?, dense(beta)?);
        let d = ChannelDims { n, c, hw };
        let r = (self.backend()?).layer_norm2d(d, norm_in(&x, &g, &bt), eps)?;
        let out = wrap(r.y, s, self)?;
        let stats = [saved(r.mean, self)?, saved(r.rstd, self)?];
        let op = NormBackward::new(NormKind::Channels(d), (&x, &g), stats);
        Ok(record(out, &[self, gamma, beta], || Box::new(op)))
    }

    /// Softmax over the last axis.
    pub fn softmax_last(&self) -> Result<Tensor> {
        let dim = *self
            .shape()
            .last()
            .ok_or_else(|| Error::shape("softmax", "scalar input"))?;
        let rows = self.numel() / dim.max(1);
        let x = dense(self)?;
        let y = wrap(
            self.backend()?
                .softmax(RowDims { rows, dim }, x.storage())?,
            self.shape(),
            self,
        )?;
        let saved = y.detach();
        Ok(record(y, &[self], || {
            Box::new(SoftmaxBackward {
                d: RowDims { rows, dim },
                y: saved,
            })
        }))
    }

    /// `softmax_last(self + bias)` where `bias` matches the trailing axes of `self` (e.g. an
    /// attention bias `[heads, n, n]` for scores `[batch, heads, n, n]`). One fused pass without
    /// autograd recording; separate differentiable ops otherwise.
    pub fn softmax_last_bias(&self, bias: &Tensor) -> Result<Tensor> {
        let (r, br) = (self.rank(), bias.rank());
        let recording =
            crate::autograd::is_grad_enabled() && (self.requires_grad() || bias.requires_grad());
        let fits = r >= 1 && br >= 1 && br <= r && self.shape()[r - br..] == *bias.shape();
        if recording || !fits || self.device() != bias.device() {
            return self.add(bias)?.softmax_last();
        }
        let dim = self.shape()[r - 1];
        let rows = self.numel() / dim.max(1);
        let bias_rows = bias.numel() / dim.max(1);
        if dim == 0 || bias_rows == 0 {
            return self.add(bias)?.softmax_last();
        }
        let (x, b) = (dense(self)?, dense(bias)?);
        let y = self.backend()?.softmax_bias(
            RowDims { rows, dim },
            x.storage(),
            (b.storage(), bias_rows),
        )?;
        wrap(y, self.shape(), self)
    }

    /// Bilinear resize of NCHW to `(oh, ow)`, `align_corners=False`.
    pub fn upsample_bilinear(&self, oh: usize, ow: usize) -> Result<Tensor> {
        check_rank("upsample_bilinear", self, 4)?;
        let s = self.shape().to_vec();
        let planes = s[0] * s[1];
        let x = dense(self)?;
        let y = self.backend()?.bilinear(
            ResizeDims {
                planes,
                hw: (s[2], s[3]),
                ohw: (oh, ow),
            },
            x.storage(),
        )?;
        let out = wrap(y, &[s[0], s[1], oh, ow], self)?;
        Ok(record(out, &[self], || {
            Box::new(BilinearBackward {
                in_shape: s,
                ohw: (oh, ow),
            })
        }))
    }

    /// Rows of a `[len, c]` table picked by `index`, shaped `out_shape + [c]` (an embedding lookup).
    pub fn gather_rows(&self, index: &[usize], out_shape: &[usize]) -> Result<Tensor> {
        check_rank("gather_rows", self, 2)?;
        let (len, c) = (self.shape()[0], self.shape()[1]);
        if let Some(bad) = index.iter().find(|&&i| i >= len) {
            return Err(Error::shape(
                "gather_rows",
                format!("index {bad} out of a table of {len} rows"),
            ));
        }
        let table = self.to_vec()?;
        let mut out = Vec::with_capacity(index.len() * c);
        for &i in index {
            out.extend_from_slice(&table[i * c..(i + 1) * c]);
        }
        let mut shape = out_shape.to_vec();
        shape.push(c);
        let out = Tensor::from_slice(&out, &shape, self.device())?;
        Ok(record(out, &[self], || {
            Box::new(GatherBackward {
                len,
                c,
                index: index.to_vec(),
            })
        }))
    }
}

/// SAM's decomposed relative-position bias for [`attention`].
pub struct RelPosArgs {
    /// `[bh, nq, kh]`
    pub rel_h: Tensor,
    /// `[bh, nq, kw]`
    pub rel_w: Tensor,
    pub kh: usize,
    pub kw: usize,
}

impl RelPosArgs {
    /// The bias of `rel = [rel_h, rel_w]` over a `kh × kw` key grid.
    pub fn new(rel: [Tensor; 2], (kh, kw): (usize, usize)) -> RelPosArgs {
        let [rel_h, rel_w] = rel;
        RelPosArgs {
            rel_h,
            rel_w,
            kh,
            kw,
        }
    }
}

/// SAM's decomposed rel-pos terms (`add_decomposed_rel_pos` before the sum) for q
/// `[maps, h·w, c]` over an `h × w` map and the tables `rh [h, kh, c]`, `rw [w, kw, c]`
/// (`get_rel_pos`): `rel_h [maps, h·w, kh]` and `rel_w [maps, h·w, kw]` in one pass over q,
/// where upstream's einsums permute q twice. Inference only: `None` with gradient recording or
/// on a backend without the kernel (the caller then composes them from matmuls).
pub fn decomposed_rel_pos_fused(
    q: &Tensor,
    rh: &Tensor,
    rw: &Tensor,
    (h, w): (usize, usize),
) -> Result<Option<RelPosArgs>> {
    let ok = q.rank() == 3
        && rh.rank() == 3
        && rw.rank() == 3
        && q.dim(1) == h * w
        && rh.dim(0) == h
        && rw.dim(0) == w
        && rh.dim(2) == q.dim(2)
        && rw.dim(2) == q.dim(2);
    if !ok {
        return Err(Error::shape(
            "decomposed_rel_pos",
            format!(
                "q {:?} over a {h}×{w} map, rh {:?}, rw {:?}",
                q.shape(),
                rh.shape(),
                rw.shape()
            ),
        ));
    }
    let recording =
        crate::autograd::is_grad_enabled() && [q, rh, rw].iter().any(|t| t.requires_grad());
    if recording {
        return Ok(None);
    }
    let d = RelPosDims {
        maps: q.dim(0),
        h,
        w,
        c: q.dim(2),
        kh: rh.dim(1),
        kw: rw.dim(1),
    };
    let (qd, rhd, rwd) = (
        dense_from_start(q)?,
        dense_from_start(rh)?,
        dense_from_start(rw)?,
    );
    let x = RelPosIn {
        q: qd.storage(),
        rh: rhd.storage(),
        rw: rwd.storage(),
    };
    let Some([rel_h, rel_w]) = q.backend()?.decomposed_rel_pos(d, x)? else {
        return Ok(None);
    };
    let n = h * w;
    let rel = [
        wrap(rel_h, &[d.maps, n, d.kh], q)?,
        wrap(rel_w, &[d.maps, n, d.kw], q)?,
    ];
    Ok(Some(RelPosArgs::new(rel, (d.kh, d.kw))))
}

/// `softmax(q·kᵀ·scale + bias)·v` for q `[bh, nq, d]`, k `[bh, nk, d]`, v `[bh, nk, dv]`, computed in
/// tiles; the backward recomputes the probabilities instead of storing them.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    rel: Option<&RelPosArgs>,
) -> Result<Tensor> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.rank() != 3 {
            return Err(Error::shape(
                "attention",
                format!("{name} must be [bh, n, d], got {:?}", t.shape()),
            ));
        }
    }
    let dims = AttnDims {
        bh: q.dim(0),
        nq: q.dim(1),
        nk: k.dim(1),
        d: q.dim(2),
        dv: v.dim(2),
    };
    if k.dim(0) != dims.bh || v.dim(0) != dims.bh || k.dim(2) != dims.d || v.dim(1) != dims.nk {
        return Err(Error::shape(
            "attention",
            format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape()),
        ));
    }
    check_rel("attention", dims, rel)?;
    let (qd, kd, vd) = (dense(q)?, dense(k)?, dense(v)?);
    let reld = dense_rel(rel)?;
    let relpos = rel_pos(&reld);
    // bf16 autocast applies to inference only: a recorded forward stays f32, like the backward
    // that recomputes its probabilities.
    let recording = crate::autograd::is_grad_enabled()
        && std::iter::once(q)
            .chain([k, v])
            .chain(rel.into_iter().flat_map(|r| [&r.rel_h, &r.rel_w]))
            .any(|t| t.requires_grad());
    let precision = attention_precision(recording);
    let args = AttnArgs {
        dims,
        scale,
        rel: relpos,
        precision,
    };
    let qkv = Qkv {
        q: qd.storage(),
        k: kd.storage(),
        v: vd.storage(),
    };
    let (o, saved) = q.backend()?.attention(args, qkv)?;
    let out = wrap(o, &[dims.bh, dims.nq, dims.dv], q)?;
    let mut inputs = vec![q, k, v];
    if let Some(r) = rel {
        inputs.extend([&r.rel_h, &r.rel_w]);
    }
    let saved_out = out.detach();
    Ok(record(out, &inputs, || {
        Box::new(AttnBackward {
            dims,
            scale,
            q: qd.detach(),
            k: kd.detach(),
            v: vd.detach(),
            rel: reld.map(|(h, w, kh, kw)| (h.detach(), w.detach(), kh, kw)),
            out: saved_out,
            saved,
        })
    }))
}

/// Errors unless the rel-pos bias fits `dims` (`rel_h [bh, nq, kh]`, `rel_w [bh, nq, kw]`,
/// `kh·kw = nk`).
fn check_rel(op: &'static str, dims: AttnDims, rel: Option<&RelPosArgs>) -> Result<()> {
    let Some(r) = rel else {
        return Ok(());
    };
    let ok = r.kh * r.kw == dims.nk
        && r.rel_h.shape() == [dims.bh, dims.nq, r.kh]
        && r.rel_w.shape() == [dims.bh, dims.nq, r.kw];
    if ok {
        return Ok(());
    }
    let (h, w) = (r.rel_h.shape(), r.rel_w.shape());
    let why = format!(
        "rel_h {h:?}, rel_w {w:?} for {} queries × {} keys",
        dims.nq, dims.nk
    );
    Err(Error::shape(op, why))
}

/// The rel-pos bias's terms as dense tensors, with its sizes.
type DenseRel = Option<(Tensor, Tensor, usize, usize)>;

fn dense_rel(rel: Option<&RelPosArgs>) -> Result<DenseRel> {
    rel.map(|r| Ok((dense(&r.rel_h)?, dense(&r.rel_w)?, r.kh, r.kw)))
        .transpose()
}

/// The backend's view of [`dense_rel`]'s terms.
fn rel_pos(reld: &DenseRel) -> Option<RelPos<'_>> {
    reld.as_ref().map(|(h, w, kh, kw)| RelPos {
        rel_h: h.storage(),
        rel_w: w.storage(),
        kh: *kh,
        kw: *kw,
    })
}

/// The arithmetic of an attention forward: f32 when autograd records it, else that of the
/// autocast in force.
fn attention_precision(recording: bool) -> Precision {
    if recording {
        Precision::F32
    } else if crate::ops::quant::int8_enabled() && crate::ops::quant::unquantized_in_bf16() {
        // `--precision int8` runs what it does not quantize in bf16 where bf16 pays, attention too.
        Precision::Bf16
    } else {
        crate::ops::linalg::current_precision()
    }
}

/// One attention operand picked from the rows of a projection: `table` read as rows of
/// `pick.width` values, the rows named by `index` (or the row `fill` for [`RowAt::FILL`]), of
/// each the `pick.groups` heads of `pick.len` values, head `h`'s from column `pick.col +
/// h·head_stride`, `pick.block` rows per batch entry (a window's tokens): the operand
/// `[index.len() / block · heads, block, len]`. With `head_stride = pick.len` the heads are
/// side by side (q, k and v each one block of columns, as SAM's and Hiera's projections lay them
/// out; what [`Tensor::pick_rows`] gathers); with `head_stride = width / heads` each head's q, k
/// and v are interleaved (TinyViT's `[heads, 3, key_dim]` rows).
#[derive(Clone, Copy)]
pub struct PickedRows<'a> {
    pub table: &'a Tensor,
    pub fill: Option<&'a Tensor>,
    pub index: &'a [RowAt],
    pub pick: RowPick,
    pub head_stride: usize,
}

impl PickedRows<'_> {
    /// `[batch entries · heads, block, len]`.
    fn shape(&self) -> [usize; 3] {
        let p = self.pick;
        [self.index.len() / p.block * p.groups, p.block, p.len]
    }

    /// Whether head `h` starts `h·len` after head 0 (the layout [`Tensor::pick_rows`] gathers).
    fn side_by_side(&self) -> bool {
        self.head_stride == self.pick.len
    }

    /// The operand gathered into its own dense tensor.
    pub fn gather(&self) -> Result<Tensor> {
        let p = self.pick;
        if self.side_by_side() {
            return Tensor::pick_rows(&[self.table], self.fill, self.index, p)?
                .reshape(&self.shape());
        }
        // Interleaved heads: whole rows, then each head's columns.
        let rows = Tensor::pick_rows(&[self.table], self.fill, self.index, RowPick::rows(p.width))?;
        let entries = self.index.len() / p.block;
        rows.reshape(&[entries, p.block, p.groups, self.head_stride])?
            .narrow(3, p.col, p.len)?
            .permute(&[0, 2, 1, 3])?
            .contiguous()?
            .reshape(&self.shape())
    }

    /// Errors unless the pick fits the table (and the fill row, if the index names it).
    fn check(&self, op: &'static str) -> Result<()> {
        let (p, width) = (self.pick, self.pick.width);
        let rows = (width > 0 && self.table.numel().is_multiple_of(width))
            .then(|| self.table.numel() / width);
        let fill_ok = self.fill.is_none_or(|f| f.numel() == width);
        // Interleaved heads tile the row: `groups` runs of `head_stride`, each holding its
        // `len` columns from `col`.
        let interleaved_ok =
            p.groups * self.head_stride == width && p.col + p.len <= self.head_stride;
        let why = match rows {
            Some(_) if !self.side_by_side() && !interleaved_ok => Some(format!(
                "{} heads of {} columns from column {} every {} of rows of {width}",
                p.groups, p.len, p.col, self.head_stride
            )),
            Some(rows) if fill_ok => {
                let layout = if self.side_by_side() {
                    p
                } else {
                    RowPick {
                        block: p.block,
                        ..RowPick::rows(width)
                    }
                };
                layout.mismatch(&[rows], self.fill.is_some(), self.index)
            }
            _ => Some(format!("row tables are not rows of {width}")),
        };
        why.map_or(Ok(()), |why| Err(Error::shape(op, why)))
    }

    /// The operand in place, for a backend (`None` unless the table and fill are contiguous).
    fn view(&self) -> Option<HeadView<'_>> {
        let fill = match self.fill {
            Some(f) if f.is_contiguous() => Some(f),
            Some(_) => return None,
            None => None,
        };
        if !self.table.is_contiguous() {
            return None;
        }
        let p = self.pick;
        Some(HeadView {
            storage: self.table.storage(),
            offset: self.table.offset() + p.col,
            heads: p.groups,
            batch_stride: 0,
            head_stride: self.head_stride,
            row_stride: p.width,
            gather: Some(GatherView {
                index: self.index,
                block: p.block,
                // An index without fill rows never reads it; the table stands in.
                fill: fill.unwrap_or(self.table).storage(),
                fill_offset: fill.unwrap_or(self.table).offset() + p.col,
            }),
        })
    }
}

/// Errors unless q, k and v are picked from tables on one device and fit one attention call;
/// returns its sizes.
fn picked_dims(op: &'static str, [q, k, v]: [&PickedRows; 3]) -> Result<AttnDims> {
    for x in [q, k, v] {
        x.check(op)?;
        same_device(op, q.table, x.table)?;
        if let Some(f) = x.fill {
            same_device(op, q.table, f)?;
        }
    }
    let ([bq, nq, d], [bk, nk, dk], [bv, nv, dv]) = (q.shape(), k.shape(), v.shape());
    if bq != bk || bq != bv || nk != nv || d != dk || q.pick.groups != k.pick.groups {
        let shapes = format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape());
        return Err(Error::shape(op, shapes));
    }
    Ok(AttnDims::new(bq, nq, nk, d, dv))
}

/// Whether autograd would record an op on these operands (then they are gathered: the
/// in-place path is inference only).
fn picked_records(xs: [&PickedRows; 3], more: &[&Tensor]) -> bool {
    crate::autograd::is_grad_enabled()
        && xs
            .iter()
            .flat_map(|x| std::iter::once(x.table).chain(x.fill))
            .chain(more.iter().copied())
            .any(|t| t.requires_grad())
}

/// [`attention_bias_table`] (TinyViT's window attention with its learned bias `table [heads,
/// nq, nk]`) for operands picked from the rows of a projection ([`PickedRows`]), `[windows,
/// heads, nq, len]`: read in place where the backend's fused kernel can
/// ([`crate::backend::AttentionOps::attention_bias_table`]), else gathered first. Inference only.
pub fn attention_bias_table_picked(
    q: PickedRows,
    k: PickedRows,
    v: PickedRows,
    scale: f32,
    table: &Tensor,
) -> Result<Tensor> {
    let op = "attention_bias_table_picked";
    let dims = picked_dims(op, [&q, &k, &v])?;
    let heads = q.pick.groups;
    if table.shape() != [heads, dims.nq, dims.nk] {
        let why = format!(
            "table {:?} for {heads} heads, {} × {}",
            table.shape(),
            dims.nq,
            dims.nk
        );
        return Err(Error::shape(op, why));
    }
    same_device(op, q.table, table)?;
    let windows = dims.bh / heads;
    if !picked_records([&q, &k, &v], &[table]) && dims.bh > 0 && dims.nq > 0 {
        if let (Some(qv), Some(kv), Some(vv)) = (q.view(), k.view(), v.view()) {
            let x = HeadQkv {
                q: qv,
                k: kv,
                v: vv,
            };
            if let Some(o) = fused_bias_table((dims, heads), scale, table, x, q.table)? {
                return Ok(o);
            }
        }
    }
    let four = |x: &PickedRows| {
        let [_, n, w] = x.shape();
        x.gather()?.reshape(&[windows, heads, n, w])
    };
    attention_bias_table(&four(&q)?, &four(&k)?, &four(&v)?, scale, table)
}

/// [`attention`] (`softmax((q·scale)·kᵀ + rel)·v`, `rel` SAM's decomposed relative positions
/// or none) for operands picked from the rows of projections (windowed attention on a token
/// map: [`PickedRows`]), `[windows · heads, nq, len]`. Read in place by backends that can
/// ([`crate::backend::AttentionOps::attention_views`]), else gathered into dense tensors for
/// [`attention`]; either way inference only (the gather has no gradient).
pub fn attention_picked(
    q: PickedRows,
    k: PickedRows,
    v: PickedRows,
    scale: f32,
    rel: Option<&RelPosArgs>,
) -> Result<Tensor> {
    let op = "attention_picked";
    let dims = picked_dims(op, [&q, &k, &v])?;
    let (nq, dv) = (dims.nq, dims.dv);
    check_rel(op, dims, rel)?;
    let rel_tensors: Vec<&Tensor> = rel.iter().flat_map(|r| [&r.rel_h, &r.rel_w]).collect();
    if !picked_records([&q, &k, &v], &rel_tensors) && dims.bh > 0 && nq > 0 {
        if let (Some(qv), Some(kv), Some(vv)) = (q.view(), k.view(), v.view()) {
            let reld = dense_rel(rel)?;
            let args = ViewAttnArgs {
                dims,
                scale,
                rel: rel_pos(&reld),
                precision: attention_precision(false),
            };
            let x = HeadQkv {
                q: qv,
                k: kv,
                v: vv,
            };
            if let Some(o) = q.table.backend()?.attention_views(args, x)? {
                return wrap(o, &[dims.bh, nq, dv], q.table);
            }
        }
    }
    attention(&q.gather()?, &k.gather()?, &v.gather()?, scale, rel)
}

/// TinyViT's window attention, `softmax((q·scale)·kᵀ + table)·v` for q, k, v
/// `[b, heads, n, d]` and a learned bias `table [heads, nq, nk]` shared by the `b` windows;
/// returns `[b, heads, nq, dv]`. Without gradient recording it is one fused pass that reads q,
/// k and v in place (any view whose last axis is contiguous, e.g. slices of one qkv
/// projection) and never forms the score tensor; with recording, or on a backend without the
/// fused kernel, it is composed of differentiable matmul and softmax.
pub fn attention_bias_table(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    table: &Tensor,
) -> Result<Tensor> {
    let shape_err = || {
        Error::shape(
            "attention_bias_table",
            format!(
                "q {:?}, k {:?}, v {:?}, table {:?}",
                q.shape(),
                k.shape(),
                v.shape(),
                table.shape()
            ),
        )
    };
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 || table.rank() != 3 {
        return Err(shape_err());
    }
    let (b, heads) = (q.dim(0), q.dim(1));
    let dims = AttnDims {
        bh: b * heads,
        nq: q.dim(2),
        nk: k.dim(2),
        d: q.dim(3),
        dv: v.dim(3),
    };
    let consistent = k.shape()[..2] == [b, heads]
        && v.shape()[..2] == [b, heads]
        && k.dim(3) == dims.d
        && v.dim(2) == dims.nk
        && table.shape() == [heads, dims.nq, dims.nk];
    if !consistent {
        return Err(shape_err());
    }
    let recording =
        crate::autograd::is_grad_enabled() && [q, k, v, table].iter().any(|t| t.requires_grad());
    if !recording && dims.bh > 0 && dims.nk > 0 && dims.d > 0 && dims.dv > 0 {
        // Views with a contiguous last axis are read in place; anything else is copied first.
        let in_place = |t: &Tensor| -> Result<Tensor> {
            if t.strides()[3] == 1 || t.dim(3) == 1 {
                Ok(t.clone())
            } else {
                t.contiguous()
            }
        };
        let (qv, kv, vv) = (in_place(q)?, in_place(k)?, in_place(v)?);
        fn view(t: &Tensor, heads: usize) -> HeadView<'_> {
            HeadView {
                storage: t.storage(),
                offset: t.offset(),
                heads,
                batch_stride: t.strides()[0],
                head_stride: t.strides()[1],
                row_stride: t.strides()[2],
                gather: None,
            }
        }
        let x = HeadQkv {
            q: view(&qv, heads),
            k: view(&kv, heads),
            v: view(&vv, heads),
        };
        if let Some(o) = fused_bias_table((dims, heads), scale, table, x, q)? {
            return Ok(o);
        }
    }
    q.scale(scale)?
        .matmul(&k.transpose(2, 3)?)?
        .softmax_last_bias(table)?
        .matmul(v)
}

/// The backend's fused bias-table attention on the operands `x`, `[bh / heads, heads, nq, dv]`
/// on `like`'s device; None where the backend has no such kernel.
fn fused_bias_table(
    (dims, heads): (AttnDims, usize),
    scale: f32,
    table: &Tensor,
    x: HeadQkv,
    like: &Tensor,
) -> Result<Option<Tensor>> {
    let td = dense(table)?;
    let args = BiasTableArgs {
        dims,
        scale,
        table: td.storage(),
        heads,
    };
    let shape = [dims.bh / heads, heads, dims.nq, dims.dv];
    like.backend()?
        .attention_bias_table(args, x)?
        .map(|o| wrap(o, &shape, like))
        .transpose()
}

/// Which convolution a [`conv_op`] runs.
#[derive(Clone, Copy)]
pub(crate) enum ConvKind {
    Dense,
    Transposed,
    Depthwise,
}

/// A convolution of geometry `g`, recording its backward.
pub(crate) fn conv_op(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    g: Conv2dGeom,
    kind: ConvKind,
) -> Result<Tensor> {
    let (xd, wd) = (dense(x)?, dense(w)?);
    let bd = bias.map(dense).transpose()?;
    let b = x.backend()?;
    let a = super::conv_in(&xd, &wd, bd.as_ref());
    let (y, (oh, ow)) = match kind {
        ConvKind::Dense => (b.conv2d(g, a)?, g.out_hw()),
        ConvKind::Transposed => (b.conv_transpose2d(g, a)?, g.transpose_out_hw()),
        ConvKind::Depthwise => (b.depthwise_conv2d(g, a)?, g.out_hw()),
    };
    let out = wrap(y, &[g.n, g.c_out, oh, ow], x)?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Ok(record(out, &inputs, || {
        Box::new(ConvBackward {
            g,
            x: xd.detach(),
            w: wd.detach(),
            bias: bias.is_some(),
            kind,
        })
    }))
}

struct ConvBackward {
    g: Conv2dGeom,
    x: Tensor,
    w: Tensor,
    bias: bool,
    kind: ConvKind,
}

impl BackwardOp for ConvBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gd = dense(g)?;
        let b = g.backend()?;
        let a = ConvGradIn {
            x: self.x.storage(),
            w: self.w.storage(),
            dy: gd.storage(),
            bias: self.bias,
        };
        let r = match self.kind {
            ConvKind::Dense => b.conv2d_backward(self.g, a)?,
            ConvKind::Transposed => b.conv_transpose2d_backward(self.g, a)?,
            ConvKind::Depthwise => b.depthwise_conv2d_backward(self.g, a)?,
        };
        super::conv_grad_tensors(r, (&self.x, &self.w), g)
    }
}

/// A norm's saved statistics as a tensor (its shape is not read).
fn saved(s: Storage, like: &Tensor) -> Result<Tensor> {
    let len = s.len();
    wrap(s, &[len], like)
}

/// Which norm a [`NormBackward`] differentiates.
pub(crate) enum NormKind {
    /// LayerNorm over the last `dim` of `rows × dim`.
    Last { rows: usize, dim: usize },
    /// LayerNorm2d.
    Channels(ChannelDims),
    /// BatchNorm; `true` when it normalised with the batch's own statistics (training).
    Batch(ChannelDims, bool),
}

pub(crate) struct NormBackward {
    kind: NormKind,
    x: Tensor,
    gamma: Tensor,
    /// The forward's mean and `1/σ`.
    stats: [Tensor; 2],
}

impl NormBackward {
    /// Saves what the backward of a norm of `(x, gamma)` reads; `stats`: `[mean, rstd]`.
    pub(crate) fn new(kind: NormKind, (x, gamma): (&Tensor, &Tensor), stats: [Tensor; 2]) -> Self {
        let (x, gamma) = (x.detach(), gamma.detach());
        NormBackward {
            kind,
            x,
            gamma,
            stats,
        }
    }
}

impl BackwardOp for NormBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gd = dense(g)?;
        let b = g.backend()?;
        let [mean, rstd] = &self.stats;
        let a = NormGradIn {
            x: self.x.storage(),
            gamma: self.gamma.storage(),
            stats: NormStats {
                mean: mean.storage(),
                rstd: rstd.storage(),
            },
            dy: gd.storage(),
        };
        let (r, c) = match self.kind {
            NormKind::Last { rows, dim } => (b.layer_norm_backward(rows, dim, a)?, dim),
            NormKind::Channels(d) => (b.layer_norm2d_backward(d, a)?, d.c),
            NormKind::Batch(d, batch) => (b.batch_norm_backward(d, a, batch)?, d.c),
        };
        Ok(vec![
            Some(wrap(r.dx, self.x.shape(), g)?),
            Some(wrap(r.dgamma, &[c], g)?),
            Some(wrap(r.dbeta, &[c], g)?),
        ])
    }
}

struct SoftmaxBackward {
    d: RowDims,
    y: Tensor,
}

impl BackwardOp for SoftmaxBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gd = dense(g)?;
        let dx = g
            .backend()?
            .softmax_backward(self.d, self.y.storage(), gd.storage())?;
        Ok(vec![Some(wrap(dx, self.y.shape(), g)?)])
    }
}

struct BilinearBackward {
    in_shape: Vec<usize>,
    ohw: (usize, usize),
}

impl BackwardOp for BilinearBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let s = &self.in_shape;
        let gd = dense(g)?;
        let dx = g.backend()?.bilinear_backward(
            ResizeDims {
                planes: s[0] * s[1],
                hw: (s[2], s[3]),
                ohw: self.ohw,
            },
            gd.storage(),
        )?;
        Ok(vec![Some(wrap(dx, s, g)?)])
    }
}

struct GatherBackward {
    len: usize,
    c: usize,
    index: Vec<usize>,
}

impl BackwardOp for GatherBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gv = g.to_vec()?;
        let mut table = vec![0.0f32; self.len * self.c];
        for (row, &i) in self.index.iter().enumerate() {
            for j in 0..self.c {
                table[i * self.c + j] += gv[row * self.c + j];
            }
        }
        Ok(vec![Some(Tensor::from_slice(
            &table,
            &[self.len, self.c],
            g.device(),
        )?)])
    }
}

struct AttnBackward {
    dims: AttnDims,
    scale: f32,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Option<(Tensor, Tensor, usize, usize)>,
    out: Tensor,
    saved: AttnSaved,
}

impl BackwardOp for AttnBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gd = dense(g)?;
        let relpos = self.rel.as_ref().map(|(h, w, kh, kw)| RelPos {
            rel_h: h.storage(),
            rel_w: w.storage(),
            kh: *kh,
            kw: *kw,
        });
        let args = AttnArgs {
            dims: self.dims,
            scale: self.scale,
            rel: relpos,
            precision: Precision::F32,
        };
        let qkv = Qkv {
            q: self.q.storage(),
            k: self.k.storage(),
            v: self.v.storage(),
        };
        let saved = AttnGradIn {
            out: self.out.storage(),
            saved: &self.saved,
            dout: gd.storage(),
        };
        let r = g.backend()?.attention_backward(args, qkv, saved)?;
        let mut out = vec![
            Some(wrap(r.dq, self.q.shape(), g)?),
            Some(wrap(r.dk, self.k.shape(), g)?),
            Some(wrap(r.dv, self.v.shape(), g)?),
        ];
        if let (Some((h, w)), Some((th, tw, _, _))) = (r.drel, &self.rel) {
            out.push(Some(wrap(h, th.shape(), g)?));
            out.push(Some(wrap(w, tw.shape(), g)?));
        }
        Ok(out)
    }
}
