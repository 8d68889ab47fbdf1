//! Library loading, ACL init, devices (with their contexts), streams and events.

use super::alloc::CachingAllocator;
use super::error::{acl_error_class, AscendError, Result};
use crate::aclnn::{NnopBase, OpApi};
use crate::sys::ascendcl::AscendClLib;
use crate::sys::hccl::HcclLib;
use crate::sys::types::*;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Environment variable naming the one directory to load the CANN libraries from. When set,
/// no other location is tried (used by the stand-in tests; also handy to pin one CANN install).
pub const LIB_DIR_ENV: &str = "MEDSAM_ASCEND_LIB_DIR";

/// The aclnn operator libraries, all searched (an operator is taken from the first that
/// exports it): `libopapi.so` of CANN 8.x, the split op API of newer releases
/// (`libopapi_{math,nn,cv,transformer,legacy}.so`, searched by torch_npu/op-plugin
/// `GetOpApiFuncAddr` too), older split names, and custom operators.
pub const OPAPI_LIBS: [&str; 10] = [
    "libopapi.so",
    "libopapi_math.so",
    "libopapi_nn.so",
    "libopapi_cv.so",
    "libopapi_transformer.so",
    "libopapi_legacy.so",
    "libaclnn_ops_train.so",
    "libaclnn_ops_infer.so",
    "libaclnn_math.so",
    "libcust_opapi.so",
];

/// A CANN release as `aclsysGetCANNVersion(ACL_PKG_NAME_CANN)` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CannVersion {
    /// Major version (7, 8, 9 ...).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// The full text, e.g. `8.1.RC1`.
    pub text: String,
}

impl CannVersion {
    /// Parse `major.minor[.rest]` (e.g. `8.1.RC1`, `7.0.0`).
    pub fn parse(text: &str) -> Option<CannVersion> {
        let mut it = text.trim().split('.');
        let major = it.next()?.trim().parse().ok()?;
        let minor = it.next().and_then(|m| m.trim().parse().ok()).unwrap_or(0);
        Some(CannVersion {
            major,
            minor,
            text: text.trim().to_string(),
        })
    }
}

/// Calls a `libascendcl.so` function through the bindgen table and maps its `aclError`.
macro_rules! acl {
    ($rt:expr, $f:ident ( $($a:expr),* $(,)? )) => {{
        let rt: &$crate::ascend::AscendRuntime = $rt;
        match rt.acl.$f.as_ref() {
            Err(_) => Err($crate::ascend::AscendError::MissingSymbol {
                func: stringify!($f),
                lib: "libascendcl.so",
            }),
            #[allow(clippy::macro_metavars_in_unsafe)]
            Ok(f) => rt.check(stringify!($f), unsafe { f($($a),*) }),
        }
    }};
}
pub(crate) use acl;

/// The loaded CANN libraries. Created once per process ([`AscendRuntime::load`]) and never
/// unloaded: CANN keeps global state and `dlclose` of it is not supported.
pub struct AscendRuntime {
    /// `libascendcl.so` (bindgen table).
    pub acl: AscendClLib,
    /// `libhccl.so`, if present.
    pub hccl: Option<HcclLib>,
    /// `libnnopbase.so` functions (aclnn tensor descriptors), if present.
    pub nnopbase: Option<NnopBase>,
    /// aclnn operator functions ([`OPAPI_LIBS`]), if any of them is present.
    pub opapi: Option<OpApi>,
    /// Paths actually opened, for diagnostics.
    pub loaded: Vec<PathBuf>,
    _keep: Vec<libloading::Library>,
}

// SAFETY: the tables hold function pointers and library handles only; CANN's C API is
// thread-safe at this level (per-thread state is the bound context).
unsafe impl Send for AscendRuntime {}
unsafe impl Sync for AscendRuntime {}

/// Directories to try, in order. `None` means "by soname through the dynamic loader"
/// (`LD_LIBRARY_PATH` from `set_env.sh`).
pub fn default_search_dirs() -> Vec<Option<PathBuf>> {
    if let Some(d) = std::env::var_os(LIB_DIR_ENV) {
        return vec![Some(PathBuf::from(d))];
    }
    // Newer releases install the libraries under `<arch>-linux/lib64` only.
    let arch = format!("{}-linux", std::env::consts::ARCH);
    let mut roots: Vec<PathBuf> = ["ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    roots.push(PathBuf::from("/usr/local/Ascend/ascend-toolkit/latest"));
    let mut v = vec![None];
    for r in roots {
        for d in [r.join("lib64"), r.join(&arch).join("lib64")] {
            if !v.contains(&Some(d.clone())) {
                v.push(Some(d));
            }
        }
    }
    v
}

fn describe(dirs: &[Option<PathBuf>]) -> String {
    dirs.iter()
        .map(|d| match d {
            None => "the default library path (LD_LIBRARY_PATH)".to_string(),
            Some(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn open_one(
    dirs: &[Option<PathBuf>],
    name: &str,
) -> std::result::Result<(libloading::Library, PathBuf), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    let mut errs = Vec::new();
    for d in dirs {
        let path = match d {
            None => PathBuf::from(name),
            Some(dir) => dir.join(name),
        };
        if d.is_some() && !path.exists() {
            continue;
        }
        // SAFETY: opening a shared library runs its initialisers; CANN libraries are meant to
        // be loaded this way (torch_npu dlopens libopapi.so the same way).
        match unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(l) => return Ok((l.into(), path)),
            Err(e) => errs.push(e.to_string()),
        }
    }
    Err(format!(
        "tried {name} in {}{}",
        describe(dirs),
        if errs.is_empty() {
            String::new()
        } else {
            format!(" ({})", errs.join("; "))
        }
    ))
}

impl AscendRuntime {
    /// Load the CANN libraries (see [`default_search_dirs`]) and `aclInit` once per process.
    /// Later calls return the same runtime. On a machine without CANN this returns
    /// `AscendError::NotFound("tried libascendcl.so in ...")`, it never panics.
    pub fn load() -> Result<&'static AscendRuntime> {
        static RT: Mutex<Option<&'static AscendRuntime>> = Mutex::new(None);
        let mut g = RT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = *g {
            return Ok(rt);
        }
        let rt: &'static AscendRuntime = Box::leak(Box::new(Self::open(&default_search_dirs())?));
        rt.init()?;
        *g = Some(rt);
        Ok(rt)
    }

    /// Open the libraries from the given directories without caching and without `aclInit`
    /// (prefer [`AscendRuntime::load`]; this exists for diagnostics and tests).
    pub fn open(dirs: &[Option<PathBuf>]) -> Result<AscendRuntime> {
        let (acl_lib, acl_path) =
            open_one(dirs, "libascendcl.so").map_err(AscendError::NotFound)?;
        // SAFETY: the bindgen table's signatures come from the CANN headers.
        let acl = unsafe { AscendClLib::from_library(acl_lib) }
            .map_err(|e| AscendError::NotFound(format!("{}: {e}", acl_path.display())))?;
        let mut loaded = vec![acl_path];
        let mut keep = Vec::new();

        let hccl = open_one(dirs, "libhccl.so").ok().and_then(|(l, p)| {
            loaded.push(p);
            unsafe { HcclLib::from_library(l) }.ok()
        });
        // nnopbase before opapi, both RTLD_GLOBAL (torch_npu / MindNLP order).
        let nnopbase = open_one(dirs, "libnnopbase.so").ok().map(|(l, p)| {
            loaded.push(p);
            // SAFETY: declarations in crate::aclnn follow the opbase headers.
            let t = unsafe { NnopBase::resolve(&[&l]) };
            keep.push(l);
            t
        });
        let mut op_libs = Vec::new();
        for name in OPAPI_LIBS {
            if let Ok((l, p)) = open_one(dirs, name) {
                loaded.push(p);
                op_libs.push(l);
            }
        }
        let opapi = if op_libs.is_empty() {
            None
        } else {
            let refs: Vec<&libloading::Library> = op_libs.iter().collect();
            // SAFETY: declarations in crate::aclnn follow the ops-nn / ops-math headers.
            Some(unsafe { OpApi::resolve(&refs) })
        };
        keep.extend(op_libs);
        Ok(AscendRuntime {
            acl,
            hccl,
            nnopbase,
            opapi,
            loaded,
            _keep: keep,
        })
    }

    /// Open from one directory only (no caching, no `aclInit`).
    pub fn open_dir(dir: &Path) -> Result<AscendRuntime> {
        Self::open(&[Some(dir.to_path_buf())])
    }

    /// Leak an opened runtime and `aclInit` it (for [`AscendRuntime::open`] users).
    pub fn into_static(self) -> Result<&'static AscendRuntime> {
        let rt: &'static AscendRuntime = Box::leak(Box::new(self));
        rt.init()?;
        Ok(rt)
    }

    fn init(&self) -> Result<()> {
        let f = self
            .acl
            .aclInit
            .as_ref()
            .map_err(|_| AscendError::MissingSymbol {
                func: "aclInit",
                lib: "libascendcl.so",
            })?;
        // SAFETY: NULL config path is allowed (acl.h).
        let code = unsafe { f(std::ptr::null()) };
        // 100002 ACL_ERROR_REPEAT_INITIALIZE: someone else (e.g. torch_npu) initialised ACL.
        if code == ACL_ERROR_REPEAT_INITIALIZE {
            return Ok(());
        }
        // We never aclFinalize: the runtime is leaked and lives as long as the process.
        self.check("aclInit", code)
    }

    /// `aclGetRecentErrMsg()`, if the library has it and it has a message.
    pub fn recent_error_message(&self) -> Option<String> {
        let f = self.acl.aclGetRecentErrMsg.as_ref().ok()?;
        // SAFETY: returns NULL or a NUL-terminated thread-local string.
        let p = unsafe { f() };
        if p.is_null() {
            return None;
        }
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        (!s.trim().is_empty()).then_some(s)
    }

    /// `aclrtGetSocName()` (e.g. `Ascend910B1`), `None` when the library lacks it. Asked on
    /// every use, not cached: cheap, and what the runtime says is the truth.
    pub fn soc_name(&self) -> Option<String> {
        let f = self.acl.aclrtGetSocName.as_ref().ok()?;
        // SAFETY: returns NULL or a NUL-terminated static string.
        let p = unsafe { f() };
        if p.is_null() {
            return None;
        }
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// The CANN release (`aclsysGetCANNVersion(ACL_PKG_NAME_CANN)`), `None` when the query is
    /// missing (releases before it existed) or fails.
    pub fn cann_version(&self) -> Option<CannVersion> {
        let f = self.acl.aclsysGetCANNVersion.as_ref().ok()?;
        let mut v = aclCANNPackageVersion::default();
        // SAFETY: `v` is the header's struct, written by the callee.
        if unsafe { f(ACL_PKG_NAME_CANN, &mut v) } != 0 {
            return None;
        }
        let text = |b: &[std::ffi::c_char]| {
            let bytes: Vec<u8> = b
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        CannVersion::parse(&text(&v.version)).or_else(|| {
            CannVersion::parse(&format!(
                "{}.{}",
                text(&v.majorVersion),
                text(&v.minorVersion)
            ))
        })
    }

    /// Map an `aclError` to `Ok` / [`AscendError::Acl`].
    pub fn check(&self, func: &'static str, code: aclError) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        Err(AscendError::Acl {
            func,
            code,
            class: acl_error_class(code),
            msg: self.recent_error_message(),
        })
    }

    /// Number of visible devices (`aclrtGetDeviceCount`).
    pub fn device_count(&'static self) -> Result<u32> {
        let mut n = 0u32;
        acl!(self, aclrtGetDeviceCount(&mut n))?;
        Ok(n)
    }

    /// `aclrtSetDevice(id)` on the calling thread and capture its default context.
    pub fn device(&'static self, id: i32) -> Result<Device> {
        acl!(self, aclrtSetDevice(id))?;
        let mut ctx: aclrtContext = std::ptr::null_mut();
        if let Err(e) = acl!(self, aclrtGetCurrentContext(&mut ctx)) {
            let _ = acl!(self, aclrtResetDevice(id));
            return Err(e);
        }
        Ok(Device(Arc::new(DeviceInner {
            rt: self,
            id,
            ctx,
            alloc: CachingAllocator::new(),
        })))
    }
}

pub(crate) struct DeviceInner {
    pub(crate) rt: &'static AscendRuntime,
    pub(crate) id: i32,
    ctx: aclrtContext,
    pub(crate) alloc: CachingAllocator,
}

// SAFETY: an ACL context may be bound on any thread (aclrtSetCurrentContext).
unsafe impl Send for DeviceInner {}
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        let rt = self.rt;
        if let Ok(f) = rt.acl.aclrtSetCurrentContext.as_ref() {
            // SAFETY: the context is alive until aclrtResetDevice below.
            unsafe { f(self.ctx) };
        }
        self.alloc.release_all(rt);
        let _ = acl!(rt, aclrtResetDevice(self.id));
    }
}

/// One NPU, set on the thread that created it; clone it freely (reference counted). The
/// device is reset (`aclrtResetDevice`) when the last clone, stream and buffer are gone.
#[derive(Clone)]
pub struct Device(pub(crate) Arc<DeviceInner>);

impl Device {
    /// Device ordinal.
    pub fn id(&self) -> i32 {
        self.0.id
    }
    /// The runtime this device belongs to.
    pub fn runtime(&self) -> &'static AscendRuntime {
        self.0.rt
    }
    /// Bind this device's context to the calling thread (`aclrtSetCurrentContext`). Every
    /// worker thread must do this before its first ACL call (e.g. in rayon's `start_handler`).
    pub fn bind_thread(&self) -> Result<()> {
        acl!(self.0.rt, aclrtSetCurrentContext(self.0.ctx))
    }
    /// The raw context handle.
    pub fn raw_context(&self) -> aclrtContext {
        self.0.ctx
    }
    /// `aclrtSynchronizeDevice` (binds the context first).
    pub fn synchronize(&self) -> Result<()> {
        self.bind_thread()?;
        acl!(self.0.rt, aclrtSynchronizeDevice())
    }
    /// Free / total HBM bytes (`aclrtGetMemInfo(ACL_HBM_MEM)`).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind_thread()?;
        let (mut free, mut total) = (0usize, 0usize);
        acl!(
            self.0.rt,
            aclrtGetMemInfo(ACL_HBM_MEM, &mut free, &mut total)
        )?;
        Ok((free, total))
    }
    /// A handle from an `aclrtCreate*` function (`create` writes it), on this device.
    fn create<H>(&self, create: impl FnOnce(&mut *mut H) -> Result<()>) -> Result<*mut H> {
        self.bind_thread()?;
        let mut raw = std::ptr::null_mut();
        create(&mut raw)?;
        Ok(raw)
    }
    /// Create a stream on this device.
    pub fn stream(&self) -> Result<Stream> {
        let raw = self.create(|raw| acl!(self.0.rt, aclrtCreateStream(raw)))?;
        let retained = Mutex::new(Vec::new());
        let dev = self.clone();
        Ok(Stream { dev, raw, retained })
    }
    /// Create an event on this device.
    pub fn event(&self) -> Result<Event> {
        let raw = self.create(|raw| acl!(self.0.rt, aclrtCreateEvent(raw)))?;
        Ok(Event {
            dev: self.clone(),
            raw,
        })
    }
    /// The device's caching allocator.
    pub fn allocator(&self) -> &CachingAllocator {
        &self.0.alloc
    }
}

/// An ACL stream. Work is enqueued asynchronously; [`Stream::synchronize`] waits for it and
/// releases the buffers (workspaces) that had to outlive the enqueued work.
pub struct Stream {
    pub(crate) dev: Device,
    pub(crate) raw: aclrtStream,
    retained: Mutex<Vec<super::alloc::DeviceBuffer>>,
}

// SAFETY: ACL streams may be used from any thread that has the device's context bound.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

impl Stream {
    /// The raw `aclrtStream`.
    pub fn raw(&self) -> aclrtStream {
        self.raw
    }
    /// The device of this stream.
    pub fn device(&self) -> &Device {
        &self.dev
    }
    /// Keep `buf` alive until the next successful [`Stream::synchronize`].
    pub fn retain_until_sync(&self, buf: super::alloc::DeviceBuffer) {
        self.retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
    }
    /// Number of buffers waiting for the next synchronisation.
    pub fn retained_count(&self) -> usize {
        self.retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
    /// `aclrtSynchronizeStream`; asynchronous kernel faults surface here.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.bind_thread()?;
        acl!(self.dev.0.rt, aclrtSynchronizeStream(self.raw))?;
        self.retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
    /// Make this stream wait for `event` (`aclrtStreamWaitEvent`).
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        acl!(self.dev.0.rt, aclrtStreamWaitEvent(self.raw, event.raw))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let rt = self.dev.0.rt;
        if self.dev.bind_thread().is_ok() {
            // Pending work must finish before its workspaces go back to the allocator.
            let _ = acl!(rt, aclrtSynchronizeStream(self.raw));
            self.retained
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            let _ = acl!(rt, aclrtDestroyStream(self.raw));
        }
    }
}

/// An ACL event.
pub struct Event {
    dev: Device,
    raw: aclrtEvent,
}

// SAFETY: as for streams.
unsafe impl Send for Event {}
unsafe impl Sync for Event {}

impl Event {
    /// Record on `stream` (`aclrtRecordEvent`).
    pub fn record(&self, stream: &Stream) -> Result<()> {
        acl!(self.dev.0.rt, aclrtRecordEvent(self.raw, stream.raw))
    }
    /// Block the host until the event completed (`aclrtSynchronizeEvent`).
    pub fn synchronize(&self) -> Result<()> {
        acl!(self.dev.0.rt, aclrtSynchronizeEvent(self.raw))
    }
    /// The raw handle.
    pub fn raw(&self) -> aclrtEvent {
        self.raw
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.dev.bind_thread().is_ok() {
            let _ = acl!(self.dev.0.rt, aclrtDestroyEvent(self.raw));
        }
    }
}
