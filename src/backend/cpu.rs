//! The CPU backend: host vectors, computed by the fast kernels of `medsam-kernels`.

use super::*;
use medsam_kernels::{activation, attention, batchnorm, conv, depthwise, gemm, norm, resize};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Stateless; one shared instance.
#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn shared() -> Arc<dyn Backend> {
        static CPU: OnceLock<Arc<dyn Backend>> = OnceLock::new();
        CPU.get_or_init(|| Arc::new(CpuBackend)).clone()
    }
}

fn host(s: &Storage) -> Result<&[f32]> {
    s.cpu()
}

fn host_mut(s: &mut Storage) -> Result<&mut [f32]> {
    match s {
        Storage::Cpu(v) => Ok(v),
        Storage::Device(_) => Err(Error::Other(
            "expected a CPU buffer, found a device buffer".into(),
        )),
    }
}

/// Below this many elements a pointwise loop is not worth splitting across threads.
const PAR_MIN: usize = 1 << 15;

fn map_into(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = buffer(x.len());
    if x.len() < PAR_MIN {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
    } else {
        out.par_chunks_mut(PAR_MIN / 4)
            .zip(x.par_chunks(PAR_MIN / 4))
            .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v)));
    }
    out
}

fn zip_into(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let n = a.len().min(b.len());
    let mut out = buffer(n);
    let run = |o: &mut [f32], a: &[f32], b: &[f32]| {
        o.iter_mut()
            .zip(a)
            .zip(b)
            .for_each(|((o, &x), &y)| *o = f(x, y))
    };
    if n < PAR_MIN {
        run(&mut out, a, b);
    } else {
        out.par_chunks_mut(PAR_MIN / 4)
            .zip(a[..n].par_chunks(PAR_MIN / 4))
            .zip(b[..n].par_chunks(PAR_MIN / 4))
            .for_each(|((o, a), b)| run(o, a, b));
    }
    out
}

/// A cache of large host buffers: every op allocates a fresh output, and for big tensors a fresh
/// allocation means `mmap` + a page fault and a zeroed page per 4 KiB, then `munmap` on drop.
/// Dropped tensors hand their buffers back here ([`recycle`]) and op outputs that are fully
/// overwritten take them ([`buffer`]), so a forward pass reuses the memory of the previous one.
mod pool {
    use std::sync::Mutex;

    /// Smaller buffers are served well by malloc's own free lists.
    const MIN_LEN: usize = 1 << 15;
    /// Upper bound on the memory kept (bytes of capacity); the oldest buffers are dropped first.
    const MAX_BYTES: usize = 512 << 20;

    struct Pool {
        bufs: Vec<Vec<f32>>,
        bytes: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool {
        bufs: Vec::new(),
        bytes: 0,
    });

    /// A buffer of `len` elements with unspecified (initialised) contents.
    pub(super) fn take(len: usize) -> Vec<f32> {
        if len >= MIN_LEN {
            if let Ok(mut p) = POOL.lock() {
                // Best fit by capacity among the buffers that hold `len` elements without
                // wasting over half. Capacity, not length: a buffer that once served a smaller
                // request comes back truncated, and must still serve its full size next time
                // (else every forward pass re-faults its largest buffers). Buffers already long
                // enough win ties, as they need no fill.
                let key = |b: &Vec<f32>| (b.capacity(), b.len() < len);
                let mut best: Option<usize> = None;
                for (i, b) in p.bufs.iter().enumerate() {
                    if b.capacity() >= len
                        && b.capacity() <= 2 * len
                        && best.is_none_or(|j| key(b) < key(&p.bufs[j]))
                    {
                        best = Some(i);
                    }
                }
                if let Some(i) = best {
                    let mut v = p.bufs.remove(i);
                    p.bytes -= v.capacity() * 4;
                    drop(p);
                    // Shrinks, or fills the gap (pages already mapped: no faults).
                    v.resize(len, 0.0);
                    return v;
                }
            }
        }
        vec![0.0; len]
    }

    pub(super) fn recycle(v: Vec<f32>) {
        let bytes = v.capacity() * 4;
        if v.len() < MIN_LEN || bytes > MAX_BYTES {
            return;
        }
        let mut evicted = Vec::new();
        if let Ok(mut p) = POOL.lock() {
            while p.bytes + bytes > MAX_BYTES && !p.bufs.is_empty() {
                let old = p.bufs.remove(0);
                p.bytes -= old.capacity() * 4;
                evicted.push(old);
            }
            p.bytes += bytes;
            p.bufs.push(v);
        }
        drop(evicted); // freed outside the lock
    }

    pub(super) fn clear() {
        let bufs = match POOL.lock() {
            Ok(mut p) => {
                p.bytes = 0;
                std::mem::take(&mut p.bufs)
            }
            Err(_) => Vec::new(),
        };
        drop(bufs);
    }
}

/// An output buffer of `len` elements whose contents are unspecified: only for results that
/// are overwritten in full.
pub(crate) fn buffer(len: usize) -> Vec<f32> {
    pool::take(len)
}

/// Gives a host buffer that is no longer referenced back to the cache (called when the last
/// tensor holding it is dropped).
pub(crate) fn recycle(v: Vec<f32>) {
    pool::recycle(v)
}

/// Frees the host buffers kept for reuse (up to 512 MiB after a large forward pass).
pub fn release_cached_buffers() {
    pool::clear()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Visits every element of a view in row-major order, handing out runs along the last axis.
fn for_each_run(view: &View, mut f: impl FnMut(usize, usize, usize)) {
    // f(out_start, src_start, run_len) with src stride view.strides.last()
    let nd = view.shape.len();
    if nd == 0 {
        f(0, view.offset, 1);
        return;
    }
    let inner = view.shape[nd - 1];
    let outer: usize = view.shape[..nd - 1].iter().product();
    if inner == 0 || outer == 0 {
        return;
    }
    let mut idx = vec![0usize; nd - 1];
    let mut src = view.offset;
    for o in 0..outer {
        f(o * inner, src, inner);
        // advance the multi-index over the outer axes
        for d in (0..nd - 1).rev() {
            idx[d] += 1;
            src += view.strides[d];
            if idx[d] < view.shape[d] {
                break;
            }
            src -= view.strides[d] * view.shape[d];
            idx[d] = 0;
        }
    }
}

/// Offset in the source of the first element of outer row `row` (all axes but the last).
fn row_offset(view: &View, mut row: usize) -> usize {
    let nd = view.shape.len();
    let mut off = view.offset;
    for d in (0..nd.saturating_sub(1)).rev() {
        let s = view.shape[d];
        off += (row % s) * view.strides[d];
        row /= s;
    }
    off
}

/// Copies a strided view into a dense row-major buffer, rows in parallel when large.
fn gather(src: &[f32], view: &View) -> Vec<f32> {
    let n: usize = view.shape.iter().product();
    let mut out = buffer(n);
    if n == 0 {
        return out;
    }
    let inner = view.shape.last().copied().unwrap_or(1).max(1);
    let stride = view.strides.last().copied().unwrap_or(1);
    let nd = view.shape.len();
    if nd >= 2 && view.strides[nd - 2] == 1 && stride > 1 && view.shape[nd - 2] > 1 {
        gather_transposed(src, view, &mut out);
        return out;
    }
    let copy_row = |(row, dst): (usize, &mut [f32])| {
        let s = row_offset(view, row);
        if stride == 1 {
            dst.copy_from_slice(&src[s..s + dst.len()]);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[s + i * stride];
            }
        }
    };
    if n < PAR_MIN {
        out.chunks_mut(inner).enumerate().for_each(copy_row);
    } else {
        out.par_chunks_mut(inner)
            .enumerate()
            .with_min_len((PAR_MIN / inner).max(1))
            .for_each(copy_row);
    }
    out
}

/// [`gather`] for a view whose last two axes are transposed (the second-last has stride 1):
/// copies 16-row × 64-column tiles so every source cache line is used while it is loaded.
fn gather_transposed(src: &[f32], view: &View, out: &mut [f32]) {
    const RB: usize = 16;
    const CB: usize = 64;
    let inner = view.shape[view.shape.len() - 1];
    let stride = view.strides[view.strides.len() - 1];
    let block = |(bi, dst): (usize, &mut [f32])| {
        let r0 = bi * RB;
        let nr = dst.len() / inner;
        let mut bases = [0usize; RB];
        for (i, b) in bases.iter_mut().enumerate().take(nr) {
            *b = row_offset(view, r0 + i);
        }
        for c0 in (0..inner).step_by(CB) {
            let c1 = (c0 + CB).min(inner);
            for (i, &b) in bases.iter().enumerate().take(nr) {
                let d = &mut dst[i * inner + c0..i * inner + c1];
                for (j, d) in d.iter_mut().enumerate() {
                    *d = src[b + (c0 + j) * stride];
                }
            }
        }
    };
    if out.len() < PAR_MIN {
        out.chunks_mut(RB * inner).enumerate().for_each(block);
    } else {
        out.par_chunks_mut(RB * inner).enumerate().for_each(block);
    }
}

/// `out = a ∘ b` over broadcast views, rows in parallel, without materialising the operands.
/// Generic over `f` so each operator gets its own (vectorised) loops.
fn broadcast_zip<F>(a: &[f32], va: &View, b: &[f32], vb: &View, f: F) -> Vec<f32>
where
    F: Fn(f32, f32) -> f32 + Sync,
{
    let n: usize = va.shape.iter().product();
    let mut out = buffer(n);
    if n == 0 {
        return out;
    }
    let inner = va.shape.last().copied().unwrap_or(1).max(1);
    let (sa, sb) = (
        va.strides.last().copied().unwrap_or(1),
        vb.strides.last().copied().unwrap_or(1),
    );
    let row = |(r, dst): (usize, &mut [f32])| {
        let (oa, ob) = (row_offset(va, r), row_offset(vb, r));
        let len = dst.len();
        match (sa, sb) {
            (1, 1) => dst
                .iter_mut()
                .zip(&a[oa..oa + len])
                .zip(&b[ob..ob + len])
                .for_each(|((d, &x), &y)| *d = f(x, y)),
            (1, 0) => {
                let y = b[ob];
                dst.iter_mut()
                    .zip(&a[oa..oa + len])
                    .for_each(|(d, &x)| *d = f(x, y))
            }
            (0, 1) => {
                let x = a[oa];
                dst.iter_mut()
                    .zip(&b[ob..ob + len])
                    .for_each(|(d, &y)| *d = f(x, y))
            }
            _ => dst
                .iter_mut()
                .enumerate()
                .for_each(|(i, d)| *d = f(a[oa + i * sa], b[ob + i * sb])),
        }
    };
    if n < PAR_MIN {
        out.chunks_mut(inner).enumerate().for_each(row);
    } else {
        out.par_chunks_mut(inner)
            .enumerate()
            .with_min_len((PAR_MIN / inner).max(1))
            .for_each(row);
    }
    out
}

/// `a ∘ b` for one operator: a flat loop when both operands are dense and the same size,
/// otherwise through the broadcast views.
fn zip_views<F>(a: &[f32], va: &View, b: &[f32], vb: &View, f: F) -> Vec<f32>
where
    F: Fn(f32, f32) -> f32 + Sync,
{
    let dense = |v: &View, len: usize| {
        v.offset == 0 && is_contiguous(v) && len == v.shape.iter().product::<usize>()
    };
    if dense(va, a.len()) && dense(vb, b.len()) {
        zip_into(a, b, f)
    } else {
        broadcast_zip(a, va, b, vb, f)
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload(&self, host: &[f32]) -> Result<Storage> {
        Ok(Storage::Cpu(host.to_vec()))
    }

    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        Ok(host(s)?.to_vec())
    }

    fn zeros(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Cpu(vec![0.0; len]))
    }

    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        Ok(Storage::Cpu(vec![value; len]))
    }

    fn materialize(&self, s: &Storage, view: &View) -> Result<Storage> {
        Ok(Storage::Cpu(gather(host(s)?, view)))
    }

    fn scatter_into_zeros(&self, src: &Storage, view: &View, len: usize) -> Result<Storage> {
        let src = host(src)?;
        let mut out = vec![0.0f32; len];
        let inner_stride = view.strides.last().copied().unwrap_or(1);
        for_each_run(view, |o, d, run| {
            for i in 0..run {
                out[d + i * inner_stride] += src[o + i];
            }
        });
        Ok(Storage::Cpu(out))
    }

    fn gemm(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
    ) -> Result<Storage> {
        let mut c = buffer(dims.batch * dims.m * dims.n);
        let a_data = &host(a.storage)?[a.offset..];
        let b_data = &host(b.storage)?[b.offset..];
        gemm::gemm(
            dims,
            a_data,
            a.layout,
            b_data,
            b.layout,
            &mut c,
            Layout::row_major(dims.m, dims.n),
            false,
            precision,
        );
        Ok(Storage::Cpu(c))
    }

    fn gemm_bias_act(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
        col_bias: Option<&Storage>,
        row_bias: Option<&Storage>,
        residual: Option<&Storage>,
        gelu: bool,
    ) -> Result<Storage> {
        let mut c = buffer(dims.batch * dims.m * dims.n);
        let epilogue = gemm::Epilogue {
            col_bias: col_bias.map(host).transpose()?,
            row_bias: row_bias.map(host).transpose()?,
            residual: residual.map(|r| host(r).map(|r| (r, dims.n))).transpose()?,
            gelu,
        };
        gemm::gemm_fused(
            dims,
            &host(a.storage)?[a.offset..],
            a.layout,
            &host(b.storage)?[b.offset..],
            b.layout,
            &mut c,
            Layout::row_major(dims.m, dims.n),
            precision,
            epilogue,
        );
        Ok(Storage::Cpu(c))
    }

    fn unary(&self, op: Unary, x: &Storage) -> Result<Storage> {
        let x = host(x)?;
        let y = match op {
            Unary::Gelu => {
                let mut y = buffer(x.len());
                activation::gelu_forward(x, &mut y);
                y
            }
            Unary::Relu => map_into(x, |v| v.max(0.0)),
            Unary::Sigmoid => map_into(x, sigmoid),
            Unary::Neg => map_into(x, |v| -v),
            Unary::Exp => map_into(x, f32::exp),
            Unary::Sin => map_into(x, f32::sin),
            Unary::Cos => map_into(x, f32::cos),
            Unary::Scale(s) => map_into(x, |v| v * s.0),
            Unary::Shift(s) => map_into(x, |v| v + s.0),
        };
        Ok(Storage::Cpu(y))
    }

    fn unary_backward(&self, op: Unary, x: &Storage, dy: &Storage) -> Result<Storage> {
        let (x, dy) = (host(x)?, host(dy)?);
        let dx = match op {
            Unary::Gelu => {
                let mut dx = vec![0.0; x.len()];
                activation::gelu_backward(x, dy, &mut dx);
                dx
            }
            Unary::Relu => zip_into(x, dy, |v, g| if v > 0.0 { g } else { 0.0 }),
            Unary::Sigmoid => zip_into(x, dy, |v, g| {
                let s = sigmoid(v);
                g * s * (1.0 - s)
            }),
            Unary::Neg => map_into(dy, |g| -g),
            Unary::Exp => zip_into(x, dy, |v, g| g * v.exp()),
            Unary::Sin => zip_into(x, dy, |v, g| g * v.cos()),
            Unary::Cos => zip_into(x, dy, |v, g| -g * v.sin()),
            Unary::Scale(s) => map_into(dy, |g| g * s.0),
            Unary::Shift(_) => dy.to_vec(),
        };
        Ok(Storage::Cpu(dx))
    }

    fn binary(
        &self,
        op: Binary,
        a: &Storage,
        va: &View,
        b: &Storage,
        vb: &View,
    ) -> Result<Storage> {
        let (a, b) = (host(a)?, host(b)?);
        Ok(Storage::Cpu(match op {
            Binary::Add => zip_views(a, va, b, vb, |x, y| x + y),
            Binary::Sub => zip_views(a, va, b, vb, |x, y| x - y),
            Binary::Mul => zip_views(a, va, b, vb, |x, y| x * y),
            Binary::Div => zip_views(a, va, b, vb, |x, y| x / y),
        }))
    }

    fn sum_axes(&self, x: &Storage, shape: &[usize], reduce: &[bool]) -> Result<Storage> {
        let x = host(x)?;
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(reduce)
            .map(|(&s, &r)| if r { 1 } else { s })
            .collect();
        let out_len: usize = out_shape.iter().product();
        let mut out = vec![0.0f32; out_len];
        // Output strides (0 on reduced axes) let one pass over x accumulate into place.
        let mut ostr = vec![0usize; shape.len()];
        let mut acc = 1;
        for d in (0..shape.len()).rev() {
            ostr[d] = if reduce[d] { 0 } else { acc };
            acc *= out_shape[d];
        }
        let view = View {
            shape: shape.to_vec(),
            strides: ostr,
            offset: 0,
        };
        let inner_stride = view.strides.last().copied().unwrap_or(1);
        for_each_run(&view, |o, d, run| {
            if inner_stride == 0 {
                out[d] += x[o..o + run].iter().sum::<f32>();
            } else {
                for i in 0..run {
                    out[d + i * inner_stride] += x[o + i];
                }
            }
        });
        Ok(Storage::Cpu(out))
    }

    fn conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = vec![0.0; g.n * g.c_out * oh * ow];
        let bias = bias.map(host).transpose()?;
        conv::conv2d_forward(g, host(x)?, host(w)?, bias, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        conv_grads(
            g,
            (x, w, dy),
            bias,
            conv::conv2d_backward_input,
            conv::conv2d_backward_weight,
        )
    }

    fn conv_transpose2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.transpose_out_hw();
        let mut y = vec![0.0; g.n * g.c_out * oh * ow];
        let bias = bias.map(host).transpose()?;
        conv::conv_transpose2d_forward(g, host(x)?, host(w)?, bias, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn conv_transpose2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        conv_grads(
            g,
            (x, w, dy),
            bias,
            conv::conv_transpose2d_backward_input,
            conv::conv_transpose2d_backward_weight,
        )
    }

    fn layer_norm(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut> {
        let mut y = buffer(rows * dim);
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        norm::layer_norm_forward(
            rows,
            dim,
            host(x)?,
            host(g)?,
            host(b)?,
            eps,
            &mut y,
            &mut mean,
            &mut rstd,
        );
        Ok(NormOut {
            y: Storage::Cpu(y),
            mean: Storage::Cpu(mean),
            rstd: Storage::Cpu(rstd),
        })
    }

    fn layer_norm_backward(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        saved: (&Storage, &Storage),
        dy: &Storage,
    ) -> Result<NormGrads> {
        let mut dx = vec![0.0; rows * dim];
        let (mut dg, mut db) = (vec![0.0; dim], vec![0.0; dim]);
        norm::layer_norm_backward(
            rows,
            dim,
            host(x)?,
            host(g)?,
            host(saved.0)?,
            host(saved.1)?,
            host(dy)?,
            &mut dx,
            &mut dg,
            &mut db,
        );
        Ok(NormGrads {
            dx: Storage::Cpu(dx),
            dgamma: Storage::Cpu(dg),
            dbeta: Storage::Cpu(db),
        })
    }

    fn layer_norm2d(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut> {
        let mut y = vec![0.0; n * c * hw];
        let (mut mean, mut rstd) = (vec![0.0; n * hw], vec![0.0; n * hw]);
        norm::layer_norm2d_forward(
            n,
            c,
            hw,
            host(x)?,
            host(g)?,
            host(b)?,
            eps,
            &mut y,
            &mut mean,
            &mut rstd,
        );
        Ok(NormOut {
            y: Storage::Cpu(y),
            mean: Storage::Cpu(mean),
            rstd: Storage::Cpu(rstd),
        })
    }

    fn layer_norm2d_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        g: &Storage,
        saved: (&Storage, &Storage),
        dy: &Storage,
    ) -> Result<NormGrads> {
        let mut dx = vec![0.0; n * c * hw];
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        norm::layer_norm2d_backward(
            n,
            c,
            hw,
            host(x)?,
            host(g)?,
            host(saved.0)?,
            host(saved.1)?,
            host(dy)?,
            &mut dx,
            &mut dg,
            &mut db,
        );
        Ok(NormGrads {
            dx: Storage::Cpu(dx),
            dgamma: Storage::Cpu(dg),
            dbeta: Storage::Cpu(db),
        })
    }

    fn attention(
        &self,
        dims: AttnDims,
        q: &Storage,
        k: &Storage,
        v: &Storage,
        scale: f32,
        rel: Option<RelPos>,
    ) -> Result<(Storage, Storage)> {
        let mut out = vec![0.0; dims.bh * dims.nq * dims.dv];
        let mut lse = vec![0.0; dims.bh * dims.nq];
        let bias = match rel {
            Some(r) => Some(attention::RelPosBias {
                rel_h: host(r.rel_h)?,
                rel_w: host(r.rel_w)?,
                kh: r.kh,
                kw: r.kw,
            }),
            None => None,
        };
        attention::attention_forward(
            dims,
            host(q)?,
            host(k)?,
            host(v)?,
            scale,
            bias,
            &mut out,
            &mut lse,
        );
        Ok((Storage::Cpu(out), Storage::Cpu(lse)))
    }

    fn mbconv(
        &self,
        dims: medsam_kernels::mbconv::MbConvDims,
        x: &Storage,
        w: [&Storage; 6],
    ) -> Result<Option<Storage>> {
        let mut y = buffer(host(x)?.len());
        let wt = medsam_kernels::mbconv::MbConvWeights {
            w1: host(w[0])?,
            b1: host(w[1])?,
            w2: host(w[2])?,
            b2: host(w[3])?,
            w3: host(w[4])?,
            b3: host(w[5])?,
        };
        medsam_kernels::mbconv::mbconv_forward(dims, host(x)?, wt, &mut y);
        Ok(Some(Storage::Cpu(y)))
    }

    fn attention_bias_table(
        &self,
        dims: AttnDims,
        q: HeadView,
        k: HeadView,
        v: HeadView,
        scale: f32,
        table: &Storage,
        heads: usize,
    ) -> Result<Option<Storage>> {
        let mut out = buffer(dims.bh * dims.nq * dims.dv);
        let mut lse = vec![0.0; dims.bh * dims.nq];
        let table = attention::BiasTable {
            table: host(table)?,
            heads,
        };
        fn rows(v: HeadView<'_>) -> Result<attention::HeadRows<'_>> {
            Ok(attention::HeadRows {
                data: &host(v.storage)?[v.offset..],
                heads: v.heads,
                batch_stride: v.batch_stride,
                head_stride: v.head_stride,
                row_stride: v.row_stride,
            })
        }
        attention::attention_forward_table_rows(
            dims,
            rows(q)?,
            rows(k)?,
            rows(v)?,
            scale,
            table,
            &mut out,
            &mut lse,
        );
        Ok(Some(Storage::Cpu(out)))
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
        let (q, k, v) = (host(q)?, host(k)?, host(v)?);
        let mut dq = vec![0.0; q.len()];
        let mut dk = vec![0.0; k.len()];
        let mut dv = vec![0.0; v.len()];
        let (bias, mut drel) = match rel {
            Some(r) => (
                Some(attention::RelPosBias {
                    rel_h: host(r.rel_h)?,
                    rel_w: host(r.rel_w)?,
                    kh: r.kh,
                    kw: r.kw,
                }),
                Some((
                    vec![0.0; dims.bh * dims.nq * r.kh],
                    vec![0.0; dims.bh * dims.nq * r.kw],
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
            host(out)?,
            host(lse)?,
            host(dout)?,
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

    fn softmax(&self, rows: usize, dim: usize, x: &Storage) -> Result<Storage> {
        let mut y = buffer(rows * dim);
        activation::softmax_forward(rows, dim, host(x)?, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn softmax_bias(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        bias: &Storage,
        bias_rows: usize,
    ) -> Result<Storage> {
        let mut y = buffer(rows * dim);
        activation::softmax_bias_forward(rows, dim, host(x)?, host(bias)?, bias_rows, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn softmax_backward(
        &self,
        rows: usize,
        dim: usize,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        let mut dx = vec![0.0; rows * dim];
        activation::softmax_backward(rows, dim, host(y)?, host(dy)?, &mut dx);
        Ok(Storage::Cpu(dx))
    }

    fn bilinear(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        x: &Storage,
    ) -> Result<Storage> {
        let mut y = vec![0.0; planes * ohw.0 * ohw.1];
        resize::bilinear_forward(planes, hw.0, hw.1, ohw.0, ohw.1, host(x)?, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn bilinear_backward(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        dy: &Storage,
    ) -> Result<Storage> {
        let mut dx = vec![0.0; planes * hw.0 * hw.1];
        resize::bilinear_backward(planes, hw.0, hw.1, ohw.0, ohw.1, host(dy)?, &mut dx);
        Ok(Storage::Cpu(dx))
    }

    fn depthwise_conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = buffer(g.n * g.c_out * oh * ow);
        let bias = bias.map(host).transpose()?;
        depthwise::depthwise_forward(g, host(x)?, host(w)?, bias, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn depthwise_conv2d_nhwc(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        gelu: bool,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = buffer(g.n * g.c_out * oh * ow);
        let bias = bias.map(host).transpose()?;
        depthwise::depthwise_nhwc_forward(g, host(x)?, host(w)?, bias, gelu, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn depthwise_conv2d_gelu(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let mut y = buffer(g.n * g.c_out * oh * ow);
        let bias = bias.map(host).transpose()?;
        depthwise::depthwise_forward_act(g, host(x)?, host(w)?, bias, true, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn depthwise_conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        let (x, w, dy) = (host(x)?, host(w)?, host(dy)?);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        let mut db = bias.then(|| vec![0.0; g.c_out]);
        depthwise::depthwise_backward_input(g, w, dy, &mut dx);
        depthwise::depthwise_backward_weight(g, x, dy, &mut dw, db.as_deref_mut());
        Ok(ConvGrads {
            dx: Storage::Cpu(dx),
            dw: Storage::Cpu(dw),
            dbias: db.map(Storage::Cpu),
        })
    }

    fn batch_norm_stats(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
    ) -> Result<(Storage, Storage)> {
        let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
        batchnorm::stats(n, c, hw, host(x)?, &mut m, &mut v);
        Ok((Storage::Cpu(m), Storage::Cpu(v)))
    }

    fn batch_norm_apply(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        stats: (&Storage, &Storage),
    ) -> Result<Storage> {
        let x = host(x)?;
        let mut y = vec![0.0; x.len()];
        batchnorm::apply(
            n,
            c,
            hw,
            x,
            host(gamma)?,
            host(beta)?,
            host(stats.0)?,
            host(stats.1)?,
            &mut y,
        );
        Ok(Storage::Cpu(y))
    }

    fn batch_norm_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        gamma: &Storage,
        stats: (&Storage, &Storage),
        dy: &Storage,
        batch_stats: bool,
    ) -> Result<NormGrads> {
        let x = host(x)?;
        let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        batchnorm::backward(
            n,
            c,
            hw,
            x,
            host(gamma)?,
            host(stats.0)?,
            host(stats.1)?,
            host(dy)?,
            batch_stats,
            &mut dx,
            &mut dg,
            &mut db,
        );
        Ok(NormGrads {
            dx: Storage::Cpu(dx),
            dgamma: Storage::Cpu(dg),
            dbeta: Storage::Cpu(db),
        })
    }

    fn adamw(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<()> {
        let grad = host(grad)?;
        let param = host_mut(param)?;
        let m = host_mut(exp_avg)?;
        let v = host_mut(exp_avg_sq)?;
        adamw_update(p, param, grad, m, v);
        Ok(())
    }
}

/// The kernels' backward signatures for the input and the weight (+ bias) of a convolution.
type ConvInputGrad = fn(Conv2dGeom, &[f32], &[f32], &mut [f32]);
type ConvWeightGrad = fn(Conv2dGeom, &[f32], &[f32], &mut [f32], Option<&mut [f32]>);

/// dx, dw and (optionally) dbias of a convolution through its two backward kernels.
fn conv_grads(
    g: Conv2dGeom,
    (x, w, dy): (&Storage, &Storage, &Storage),
    bias: bool,
    input_grad: ConvInputGrad,
    weight_grad: ConvWeightGrad,
) -> Result<ConvGrads> {
    let (x, w, dy) = (host(x)?, host(w)?, host(dy)?);
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = bias.then(|| vec![0.0; g.c_out]);
    input_grad(g, w, dy, &mut dx);
    weight_grad(g, x, dy, &mut dw, db.as_deref_mut());
    Ok(ConvGrads {
        dx: Storage::Cpu(dx),
        dw: Storage::Cpu(dw),
        dbias: db.map(Storage::Cpu),
    })
}

fn is_contiguous(v: &View) -> bool {
    let mut expect = 1;
    for d in (0..v.shape.len()).rev() {
        if v.shape[d] != 1 && v.strides[d] != expect {
            return false;
        }
        expect *= v.shape[d];
    }
    true
}

/// `torch.optim.AdamW` (non-foreach, non-amsgrad) in f32, operation for operation, so updates
/// match PyTorch bit-for-bit where the arithmetic allows.
pub fn adamw_update(p: AdamWStep, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
    // PyTorch computes these scalars as Python floats (f64) and rounds them once to f32.
    let (lr, b1, b2) = (p.lr, p.beta1, p.beta2);
    let step_size = (lr / (1.0 - b1.powi(p.step as i32))) as f32;
    let bias2_sqrt = (1.0 - b2.powi(p.step as i32)).sqrt() as f32;
    let decay = (1.0 - lr * p.weight_decay) as f32;
    let (w1, beta2, w2, eps) = (
        (1.0 - b1) as f32,
        b2 as f32,
        (1.0 - b2) as f32,
        p.eps as f32,
    );
    param
        .par_iter_mut()
        .zip(grad.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .with_min_len(4096)
        .for_each(|((w, &g), (m, v))| {
            *w *= decay;
            *m += w1 * (g - *m);
            *v = *v * beta2 + w2 * g * g;
            let denom = v.sqrt() / bias2_sqrt + eps;
            *w += -step_size * (*m / denom);
        });
}
