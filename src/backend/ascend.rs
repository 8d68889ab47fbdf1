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
    self as acl, AscendError, AscendRuntime, CubePrecision, FlashAttn, GeluApprox,
    Layout as AclLayout, Ops, TensorArg, UnaryOp,
};
use std::collections::HashMap;
use std::sync::Mutex;

mod custom;

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
    move |e| Error::Device {
        device: format!("npu:{id}"),
        detail: e.to_string(),
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
            return Err(Error::Device {
                device: format!("npu:{}", self.id),
                detail: "with_device_buffer needs a contiguous tensor starting at its buffer"
                    .into(),
            });
        }
        f(self.buf(t.storage())?, &self.stream).map_err(self.err())
    }

    /// The allocator block behind a storage of this device.
    fn buf<'a>(&self, s: &'a Storage) -> Result<&'a acl::DeviceBuffer> {
        match s {
            Storage::Device(d) => match d.as_any().downcast_ref::<NpuBuffer>() {
                Some(b) if b.device == self.id => Ok(b.raw()),
                Some(b) => Err(Error::Device {
                    device: format!("npu:{}", self.id),
                    detail: format!("got a buffer of npu:{}", b.device),
                }),
                None => Err(Error::Device {
                    device: format!("npu:{}", self.id),
                    detail: format!("got a buffer of another device type: {d:?}"),
                }),
            },
            Storage::Cpu(_) => Err(Error::Device {
                device: format!("npu:{}", self.id),
                detail: "expected an NPU buffer, found a CPU buffer".into(),
            }),
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

    /// `out[dims] = a[la] + alpha · b[lb]` into a fresh contiguous buffer.
    fn add_views(
        &self,
        a: (&acl::DeviceBuffer, AclLayout),
        b: (&acl::DeviceBuffer, AclLayout),
        alpha: f32,
        dims: &[usize],
    ) -> Result<Storage> {
        let n: usize = dims.iter().product();
        let mut out = self.alloc(n)?;
        if n > 0 {
            let (ta, tb) = (self.input(a.0, a.1)?, self.input(b.0, b.1)?);
            let to = TensorArg::output::<f32>(&mut out, contig(dims)).map_err(self.err())?;
            self.ops().add(&ta, &tb, alpha, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    /// `out[dims] = a[la] · b[lb]` into a fresh contiguous buffer.
    fn mul_views(
        &self,
        a: (&acl::DeviceBuffer, AclLayout),
        b: (&acl::DeviceBuffer, AclLayout),
        dims: &[usize],
    ) -> Result<Storage> {
        let n: usize = dims.iter().product();
        let mut out = self.alloc(n)?;
        if n > 0 {
            let (ta, tb) = (self.input(a.0, a.1)?, self.input(b.0, b.1)?);
            let to = TensorArg::output::<f32>(&mut out, contig(dims)).map_err(self.err())?;
            self.ops().mul(&ta, &tb, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    /// `out[dims] = a[la] / b[lb]` into a fresh contiguous buffer (`aclnnDiv`).
    fn div_views(
        &self,
        a: (&acl::DeviceBuffer, AclLayout),
        b: (&acl::DeviceBuffer, AclLayout),
        dims: &[usize],
    ) -> Result<Storage> {
        let n: usize = dims.iter().product();
        let mut out = self.alloc(n)?;
        if n > 0 {
            let (ta, tb) = (self.input(a.0, a.1)?, self.input(b.0, b.1)?);
            let to = TensorArg::output::<f32>(&mut out, contig(dims)).map_err(self.err())?;
            self.ops().div(&ta, &tb, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
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
            Storage::Cpu(v) => self.upload(&v),
            d => Ok(d),
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
    ) -> Result<Option<(Storage, Storage)>> {
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
            Storage::Device(Box::new(state)),
        )))
    }

    /// Backward of [`AscendBackend::flash_attention`] (`aclnnFlashAttentionScoreGrad`).
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_backward(
        &self,
        dims: AttnDims,
        (q, k, v): (&Storage, &Storage, &Storage),
        scale: f32,
        out: &Storage,
        st: &FlashAttnState,
        dout: &Storage,
    ) -> Result<AttnGrads> {
        let AttnDims { bh, nq, nk, d, .. } = dims;
        let (qb, kb, vb, ob, gb) = (
            self.buf(q)?,
            self.buf(k)?,
            self.buf(v)?,
            self.buf(out)?,
            self.buf(dout)?,
        );
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
                scale: scale as f64,
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
    pub fn adamw_fused(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<bool> {
        let n = param.len();
        if grad.len() != n || exp_avg.len() != n || exp_avg_sq.len() != n || p.step == 0 {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
        // The kernel uses step + 1 as t: pass the number of earlier updates (exact in f32).
        let step = self.fill(1, (p.step - 1) as f32)?;
        let (wb, gb, mb, vb, sb) = (
            self.buf(param)?,
            self.buf(grad)?,
            self.buf(exp_avg)?,
            self.buf(exp_avg_sq)?,
            self.buf(&step)?,
        );
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

    /// AdamW as 12 device elementwise ops (the fallback of [`Backend::adamw`] when
    /// `aclnnApplyAdamWV2` is missing or rejects the call); public for tests.
    pub fn adamw_elementwise(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<()> {
        // The CPU update (`cpu::adamw_update`, PyTorch semantics) as device elementwise ops, in
        // the same order and with the same f32-rounded scalars:
        //   w ← decay·w;  m ← m + (1−β1)(g − m);  v ← β2·v + (1−β2)·g²;
        //   w ← w − step_size · m / (√v / √(1−β2^t) + eps).
        let n = param.len();
        if grad.len() != n || exp_avg.len() != n || exp_avg_sq.len() != n {
            return Err(Error::Device {
                device: format!("npu:{}", self.id),
                detail: format!(
                    "adamw: param {n}, grad {}, exp_avg {}, exp_avg_sq {} elements",
                    grad.len(),
                    exp_avg.len(),
                    exp_avg_sq.len()
                ),
            });
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
        let (wb, gb, mb, vb) = (
            self.buf(param)?,
            self.buf(grad)?,
            self.buf(exp_avg)?,
            self.buf(exp_avg_sq)?,
        );
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
            Err(Error::Device {
                device: format!("npu:{}", self.id),
                detail: format!("depthwise_conv2d needs groups = c_in = c_out, got {g:?}"),
            })
        }
    }
}

impl Backend for AscendBackend {
    fn device(&self) -> Device {
        Device::Npu(self.id)
    }

    fn upload(&self, host: &[f32]) -> Result<Storage> {
        // A cached block may still be used by queued work: drain the device first, and keep
        // buffers from being returned to the cache until the copy is done.
        let g = self.host_copy.lock().unwrap_or_else(|e| e.into_inner());
        self.dev.synchronize().map_err(self.err())?;
        let b = self.dev.upload(host).map_err(self.err())?;
        drop(g);
        Ok(self.wrap(b, host.len()))
    }

    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        if let Storage::Cpu(v) = s {
            return Ok(v.clone());
        }
        let b = self.buf(s)?;
        b.read::<f32>(&self.stream, s.len()).map_err(self.err())
    }

    fn zeros(&self, len: usize) -> Result<Storage> {
        let mut b = self.alloc(len)?;
        if len > 0 {
            b.fill_bytes_async(0, &self.stream).map_err(self.err())?;
        }
        Ok(self.wrap(b, len))
    }

    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        if value.to_bits() == 0 {
            return self.zeros(len);
        }
        // 0 + value · 1, both operands broadcast constants.
        self.add_views(
            (&self.zero, bcast(&[len])),
            (&self.one, bcast(&[len])),
            value,
            &[len],
        )
    }

    fn materialize(&self, s: &Storage, view: &View) -> Result<Storage> {
        let b = self.buf(s)?;
        self.copy_view(b, lay(&view.shape, &view.strides, view.offset), &view.shape)
    }

    fn scatter_into_zeros(&self, src: &Storage, view: &View, len: usize) -> Result<Storage> {
        if !non_overlapping(view) {
            // Overlapping targets accumulate: host fallback.
            let host = self.host_in(src)?;
            let r = Self::cpu().scatter_into_zeros(&Storage::Cpu(host), view, len)?;
            return self.up(r);
        }
        let s = self.buf(src)?;
        let mut out = self.alloc(len)?;
        if len > 0 {
            out.fill_bytes_async(0, &self.stream).map_err(self.err())?;
        }
        if view.shape.iter().product::<usize>() > 0 {
            // Write `src · 1` through the strided view of the zeroed buffer.
            let ts = self.input(s, contig(&view.shape))?;
            let one = self.input(&self.one, bcast(&view.shape))?;
            let to =
                TensorArg::output::<f32>(&mut out, lay(&view.shape, &view.strides, view.offset))
                    .map_err(self.err())?;
            self.ops().mul(&ts, &one, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, len))
    }

    fn gemm(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
    ) -> Result<Storage> {
        let GemmDims { batch, m, n, k } = dims;
        let total = batch * m * n;
        let (ab, bb) = (self.buf(a.storage)?, self.buf(b.storage)?);
        if k == 0 {
            return self.zeros(total);
        }
        // The cubeMathType itself is chosen per SoC and dtype by medsam_ffi (cube_math_type).
        let cube = match precision {
            Precision::F32 => CubePrecision::Exact,
            Precision::Bf16 => CubePrecision::Reduced,
        };
        let (la, lb) = (a.layout, b.layout);
        let mut out = self.alloc(total)?;
        if total > 0 {
            let ops = self.ops().with_precision(cube);
            let e = self.err();
            // A shared right operand with evenly spaced rows of A (linear layers): one 2-D
            // matmul over batch·m rows.
            let fold = batch == 1 || (lb.batch_stride == 0 && la.batch_stride == m * la.row_stride);
            if fold {
                let ta = self.input(
                    ab,
                    lay(&[batch * m, k], &[la.row_stride, la.col_stride], a.offset),
                )?;
                let tb = self.input(bb, lay(&[k, n], &[lb.row_stride, lb.col_stride], b.offset))?;
                let to = TensorArg::output::<f32>(&mut out, contig(&[batch * m, n])).map_err(&e)?;
                ops.matmul(&ta, &tb, &to).map_err(&e)?;
            } else {
                let ta = self.input(
                    ab,
                    lay(
                        &[batch, m, k],
                        &[la.batch_stride, la.row_stride, la.col_stride],
                        a.offset,
                    ),
                )?;
                let tb = self.input(
                    bb,
                    lay(
                        &[batch, k, n],
                        &[lb.batch_stride, lb.row_stride, lb.col_stride],
                        b.offset,
                    ),
                )?;
                let to = TensorArg::output::<f32>(&mut out, contig(&[batch, m, n])).map_err(&e)?;
                ops.batch_matmul(&ta, &tb, &to).map_err(&e)?;
            }
        }
        Ok(self.wrap(out, total))
    }

    fn unary(&self, op: Unary, x: &Storage) -> Result<Storage> {
        let n = x.len();
        let xb = self.buf(x)?;
        match op {
            Unary::Gelu => {
                let mut out = self.alloc(n)?;
                if n > 0 {
                    let tx = self.input(xb, contig(&[n]))?;
                    let to =
                        TensorArg::output::<f32>(&mut out, contig(&[n])).map_err(self.err())?;
                    self.ops()
                        .gelu(&tx, GeluApprox::Erf, &to)
                        .map_err(self.err())?;
                }
                Ok(self.wrap(out, n))
            }
            Unary::Scale(s) => self.scaled(xb, n, s.0),
            Unary::Neg => self.scaled(xb, n, -1.0),
            Unary::Shift(s) => {
                self.add_views((xb, contig(&[n])), (&self.one, bcast(&[n])), s.0, &[n])
            }
            Unary::Relu => self.unary_dev(UnaryOp::Relu, xb, n),
            Unary::Sigmoid => self.unary_dev(UnaryOp::Sigmoid, xb, n),
            Unary::Exp => self.unary_dev(UnaryOp::Exp, xb, n),
            Unary::Sin => self.unary_dev(UnaryOp::Sin, xb, n),
            Unary::Cos => self.unary_dev(UnaryOp::Cos, xb, n),
        }
    }

    fn unary_backward(&self, op: Unary, x: &Storage, dy: &Storage) -> Result<Storage> {
        let n = dy.len();
        let gb = self.buf(dy)?;
        match op {
            Unary::Gelu => {
                let xb = self.buf(x)?;
                let mut out = self.alloc(n)?;
                if n > 0 {
                    let tg = self.input(gb, contig(&[n]))?;
                    let tx = self.input(xb, contig(&[n]))?;
                    let to =
                        TensorArg::output::<f32>(&mut out, contig(&[n])).map_err(self.err())?;
                    self.ops()
                        .gelu_backward(&tg, &tx, GeluApprox::Erf, &to)
                        .map_err(self.err())?;
                }
                Ok(self.wrap(out, n))
            }
            Unary::Scale(s) => self.scaled(gb, n, s.0),
            Unary::Neg => self.scaled(gb, n, -1.0),
            Unary::Shift(_) => self.copy_view(gb, contig(&[n]), &[n]),
            // dy·1[x > 0]
            Unary::Relu => {
                let xb = self.buf(x)?;
                let mut out = self.alloc(n)?;
                if n > 0 {
                    let tg = self.input(gb, contig(&[n]))?;
                    let tx = self.input(xb, contig(&[n]))?;
                    let to =
                        TensorArg::output::<f32>(&mut out, contig(&[n])).map_err(self.err())?;
                    self.ops()
                        .threshold_backward(&tg, &tx, 0.0, &to)
                        .map_err(self.err())?;
                }
                Ok(self.wrap(out, n))
            }
            // dy·y·(1 − y), y = sigmoid(x)
            Unary::Sigmoid => {
                let y = self.unary_dev(UnaryOp::Sigmoid, self.buf(x)?, n)?;
                let mut out = self.alloc(n)?;
                if n > 0 {
                    let tg = self.input(gb, contig(&[n]))?;
                    let ty = self.input(self.buf(&y)?, contig(&[n]))?;
                    let to =
                        TensorArg::output::<f32>(&mut out, contig(&[n])).map_err(self.err())?;
                    self.ops()
                        .sigmoid_backward(&tg, &ty, &to)
                        .map_err(self.err())?;
                }
                Ok(self.wrap(out, n))
            }
            // dy·exp(x), dy·cos(x), −dy·sin(x)
            Unary::Exp | Unary::Sin | Unary::Cos => {
                let f = match op {
                    Unary::Exp => UnaryOp::Exp,
                    Unary::Sin => UnaryOp::Cos,
                    _ => UnaryOp::Sin,
                };
                let d = self.unary_dev(f, self.buf(x)?, n)?;
                let p = self.mul_n(gb, self.buf(&d)?, n)?;
                if op == Unary::Cos {
                    self.scaled(self.buf(&p)?, n, -1.0)
                } else {
                    Ok(p)
                }
            }
        }
    }

    fn binary(
        &self,
        op: Binary,
        a: &Storage,
        va: &View,
        b: &Storage,
        vb: &View,
    ) -> Result<Storage> {
        let la = lay(&va.shape, &va.strides, va.offset);
        let lb = lay(&vb.shape, &vb.strides, vb.offset);
        match op {
            Binary::Add => self.add_views((self.buf(a)?, la), (self.buf(b)?, lb), 1.0, &va.shape),
            Binary::Sub => self.add_views((self.buf(a)?, la), (self.buf(b)?, lb), -1.0, &va.shape),
            Binary::Mul => self.mul_views((self.buf(a)?, la), (self.buf(b)?, lb), &va.shape),
            Binary::Div => self.div_views((self.buf(a)?, la), (self.buf(b)?, lb), &va.shape),
        }
    }

    fn sum_axes(&self, x: &Storage, shape: &[usize], reduce: &[bool]) -> Result<Storage> {
        // One ones-vector matmul per run of reduced axes (size-1 axes ignored).
        let xb = self.buf(x)?;
        let total: usize = shape.iter().product();
        let flags: Vec<(usize, bool)> = shape
            .iter()
            .zip(reduce)
            .filter(|(&s, _)| s != 1)
            .map(|(&s, &r)| (s, r))
            .collect();
        if total == 0 {
            let out_len = shape
                .iter()
                .zip(reduce)
                .map(|(&s, &r)| if r { 1 } else { s })
                .product();
            return self.zeros(out_len);
        }
        if !flags.iter().any(|f| f.1) {
            return self.copy_view(xb, contig(&[total]), &[total]);
        }
        // Reduce the runs from the last to the first; `cur` holds the partially reduced tensor.
        let mut cur: Option<Storage> = None;
        let mut dims: Vec<(usize, bool)> = flags;
        while let Some(end) = dims.iter().rposition(|f| f.1) {
            let start = dims[..end].iter().rposition(|f| !f.1).map_or(0, |i| i + 1);
            let a: usize = dims[..start].iter().map(|f| f.0).product();
            let r: usize = dims[start..=end].iter().map(|f| f.0).product();
            let b: usize = dims[end + 1..].iter().map(|f| f.0).product();
            let src = match &cur {
                Some(s) => self.buf(s)?,
                None => xb,
            };
            let next = self.reduce_middle(src, a, r, b)?;
            cur = Some(next);
            dims.drain(start..=end);
        }
        Ok(cur.expect("at least one reduced run"))
    }

    fn conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let bias = bias.map(|b| self.buf(b)).transpose()?;
        self.conv_fwd_raw(g, self.buf(x)?, self.buf(w)?, bias)
    }

    fn conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        let (dx, dw, db) = self.conv_bwd_raw(
            g,
            self.buf(x)?,
            self.buf(w)?,
            self.buf(dy)?,
            true,
            true,
            bias,
        )?;
        Ok(ConvGrads {
            dx: dx.expect("requested"),
            dw: dw.expect("requested"),
            dbias: db,
        })
    }

    fn conv_transpose2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        // conv_transpose2d(x, w) is the input gradient of conv2d(·, w) at dy = x
        // (aclnnConvolutionBackward with only gradInput requested; its `input` argument only
        // supplies the shape, so an uninitialised buffer of that shape is passed).
        let adj = Self::adjoint_geom(g);
        let (oh, ow) = g.transpose_out_hw();
        let ny = g.n * g.c_out * oh * ow;
        let shape_only = self.alloc(ny)?;
        let (y, _, _) = self.conv_bwd_raw(
            adj,
            &shape_only,
            self.buf(w)?,
            self.buf(x)?,
            true,
            false,
            false,
        )?;
        self.stream.retain_until_sync(shape_only);
        let y = y.expect("requested");
        match bias {
            None => Ok(y),
            Some(b) => {
                let dims = [g.n, g.c_out, oh * ow];
                self.add_views(
                    (self.buf(&y)?, contig(&dims)),
                    (self.buf(b)?, lay(&dims, &[0, 1, 0], 0)),
                    1.0,
                    &dims,
                )
            }
        }
    }

    fn conv_transpose2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        let adj = Self::adjoint_geom(g);
        let (xb, wb, gb) = (self.buf(x)?, self.buf(w)?, self.buf(dy)?);
        // dx = conv2d(dy, w); dw = the weight gradient of conv2d(dy as input, w) at grad x.
        let dx = self.conv_fwd_raw(adj, gb, wb, None)?;
        let (_, dw, _) = self.conv_bwd_raw(adj, gb, wb, xb, false, true, false)?;
        let (oh, ow) = g.transpose_out_hw();
        let dbias = bias
            .then(|| self.channel_sum(gb, g.n, g.c_out, oh * ow))
            .transpose()?;
        Ok(ConvGrads {
            dx,
            dw: dw.expect("requested"),
            dbias,
        })
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
        let (xb, gb, bb) = (self.buf(x)?, self.buf(g)?, self.buf(b)?);
        let mut y = self.alloc(rows * dim)?;
        let mut mean = self.alloc(rows)?;
        let mut rstd = self.alloc(rows)?;
        if rows * dim > 0 {
            let e = self.err();
            let tx = self.input(xb, contig(&[rows, dim]))?;
            let tg = self.input(gb, contig(&[dim]))?;
            let tb = self.input(bb, contig(&[dim]))?;
            let to = TensorArg::output::<f32>(&mut y, contig(&[rows, dim])).map_err(&e)?;
            let tm = TensorArg::output::<f32>(&mut mean, contig(&[rows, 1])).map_err(&e)?;
            let tr = TensorArg::output::<f32>(&mut rstd, contig(&[rows, 1])).map_err(&e)?;
            self.ops()
                .layer_norm(
                    &tx,
                    &[dim as i64],
                    Some(&tg),
                    Some(&tb),
                    eps as f64,
                    &to,
                    Some(&tm),
                    Some(&tr),
                )
                .map_err(&e)?;
        }
        Ok(NormOut {
            y: self.wrap(y, rows * dim),
            mean: self.wrap(mean, rows),
            rstd: self.wrap(rstd, rows),
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
        let (xb, gb, mb, rb, db) = (
            self.buf(x)?,
            self.buf(g)?,
            self.buf(saved.0)?,
            self.buf(saved.1)?,
            self.buf(dy)?,
        );
        let mut dx = self.alloc(rows * dim)?;
        let mut dg = self.alloc(dim)?;
        let mut dbeta = self.alloc(dim)?;
        if rows == 0 {
            dg.fill_bytes_async(0, &self.stream).map_err(self.err())?;
            dbeta
                .fill_bytes_async(0, &self.stream)
                .map_err(self.err())?;
        } else if dim > 0 {
            let e = self.err();
            let tdy = self.input(db, contig(&[rows, dim]))?;
            let tx = self.input(xb, contig(&[rows, dim]))?;
            let tm = self.input(mb, contig(&[rows, 1]))?;
            let tr = self.input(rb, contig(&[rows, 1]))?;
            let tg = self.input(gb, contig(&[dim]))?;
            let gx = TensorArg::output::<f32>(&mut dx, contig(&[rows, dim])).map_err(&e)?;
            let gg = TensorArg::output::<f32>(&mut dg, contig(&[dim])).map_err(&e)?;
            let gbt = TensorArg::output::<f32>(&mut dbeta, contig(&[dim])).map_err(&e)?;
            self.ops()
                .layer_norm_backward(
                    &tdy,
                    &tx,
                    &[dim as i64],
                    &tm,
                    &tr,
                    Some(&tg),
                    None,
                    Some(&gx),
                    Some(&gg),
                    Some(&gbt),
                )
                .map_err(&e)?;
        }
        Ok(NormGrads {
            dx: self.wrap(dx, rows * dim),
            dgamma: self.wrap(dg, dim),
            dbeta: self.wrap(dbeta, dim),
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
        if let Some(r) = self.layer_norm2d_custom(n, c, hw, x, g, b, eps)? {
            return Ok(r);
        }
        // [n, c, hw] → [n, hw, c], LayerNorm over c, → [n, c, hw]; all on device.
        let xt = self.swap_last2(self.buf(x)?, n, c, hw)?;
        let r = self.layer_norm(n * hw, c, &xt, g, b, eps)?;
        let y = self.swap_last2(self.buf(&r.y)?, n, hw, c)?;
        Ok(NormOut {
            y,
            mean: r.mean,
            rstd: r.rstd,
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
        let xt = self.swap_last2(self.buf(x)?, n, c, hw)?;
        let dyt = self.swap_last2(self.buf(dy)?, n, c, hw)?;
        let r = self.layer_norm_backward(n * hw, c, &xt, g, saved, &dyt)?;
        Ok(NormGrads {
            dx: self.swap_last2(self.buf(&r.dx)?, n, hw, c)?,
            dgamma: r.dgamma,
            dbeta: r.dbeta,
        })
    }

    /// On the NPU the second result is this backend's saved state for
    /// [`Backend::attention_backward`]: without rel-pos, when `aclnnFlashAttentionScore` runs, a
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

    fn softmax(&self, rows: usize, dim: usize, x: &Storage) -> Result<Storage> {
        let xb = self.buf(x)?;
        let n = rows * dim;
        let mut out = self.alloc(n)?;
        if n > 0 {
            let tx = self.input(xb, contig(&[rows, dim]))?;
            let to =
                TensorArg::output::<f32>(&mut out, contig(&[rows, dim])).map_err(self.err())?;
            self.ops().softmax(&tx, -1, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    fn softmax_backward(
        &self,
        rows: usize,
        dim: usize,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        let (yb, gb) = (self.buf(y)?, self.buf(dy)?);
        let n = rows * dim;
        let mut out = self.alloc(n)?;
        if n > 0 {
            let ty = self.input(yb, contig(&[rows, dim]))?;
            let tg = self.input(gb, contig(&[rows, dim]))?;
            let to =
                TensorArg::output::<f32>(&mut out, contig(&[rows, dim])).map_err(self.err())?;
            self.ops()
                .softmax_backward(&tg, &ty, -1, &to)
                .map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    fn bilinear(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        x: &Storage,
    ) -> Result<Storage> {
        // `[planes, h, w]` as NCHW `[1, planes, h, w]`; align_corners=false (the trait's only
        // mode), scales passed explicitly as out/in.
        let ((h, w), (oh, ow)) = (hw, ohw);
        let xb = self.buf(x)?;
        let n = planes * oh * ow;
        if n == 0 {
            return self.zeros(n);
        }
        if h == 0 || w == 0 {
            return Err(Error::Device {
                device: format!("npu:{}", self.id),
                detail: format!("bilinear: empty input {h}x{w} resized to {oh}x{ow}"),
            });
        }
        let mut out = self.alloc(n)?;
        {
            let tx = self.input(xb, contig(&[1, planes, h, w]))?;
            let to = TensorArg::output::<f32>(&mut out, contig(&[1, planes, oh, ow]))
                .map_err(self.err())?;
            self.ops()
                .upsample_bilinear2d(
                    &tx,
                    false,
                    (oh as f64 / h as f64, ow as f64 / w as f64),
                    &to,
                )
                .map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    fn bilinear_backward(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        dy: &Storage,
    ) -> Result<Storage> {
        let ((h, w), (oh, ow)) = (hw, ohw);
        let gb = self.buf(dy)?;
        let n = planes * h * w;
        if n == 0 || oh * ow == 0 {
            return self.zeros(n);
        }
        let mut out = self.alloc(n)?;
        {
            let tg = self.input(gb, contig(&[1, planes, oh, ow]))?;
            let to = TensorArg::output::<f32>(&mut out, contig(&[1, planes, h, w]))
                .map_err(self.err())?;
            self.ops()
                .upsample_bilinear2d_backward(
                    &tg,
                    false,
                    (oh as f64 / h as f64, ow as f64 / w as f64),
                    &to,
                )
                .map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    fn depthwise_conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        // aclnnConvolution with groups = channels (weight [c, 1, kh, kw]).
        self.check_depthwise(&g)?;
        let bias = bias.map(|b| self.buf(b)).transpose()?;
        self.conv_fwd_raw(g, self.buf(x)?, self.buf(w)?, bias)
    }

    fn depthwise_conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        self.check_depthwise(&g)?;
        self.conv2d_backward(g, x, w, dy, bias)
    }

    fn batch_norm_stats(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
    ) -> Result<(Storage, Storage)> {
        // Two passes like the CPU kernel: mean = Σx/N, var = Σ(x − mean)²/N (N = n·hw), sums
        // as ones-vector matmuls.
        let xb = self.buf(x)?;
        let inv = 1.0 / (n * hw).max(1) as f32;
        let sum = self.channel_sum(xb, n, c, hw)?;
        let mean = self.scaled(self.buf(&sum)?, c, inv)?;
        let xc = self.per_channel(xb, self.buf(&mean)?, (n, c, hw), Some(-1.0))?;
        let sq = self.mul_n(self.buf(&xc)?, self.buf(&xc)?, n * c * hw)?;
        let ssq = self.channel_sum(self.buf(&sq)?, n, c, hw)?;
        let var = self.scaled(self.buf(&ssq)?, c, inv)?;
        Ok((mean, var))
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
        // y = (x − mean)·(rstd·γ) + β, per channel.
        let (xb, gb, bb) = (self.buf(x)?, self.buf(gamma)?, self.buf(beta)?);
        let (mb, rb) = (self.buf(stats.0)?, self.buf(stats.1)?);
        let k = self.mul_n(rb, gb, c)?;
        let xc = self.per_channel(xb, mb, (n, c, hw), Some(-1.0))?;
        let y1 = self.per_channel(self.buf(&xc)?, self.buf(&k)?, (n, c, hw), None)?;
        self.per_channel(self.buf(&y1)?, bb, (n, c, hw), Some(1.0))
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
        let (xb, gb, db) = (self.buf(x)?, self.buf(gamma)?, self.buf(dy)?);
        let (mb, rb) = (self.buf(stats.0)?, self.buf(stats.1)?);
        let d = (n, c, hw);
        let total = n * c * hw;
        // dβ = Σ dy, dγ = Σ dy·x̂ with x̂ = (x − mean)·rstd.
        let dbeta = self.channel_sum(db, n, c, hw)?;
        let xc = self.per_channel(xb, mb, d, Some(-1.0))?;
        let xhat = self.per_channel(self.buf(&xc)?, rb, d, None)?;
        let p = self.mul_n(db, self.buf(&xhat)?, total)?;
        let dgamma = self.channel_sum(self.buf(&p)?, n, c, hw)?;
        let k = self.mul_n(gb, rb, c)?;
        let dx = if batch_stats {
            // dx = k·(dy − Σdy/N − x̂·Σ(dy·x̂)/N)
            let inv = 1.0 / (n * hw).max(1) as f32;
            let t = self.per_channel(db, self.buf(&dbeta)?, d, Some(-inv))?;
            let u = self.per_channel(self.buf(&xhat)?, self.buf(&dgamma)?, d, None)?;
            let t2 = self.add_n(self.buf(&t)?, self.buf(&u)?, -inv, total)?;
            self.per_channel(self.buf(&t2)?, self.buf(&k)?, d, None)?
        } else {
            self.per_channel(db, self.buf(&k)?, d, None)?
        };
        Ok(NormGrads { dx, dgamma, dbeta })
    }

    fn adamw(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<()> {
        // Fused `aclnnApplyAdamWV2` (in place) when the runtime has it and accepts the call;
        // otherwise the same update as a composition of elementwise ops.
        if self.adamw_fused(p, param, grad, exp_avg, exp_avg_sq)? {
            return Ok(());
        }
        self.adamw_elementwise(p, param, grad, exp_avg, exp_avg_sq)
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
