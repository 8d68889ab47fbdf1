//! Caching device allocator over `aclrtMalloc`/`aclrtFree`, device buffers and host copies.
//!
//! Sizes are rounded up to a size class (512 B granules below 1 MiB, then 8 classes per
//! power of two, so at most 12.5 % waste) and freed blocks go to a per-class free list
//! instead of `aclrtFree`. Reuse is stream-ordered like PyTorch's caching allocator: a block
//! freed on the host may be handed out again while earlier work that used it is still queued
//! on the *same* stream. Work on other streams must be ordered with events, or the buffer kept
//! with [`super::Stream::retain_until_sync`].

use super::error::{AscendError, Result};
use super::runtime::{acl, AscendRuntime, Device, Stream};
use crate::sys::types::*;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// Element types that can live in device buffers, with their ACL and HCCL dtypes.
///
/// # Safety
/// Implementors must be plain old data (no padding, any bit pattern valid).
pub unsafe trait Element: Copy + Default + Send + Sync + 'static {
    /// `aclDataType` of this element.
    const ACL: aclDataType;
    /// `HcclDataType`, if HCCL supports it.
    const HCCL: Option<HcclDataType>;
}
macro_rules! element {
    ($t:ty, $acl:expr, $hccl:expr) => {
        unsafe impl Element for $t {
            const ACL: aclDataType = $acl;
            const HCCL: Option<HcclDataType> = $hccl;
        }
    };
}
element!(f32, ACL_FLOAT, Some(HCCL_DATA_TYPE_FP32));
element!(f64, ACL_DOUBLE, Some(HCCL_DATA_TYPE_FP64));
element!(i8, ACL_INT8, Some(HCCL_DATA_TYPE_INT8));
element!(u8, ACL_UINT8, Some(HCCL_DATA_TYPE_UINT8));
element!(i16, ACL_INT16, Some(HCCL_DATA_TYPE_INT16));
element!(i32, ACL_INT32, Some(HCCL_DATA_TYPE_INT32));
element!(i64, ACL_INT64, Some(HCCL_DATA_TYPE_INT64));

/// Size class of a request: the number of bytes actually allocated.
pub fn size_class(bytes: usize) -> usize {
    const GRANULE: usize = 512;
    let b = bytes.max(1);
    if b <= 1 << 20 {
        return b.div_ceil(GRANULE) * GRANULE;
    }
    let step = b.next_power_of_two() / 8;
    b.div_ceil(step) * step
}

/// Counters of one allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// `aclrtMalloc` calls made.
    pub device_mallocs: u64,
    /// `aclrtFree` calls made.
    pub device_frees: u64,
    /// Requests served from the free lists.
    pub cache_hits: u64,
    /// Bytes currently handed out (size classes).
    pub bytes_in_use: usize,
    /// Bytes sitting in the free lists.
    pub bytes_cached: usize,
}

#[derive(Default)]
struct Pools {
    free: BTreeMap<usize, Vec<usize>>, // size class -> device addresses
    stats: AllocStats,
}

/// Per-device caching allocator (see the module docs).
pub struct CachingAllocator {
    pools: Mutex<Pools>,
}

impl CachingAllocator {
    pub(crate) fn new() -> Self {
        CachingAllocator {
            pools: Mutex::new(Pools::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current counters.
    pub fn stats(&self) -> AllocStats {
        self.lock().stats
    }

    fn take(&self, dev: &Device, bytes: usize) -> Result<(*mut c_void, usize)> {
        let class = size_class(bytes);
        {
            let mut p = self.lock();
            if let Some(addr) = p.free.get_mut(&class).and_then(|v| v.pop()) {
                p.stats.cache_hits += 1;
                p.stats.bytes_cached -= class;
                p.stats.bytes_in_use += class;
                return Ok((addr as *mut c_void, class));
            }
        }
        dev.bind_thread()?;
        let rt = dev.runtime();
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let first = acl!(rt, aclrtMalloc(&mut ptr, class, ACL_MEM_MALLOC_HUGE_FIRST));
        if let Err(e) = first {
            // Out of memory: give the cache back to the device and try once more.
            if self.lock().stats.bytes_cached == 0 {
                return Err(e);
            }
            self.release_all(rt);
            acl!(rt, aclrtMalloc(&mut ptr, class, ACL_MEM_MALLOC_HUGE_FIRST))?;
        }
        let mut p = self.lock();
        p.stats.device_mallocs += 1;
        p.stats.bytes_in_use += class;
        Ok((ptr, class))
    }

    fn give_back(&self, ptr: *mut c_void, class: usize) {
        let mut p = self.lock();
        p.stats.bytes_in_use -= class;
        p.stats.bytes_cached += class;
        p.free.entry(class).or_default().push(ptr as usize);
    }

    /// `aclrtFree` every cached block (the caller's thread must have the context bound).
    pub(crate) fn release_all(&self, rt: &'static AscendRuntime) {
        let blocks: Vec<(usize, usize)> = {
            let mut p = self.lock();
            let v = std::mem::take(&mut p.free)
                .into_iter()
                .flat_map(|(c, addrs)| addrs.into_iter().map(move |a| (c, a)))
                .collect::<Vec<_>>();
            p.stats.bytes_cached = 0;
            v
        };
        for (_, a) in &blocks {
            let _ = acl!(rt, aclrtFree(a.to_owned() as *mut c_void));
        }
        self.lock().stats.device_frees += blocks.len() as u64;
    }

    /// Return all cached blocks to the device.
    pub fn empty_cache(&self, dev: &Device) -> Result<()> {
        dev.bind_thread()?;
        self.release_all(dev.runtime());
        Ok(())
    }
}

/// A block of device memory from the device's [`CachingAllocator`]; returned to the cache on
/// drop. Its contents are uninitialised until written.
pub struct DeviceBuffer {
    dev: Device,
    ptr: *mut c_void,
    len: usize,
    class: usize,
}

// SAFETY: a device address is usable from any thread with the context bound.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.dev.allocator().give_back(self.ptr, self.class);
    }
}

impl Device {
    /// Allocate `bytes` (at least 1) from the caching allocator.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let (ptr, class) = self.allocator().take(self, bytes)?;
        Ok(DeviceBuffer {
            dev: self.clone(),
            ptr,
            len: bytes,
            class,
        })
    }
    /// Allocate room for `n` elements of `T`.
    pub fn alloc_elems<T: Element>(&self, n: usize) -> Result<DeviceBuffer> {
        self.alloc(n * std::mem::size_of::<T>())
    }
    /// Allocate and fill from host data (synchronous copy).
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<DeviceBuffer> {
        let mut b = self.alloc_elems::<T>(data.len())?;
        b.copy_from_host(data)?;
        Ok(b)
    }
}

impl DeviceBuffer {
    /// Device address.
    pub fn as_ptr(&self) -> *mut c_void {
        self.ptr
    }
    /// Requested size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the requested size is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes actually reserved (size class).
    pub fn capacity(&self) -> usize {
        self.class
    }
    /// The owning device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn check_len<T>(&self, n: usize) -> Result<usize> {
        let bytes = n.saturating_mul(std::mem::size_of::<T>());
        if bytes > self.len {
            return Err(AscendError::Invalid(format!(
                "copy of {bytes} bytes does not fit a {}-byte device buffer",
                self.len
            )));
        }
        Ok(bytes)
    }

    /// Synchronous host → device copy into the start of the buffer (`aclrtMemcpy`). It does
    /// not wait for queued stream work: synchronise first if a stream still uses the buffer.
    pub fn copy_from_host<T: Element>(&mut self, src: &[T]) -> Result<()> {
        let bytes = self.check_len::<T>(src.len())?;
        self.dev.bind_thread()?;
        acl!(
            self.dev.runtime(),
            aclrtMemcpy(
                self.ptr,
                self.len,
                src.as_ptr().cast(),
                bytes,
                ACL_MEMCPY_HOST_TO_DEVICE
            )
        )
    }

    /// Synchronous device → host copy from the start of the buffer (`aclrtMemcpy`). Does not
    /// wait for queued work; use [`DeviceBuffer::read`] after stream work.
    pub fn copy_to_host<T: Element>(&self, dst: &mut [T]) -> Result<()> {
        let bytes = self.check_len::<T>(dst.len())?;
        self.dev.bind_thread()?;
        acl!(
            self.dev.runtime(),
            aclrtMemcpy(
                dst.as_mut_ptr().cast(),
                bytes,
                self.ptr,
                bytes,
                ACL_MEMCPY_DEVICE_TO_HOST
            )
        )
    }

    /// Synchronise `stream`, then copy the first `n` elements to a new host vector.
    pub fn read<T: Element>(&self, stream: &Stream, n: usize) -> Result<Vec<T>> {
        stream.synchronize()?;
        let mut v = vec![T::default(); n];
        self.copy_to_host(&mut v)?;
        Ok(v)
    }

    /// Asynchronous device → device copy of `bytes` from `src` on `stream`.
    pub fn copy_from_device_async(
        &mut self,
        src: &DeviceBuffer,
        bytes: usize,
        stream: &Stream,
    ) -> Result<()> {
        if bytes > self.len || bytes > src.len {
            return Err(AscendError::Invalid(format!(
                "device copy of {bytes} bytes exceeds a buffer ({} / {})",
                src.len, self.len
            )));
        }
        acl!(
            self.dev.runtime(),
            aclrtMemcpyAsync(
                self.ptr,
                self.len,
                src.ptr,
                bytes,
                ACL_MEMCPY_DEVICE_TO_DEVICE,
                stream.raw()
            )
        )
    }

    /// Asynchronous byte fill on `stream` (`aclrtMemsetAsync`).
    pub fn fill_bytes_async(&mut self, value: u8, stream: &Stream) -> Result<()> {
        acl!(
            self.dev.runtime(),
            aclrtMemsetAsync(self.ptr, self.len, value as i32, self.len, stream.raw())
        )
    }
}
