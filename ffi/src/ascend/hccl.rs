//! HCCL communicator: root info from rank 0, exchanged through a caller-provided bootstrap
//! (MPI broadcast, TCP store, file ...), `HcclCommInitRootInfo` on every rank, then
//! collectives enqueued on a stream (asynchronous: synchronise the stream before reading).
//! Flow and semantics: research notes §4 (hicann/hcomm `HcclGetRootInfo.md`,
//! `HcclCommInitRootInfo.md`; hicann/hccl `HcclAllReduce.md`).

use super::alloc::{DeviceBuffer, Element};
use super::error::{hccl_result_name, AscendError, Result};
use super::runtime::{AscendRuntime, Device, Stream};
use crate::sys::hccl::HcclLib;
use crate::sys::types::*;
use std::ffi::CStr;

/// Size of the root-info blob (`HCCL_ROOT_INFO_BYTES`).
pub const ROOT_INFO_BYTES: usize = 4108;

/// Reduction of [`HcclComm::all_reduce`]. HCCL has no average: sum, then scale by 1/world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Product.
    Prod,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

impl ReduceOp {
    fn raw(self) -> HcclReduceOp {
        match self {
            ReduceOp::Sum => HCCL_REDUCE_SUM,
            ReduceOp::Prod => HCCL_REDUCE_PROD,
            ReduceOp::Max => HCCL_REDUCE_MAX,
            ReduceOp::Min => HCCL_REDUCE_MIN,
        }
    }
}

fn lib(rt: &AscendRuntime) -> Result<&HcclLib> {
    rt.hccl.as_ref().ok_or(AscendError::NotFound(
        "libhccl.so was not found next to libascendcl.so".into(),
    ))
}

macro_rules! hccl {
    ($rt:expr, $f:ident ( $($a:expr),* $(,)? )) => {{
        let rt: &AscendRuntime = $rt;
        match lib(rt) {
            Err(e) => Err(e),
            Ok(l) => match l.$f.as_ref() {
                Err(_) => Err(AscendError::MissingSymbol { func: stringify!($f), lib: "libhccl.so" }),
                #[allow(clippy::macro_metavars_in_unsafe)]
                Ok(f) => check(l, stringify!($f), unsafe { f($($a),*) }),
            },
        }
    }};
}

fn check(l: &HcclLib, func: &'static str, code: HcclResult) -> Result<()> {
    if code == HCCL_SUCCESS {
        return Ok(());
    }
    let text = l
        .HcclGetErrorString
        .as_ref()
        .ok()
        .map(|f| unsafe { f(code) })
        .filter(|p| !p.is_null())
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| hccl_result_name(code).to_string());
    Err(AscendError::Hccl { func, code, text })
}

/// A communicator of `size` ranks, destroyed on drop.
pub struct HcclComm {
    dev: Device,
    raw: crate::sys::types::HcclComm,
    rank: u32,
    size: u32,
}

// SAFETY: ops of one communicator must be issued serially (we take &self per call and the
// caller owns ordering); the handle itself may move between threads of the same context.
unsafe impl Send for HcclComm {}

impl HcclComm {
    /// `HcclGetRootInfo` (root rank only, after the device was set).
    pub fn root_info(dev: &Device) -> Result<[u8; ROOT_INFO_BYTES]> {
        dev.bind_thread()?;
        let mut ri = HcclRootInfo {
            internal: [0; ROOT_INFO_BYTES],
        };
        hccl!(dev.runtime(), HcclGetRootInfo(&mut ri))?;
        Ok(ri.internal.map(|c| c as u8))
    }

    /// Create the communicator for `rank` of `size`. `bootstrap` is a broadcast from rank 0:
    /// on rank 0 the buffer holds the root info to send; on the other ranks it must be filled
    /// with the bytes rank 0 sent (e.g. `MPI_Bcast`, a TCP store get). Called exactly once.
    pub fn init<B>(dev: &Device, rank: u32, size: u32, bootstrap: B) -> Result<Self>
    where
        B: FnOnce(&mut [u8; ROOT_INFO_BYTES]) -> std::result::Result<(), String>,
    {
        if size == 0 || rank >= size {
            return Err(AscendError::Invalid(format!("rank {rank} of {size}")));
        }
        let mut bytes = if rank == 0 {
            Self::root_info(dev)?
        } else {
            [0u8; ROOT_INFO_BYTES]
        };
        bootstrap(&mut bytes)
            .map_err(|e| AscendError::Invalid(format!("HCCL root-info bootstrap failed: {e}")))?;
        let ri = HcclRootInfo {
            internal: bytes.map(|b| b as std::ffi::c_char),
        };
        dev.bind_thread()?;
        let mut raw: crate::sys::types::HcclComm = std::ptr::null_mut();
        hccl!(
            dev.runtime(),
            HcclCommInitRootInfo(size, &ri, rank, &mut raw)
        )?;
        Ok(HcclComm {
            dev: dev.clone(),
            raw,
            rank,
            size,
        })
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }
    /// Number of ranks.
    pub fn size(&self) -> u32 {
        self.size
    }
    /// `HcclGetRankSize`, as the library sees it.
    pub fn query_size(&self) -> Result<u32> {
        let mut n = 0u32;
        hccl!(self.dev.runtime(), HcclGetRankSize(self.raw, &mut n))?;
        Ok(n)
    }

    fn dtype<T: Element>() -> Result<HcclDataType> {
        T::HCCL.ok_or_else(|| {
            AscendError::Invalid(format!(
                "{} is not an HCCL data type",
                std::any::type_name::<T>()
            ))
        })
    }
    /// The dtype of a reduction. `HcclAllReduce` (and the other reducing collectives) on
    /// Atlas A2/A3 documents int8/16/32/64, fp16, fp32 and bf16 only (hicann/hccl
    /// `docs/zh/api_ref/comm_op_interface/HcclAllReduce.md`): f64 and u8 are refused here,
    /// before the call, instead of failing inside HCCL.
    fn reduce_dtype<T: Element>() -> Result<HcclDataType> {
        let dt = Self::dtype::<T>()?;
        if dt == HCCL_DATA_TYPE_FP64 || dt == HCCL_DATA_TYPE_UINT8 {
            return Err(AscendError::Unsupported(format!(
                "HcclAllReduce of {} elements: HCCL reduces int8/16/32/64, fp16, fp32 and bf16 \
                 only",
                std::any::type_name::<T>()
            )));
        }
        Ok(dt)
    }
    fn fits<T>(buf: &DeviceBuffer, count: usize, what: &str) -> Result<()> {
        if count * std::mem::size_of::<T>() > buf.len() {
            return Err(AscendError::Invalid(format!(
                "{what}: {count} elements exceed a {}-byte buffer",
                buf.len()
            )));
        }
        Ok(())
    }

    /// All-reduce `count` elements from `send` into `recv` on `stream`.
    pub fn all_reduce<T: Element>(
        &self,
        send: &DeviceBuffer,
        recv: &mut DeviceBuffer,
        count: usize,
        op: ReduceOp,
        stream: &Stream,
    ) -> Result<()> {
        Self::fits::<T>(send, count, "all_reduce send")?;
        Self::fits::<T>(recv, count, "all_reduce recv")?;
        self.all_reduce_raw::<T>((send.as_ptr(), recv.as_ptr()), count, op.raw(), stream)
    }

    /// `HcclAllReduce` of `count` elements of `T` from `send` into `recv` (may be the same).
    fn all_reduce_raw<T: Element>(
        &self,
        (send, recv): (*mut std::ffi::c_void, *mut std::ffi::c_void),
        count: usize,
        op: HcclReduceOp,
        stream: &Stream,
    ) -> Result<()> {
        let dt = Self::reduce_dtype::<T>()?;
        hccl!(
            self.dev.runtime(),
            HcclAllReduce(send, recv, count as u64, dt, op, self.raw, stream.raw())
        )
    }

    /// In-place sum all-reduce (gradient sync; scale by 1/size yourself). The buffer is taken by
    /// shared reference because the memory written is device memory the handle only points to:
    /// ordering with other users of that memory is the stream's business, not Rust's borrows.
    pub fn all_reduce_sum_inplace<T: Element>(
        &self,
        buf: &DeviceBuffer,
        count: usize,
        stream: &Stream,
    ) -> Result<()> {
        Self::fits::<T>(buf, count, "all_reduce")?;
        let p = buf.as_ptr();
        self.all_reduce_raw::<T>((p, p), count, HCCL_REDUCE_SUM, stream)
    }

    /// Broadcast `count` elements of `buf` from `root`.
    pub fn broadcast<T: Element>(
        &self,
        buf: &mut DeviceBuffer,
        count: usize,
        root: u32,
        stream: &Stream,
    ) -> Result<()> {
        Self::fits::<T>(buf, count, "broadcast")?;
        let dt = Self::dtype::<T>()?;
        hccl!(
            self.dev.runtime(),
            HcclBroadcast(buf.as_ptr(), count as u64, dt, root, self.raw, stream.raw())
        )
    }

    /// All-gather: every rank's `send_count` elements, in rank order, into `recv`.
    pub fn all_gather<T: Element>(
        &self,
        send: &DeviceBuffer,
        recv: &mut DeviceBuffer,
        send_count: usize,
        stream: &Stream,
    ) -> Result<()> {
        Self::fits::<T>(send, send_count, "all_gather send")?;
        Self::fits::<T>(recv, send_count * self.size as usize, "all_gather recv")?;
        let dt = Self::dtype::<T>()?;
        hccl!(
            self.dev.runtime(),
            HcclAllGather(
                send.as_ptr(),
                recv.as_ptr(),
                send_count as u64,
                dt,
                self.raw,
                stream.raw()
            )
        )
    }

    /// Barrier enqueued on `stream`.
    pub fn barrier(&self, stream: &Stream) -> Result<()> {
        hccl!(self.dev.runtime(), HcclBarrier(self.raw, stream.raw()))
    }
}

impl Drop for HcclComm {
    fn drop(&mut self) {
        if self.dev.bind_thread().is_ok() {
            let _ = hccl!(self.dev.runtime(), HcclCommDestroy(self.raw));
        }
    }
}
