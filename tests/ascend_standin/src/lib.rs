//! TEST-ONLY STAND-IN for the Huawei CANN runtime libraries (`libascendcl.so`,
//! `libnnopbase.so`, `libopapi.so` or the split `libopapi_*.so`, `libhccl.so`).
//!
//! It exports, with the same C names and ABIs as the CANN headers, the subset of functions
//! that `medsam-ffi`'s wrappers call, and computes with plain CPU loops:
//! * "device" memory is host memory handed out by `aclrtMalloc` and *tracked*: copies,
//!   tensors and collectives on memory that was not `aclrtMalloc`ed fail with an error code;
//! * streams are FIFO queues that run only at `aclrtSynchronizeStream` (or event sync), so a
//!   caller that reads results without synchronising sees stale data;
//! * aclnn: `GetWorkspaceSize` validates arguments (ACLNN_ERR_PARAM_INVALID = 161002) and
//!   asks for a workspace that the kernel really uses; the executor is single-use;
//! * CANN's contract, not ours: each rule it enforces is listed with its public source in
//!   docs/ASCEND.md ("Contract") — per-op formats (NCHW for 4-D convolution, NCHW/NHWC for
//!   bilinear upsample, non-NCHW read as NHWC by its backward), cubeMathType per SoC,
//!   device-only pointers for tensor data, workspaces and kernel `argsData`, single-use
//!   executors, workspace size, destroyed streams and descriptors refused, reducing HCCL
//!   collectives refuse f64/u8;
//! * emulation knobs (not CANN symbols, per calling thread so tests can run in parallel):
//!   `standin_set_soc`, `standin_set_cann_version`, `standin_set_workspace_request`,
//!   `standin_set_kernel_args_api`, and the counters `standin_stats`, `standin_live_executors`;
//! * HCCL: ranks are threads of one process; the root info carries a group id that
//!   `HcclCommInitRootInfo` rendezvouses on; collectives run at stream sync.
//!
//! It proves our side of the contract (marshalling, lifetimes, error mapping, ordering),
//! NOT CANN's behaviour: numerics and error codes of real CANN may differ.
// C-ABI mirrors: long argument lists and boxed-closure queues are the point here.
#![allow(
    non_snake_case,
    clippy::missing_safety_doc,
    clippy::not_unsafe_ptr_arg_deref,
    clippy::too_many_arguments,
    clippy::type_complexity
)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// error codes (values from acl_base_rt.h, rt_error_codes.h, op_errno.h, hccl_types.h)
const OK: i32 = 0;
const ACL_ERROR_INVALID_PARAM: i32 = 100000;
const ACL_ERROR_UNINITIALIZE: i32 = 100001;
const ACL_ERROR_REPEAT_INITIALIZE: i32 = 100002;
const ACL_ERROR_RT_PARAM_INVALID: i32 = 107000;
const ACL_ERROR_RT_INVALID_DEVICEID: i32 = 107001;
const ACL_ERROR_RT_CONTEXT_NULL: i32 = 107002;
const ACL_ERROR_RT_MEMORY_ALLOCATION: i32 = 207001;
const ACLNN_ERR_PARAM_NULLPTR: i32 = 161001;
const ACLNN_ERR_PARAM_INVALID: i32 = 161002;
const HCCL_E_PARA: u32 = 1;
const HCCL_E_PTR: u32 = 2;
const HCCL_E_NOT_SUPPORT: u32 = 5;
const HCCL_E_TIMEOUT: u32 = 9;
const ACL_FLOAT: i32 = 0;

/// Visible devices (override with STANDIN_DEVICE_COUNT).
fn device_count() -> u32 {
    std::env::var("STANDIN_DEVICE_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}
/// Bytes of "HBM" per device (override with STANDIN_HBM_BYTES) — lets tests hit OOM.
fn hbm_bytes() -> usize {
    std::env::var("STANDIN_HBM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

thread_local! {
    static CURRENT_DEVICE: Cell<i32> = const { Cell::new(-1) };
    static LAST_ERR: RefCell<CString> = RefCell::new(CString::default());
    /// Emulated `aclrtGetSocName` of this thread.
    static SOC: RefCell<CString> = RefCell::new(CString::new(DEFAULT_SOC).unwrap());
    /// Emulated CANN version of this thread (`None`: the query fails).
    static CANN_VERSION: RefCell<Option<String>> =
        RefCell::new(Some(DEFAULT_CANN_VERSION.to_string()));
    /// Whether `aclrtKernelArgsInit` works on this thread (else 207000 FEATURE_NOT_SUPPORT).
    pub(crate) static KERNEL_ARGS_API: Cell<bool> = const { Cell::new(true) };
}

const DEFAULT_SOC: &str = "Ascend910B1";
const DEFAULT_CANN_VERSION: &str = "8.1.RC1";
const ACL_ERROR_INVALID_FILE: i32 = 100003;
pub(crate) const ACL_ERROR_RT_FEATURE_NOT_SUPPORT: i32 = 207000;

/// Emulate another SoC on the calling thread (NULL: back to Ascend910B1). Not a CANN symbol.
#[no_mangle]
pub unsafe extern "C" fn standin_set_soc(name: *const c_char) {
    let v = if name.is_null() {
        CString::new(DEFAULT_SOC).unwrap()
    } else {
        CStr::from_ptr(name).to_owned()
    };
    SOC.with(|s| *s.borrow_mut() = v);
}

/// Emulate another CANN version on the calling thread: NULL resets to 8.1.RC1, "" makes
/// `aclsysGetCANNVersion` fail. Not a CANN symbol.
#[no_mangle]
pub unsafe extern "C" fn standin_set_cann_version(v: *const c_char) {
    let v = if v.is_null() {
        Some(DEFAULT_CANN_VERSION.to_string())
    } else {
        let s = CStr::from_ptr(v).to_string_lossy().into_owned();
        (!s.is_empty()).then_some(s)
    };
    CANN_VERSION.with(|c| *c.borrow_mut() = v);
}

/// Make `aclrtKernelArgsInit` answer FEATURE_NOT_SUPPORT on the calling thread (`on` = false),
/// as a runtime without the argument API would. Not a CANN symbol.
#[no_mangle]
pub extern "C" fn standin_set_kernel_args_api(on: bool) {
    KERNEL_ARGS_API.with(|k| k.set(on));
}

/// Whether a SoC name is Atlas A2/A3 class (torch_npu `NpuVariables.cpp`: Ascend910B1..B4,
/// Ascend910_93xx, Ascend950); the first-generation 910 and the 310 chips are not.
fn soc_is_a2(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix("Ascend910B") {
        return rest.starts_with(|c: char| c.is_ascii_digit());
    }
    s.starts_with("Ascend910_93") || s.starts_with("Ascend950")
}

/// The emulated SoC of the calling thread is Atlas A2/A3 class.
pub(crate) fn current_soc_is_a2() -> bool {
    SOC.with(|s| soc_is_a2(&s.borrow().to_string_lossy()))
}

/// The emulated CANN major version of the calling thread (0 when the query fails).
pub(crate) fn current_cann_major() -> u32 {
    CANN_VERSION.with(|v| {
        v.borrow()
            .as_deref()
            .and_then(|t| t.split('.').next()?.parse().ok())
            .unwrap_or(0)
    })
}

#[no_mangle]
pub extern "C" fn aclrtGetSocName() -> *const c_char {
    // Valid until the next standin_set_soc on this thread (CANN's is static).
    SOC.with(|s| s.borrow().as_ptr())
}

/// `aclCANNPackageVersion` (acl.h): version[128], major/minor/release/patch[64], reserved[128].
#[repr(C)]
pub struct CannPackageVersion {
    version: [c_char; 128],
    major: [c_char; 64],
    minor: [c_char; 64],
    release: [c_char; 64],
    patch: [c_char; 64],
    reserved: [c_char; 128],
}

fn put(dst: &mut [c_char], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().chain(std::iter::once(0))) {
        *d = b as c_char;
    }
}

#[no_mangle]
pub unsafe extern "C" fn aclsysGetCANNVersion(name: i32, out: *mut CannPackageVersion) -> i32 {
    if out.is_null() || name != 0 {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            format!("aclsysGetCANNVersion: package {name} / NULL output"),
        );
    }
    let Some(v) = CANN_VERSION.with(|v| v.borrow().clone()) else {
        return fail(
            ACL_ERROR_INVALID_FILE,
            "aclsysGetCANNVersion: version file not found (emulated)",
        );
    };
    let o = &mut *out;
    let mut parts = v.split('.');
    put(&mut o.version, &v);
    put(&mut o.major, parts.next().unwrap_or(""));
    put(&mut o.minor, parts.next().unwrap_or(""));
    put(&mut o.release, parts.next().unwrap_or(""));
    OK
}

fn fail(code: i32, msg: impl Into<String>) -> i32 {
    LAST_ERR.with(|e| *e.borrow_mut() = CString::new(msg.into()).unwrap_or_default());
    code
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// global state

#[derive(Default)]
struct State {
    initialized: bool,
    allocs: BTreeMap<usize, (usize, i32)>, // addr -> (bytes usable, device)
    used: HashMap<i32, usize>,
    mallocs: u64,
    frees: u64,
    ops_executed: u64,
    host_copies: u64,
    kernel_launches: u64,
}
static STATE: Mutex<Option<State>> = Mutex::new(None);
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut g = lock(&STATE);
    f(g.get_or_insert_with(State::default))
}

/// Whether [p, p+len) lies inside one live allocation.
fn is_device(p: usize, len: usize) -> bool {
    with_state(|s| match s.allocs.range(..=p).next_back() {
        Some((&a, &(sz, _))) => p >= a && p.saturating_add(len) <= a + sz,
        None => false,
    })
}

/// Number of synchronous host↔device `aclrtMemcpy` calls so far (not a CANN symbol): tests use
/// it to check that an NPU backend method makes no host round trip.
#[no_mangle]
pub extern "C" fn standin_host_copies() -> u64 {
    with_state(|s| s.host_copies)
}

/// Counters for tests (not a CANN symbol).
#[repr(C)]
#[derive(Default)]
pub struct StandinStats {
    pub mallocs: u64,
    pub frees: u64,
    pub live_allocations: u64,
    pub ops_executed: u64,
    /// `aclrtLaunchKernel` calls accepted (custom kernels).
    pub kernel_launches: u64,
}

#[no_mangle]
pub unsafe extern "C" fn standin_stats(out: *mut StandinStats) {
    let st = with_state(|s| StandinStats {
        mallocs: s.mallocs,
        frees: s.frees,
        live_allocations: s.allocs.len() as u64,
        ops_executed: s.ops_executed,
        kernel_launches: s.kernel_launches,
    });
    if !out.is_null() {
        *out = st;
    }
}

// ---------------------------------------------------------------------------------------
// init, devices, contexts

#[no_mangle]
pub extern "C" fn aclInit(_config: *const c_char) -> i32 {
    with_state(|s| {
        if s.initialized {
            ACL_ERROR_REPEAT_INITIALIZE
        } else {
            s.initialized = true;
            OK
        }
    })
}

#[no_mangle]
pub extern "C" fn aclFinalize() -> i32 {
    with_state(|s| s.initialized = false);
    OK
}

#[no_mangle]
pub extern "C" fn aclGetRecentErrMsg() -> *const c_char {
    // Valid until the next failing call on this thread (thread-local, as in CANN).
    LAST_ERR.with(|e| {
        let e = e.borrow();
        if e.as_bytes().is_empty() {
            std::ptr::null()
        } else {
            e.as_ptr()
        }
    })
}

fn initialized() -> bool {
    with_state(|s| s.initialized)
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetDeviceCount(count: *mut u32) -> i32 {
    if count.is_null() {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            "aclrtGetDeviceCount: count is NULL",
        );
    }
    *count = device_count();
    OK
}

#[no_mangle]
pub extern "C" fn aclrtSetDevice(id: i32) -> i32 {
    if !initialized() {
        return fail(
            ACL_ERROR_UNINITIALIZE,
            "aclrtSetDevice: aclInit was not called",
        );
    }
    if id < 0 || id as u32 >= device_count() {
        return fail(
            ACL_ERROR_RT_INVALID_DEVICEID,
            format!(
                "invalid device id {id} (stand-in has {} devices)",
                device_count()
            ),
        );
    }
    CURRENT_DEVICE.with(|d| d.set(id));
    OK
}

#[no_mangle]
pub extern "C" fn aclrtResetDevice(id: i32) -> i32 {
    if id < 0 || id as u32 >= device_count() {
        return fail(
            ACL_ERROR_RT_INVALID_DEVICEID,
            format!("invalid device id {id}"),
        );
    }
    OK
}

// A context is the address of CTX[device] (stable, non-null).
static CTX: [u8; 64] = [0; 64];

fn current_device() -> Result<i32, i32> {
    let d = CURRENT_DEVICE.with(|d| d.get());
    if d < 0 {
        Err(fail(ACL_ERROR_RT_CONTEXT_NULL, "no device/context bound to this thread (call aclrtSetDevice or aclrtSetCurrentContext)"))
    } else {
        Ok(d)
    }
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetCurrentContext(ctx: *mut *mut c_void) -> i32 {
    if ctx.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtGetCurrentContext: NULL");
    }
    match current_device() {
        Ok(d) => {
            *ctx = CTX.as_ptr().add(d as usize) as *mut c_void;
            OK
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub extern "C" fn aclrtSetCurrentContext(ctx: *mut c_void) -> i32 {
    let base = CTX.as_ptr() as usize;
    let p = ctx as usize;
    if p < base || p >= base + device_count() as usize {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtSetCurrentContext: unknown context {ctx:p}"),
        );
    }
    CURRENT_DEVICE.with(|d| d.set((p - base) as i32));
    OK
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeDevice() -> i32 {
    let d = match current_device() {
        Ok(d) => d,
        Err(e) => return e,
    };
    let streams: Vec<usize> = lock(&STREAMS)
        .iter()
        .filter(|(_, dev)| **dev == d)
        .map(|(s, _)| *s)
        .collect();
    for s in streams {
        let r = flush(s as *mut Stream);
        if r != OK {
            return r;
        }
    }
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetMemInfo(_attr: i32, free: *mut usize, total: *mut usize) -> i32 {
    let d = match current_device() {
        Ok(d) => d,
        Err(e) => return e,
    };
    if free.is_null() || total.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtGetMemInfo: NULL");
    }
    let used = with_state(|s| *s.used.get(&d).unwrap_or(&0));
    *total = hbm_bytes();
    *free = hbm_bytes().saturating_sub(used);
    OK
}

// ---------------------------------------------------------------------------------------
// memory

const ALIGN: usize = 64;

#[no_mangle]
pub unsafe extern "C" fn aclrtMalloc(ptr: *mut *mut c_void, size: usize, _policy: i32) -> i32 {
    let d = match current_device() {
        Ok(d) => d,
        Err(e) => return e,
    };
    if ptr.is_null() || size == 0 {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            format!("aclrtMalloc: invalid size {size} or NULL out pointer"),
        );
    }
    // CANN rounds up to 32 B and adds 32 B of padding.
    let bytes = size.div_ceil(32) * 32 + 32;
    let over = with_state(|s| s.used.get(&d).copied().unwrap_or(0) + bytes > hbm_bytes());
    if over {
        return fail(
            ACL_ERROR_RT_MEMORY_ALLOCATION,
            format!("out of device memory allocating {size} bytes on device {d}"),
        );
    }
    let layout = std::alloc::Layout::from_size_align(bytes, ALIGN).unwrap();
    let p = std::alloc::alloc(layout);
    if p.is_null() {
        return fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "host allocation failed");
    }
    // Poison fresh memory so reads of never-written data are visible.
    std::ptr::write_bytes(p, 0xA5, bytes);
    with_state(|s| {
        s.allocs.insert(p as usize, (bytes, d));
        *s.used.entry(d).or_default() += bytes;
        s.mallocs += 1;
    });
    *ptr = p.cast();
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtFree(ptr: *mut c_void) -> i32 {
    let found = with_state(|s| {
        let r = s.allocs.remove(&(ptr as usize));
        if let Some((bytes, d)) = r {
            *s.used.entry(d).or_default() -= bytes;
            s.frees += 1;
        }
        r
    });
    match found {
        Some((bytes, _)) => {
            std::alloc::dealloc(
                ptr.cast(),
                std::alloc::Layout::from_size_align(bytes, ALIGN).unwrap(),
            );
            OK
        }
        None => fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtFree: {ptr:p} is not device memory from aclrtMalloc"),
        ),
    }
}

/// The arguments of `aclrtMemcpy`: `(dst, destMax, src, count, kind)`.
type CopyArgs = (*mut c_void, usize, *const c_void, usize, i32);

/// aclrtMemcpyKind: 0 H2H, 1 H2D, 2 D2H, 3 D2D.
fn check_copy(func: &str, (dst, dest_max, src, count, kind): CopyArgs) -> i32 {
    if count > dest_max {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            format!("{func}: count {count} > destMax {dest_max}"),
        );
    }
    if count == 0 {
        return OK;
    }
    let (dst_dev, src_dev) = match kind {
        0 => (false, false),
        1 => (true, false),
        2 => (false, true),
        3 => (true, true),
        _ => {
            return fail(
                ACL_ERROR_INVALID_PARAM,
                format!("{func}: unsupported kind {kind}"),
            )
        }
    };
    for (what, p, dev) in [
        ("destination", dst as *const c_void, dst_dev),
        ("source", src, src_dev),
    ] {
        if is_device(p as usize, count) != dev {
            let not = if dev { "not " } else { "" };
            return fail(
                ACL_ERROR_INVALID_PARAM,
                format!("{func}: {what} {p:p} (+{count}) is {not}device memory, kind {kind}"),
            );
        }
    }
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: i32,
) -> i32 {
    let r = check_copy("aclrtMemcpy", (dst, dest_max, src, count, kind));
    if r != OK {
        return r;
    }
    if kind == 1 || kind == 2 {
        // ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST
        with_state(|s| s.host_copies += 1);
    }
    std::ptr::copy(src as *const u8, dst as *mut u8, count);
    OK
}

#[derive(Clone, Copy)]
struct Addr(usize);
// SAFETY: addresses are plain numbers; the stand-in's "device" memory is process memory.
unsafe impl Send for Addr {}

#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpyAsync(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: i32,
    stream: *mut c_void,
) -> i32 {
    let r = check_copy("aclrtMemcpyAsync", (dst, dest_max, src, count, kind));
    if r != OK {
        return r;
    }
    let (d, s) = (Addr(dst as usize), Addr(src as usize));
    enqueue(
        stream,
        Box::new(move || {
            std::ptr::copy(s.0 as *const u8, d.0 as *mut u8, count);
            Ok(())
        }),
    )
}

#[no_mangle]
pub unsafe extern "C" fn aclrtMemsetAsync(
    ptr: *mut c_void,
    max: usize,
    value: i32,
    count: usize,
    stream: *mut c_void,
) -> i32 {
    if count > max || !is_device(ptr as usize, count) {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            format!("aclrtMemsetAsync: bad range {ptr:p} +{count} (max {max})"),
        );
    }
    let p = Addr(ptr as usize);
    enqueue(
        stream,
        Box::new(move || {
            std::ptr::write_bytes(p.0 as *mut u8, value as u8, count);
            Ok(())
        }),
    )
}

// ---------------------------------------------------------------------------------------
// streams and events

type Job = Box<dyn FnOnce() -> Result<(), (i32, String)> + Send>;

struct Stream {
    device: i32,
    queue: Mutex<Vec<Job>>,
    /// Held while queued work runs, so concurrent synchronisations from several threads
    /// execute the stream's work one job after another, in enqueue order (as a device does).
    running: Mutex<()>,
}

static STREAMS: Mutex<BTreeMap<usize, i32>> = Mutex::new(BTreeMap::new());

#[no_mangle]
pub unsafe extern "C" fn aclrtCreateStream(stream: *mut *mut c_void) -> i32 {
    let d = match current_device() {
        Ok(d) => d,
        Err(e) => return e,
    };
    if stream.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtCreateStream: NULL");
    }
    let s = Box::into_raw(Box::new(Stream {
        device: d,
        queue: Mutex::new(Vec::new()),
        running: Mutex::new(()),
    }));
    lock(&STREAMS).insert(s as usize, d);
    *stream = s.cast();
    OK
}

fn valid_stream(s: *mut c_void) -> bool {
    lock(&STREAMS).contains_key(&(s as usize))
}

/// Enqueue on `stream` (NULL = default stream: run now).
fn enqueue(stream: *mut c_void, job: Job) -> i32 {
    if stream.is_null() {
        return match job() {
            Ok(()) => {
                with_state(|s| s.ops_executed += 1);
                OK
            }
            Err((c, m)) => fail(c, m),
        };
    }
    if !valid_stream(stream) {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("unknown stream {stream:p}"),
        );
    }
    let s = unsafe { &*(stream as *const Stream) };
    lock(&s.queue).push(job);
    OK
}

/// Run everything queued on a stream, in order; the first failure is returned (as CANN
/// reports asynchronous faults at synchronisation).
fn flush(s: *mut Stream) -> i32 {
    let _running = lock(unsafe { &(*s).running });
    let jobs = std::mem::take(&mut *lock(unsafe { &(*s).queue }));
    let mut result = OK;
    for j in jobs {
        if result != OK {
            continue; // work after a fault is dropped
        }
        match j() {
            Ok(()) => with_state(|st| st.ops_executed += 1),
            Err((c, m)) => result = fail(c, m),
        }
    }
    result
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeStream(stream: *mut c_void) -> i32 {
    if stream.is_null() {
        return OK;
    }
    if !valid_stream(stream) {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtSynchronizeStream: unknown stream {stream:p}"),
        );
    }
    let d = unsafe { (*(stream as *const Stream)).device };
    if CURRENT_DEVICE.with(|c| c.get()) != d {
        return fail(
            ACL_ERROR_RT_CONTEXT_NULL,
            format!("aclrtSynchronizeStream: stream of device {d} used without its context bound"),
        );
    }
    flush(stream.cast())
}

#[no_mangle]
pub extern "C" fn aclrtDestroyStream(stream: *mut c_void) -> i32 {
    if lock(&STREAMS).remove(&(stream as usize)).is_none() {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtDestroyStream: unknown stream {stream:p}"),
        );
    }
    // The stream object is leaked, not freed: another thread's aclrtSynchronizeDevice may have
    // listed it just before the removal and still flush it (an empty queue by then).
    let s = unsafe { &*(stream as *const Stream) };
    let pending = lock(&s.queue).len();
    if pending != 0 {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtDestroyStream: {pending} operations still queued"),
        );
    }
    OK
}

struct Event {
    stream: Mutex<usize>,
}

#[no_mangle]
pub unsafe extern "C" fn aclrtCreateEvent(event: *mut *mut c_void) -> i32 {
    if event.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtCreateEvent: NULL");
    }
    *event = Box::into_raw(Box::new(Event {
        stream: Mutex::new(0),
    }))
    .cast();
    OK
}

/// The event of a call that also names a stream: both must be valid.
unsafe fn event_on_stream<'a>(
    func: &str,
    event: *mut c_void,
    stream: *mut c_void,
) -> Result<&'a Event, i32> {
    if event.is_null() || !valid_stream(stream) {
        return Err(fail(
            ACL_ERROR_INVALID_PARAM,
            format!("{func}: bad event or stream"),
        ));
    }
    Ok(&*(event as *const Event))
}

#[no_mangle]
pub unsafe extern "C" fn aclrtRecordEvent(event: *mut c_void, stream: *mut c_void) -> i32 {
    match event_on_stream("aclrtRecordEvent", event, stream) {
        Ok(e) => {
            *lock(&e.stream) = stream as usize;
            OK
        }
        Err(code) => code,
    }
}

#[no_mangle]
pub unsafe extern "C" fn aclrtSynchronizeEvent(event: *mut c_void) -> i32 {
    if event.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtSynchronizeEvent: NULL");
    }
    let s = *lock(&(*(event as *const Event)).stream);
    if s != 0 && valid_stream(s as *mut c_void) {
        return flush(s as *mut Stream);
    }
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtStreamWaitEvent(stream: *mut c_void, event: *mut c_void) -> i32 {
    let other = match event_on_stream("aclrtStreamWaitEvent", event, stream) {
        Ok(e) => *lock(&e.stream),
        Err(code) => return code,
    };
    // CPU model: the waiting stream runs the recorded stream's pending work first.
    enqueue(
        stream,
        Box::new(move || {
            if other != 0 && valid_stream(other as *mut c_void) {
                let r = flush(other as *mut Stream);
                if r != OK {
                    return Err((r, "event's stream failed".into()));
                }
            }
            Ok(())
        }),
    )
}

#[no_mangle]
pub unsafe extern "C" fn aclrtDestroyEvent(event: *mut c_void) -> i32 {
    if event.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtDestroyEvent: NULL");
    }
    drop(Box::from_raw(event as *mut Event));
    OK
}

mod aclnn;
/// The host reference of the Ascend C kernels, shared with `medsam_kernels::ascend_tiled`.
#[path = "../../../kernels/src/ascend_tiled.rs"]
#[allow(dead_code)]
mod ascend_tiled;
mod hccl;
mod kernels;
