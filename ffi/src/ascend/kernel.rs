//! Custom (Ascend C) kernels compiled offline into a device binary, launched without C++
//! host stubs: `aclrtBinaryLoadFromFile` → `aclrtBinaryGetFunction` → launch (signatures from
//! `acl/acl_rt.h`; flow from hicann/runtime `example/2_advanced_features/kernel/0_launch_kernel`).
//!
//! Kernel arguments: `aclrtLaunchKernel` takes `argsData` in **device** memory (every
//! hiascend doc version of it). We launch the way the runtime sample does —
//! `aclrtKernelArgsInit` / `aclrtKernelArgsAppend` / `aclrtKernelArgsFinalize` +
//! `aclrtLaunchKernelWithConfig` (host argument block, copied by the runtime) — and, on a
//! runtime without that API, upload the block to device memory and keep it alive until the
//! stream is synchronised. The test-only stand-in executes launches of the kernels it knows by
//! name (`tests/ascend_standin/src/kernels.rs`) with their host reference and refuses host
//! pointers as `argsData`; real device code needs real hardware.

use super::error::{AscendError, Result};
use super::runtime::{acl, Device, Stream};
use crate::sys::types::*;
use std::ffi::CString;
use std::path::Path;

/// A loaded device binary (`aclrtBinHandle`), unloaded on drop.
pub struct KernelBinary {
    dev: Device,
    handle: aclrtBinHandle,
}

// SAFETY: handles are process-wide.
unsafe impl Send for KernelBinary {}
unsafe impl Sync for KernelBinary {}

/// A kernel function in a [`KernelBinary`].
pub struct KernelFunction<'b> {
    bin: &'b KernelBinary,
    handle: aclrtFuncHandle,
}

impl KernelBinary {
    /// Load a device binary (e.g. from `ascendc_fatbin_library`) from a file.
    pub fn load_file(dev: &Device, path: &Path) -> Result<Self> {
        dev.bind_thread()?;
        let p = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| AscendError::Invalid(format!("path with NUL: {}", path.display())))?;
        let mut handle: aclrtBinHandle = std::ptr::null_mut();
        acl!(
            dev.runtime(),
            aclrtBinaryLoadFromFile(p.as_ptr(), std::ptr::null_mut(), &mut handle)
        )?;
        Ok(KernelBinary {
            dev: dev.clone(),
            handle,
        })
    }

    /// Look up a kernel (`extern "C" __global__ __aicore__` name) in the binary.
    pub fn function(&self, name: &str) -> Result<KernelFunction<'_>> {
        let n = CString::new(name)
            .map_err(|_| AscendError::Invalid(format!("kernel name with NUL: {name}")))?;
        let mut handle: aclrtFuncHandle = std::ptr::null_mut();
        acl!(
            self.dev.runtime(),
            aclrtBinaryGetFunction(self.handle, n.as_ptr(), &mut handle)
        )?;
        Ok(KernelFunction { bin: self, handle })
    }
}

impl Drop for KernelBinary {
    fn drop(&mut self) {
        if self.dev.bind_thread().is_ok() {
            let _ = acl!(self.dev.runtime(), aclrtBinaryUnLoad(self.handle));
        }
    }
}

impl KernelFunction<'_> {
    /// Launch on `stream` with `num_blocks` blocks. `args` is the packed argument block the
    /// kernel expects (device addresses as 8-byte values, then scalars, each naturally
    /// aligned), as built by [`KernelArgs`].
    pub fn launch(&self, num_blocks: u32, args: &KernelArgs, stream: &Stream) -> Result<()> {
        let rt = self.bin.dev.runtime();
        if rt.acl.aclrtKernelArgsInit.is_ok() && rt.acl.aclrtLaunchKernelWithConfig.is_ok() {
            match self.launch_with_config(num_blocks, args, stream) {
                // 207000 FEATURE_NOT_SUPPORT / 200001 API_NOT_SUPPORT: a runtime that exports the
                // argument API without supporting it; fall back to the uploaded block.
                Err(AscendError::Acl {
                    func: "aclrtKernelArgsInit",
                    code: 207000 | 200001,
                    ..
                }) => {}
                other => return other,
            }
        }
        self.launch_uploaded(num_blocks, args, stream)
    }

    /// `aclrtKernelArgsInit` → one `aclrtKernelArgsAppend` of the whole block (keeps our C
    /// layout) → `aclrtKernelArgsFinalize` → `aclrtLaunchKernelWithConfig(.., cfg NULL, ..)`.
    fn launch_with_config(
        &self,
        num_blocks: u32,
        args: &KernelArgs,
        stream: &Stream,
    ) -> Result<()> {
        let rt = self.bin.dev.runtime();
        let mut handle: aclrtArgsHandle = std::ptr::null_mut();
        acl!(rt, aclrtKernelArgsInit(self.handle, &mut handle))?;
        let mut bytes = args.bytes.clone();
        if !bytes.is_empty() {
            let mut param: aclrtParamHandle = std::ptr::null_mut();
            acl!(
                rt,
                aclrtKernelArgsAppend(handle, bytes.as_mut_ptr().cast(), bytes.len(), &mut param)
            )?;
        }
        acl!(rt, aclrtKernelArgsFinalize(handle))?;
        acl!(
            rt,
            aclrtLaunchKernelWithConfig(
                self.handle,
                num_blocks,
                stream.raw(),
                std::ptr::null_mut(),
                handle,
                std::ptr::null_mut()
            )
        )
    }

    /// `aclrtLaunchKernel` with the block uploaded to device memory (retained until sync).
    fn launch_uploaded(&self, num_blocks: u32, args: &KernelArgs, stream: &Stream) -> Result<()> {
        let dev = &self.bin.dev;
        let mut block = dev.alloc(args.bytes.len().max(8))?;
        block.copy_from_host::<u8>(&args.bytes)?;
        acl!(
            dev.runtime(),
            aclrtLaunchKernel(
                self.handle,
                num_blocks,
                block.as_ptr().cast_const(),
                args.bytes.len(),
                stream.raw()
            )
        )?;
        stream.retain_until_sync(block);
        Ok(())
    }
}

/// Packed kernel arguments (C struct layout: each value aligned to its size).
#[derive(Default, Clone, Debug)]
pub struct KernelArgs {
    bytes: Vec<u8>,
}

impl KernelArgs {
    /// Empty argument block.
    pub fn new() -> Self {
        Self::default()
    }
    /// An argument block laid out elsewhere (e.g. by the C++ launch glue).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        KernelArgs { bytes }
    }
    fn push_raw(&mut self, v: &[u8], align: usize) -> &mut Self {
        while !self.bytes.len().is_multiple_of(align) {
            self.bytes.push(0);
        }
        self.bytes.extend_from_slice(v);
        self
    }
    /// A device address (`GM_ADDR`).
    pub fn ptr(&mut self, buf: &super::alloc::DeviceBuffer) -> &mut Self {
        self.push_raw(&(buf.as_ptr() as u64).to_ne_bytes(), 8)
    }
    /// A `uint32_t`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.push_raw(&v.to_ne_bytes(), 4)
    }
    /// An `int64_t`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.push_raw(&v.to_ne_bytes(), 8)
    }
    /// A `float`.
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.push_raw(&v.to_ne_bytes(), 4)
    }
    /// The packed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}
