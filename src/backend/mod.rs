//! The device seam. Every tensor operation reaches compute through [`Backend`]: a device is added by
//! implementing this trait (CPU here; the Ascend NPU in `backend::ascend`), never by touching model
//! code. Backends work on whole buffers ([`Storage`]) plus explicit geometry; views, broadcasting
//! and autograd live above this layer, in `tensor` and `ops`.

#[cfg(feature = "ascend")]
pub mod ascend;
pub mod cpu;
mod host;
pub mod ops;

pub use host::{mmap_disabled, HostBuf, MappedF32};

pub use medsam_kernels::attention::rel_pos::RelPosDims;
pub use ops::{
    AdamWSlots, AttentionOps, AttnArgs, AttnGradIn, AttnSaved, BiasTableArgs, ChannelDims,
    ConvGradIn, ConvIn, ConvOps, Epilogue, GemmArgs, HeadQkv, LinalgOps, MemoryOps, NormGradIn,
    NormIn, NormOps, NormStats, OptimOps, PointwiseOps, Qkv, RelPosIn, ResizeDims, RowDims,
    ViewAttnArgs,
};

use crate::error::{Error, Result};
use medsam_kernels::attention::AttnDims;
use medsam_kernels::conv::Conv2dGeom;
use medsam_kernels::gemm::{GemmDims, Layout, Precision};
pub use medsam_kernels::window::RowAt;
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
///
/// Host buffers are `Cpu` (owned) or `Mapped` (read-only, in place in a checkpoint file's
/// mapping); read them through [`Storage::cpu`], which covers both. A write to a `Mapped` buffer
/// first turns it into an owned `Cpu` copy (copy-on-write).
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    Mapped(MappedF32),
    Device(Box<dyn DeviceBuffer>),
}

impl From<HostBuf> for Storage {
    fn from(b: HostBuf) -> Self {
        match b {
            HostBuf::Owned(v) => Storage::Cpu(v),
            HostBuf::Mapped(m) => Storage::Mapped(m),
        }
    }
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            Storage::Mapped(m) => m.len(),
            Storage::Device(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The host slice of a CPU buffer (owned or mapped).
    pub fn cpu(&self) -> Result<&[f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
            Storage::Mapped(m) => Ok(m),
            Storage::Device(_) => Err(Error::Other(
                "expected a CPU buffer, found a device buffer".into(),
            )),
        }
    }

    /// Whether this is a host buffer read in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped(_))
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
    /// Rows picked through an index instead (`batch_stride` then unused).
    pub gather: Option<GatherView<'a>>,
}

/// The rows of a [`HeadView`] picked through an index, for windows of a projection read in
/// place: row `i` of batch entry `bi` is row `index[bi·block + i]` of the operand (`offset +
/// row·row_stride`), or, for [`RowAt::FILL`], the row at `fill_offset` in `fill`; head `h`'s
/// values start `h·head_stride` into either.
#[derive(Clone, Copy)]
pub struct GatherView<'a> {
    pub index: &'a [RowAt],
    pub block: usize,
    pub fill: &'a Storage,
    pub fill_offset: usize,
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

pub use medsam_kernels::adamw::AdamWStep;

/// Everything a device must provide: every op family, plus which device it is.
pub trait Backend:
    MemoryOps + LinalgOps + PointwiseOps + ConvOps + NormOps + AttentionOps + OptimOps + Send + Sync
{
    fn device(&self) -> Device;
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
