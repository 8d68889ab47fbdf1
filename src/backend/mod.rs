//! The device seam. Every tensor operation reaches compute through [`Backend`]: a device is added by
//! implementing this trait (CPU here; the Ascend NPU in `backend::ascend`), never by touching model
//! code. Backends work on whole buffers ([`Storage`]) plus explicit geometry; views, broadcasting
//! and autograd live above this layer, in `tensor` and `ops`.

#[cfg(feature = "ascend")]
pub mod ascend;
pub mod cpu;

use crate::error::{Error, Result};
use medsam_kernels::attention::AttnDims;
use medsam_kernels::conv::Conv2dGeom;
use medsam_kernels::gemm::{GemmDims, Layout, Precision};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Where a tensor's data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// An Ascend NPU by its device id.
    Npu(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Npu(i) => write!(f, "npu:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        if let Some(id) = s.strip_prefix("npu:").or_else(|| s.strip_prefix("npu")) {
            let id = if id.is_empty() {
                0
            } else {
                id.parse().map_err(|_| bad_device(s))?
            };
            return Ok(Device::Npu(id));
        }
        Err(bad_device(s))
    }
}

fn bad_device(s: &str) -> Error {
    Error::arg(
        "--device",
        format!("'{s}' is not a device; use cpu or npu:N"),
    )
}

/// Memory owned by a non-CPU backend; the backend downcasts it back to its own type.
pub trait DeviceBuffer: Any + Send + Sync + fmt::Debug {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
}

/// A flat f32 buffer on some device.
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    Device(Box<dyn DeviceBuffer>),
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            Storage::Device(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The host slice of a CPU buffer.
    pub fn cpu(&self) -> Result<&[f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
            Storage::Device(_) => Err(Error::Other(
                "expected a CPU buffer, found a device buffer".into(),
            )),
        }
    }
}

/// A strided window onto a buffer: element `idx` is at `offset + Σ idx[d]·strides[d]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

/// Pointwise functions with a derivative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Gelu,
    Relu,
    Sigmoid,
    Neg,
    Exp,
    Sin,
    Cos,
    /// `x * s`
    Scale(OrdF32),
    /// `x + s`
    Shift(OrdF32),
}

/// An f32 that can sit in an `Eq` enum (compared bitwise).
#[derive(Clone, Copy, Debug)]
pub struct OrdF32(pub f32);
impl PartialEq for OrdF32 {
    fn eq(&self, o: &Self) -> bool {
        self.0.to_bits() == o.0.to_bits()
    }
}
impl Eq for OrdF32 {}

/// Elementwise binary functions (with broadcasting handled through views).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

/// A GEMM operand: a buffer plus where its matrices sit in it.
#[derive(Clone, Copy)]
pub struct GemmOperand<'a> {
    pub storage: &'a Storage,
    pub offset: usize,
    pub layout: Layout,
}

/// Gradients of a convolution.
pub struct ConvGrads {
    pub dx: Storage,
    pub dw: Storage,
    pub dbias: Option<Storage>,
}

/// Gradients of a normalisation.
pub struct NormGrads {
    pub dx: Storage,
    pub dgamma: Storage,
    pub dbeta: Storage,
}

/// Saved results of a norm forward.
pub struct NormOut {
    pub y: Storage,
    pub mean: Storage,
    pub rstd: Storage,
}

/// An attention operand `[b, heads, n, w]` in place in its storage: row `i` of head `h` of batch
/// entry `bi` starts at `offset + bi·batch_stride + h·head_stride + i·row_stride`, its `w`
/// values contiguous.
#[derive(Clone, Copy)]
pub struct HeadView<'a> {
    pub storage: &'a Storage,
    pub offset: usize,
    pub heads: usize,
    pub batch_stride: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

/// Decomposed rel-pos bias operands: `rel_h [bh, nq, kh]`, `rel_w [bh, nq, kw]`.
#[derive(Clone, Copy)]
pub struct RelPos<'a> {
    pub rel_h: &'a Storage,
    pub rel_w: &'a Storage,
    pub kh: usize,
    pub kw: usize,
}

/// Gradients of attention.
pub struct AttnGrads {
    pub dq: Storage,
    pub dk: Storage,
    pub dv: Storage,
    pub drel: Option<(Storage, Storage)>,
}

/// Hyper-parameters of one AdamW update (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// The step number after this update (1 for the first).
    pub step: u64,
}

/// Everything a device must provide. Buffers passed in are contiguous unless a [`View`] or a
/// [`GemmOperand`] says otherwise; results are fresh contiguous buffers.
pub trait Backend: Send + Sync {
    fn device(&self) -> Device;

    fn upload(&self, host: &[f32]) -> Result<Storage>;
    fn download(&self, s: &Storage) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Storage>;
    fn fill(&self, len: usize, value: f32) -> Result<Storage>;
    /// Copies a strided view into a new contiguous buffer.
    fn materialize(&self, s: &Storage, view: &View) -> Result<Storage>;
    /// Writes `src` (contiguous, `view.shape`) into a zero buffer of `len` elements at `view`.
    fn scatter_into_zeros(&self, src: &Storage, view: &View, len: usize) -> Result<Storage>;

    /// `C[b] = A[b]·B[b]`, C contiguous `[batch, m, n]`.
    fn gemm(
        &self,
        dims: GemmDims,
        a: GemmOperand,
        b: GemmOperand,
        precision: Precision,
    ) -> Result<Storage>;

    /// `act(A[b]·B[b] + bias + residual)`, C contiguous `[batch, m, n]`: a bias per column
    /// (`col_bias`, length n) and/or per row (`row_bias`, length m), the same for every batch,
    /// then a contiguous `[m, n]` residual (batch 1 only), then GELU if `gelu`. Inference only
    /// (no gradient); backends may fuse it into the GEMM. The default runs the separate ops.
    #[allow(clippy::too_many_arguments)]
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
        let (bt, m, n) = (dims.batch, dims.m, dims.n);
        let mut c = self.gemm(dims, a, b, precision)?;
        let vc = View {
            shape: vec![bt, m, n],
            strides: vec![m * n, n, 1],
            offset: 0,
        };
        for (bias, strides) in [(col_bias, vec![0, 0, 1]), (row_bias, vec![0, 1, 0])] {
            if let Some(bias) = bias {
                let vb = View {
                    shape: vec![bt, m, n],
                    strides,
                    offset: 0,
                };
                c = self.binary(Binary::Add, &c, &vc, bias, &vb)?;
            }
        }
        if let Some(r) = residual {
            c = self.binary(Binary::Add, &c, &vc, r, &vc)?;
        }
        if gelu {
            c = self.unary(Unary::Gelu, &c)?;
        }
        Ok(c)
    }

    fn unary(&self, op: Unary, x: &Storage) -> Result<Storage>;
    /// `dx = dy · f'(x)`.
    fn unary_backward(&self, op: Unary, x: &Storage, dy: &Storage) -> Result<Storage>;
    /// `out[shape] = a[view_a] ∘ b[view_b]`; the views carry zero strides where they broadcast.
    fn binary(&self, op: Binary, a: &Storage, va: &View, b: &Storage, vb: &View)
        -> Result<Storage>;
    /// Sums a contiguous `shape` tensor over the axes where `reduce[d]` is true (kept as size 1).
    fn sum_axes(&self, x: &Storage, shape: &[usize], reduce: &[bool]) -> Result<Storage>;

    fn conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage>;
    fn conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads>;
    fn conv_transpose2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage>;
    fn conv_transpose2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads>;

    /// LayerNorm over the last `dim` of `rows × dim`.
    fn layer_norm(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut>;
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        g: &Storage,
        saved: (&Storage, &Storage),
        dy: &Storage,
    ) -> Result<NormGrads>;
    /// SAM's LayerNorm2d: `[n, c, hw]` normalised over `c`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm2d(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        g: &Storage,
        b: &Storage,
        eps: f32,
    ) -> Result<NormOut>;
    #[allow(clippy::too_many_arguments)]
    fn layer_norm2d_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        g: &Storage,
        saved: (&Storage, &Storage),
        dy: &Storage,
    ) -> Result<NormGrads>;

    /// Returns `(out, lse)`.
    fn attention(
        &self,
        dims: AttnDims,
        q: &Storage,
        k: &Storage,
        v: &Storage,
        scale: f32,
        rel: Option<RelPos>,
    ) -> Result<(Storage, Storage)>;
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<AttnGrads>;

    /// Inference attention with a `[heads, nq, nk]` bias table (TinyViT's window attention):
    /// `softmax((q·scale)·kᵀ + table[b % heads])·v`, returns a dense `out [bh, nq, dv]`. The
    /// operands are read in place through their [`HeadView`]s. `Ok(None)` when the backend has
    /// no fused kernel for it; the caller then composes matmul and softmax.
    #[allow(clippy::too_many_arguments)]
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
        let _ = (dims, q, k, v, scale, table, heads);
        Ok(None)
    }

    fn softmax(&self, rows: usize, dim: usize, x: &Storage) -> Result<Storage>;
    /// Softmax of `x + bias` over rows of `dim`, `bias` a `[bias_rows, dim]` table repeated over
    /// the rows (`rows` a multiple of `bias_rows`); inference only. Default: add, then softmax.
    fn softmax_bias(
        &self,
        rows: usize,
        dim: usize,
        x: &Storage,
        bias: &Storage,
        bias_rows: usize,
    ) -> Result<Storage> {
        let reps = rows / bias_rows.max(1);
        let vx = View {
            shape: vec![reps, bias_rows, dim],
            strides: vec![bias_rows * dim, dim, 1],
            offset: 0,
        };
        let vb = View {
            shape: vec![reps, bias_rows, dim],
            strides: vec![0, dim, 1],
            offset: 0,
        };
        let s = self.binary(Binary::Add, x, &vx, bias, &vb)?;
        self.softmax(rows, dim, &s)
    }
    fn softmax_backward(
        &self,
        rows: usize,
        dim: usize,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage>;

    /// Bilinear resize of `[planes, h, w]` to `[planes, oh, ow]` (align_corners=False).
    fn bilinear(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        x: &Storage,
    ) -> Result<Storage>;
    fn bilinear_backward(
        &self,
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        dy: &Storage,
    ) -> Result<Storage>;

    // ---- depthwise conv and batch norm (TinyViT / LiteMedSAM). The defaults run the CPU kernels
    // on host copies, so a device backend works unchanged and may override them for speed. ----

    /// Depthwise conv2d (`groups = c_in = c_out`, weight `[c, 1, kh, kw]`).
    /// Depthwise conv on channels-last buffers (x `[n, h, w, c]` → `[n, oh, ow, c]`, weight
    /// `[c, 1, kh, kw]`), then GELU if `gelu`; inference only. The default transposes around
    /// [`Backend::depthwise_conv2d`].
    fn depthwise_conv2d_nhwc(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        gelu: bool,
    ) -> Result<Storage> {
        let (c, hw) = (g.c_in, g.h * g.w);
        let nchw = View {
            shape: vec![g.n, c, g.h, g.w],
            strides: vec![hw * c, 1, g.w * c, c],
            offset: 0,
        };
        let xn = self.materialize(x, &nchw)?;
        let y = if gelu {
            self.depthwise_conv2d_gelu(g, &xn, w, bias)?
        } else {
            self.depthwise_conv2d(g, &xn, w, bias)?
        };
        let (oh, ow) = g.out_hw();
        let nhwc = View {
            shape: vec![g.n, oh, ow, c],
            strides: vec![c * oh * ow, ow, 1, oh * ow],
            offset: 0,
        };
        self.materialize(&y, &nhwc)
    }

    /// TinyViT's MBConv block for inference (BatchNorm folded), on NCHW `x`:
    /// `gelu(W3·gelu(dw3×3(gelu(W1·x + b1)) + b2) + b3 + x)`; `w = [w1, b1, w2, b2, w3, b3]`.
    /// `Ok(None)` when the backend has no fused kernel; the caller then runs the ops one by one.
    fn mbconv(
        &self,
        dims: medsam_kernels::mbconv::MbConvDims,
        x: &Storage,
        w: [&Storage; 6],
    ) -> Result<Option<Storage>> {
        let _ = (dims, x, w);
        Ok(None)
    }

    /// `gelu(depthwise_conv2d(..))` for inference; backends may fuse the activation.
    fn depthwise_conv2d_gelu(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let y = self.depthwise_conv2d(g, x, w, bias)?;
        self.unary(Unary::Gelu, &y)
    }
    fn depthwise_conv2d(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let (x, w) = (self.download(x)?, self.download(w)?);
        let bias = bias.map(|b| self.download(b)).transpose()?;
        let (oh, ow) = g.out_hw();
        let mut y = vec![0.0; g.n * g.c_out * oh * ow];
        medsam_kernels::depthwise::depthwise_forward(g, &x, &w, bias.as_deref(), &mut y);
        self.upload(&y)
    }
    fn depthwise_conv2d_backward(
        &self,
        g: Conv2dGeom,
        x: &Storage,
        w: &Storage,
        dy: &Storage,
        bias: bool,
    ) -> Result<ConvGrads> {
        let (x, w, dy) = (self.download(x)?, self.download(w)?, self.download(dy)?);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        let mut db = bias.then(|| vec![0.0; g.c_out]);
        medsam_kernels::depthwise::depthwise_backward_input(g, &w, &dy, &mut dx);
        medsam_kernels::depthwise::depthwise_backward_weight(
            g,
            &x,
            &dy,
            &mut dw,
            db.as_deref_mut(),
        );
        Ok(ConvGrads {
            dx: self.upload(&dx)?,
            dw: self.upload(&dw)?,
            dbias: db.map(|d| self.upload(&d)).transpose()?,
        })
    }
    /// Per-channel batch mean and biased variance of `[n, c, hw]`: `(mean, var)`, each `[c]`.
    fn batch_norm_stats(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
    ) -> Result<(Storage, Storage)> {
        let x = self.download(x)?;
        let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
        medsam_kernels::batchnorm::stats(n, c, hw, &x, &mut m, &mut v);
        Ok((self.upload(&m)?, self.upload(&v)?))
    }
    /// `y = (x - mean)·rstd·gamma + beta` per channel of `[n, c, hw]`.
    #[allow(clippy::too_many_arguments)]
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
        let (x, g, b) = (
            self.download(x)?,
            self.download(gamma)?,
            self.download(beta)?,
        );
        let (m, r) = (self.download(stats.0)?, self.download(stats.1)?);
        let mut y = vec![0.0; x.len()];
        medsam_kernels::batchnorm::apply(n, c, hw, &x, &g, &b, &m, &r, &mut y);
        self.upload(&y)
    }
    /// Backward of `batch_norm_apply`; `batch_stats`: mean/rstd were the batch's (training mode).
    #[allow(clippy::too_many_arguments)]
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
        let (x, g, dy) = (self.download(x)?, self.download(gamma)?, self.download(dy)?);
        let (m, r) = (self.download(stats.0)?, self.download(stats.1)?);
        let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        medsam_kernels::batchnorm::backward(
            n,
            c,
            hw,
            &x,
            &g,
            &m,
            &r,
            &dy,
            batch_stats,
            &mut dx,
            &mut dg,
            &mut db,
        );
        Ok(NormGrads {
            dx: self.upload(&dx)?,
            dgamma: self.upload(&dg)?,
            dbeta: self.upload(&db)?,
        })
    }

    /// One AdamW update in place: `param`, `exp_avg`, `exp_avg_sq` are updated from `grad`.
    fn adamw(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<()>;
}

/// The backend serving a device. NPU backends are created on first use.
pub fn backend(device: Device) -> Result<Arc<dyn Backend>> {
    match device {
        Device::Cpu => Ok(cpu::CpuBackend::shared()),
        Device::Npu(id) => npu_backend(id),
    }
}

/// `npu:id`: the cached Ascend backend (feature `ascend`), or an error naming the device and why
/// it cannot be used (runtime not found, no such device, built without the feature).
#[cfg(feature = "ascend")]
fn npu_backend(id: u32) -> Result<Arc<dyn Backend>> {
    ascend::npu_backend(id)
}

#[cfg(not(feature = "ascend"))]
fn npu_backend(id: u32) -> Result<Arc<dyn Backend>> {
    Err(Error::Device {
        device: format!("npu:{id}"),
        detail: "the Ascend backend is not available in this build (enable the `ascend` feature)"
            .into(),
    })
}
