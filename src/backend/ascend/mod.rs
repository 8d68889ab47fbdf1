//! The Ascend NPU backend (feature `ascend`): device memory from the per-device caching
//! allocator of `medsam-ffi`, one ACL stream per device, and the aclnn operators of
//! `medsam_ffi::ascend::Ops`. Methods without a device operator run the CPU kernels of
//! `medsam_kernels` on host copies ("host fallback"); docs/ASCEND.md lists which is which.
//!
//! Ordering: all device work of a backend goes on its one stream, so operators see the
//! results of earlier ones without extra synchronisation. Host copies are synchronous
//! `aclrtMemcpy` that do not wait for the stream, so [`AscendBackend::upload`] synchronises
//! the stream first (a cached block handed out again may still be read by queued work) and
//! downloads synchronise through `DeviceBuffer::read`.
//!
//! Threads: every ffi wrapper binds the device context to the calling thread before its ACL
//! calls, so any worker thread (rayon, data loaders) may use the backend.

use super::*;
use medsam_ffi::ascend::{
    self as acl, AscendError, AscendRuntime, FlashAttn, GeluApprox, Layout as AclLayout, Ops,
    TensorArg, UnaryOp,
};
use std::collections::HashMap;
use std::sync::Mutex;

mod attention;
mod conv;
mod custom;
mod linalg;
mod memory;
mod norm;
mod optim;
mod pointwise;

/// Device memory of an [`AscendBackend`]: `len` f32 elements.
pub struct NpuBuffer {
    buf: Option<acl::DeviceBuffer>,
    len: usize,
    device: u32,
    host_copy: Arc<Mutex<()>>,
}

impl Drop for NpuBuffer {
    fn drop(&mut self) {
        // The block goes back to the cache while queued work may still use it. That is safe for
        // stream-ordered device work but not for a synchronous host copy into it, so a drop
        // waits for an upload in progress (which drains the stream before it allocates).
        let _g = self.host_copy.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.buf.take());
    }
}

impl fmt::Debug for NpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NpuBuffer {{ npu:{}, {} f32 at {:p} }}",
            self.device,
            self.len,
            self.raw().as_ptr()
        )
    }
}

impl DeviceBuffer for NpuBuffer {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl NpuBuffer {
    /// The underlying allocator block.
    pub fn raw(&self) -> &acl::DeviceBuffer {
        self.buf.as_ref().expect("live until drop")
    }
}

/// What [`AscendBackend::attention`] saves for its backward when it used
/// `aclnnFlashAttentionScore`: the softmax statistics (fp32 `[bh, 1, nq, 8]` each) instead of
/// the probabilities. A type of its own, so the backward can tell the two kinds of saved state
/// apart.
#[derive(Debug)]
pub struct FlashAttnState {
    max: NpuBuffer,
    sum: NpuBuffer,
}

impl DeviceBuffer for FlashAttnState {
    fn len(&self) -> usize {
        self.max.len + self.sum.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `MEDSAM_NPU_FLASH_ATTENTION=0` turns the flash-attention fast path off.
fn flash_attention_enabled() -> bool {
    std::env::var("MEDSAM_NPU_FLASH_ATTENTION").as_deref() != Ok("0")
}

/// One NPU: its device (context + caching allocator) and stream.
pub struct AscendBackend {
    id: u32,
    dev: acl::Device,
    stream: acl::Stream,
    /// Persistent one-element buffers used as broadcast constants (stride-0 views).
    zero: acl::DeviceBuffer,
    one: acl::DeviceBuffer,
    /// Held by uploads (sync → allocate → copy) and by buffer drops; see [`NpuBuffer`].
    host_copy: Arc<Mutex<()>>,
    /// Hand-written Ascend C kernels, when a binary was located (see `ascend/custom.rs`).
    kernels: Option<acl::CustomKernels>,
}

static BACKENDS: Mutex<Option<HashMap<u32, Arc<AscendBackend>>>> = Mutex::new(None);

/// Maps an ffi error to the library's error, naming the device.
fn dev_err(id: u32) -> impl Fn(AscendError) -> Error {
    move |e| dev_error(id, e.to_string())
}

/// An error of device `npu:id`.
fn dev_error(id: u32, detail: impl Into<String>) -> Error {
    Error::Device {
        device: format!("npu:{id}"),
        detail: detail.into(),
    }
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

fn lay(dims: &[usize], strides: &[usize], offset: usize) -> AclLayout {
    AclLayout {
        dims: i64s(dims),
        strides: i64s(strides),
        offset: offset as i64,
    }
}

/// A device buffer read through a layout.
type DevOperand<'a> = (&'a acl::DeviceBuffer, AclLayout);

fn contig(dims: &[usize]) -> AclLayout {
    AclLayout::contiguous(&i64s(dims))
}

/// A stride-0 view of a one-element buffer, seen with `dims`.
fn bcast(dims: &[usize]) -> AclLayout {
    lay(dims, &vec![0; dims.len()], 0)
}

/// Whether no two indices of the view reach the same element.
fn non_overlapping(v: &View) -> bool {
    let mut d: Vec<(usize, usize)> = v
        .shape
        .iter()
        .zip(&v.strides)
        .filter(|(&s, _)| s > 1)
        .map(|(&s, &st)| (st, s))
        .collect();
    d.sort_unstable();
    let mut need = 1;
    for (st, s) in d {
        if st < need {
            return false;
        }
        need = st * s;
    }
    true
}

impl AscendBackend {
    /// The cached backend of `npu:id`, created on first use.
    pub fn shared(id: u32) -> Result<Arc<AscendBackend>> {
        let mut g = BACKENDS.lock().unwrap_or_else(|e| e.into_inner());
        let map = g.get_or_insert_with(HashMap::new);
        if let Some(b) = map.get(&id) {
            return Ok(b.clone());
        }
        let b = Arc::new(Self::create(id)?);
        map.insert(id, b.clone());
        Ok(b)
    }

    fn create(id: u32) -> Result<AscendBackend> {
        let err = dev_err(id);
        let rt = AscendRuntime::load().map_err(&err)?;
        let count = rt.device_count().map_err(&err)?;
        if id >= count {
            return Err(Error::Device {
                device: format!("npu:{id}"),
                detail: format!("no such device: the Ascend runtime reports {count} device(s)"),
            });
        }
        let dev = rt.device(id as i32).map_err(&err)?;
        let stream = dev.stream().map_err(&err)?;
        let zero = dev.upload(&[0f32]).map_err(&err)?;
        let one = dev.upload(&[1f32]).map_err(&err)?;
        let kernels = Self::load_custom_kernels(&dev)?;
        Ok(AscendBackend {
            id,
            dev,
            stream,
            zero,
            one,
            host_copy: Arc::new(Mutex::new(())),
            kernels,
        })
    }

    /// The ffi device (context, allocator) of this backend.
    pub fn ascend_device(&self) -> &acl::Device {
        &self.dev
    }

    /// The stream all of this backend's work is enqueued on.
    pub fn stream(&self) -> &acl::Stream {
        &self.stream
    }

    /// Waits for all queued work (asynchronous device faults surface here).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(self.err())
    }

    fn err(&self) -> impl Fn(AscendError) -> Error {
        dev_err(self.id)
    }

    /// An error of this device, `detail` saying what went wrong.
    fn device_error(&self, detail: impl Into<String>) -> Error {
        dev_error(self.id, detail)
    }

    fn ops(&self) -> Ops<'_> {
        Ops::new(&self.stream)
    }

    /// Runs `f` on the device memory behind `t` (contiguous, from element 0, on this device) and
    /// on this backend's compute stream, so what `f` enqueues (e.g. an HCCL all-reduce of
    /// gradients) is ordered after the kernels that produced `t` and before later ones.
    pub fn with_device_buffer<R>(
        &self,
        t: &crate::Tensor,
        f: impl FnOnce(&acl::DeviceBuffer, &acl::Stream) -> std::result::Result<R, AscendError>,
    ) -> Result<R> {
        if !t.is_contiguous() || t.offset() != 0 {
            return Err(self.device_error(
                "with_device_buffer needs a contiguous tensor starting at its buffer",
            ));
        }
        f(self.buf(t.storage())?, &self.stream).map_err(self.err())
    }

    /// The allocator block behind a storage of this device.
    fn buf<'a>(&self, s: &'a Storage) -> Result<&'a acl::DeviceBuffer> {
        match s {
            Storage::Device(d) => match d.as_any().downcast_ref::<NpuBuffer>() {
                Some(b) if b.device == self.id => Ok(b.raw()),
                Some(b) => Err(self.device_error(format!("got a buffer of npu:{}", b.device))),
                None => {
                    Err(self.device_error(format!("got a buffer of another device type: {d:?}")))
                }
            },
            Storage::Cpu(_) | Storage::Mapped(_) => {
                Err(self.device_error("expected an NPU buffer, found a CPU buffer"))
            }
        }
    }

    fn alloc(&self, n: usize) -> Result<acl::DeviceBuffer> {
        self.dev.alloc_elems::<f32>(n).map_err(self.err())
    }

    fn wrap(&self, buf: acl::DeviceBuffer, len: usize) -> Storage {
        Storage::Device(Box::new(NpuBuffer {
            buf: Some(buf),
            len,
            device: self.id,
            host_copy: self.host_copy.clone(),
        }))
    }

    fn input<'a>(&self, b: &'a acl::DeviceBuffer, l: AclLayout) -> Result<TensorArg<'a>> {
        TensorArg::input::<f32>(b, l).map_err(self.err())
    }

    fn host_in(&self, s: &Storage) -> Result<Vec<f32>> {
        self.download(s)
    }

    /// `out[dims] = op(a[la], b[lb])` into a fresh contiguous buffer; `op(ops, a, b, out)` runs
    /// the aclnn call.
    fn zip_views(
        &self,
        (a, b): (DevOperand, DevOperand),
        dims: &[usize],
        op: impl FnOnce(Ops, &TensorArg, &TensorArg, &TensorArg) -> acl::Result<()>,
    ) -> Result<Storage> {
        let n: usize = dims.iter().product();
        let mut out = self.alloc(n)?;
        if n > 0 {
            let (ta, tb) = (self.input(a.0, a.1)?, self.input(b.0, b.1)?);
            let to = TensorArg::output::<f32>(&mut out, contig(dims)).map_err(self.err())?;
            op(self.ops(), &ta, &tb, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    /// `out[dims] = a[la] + alpha · b[lb]` into a fresh contiguous buffer.
    fn add_views(
        &self,
        a: DevOperand,
        b: DevOperand,
        alpha: f32,
        dims: &[usize],
    ) -> Result<Storage> {
        self.zip_views((a, b), dims, |ops, a, b, o| ops.add(a, b, alpha, o))
    }

    /// `out[dims] = a[la] · b[lb]` into a fresh contiguous buffer.
    fn mul_views(&self, a: DevOperand, b: DevOperand, dims: &[usize]) -> Result<Storage> {
        self.zip_views((a, b), dims, |ops, a, b, o| ops.mul(a, b, o))
    }

    /// `out[dims] = a[la] / b[lb]` into a fresh contiguous buffer (`aclnnDiv`).
    fn div_views(&self, a: DevOperand, b: DevOperand, dims: &[usize]) -> Result<Storage> {
        self.zip_views((a, b), dims, |ops, a, b, o| ops.div(a, b, o))
    }

    /// `out[dims] = max(a[la], b[lb])` into a fresh contiguous buffer (`aclnnMaximum`).
    fn max_views(&self, a: DevOperand, b: DevOperand, dims: &[usize]) -> Result<Storage> {
        self.zip_views((a, b), dims, |ops, a, b, o| ops.maximum(a, b, o))
    }

    /// `op(x)` over `n` contiguous elements (`aclnnRelu` / `Sigmoid` / `Exp` / `Sin` / `Cos` /
    /// `Sqrt`).
    fn unary_dev(&self, op: UnaryOp, x: &acl::DeviceBuffer, n: usize) -> Result<Storage> {
        let mut out = self.alloc(n)?;
        if n > 0 {
            let tx = self.input(x, contig(&[n]))?;
            let to = TensorArg::output::<f32>(&mut out, contig(&[n])).map_err(self.err())?;
            self.ops().unary(op, &tx, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    /// `a · b` of two contiguous `n`-element buffers.
    fn mul_n(&self, a: &acl::DeviceBuffer, b: &acl::DeviceBuffer, n: usize) -> Result<Storage> {
        self.mul_views((a, contig(&[n])), (b, contig(&[n])), &[n])
    }

    /// `a + alpha · b` of two contiguous `n`-element buffers.
    fn add_n(
        &self,
        a: &acl::DeviceBuffer,
        b: &acl::DeviceBuffer,
        alpha: f32,
        n: usize,
    ) -> Result<Storage> {
        self.add_views((a, contig(&[n])), (b, contig(&[n])), alpha, &[n])
    }

    /// `s · x` (as `0 + s·x` through aclnnAdd's alpha).
    fn scaled(&self, x: &acl::DeviceBuffer, n: usize, s: f32) -> Result<Storage> {
        self.add_views((&self.zero, bcast(&[n])), (x, contig(&[n])), s, &[n])
    }

    /// A contiguous copy of a view (`x · 1`, exact).
    fn copy_view(&self, x: &acl::DeviceBuffer, l: AclLayout, dims: &[usize]) -> Result<Storage> {
        self.mul_views((x, l), (&self.one, bcast(dims)), dims)
    }

    /// Batched matmul `out[b] = a[b] · m[b]` with 3-D layouts; `out` contiguous `[batch, m, n]`.
    fn bmm(
        &self,
        a: (&acl::DeviceBuffer, AclLayout),
        m: (&acl::DeviceBuffer, AclLayout),
        out_dims: [usize; 3],
    ) -> Result<Storage> {
        let n: usize = out_dims.iter().product();
        let mut out = self.alloc(n)?;
        if n > 0 {
            let (ta, tm) = (self.input(a.0, a.1)?, self.input(m.0, m.1)?);
            let to = TensorArg::output::<f32>(&mut out, contig(&out_dims)).map_err(self.err())?;
            self.ops().batch_matmul(&ta, &tm, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    /// Sums `[a, r, b]` (contiguous) over `r` with a ones-vector matmul: `[a, 1, b]`.
    fn reduce_middle(
        &self,
        x: &acl::DeviceBuffer,
        a: usize,
        r: usize,
        b: usize,
    ) -> Result<Storage> {
        let n = a * b;
        let mut out = self.alloc(n)?;
        if n > 0 {
            let ones = self.input(&self.one, bcast(&[a, 1, r]))?;
            let tx = self.input(x, contig(&[a, r, b]))?;
            let to = TensorArg::output::<f32>(&mut out, contig(&[a, 1, b])).map_err(self.err())?;
            if r == 0 {
                drop(to);
                out.fill_bytes_async(0, &self.stream).map_err(self.err())?;
            } else {
                self.ops()
                    .batch_matmul(&ones, &tx, &to)
                    .map_err(self.err())?;
            }
        }
        Ok(self.wrap(out, n))
    }

    fn cpu() -> Arc<dyn Backend> {
        cpu::CpuBackend::shared()
    }

    /// Uploads every CPU storage of a CPU-backend result.
    fn up(&self, s: Storage) -> Result<Storage> {
        match s {
            Storage::Device(_) => Ok(s),
            host => self.upload(host.cpu()?),
        }
    }

    /// `[n, a, b]` → `[n, b, a]` as a contiguous copy.
    fn swap_last2(&self, x: &acl::DeviceBuffer, n: usize, a: usize, b: usize) -> Result<Storage> {
        self.copy_view(x, lay(&[n, b, a], &[a * b, 1, b], 0), &[n, b, a])
    }

    /// Conv geometry of the conv2d whose input gradient is `conv_transpose2d(g)`.
    fn adjoint_geom(g: Conv2dGeom) -> Conv2dGeom {
        let (oh, ow) = g.transpose_out_hw();
        Conv2dGeom {
            n: g.n,
            c_in: g.c_out,
            h: oh,
            w: ow,
            c_out: g.c_in,
            ..g
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_bwd_raw(
        &self,
        g: Conv2dGeom,
        x: &acl::DeviceBuffer,
        w: &acl::DeviceBuffer,
        dy: &acl::DeviceBuffer,
        want_dx: bool,
        want_dw: bool,
        want_db: bool,
    ) -> Result<(Option<Storage>, Option<Storage>, Option<Storage>)> {
        let (oh, ow) = g.out_hw();
        let xd = [g.n, g.c_in, g.h, g.w];
        let wd = [g.c_out, g.c_in / g.groups, g.kh, g.kw];
        let yd = [g.n, g.c_out, oh, ow];
        let (nx, nw, nb) = (
            xd.iter().product::<usize>(),
            wd.iter().product::<usize>(),
            g.c_out,
        );
        let mut dx = want_dx.then(|| self.alloc(nx)).transpose()?;
        let mut dw = want_dw.then(|| self.alloc(nw)).transpose()?;
        let mut db = want_db.then(|| self.alloc(nb)).transpose()?;
        {
            let tdy = self.input(dy, contig(&yd))?;
            let tx = self.input(x, contig(&xd))?;
            let tw = self.input(w, contig(&wd))?;
            let e = self.err();
            let gx = dx
                .as_mut()
                .map(|b| TensorArg::output::<f32>(b, contig(&xd)))
                .transpose()
                .map_err(&e)?;
            let gw = dw
                .as_mut()
                .map(|b| TensorArg::output::<f32>(b, contig(&wd)))
                .transpose()
                .map_err(&e)?;
            let gb = db
                .as_mut()
                .map(|b| TensorArg::output::<f32>(b, contig(&[nb])))
                .transpose()
                .map_err(&e)?;
            self.ops()
                .conv2d_backward(
                    &tdy,
                    &tx,
                    &tw,
                    &[g.c_out as i64],
                    [g.stride.0 as i64, g.stride.1 as i64],
                    [g.pad.0 as i64, g.pad.1 as i64],
                    [1, 1],
                    g.groups as i32,
                    gx.as_ref(),
                    gw.as_ref(),
                    gb.as_ref(),
                )
                .map_err(&e)?;
        }
        Ok((
            dx.map(|b| self.wrap(b, nx)),
            dw.map(|b| self.wrap(b, nw)),
            db.map(|b| self.wrap(b, nb)),
        ))
    }

    fn conv_fwd_raw(
        &self,
        g: Conv2dGeom,
        x: &acl::DeviceBuffer,
        w: &acl::DeviceBuffer,
        bias: Option<&acl::DeviceBuffer>,
    ) -> Result<Storage> {
        let (oh, ow) = g.out_hw();
        let yd = [g.n, g.c_out, oh, ow];
        let n: usize = yd.iter().product();
        let mut y = self.alloc(n)?;
        {
            let tx = self.input(x, contig(&[g.n, g.c_in, g.h, g.w]))?;
            let tw = self.input(w, contig(&[g.c_out, g.c_in / g.groups, g.kh, g.kw]))?;
            let tb = bias
                .map(|b| self.input(b, contig(&[g.c_out])))
                .transpose()?;
            let to = TensorArg::output::<f32>(&mut y, contig(&yd)).map_err(self.err())?;
            self.ops()
                .conv2d(
                    &tx,
                    &tw,
                    tb.as_ref(),
                    [g.stride.0 as i64, g.stride.1 as i64],
                    [g.pad.0 as i64, g.pad.1 as i64],
                    [1, 1],
                    g.groups as i64,
                    &to,
                )
                .map_err(self.err())?;
        }
        Ok(self.wrap(y, n))
    }

    /// Per-channel sum of `[n, c, hw]`: `[c]`.
    fn channel_sum(&self, x: &acl::DeviceBuffer, n: usize, c: usize, hw: usize) -> Result<Storage> {
        let per_plane = self.reduce_middle(x, n * c, hw, 1)?; // [n*c]
        self.reduce_middle(self.buf(&per_plane)?, 1, n, c)
    }

    /// `x[n, c, hw] ∘ v[c]` with `v` broadcast over `n` and `hw`: `Add` with `alpha` or `Mul`.
    fn per_channel(
        &self,
        x: &acl::DeviceBuffer,
        v: &acl::DeviceBuffer,
        (n, c, hw): (usize, usize, usize),
        op: Option<f32>,
    ) -> Result<Storage> {
        let d = [n, c, hw];
        let (lx, lv) = (contig(&d), lay(&d, &[0, 1, 0], 0));
        match op {
            Some(alpha) => self.add_views((x, lx), (v, lv), alpha, &d),
            None => self.mul_views((x, lx), (v, lv), &d),
        }
    }

    fn npu_buffer(&self, buf: acl::DeviceBuffer, len: usize) -> NpuBuffer {
        NpuBuffer {
            buf: Some(buf),
            len,
            device: self.id,
            host_copy: self.host_copy.clone(),
        }
    }

    /// Attention without rel-pos through `aclnnFlashAttentionScore` (`[bh, 1, n, d]` BNSD,
    /// one head per batch entry). `None` when it does not apply (d ≠ dv, d > 768, nk < 2,
    /// disabled) or the runtime rejects it in the first phase (missing symbol, a device
    /// without the op): the caller then composes the attention from matmuls and softmax.
    fn flash_attention(
        &self,
        dims: AttnDims,
        (qb, kb, vb): (&acl::DeviceBuffer, &acl::DeviceBuffer, &acl::DeviceBuffer),
        scale: f32,
    ) -> Result<Option<(Storage, AttnSaved)>> {
        let AttnDims { bh, nq, nk, d, dv } = dims;
        if d != dv || d == 0 || d > 768 || nk < 2 || bh * nq == 0 || !flash_attention_enabled() {
            return Ok(None);
        }
        let ns = bh * nq * 8;
        let mut out = self.alloc(bh * nq * d)?;
        let (mut mx, mut sm) = (self.alloc(ns)?, self.alloc(ns)?);
        let mut reserved = self.alloc(1)?;
        let e = self.err();
        let ok = {
            let tq = self.input(qb, contig(&[bh, 1, nq, d]))?;
            let tk = self.input(kb, contig(&[bh, 1, nk, d]))?;
            let tv = self.input(vb, contig(&[bh, 1, nk, d]))?;
            let sd = [bh, 1, nq, 8];
            let tm = TensorArg::output::<f32>(&mut mx, contig(&sd)).map_err(&e)?;
            let ts = TensorArg::output::<f32>(&mut sm, contig(&sd)).map_err(&e)?;
            let tr = TensorArg::output::<f32>(&mut reserved, contig(&[0])).map_err(&e)?;
            let to = TensorArg::output::<f32>(&mut out, contig(&[bh, 1, nq, d])).map_err(&e)?;
            let attr = FlashAttn {
                scale: scale as f64,
                head_num: 1,
            };
            self.ops()
                .flash_attention(&tq, &tk, &tv, attr, &tm, &ts, &tr, &to)
                .is_ok()
        };
        self.stream.retain_until_sync(reserved);
        if !ok {
            return Ok(None);
        }
        let state = FlashAttnState {
            max: self.npu_buffer(mx, ns),
            sum: self.npu_buffer(sm, ns),
        };
        Ok(Some((
            self.wrap(out, bh * nq * d),
            AttnSaved::Device(Box::new(state)),
        )))
    }

    /// Backward of [`AscendBackend::flash_attention`] (`aclnnFlashAttentionScoreGrad`).
    fn flash_attention_backward(
        &self,
        a: AttnArgs,
        x: Qkv,
        g: AttnGradIn,
        st: &FlashAttnState,
    ) -> Result<AttnGrads> {
        let AttnDims { bh, nq, nk, d, .. } = a.dims;
        let (qb, kb, vb) = (self.buf(x.q)?, self.buf(x.k)?, self.buf(x.v)?);
        let (ob, gb) = (self.buf(g.out)?, self.buf(g.dout)?);
        let (mut dq, mut dk, mut dv) = (
            self.alloc(bh * nq * d)?,
            self.alloc(bh * nk * d)?,
            self.alloc(bh * nk * d)?,
        );
        {
            let e = self.err();
            let (lq, lk) = (contig(&[bh, 1, nq, d]), contig(&[bh, 1, nk, d]));
            let sd = contig(&[bh, 1, nq, 8]);
            let tq = self.input(qb, lq.clone())?;
            let tk = self.input(kb, lk.clone())?;
            let tv = self.input(vb, lk.clone())?;
            let tg = self.input(gb, lq.clone())?;
            let to = self.input(ob, lq.clone())?;
            let tm = self.input(st.max.raw(), sd.clone())?;
            let ts = self.input(st.sum.raw(), sd)?;
            let empty = self.input(&self.zero, contig(&[0]))?;
            let gq = TensorArg::output::<f32>(&mut dq, lq).map_err(&e)?;
            let gk = TensorArg::output::<f32>(&mut dk, lk.clone()).map_err(&e)?;
            let gv = TensorArg::output::<f32>(&mut dv, lk).map_err(&e)?;
            let attr = FlashAttn {
                scale: a.scale as f64,
                head_num: 1,
            };
            self.ops()
                .flash_attention_backward(
                    &tq,
                    &tk,
                    &tv,
                    &tg,
                    attr,
                    (&tm, &ts, &to),
                    &empty,
                    (&gq, &gk, &gv),
                )
                .map_err(&e)?;
        }
        Ok(AttnGrads {
            dq: self.wrap(dq, bh * nq * d),
            dk: self.wrap(dk, bh * nk * d),
            dv: self.wrap(dv, bh * nk * d),
            drel: None,
        })
    }

    /// `aclnnApplyAdamWV2` in place; `Ok(false)` when the runtime lacks it or rejects the call
    /// in its first phase (nothing was enqueued then). Its scalars are f32 (the CPU reference
    /// rounds f64 bias corrections once), so results may differ from the CPU in the last bits.
    /// Public for tests.
    pub fn adamw_fused(&self, p: AdamWStep, grad: &Storage, s: &mut AdamWSlots) -> Result<bool> {
        let n = s.param.len();
        if [grad.len(), s.exp_avg.len(), s.exp_avg_sq.len()] != [n; 3] || p.step == 0 {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
        // The kernel uses step + 1 as t: pass the number of earlier updates (exact in f32).
        let step = self.fill(1, (p.step - 1) as f32)?;
        let (wb, mb, vb) = (
            self.buf(s.param)?,
            self.buf(s.exp_avg)?,
            self.buf(s.exp_avg_sq)?,
        );
        let (gb, sb) = (self.buf(grad)?, self.buf(&step)?);
        let l = contig(&[n]);
        // In-place operands: `param`, `exp_avg` and `exp_avg_sq` are borrowed exclusively by
        // the caller (`&mut Storage`), so writing through these views is sound.
        let (tw, tm, tv) = (
            self.input(wb, l.clone())?,
            self.input(mb, l.clone())?,
            self.input(vb, l.clone())?,
        );
        let (tg, ts) = (self.input(gb, l)?, self.input(sb, contig(&[1]))?);
        let h = acl::AdamWHyper {
            lr: p.lr as f32,
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            weight_decay: p.weight_decay as f32,
            eps: p.eps as f32,
        };
        let ok = self
            .ops()
            .apply_adamw_v2((&tw, &tm, &tv), &tg, &ts, h)
            .is_ok();
        Ok(ok)
    }

    /// AdamW as 12 device elementwise ops (the fallback of [`OptimOps::adamw`] when
    /// `aclnnApplyAdamWV2` is missing or rejects the call); public for tests.
    pub fn adamw_elementwise(&self, p: AdamWStep, grad: &Storage, s: AdamWSlots) -> Result<()> {
        let AdamWSlots {
            param,
            exp_avg,
            exp_avg_sq,
        } = s;
        // The CPU update (`medsam_kernels::adamw`, PyTorch semantics) as device elementwise ops, in
        // the same order and with the same f32-rounded scalars:
        //   w ← decay·w;  m ← m + (1−β1)(g − m);  v ← β2·v + (1−β2)·g²;
        //   w ← w − step_size · m / (√v / √(1−β2^t) + eps).
        let n = param.len();
        if grad.len() != n || exp_avg.len() != n || exp_avg_sq.len() != n {
            return Err(self.device_error(format!(
                "adamw: param {n}, grad {}, exp_avg {}, exp_avg_sq {} elements",
                grad.len(),
                exp_avg.len(),
                exp_avg_sq.len()
            )));
        }
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
        let (wb, mb, vb) = (self.buf(param)?, self.buf(exp_avg)?, self.buf(exp_avg_sq)?);
        let gb = self.buf(grad)?;
        let w_dec = self.scaled(wb, n, decay)?;
        let diff = self.add_n(gb, mb, -1.0, n)?;
        let m = self.add_n(mb, self.buf(&diff)?, w1, n)?;
        let v_dec = self.scaled(vb, n, beta2)?;
        let g2 = self.mul_n(gb, gb, n)?;
        let v = self.add_n(self.buf(&v_dec)?, self.buf(&g2)?, w2, n)?;
        let root = self.unary_dev(UnaryOp::Sqrt, self.buf(&v)?, n)?;
        // √v / √(1−β2^t) as a division by a one-element device constant (exactly 0 + b·1).
        let b2s = self.fill(1, bias2_sqrt)?;
        let root = self.div_views(
            (self.buf(&root)?, contig(&[n])),
            (self.buf(&b2s)?, bcast(&[n])),
            &[n],
        )?;
        let denom = self.add_views(
            (self.buf(&root)?, contig(&[n])),
            (&self.one, bcast(&[n])),
            eps,
            &[n],
        )?;
        let upd = self.div_views(
            (self.buf(&m)?, contig(&[n])),
            (self.buf(&denom)?, contig(&[n])),
            &[n],
        )?;
        let w = self.add_n(self.buf(&w_dec)?, self.buf(&upd)?, -step_size, n)?;
        *param = w;
        *exp_avg = m;
        *exp_avg_sq = v;
        Ok(())
    }

    fn check_depthwise(&self, g: &Conv2dGeom) -> Result<()> {
        if g.c_in == g.c_out && g.groups == g.c_in && g.c_in > 0 {
            Ok(())
        } else {
            Err(self.device_error(format!(
                "depthwise_conv2d needs groups = c_in = c_out, got {g:?}"
            )))
        }
    }
}

impl Backend for AscendBackend {
    fn device(&self) -> Device {
        Device::Npu(self.id)
    }
}

/// Whether the NPU backend of `id` can be created (used by diagnostics).
pub fn npu_backend(id: u32) -> Result<Arc<dyn Backend>> {
    Ok(AscendBackend::shared(id)?)
}

/// The ffi device of `npu:id` (the backend's context and allocator), e.g. for HCCL.
pub fn ascend_device(id: u32) -> Result<acl::Device> {
    Ok(AscendBackend::shared(id)?.ascend_device().clone())
}
