//! Stand-in nnopbase (`aclCreateTensor` ...) and opapi (`aclnnXxx`) functions.

use super::*;

/// A strided f32 view captured by value (the aclTensor may be destroyed before the queued
/// kernel runs, exactly as with CANN).
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub dims: Vec<i64>,
    pub strides: Vec<i64>,
    pub offset: i64,
    pub addr: usize,
}
// SAFETY: plain numbers.
unsafe impl Send for View {}

impl View {
    pub fn numel(&self) -> usize {
        self.dims.iter().product::<i64>().max(0) as usize
    }
    fn extent(&self) -> usize {
        if self.dims.contains(&0) {
            return 0;
        }
        let last = self.index(&self.dims.iter().map(|d| d - 1).collect::<Vec<_>>());
        last + 1
    }
    /// Element index of a multi-index.
    fn index(&self, idx: &[i64]) -> usize {
        (self.offset
            + idx
                .iter()
                .zip(&self.strides)
                .map(|(i, s)| i * s)
                .sum::<i64>()) as usize
    }
    pub fn get(&self, idx: &[i64]) -> f32 {
        unsafe { *(self.addr as *const f32).add(self.index(idx)) }
    }
    pub fn set(&self, idx: &[i64], v: f32) {
        unsafe { *(self.addr as *mut f32).add(self.index(idx)) = v }
    }
    /// Read in row-major order.
    pub fn read(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.numel());
        for_each_index(&self.dims, |i| out.push(self.get(i)));
        out
    }
    /// Write in row-major order.
    pub fn write(&self, v: &[f32]) {
        let mut k = 0;
        for_each_index(&self.dims, |i| {
            self.set(i, v[k]);
            k += 1;
        });
    }
    /// Check that the view lies in device memory.
    pub fn check_device(&self, func: &str, what: &str) -> Result<(), i32> {
        if self.dims.iter().any(|&d| d < 0)
            || self.strides.iter().any(|&s| s < 0)
            || self.offset < 0
            || self.dims.len() != self.strides.len()
        {
            return Err(fail(
                ACLNN_ERR_PARAM_INVALID,
                format!("{func}: {what} has a bad layout {self:?}"),
            ));
        }
        if self.numel() > 0 && !is_device(self.addr, self.extent() * 4) {
            return Err(fail(
                ACLNN_ERR_PARAM_INVALID,
                format!("{func}: {what} data is not device memory (or out of bounds)"),
            ));
        }
        Ok(())
    }
}

pub(crate) fn for_each_index(dims: &[i64], mut f: impl FnMut(&[i64])) {
    if dims.iter().any(|&d| d <= 0) {
        return;
    }
    let mut idx = vec![0i64; dims.len()];
    loop {
        f(&idx);
        let mut k = dims.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

// ------------------------------------------------------------------ descriptors

pub struct AclTensor {
    dtype: i32,
    /// `aclFormat` given at creation.
    pub(crate) format: i32,
    view: View,
}

// aclFormat values (acl_base.h).
pub(crate) const FORMAT_NCHW: i32 = 0;
pub(crate) const FORMAT_NHWC: i32 = 1;
pub(crate) const FORMAT_ND: i32 = 2;
pub(crate) const FORMAT_FRACTAL_Z: i32 = 4;
pub(crate) const FORMAT_NCDHW: i32 = 30;
pub(crate) const FORMAT_NCL: i32 = 47;

pub(crate) fn format_name(f: i32) -> String {
    match f {
        FORMAT_NCHW => "NCHW".into(),
        FORMAT_NHWC => "NHWC".into(),
        FORMAT_ND => "ND".into(),
        FORMAT_FRACTAL_Z => "FRACTAL_Z".into(),
        FORMAT_NCDHW => "NCDHW".into(),
        FORMAT_NCL => "NCL".into(),
        other => format!("format {other}"),
    }
}

/// Live descriptors (tensors, arrays, scalars): using one after its destroy function fails,
/// as a use-after-free would on CANN (here it is caught instead of being undefined).
static DESCRIPTORS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn register<T>(p: *mut T) -> *mut T {
    lock(&DESCRIPTORS).push(p as usize);
    p
}
/// Remove from the live set; false if it was not live.
fn unregister<T>(p: *const T) -> bool {
    let mut d = lock(&DESCRIPTORS);
    match d.iter().position(|&x| x == p as usize) {
        Some(i) => {
            d.swap_remove(i);
            true
        }
        None => false,
    }
}
pub(crate) fn is_live<T>(p: *const T) -> bool {
    lock(&DESCRIPTORS).contains(&(p as usize))
}

/// Rule (ops-nn `aclnn_convolution.cpp` FormatChecker, `convolution_backward_checker.cpp`
/// CheckFormatValid; ops-cv `aclnn_upsample_bilinear_2d.cpp` CheckFormat): a 4-D operand must
/// carry one of `allowed`; anything else is ACLNN_ERR_PARAM_INVALID in phase 1.
pub(crate) fn check_format(
    func: &str,
    what: &str,
    t: &AclTensor,
    allowed: &[i32],
) -> Result<(), i32> {
    if allowed.contains(&t.format) {
        return Ok(());
    }
    let names: Vec<String> = allowed.iter().map(|&f| format_name(f)).collect();
    Err(fail(
        ACLNN_ERR_PARAM_INVALID,
        format!(
            "{func}: {what} of rank {} has format {}, must be {}",
            t.view.dims.len(),
            format_name(t.format),
            names.join(" or ")
        ),
    ))
}

/// Rule (ops-nn `aclnnMatmul.md` / `aclnnConvolution.md`, cubeMathType): fp32 with
/// KEEP_DTYPE (0) or USE_HF32 (3) is not supported on Atlas training (910A) and inference SoCs.
pub(crate) fn check_cube(func: &str, dtype: i32, cube: i8) -> Result<(), i32> {
    if !(0..=3).contains(&cube) {
        return Err(bad(func, format!("cubeMathType {cube} not in 0..=3")));
    }
    if dtype == ACL_FLOAT && (cube == 0 || cube == 3) && !current_soc_is_a2() {
        let soc = unsafe { CStr::from_ptr(aclrtGetSocName()) }
            .to_string_lossy()
            .into_owned();
        return Err(bad(
            func,
            format!("cubeMathType {cube} with fp32 input is not supported on {soc}"),
        ));
    }
    Ok(())
}
pub struct AclIntArray(Vec<i64>);
pub struct AclBoolArray(#[allow(dead_code)] Vec<bool>);
pub struct AclScalar {
    dtype: i32,
    bits: [u8; 8],
}

#[no_mangle]
pub unsafe extern "C" fn aclCreateTensor(
    view_dims: *const i64,
    ndims: u64,
    dtype: i32,
    stride: *const i64,
    offset: i64,
    format: i32,
    _storage_dims: *const i64,
    _storage_ndims: u64,
    data: *mut c_void,
) -> *mut AclTensor {
    if ndims > 0 && (view_dims.is_null() || stride.is_null()) {
        fail(
            ACLNN_ERR_PARAM_NULLPTR,
            "aclCreateTensor: NULL dims/strides",
        );
        return std::ptr::null_mut();
    }
    let (dims, strides) = (c_array(view_dims, ndims), c_array(stride, ndims));
    register(Box::into_raw(Box::new(AclTensor {
        dtype,
        format,
        view: View {
            dims,
            strides,
            offset,
            addr: data as usize,
        },
    })))
}

/// A copy of the C array `p[..n]` (empty for `n = 0`, where `p` may be NULL).
unsafe fn c_array<T: Clone>(p: *const T, n: u64) -> Vec<T> {
    if n == 0 {
        vec![]
    } else {
        std::slice::from_raw_parts(p, n as usize).to_vec()
    }
}

/// `aclDestroy*`: frees a live descriptor of type `T` (named `what` in the error); NULL is a no-op.
unsafe fn destroy<T>(p: *const T, what: &str) -> i32 {
    if !p.is_null() {
        if !unregister(p) {
            return bad("aclDestroy", format!("{:p} is not a live {what}", p));
        }
        drop(Box::from_raw(p as *mut T));
    }
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclDestroyTensor(t: *const AclTensor) -> i32 {
    destroy(t, "AclTensor")
}

#[no_mangle]
pub unsafe extern "C" fn aclCreateIntArray(v: *const i64, n: u64) -> *mut AclIntArray {
    register(Box::into_raw(Box::new(AclIntArray(c_array(v, n)))))
}
#[no_mangle]
pub unsafe extern "C" fn aclDestroyIntArray(a: *const AclIntArray) -> i32 {
    destroy(a, "AclIntArray")
}
#[no_mangle]
pub unsafe extern "C" fn aclCreateBoolArray(v: *const bool, n: u64) -> *mut AclBoolArray {
    register(Box::into_raw(Box::new(AclBoolArray(c_array(v, n)))))
}
#[no_mangle]
pub unsafe extern "C" fn aclDestroyBoolArray(a: *const AclBoolArray) -> i32 {
    destroy(a, "AclBoolArray")
}
#[no_mangle]
pub unsafe extern "C" fn aclCreateScalar(value: *mut c_void, dtype: i32) -> *mut AclScalar {
    let mut bits = [0u8; 8];
    let n = match dtype {
        0 | 3 => 4,  // FLOAT, INT32
        9 | 11 => 8, // INT64, DOUBLE
        _ => {
            fail(
                ACLNN_ERR_PARAM_INVALID,
                format!("aclCreateScalar: dtype {dtype} not supported by the stand-in"),
            );
            return std::ptr::null_mut();
        }
    };
    std::ptr::copy_nonoverlapping(value as *const u8, bits.as_mut_ptr(), n);
    register(Box::into_raw(Box::new(AclScalar { dtype, bits })))
}
#[no_mangle]
pub unsafe extern "C" fn aclDestroyScalar(s: *const AclScalar) -> i32 {
    destroy(s, "AclScalar")
}

// ------------------------------------------------------------------ executor

pub struct Executor {
    name: &'static str,
    /// Thread that ran phase 1 (for `standin_live_executors`).
    thread: std::thread::ThreadId,
    ws_size: u64,
    job: Option<Kernel>,
}

static EXECUTORS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

thread_local! {
    /// Workspace every phase 1 of this thread asks for instead of its own (0: its own).
    static WS_REQUEST: Cell<u64> = const { Cell::new(0) };
}

/// Make every phase 1 on the calling thread ask for `bytes` of workspace (0 resets): lets a
/// test make the workspace allocation fail after phase 1. Not a CANN symbol.
#[no_mangle]
pub extern "C" fn standin_set_workspace_request(bytes: u64) {
    WS_REQUEST.with(|w| w.set(bytes));
}

/// Executors created by phase 1 on the calling thread that were neither run by phase 2 nor
/// destroyed (leaks). Not a CANN symbol.
#[no_mangle]
pub extern "C" fn standin_live_executors() -> u64 {
    let me = std::thread::current().id();
    lock(&EXECUTORS)
        .iter()
        .filter(|&&e| unsafe { (*(e as *const Executor)).thread } == me)
        .count() as u64
}

/// acl_meta.h: release an executor that will not be run.
#[no_mangle]
pub unsafe extern "C" fn aclDestroyAclOpExecutor(ex: *mut Executor) -> i32 {
    let mut live = lock(&EXECUTORS);
    match live.iter().position(|&e| e == ex as usize) {
        Some(i) => {
            live.swap_remove(i);
            drop(Box::from_raw(ex));
            OK
        }
        None => fail(
            ACLNN_ERR_PARAM_INVALID,
            format!("aclDestroyAclOpExecutor: unknown or already used executor {ex:p}"),
        ),
    }
}

/// A queued aclnn kernel; gets the workspace address.
type Kernel = Box<dyn FnOnce(usize) -> Result<(), (i32, String)> + Send>;

/// What the checks of a phase 1 hand to the executor: workspace bytes and the kernel.
pub(crate) struct Planned(u64, Kernel);

/// A kernel without workspace that cannot fail.
pub(crate) fn plan(f: impl FnOnce() + Send + 'static) -> Result<Planned, i32> {
    Ok(Planned(
        0,
        Box::new(move |_| {
            f();
            Ok(())
        }),
    ))
}

unsafe fn finish_phase1(
    name: &'static str,
    ws_size: u64,
    job: Kernel,
    ws: *mut u64,
    ex: *mut *mut Executor,
) -> i32 {
    if ws.is_null() || ex.is_null() {
        return fail(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{name}GetWorkspaceSize: NULL workspaceSize/executor"),
        );
    }
    let ws_size = match WS_REQUEST.with(|w| w.get()) {
        0 => ws_size,
        n => n,
    };
    let e = Box::into_raw(Box::new(Executor {
        name,
        thread: std::thread::current().id(),
        ws_size,
        job: Some(job),
    }));
    lock(&EXECUTORS).push(e as usize);
    *ws = ws_size;
    *ex = e;
    OK
}

/// Phase 2: validate workspace + executor, enqueue the kernel (executor is single-use).
unsafe fn phase2(
    name: &str,
    workspace: *mut c_void,
    ws_size: u64,
    ex: *mut Executor,
    stream: *mut c_void,
) -> i32 {
    {
        let mut live = lock(&EXECUTORS);
        match live.iter().position(|&e| e == ex as usize) {
            Some(i) => {
                live.swap_remove(i);
            }
            None => {
                return fail(
                    ACLNN_ERR_PARAM_INVALID,
                    format!("{name}: unknown or already used executor {ex:p}"),
                )
            }
        }
    }
    let mut e = Box::from_raw(ex);
    if e.name != name {
        return fail(
            ACLNN_ERR_PARAM_INVALID,
            format!("{name}: executor belongs to {}", e.name),
        );
    }
    if ws_size < e.ws_size || (e.ws_size > 0 && !is_device(workspace as usize, e.ws_size as usize))
    {
        return fail(
            ACLNN_ERR_PARAM_INVALID,
            format!(
                "{name}: workspace {workspace:p} of {ws_size} bytes, {} device bytes needed",
                e.ws_size
            ),
        );
    }
    let job = e.job.take().unwrap();
    let w = Addr(workspace as usize);
    enqueue(
        stream,
        Box::new(move || {
            let w = w;
            job(w.0)
        }),
    )
}

/// One aclnn operator, both phases, from its two names (ggml-cann's
/// `GGML_CANN_CALL_ACLNN_OP` seen from the library side):
/// * `$p1(args.., workspaceSize, executor)` runs `$check` — CANN's phase-1 argument
///   validation, where the constant `F` names `$p1` in errors — which plans the workspace
///   bytes and the kernel; then the NULL checks of the outputs and a single-use executor;
/// * `$op(workspace, workspaceSize, executor, stream)` is [`phase2`].
macro_rules! aclnn_op {
    ($(#[$doc:meta])* $op:ident, $p1:ident($($arg:ident: $ty:ty),* $(,)?) $check:block) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $p1($($arg: $ty,)* ws: *mut u64, ex: *mut *mut Executor) -> i32 {
            #[allow(unused_variables)]
            unsafe fn check($($arg: $ty),*) -> Result<Planned, i32> {
                const F: &str = stringify!($p1);
                $check
            }
            match check($($arg),*) {
                Ok(Planned(size, kernel)) => finish_phase1(stringify!($op), size, kernel, ws, ex),
                Err(code) => code,
            }
        }
        #[no_mangle]
        pub unsafe extern "C" fn $op(
            ws: *mut c_void,
            n: u64,
            ex: *mut Executor,
            stream: *mut c_void,
        ) -> i32 {
            phase2(stringify!($op), ws, n, ex, stream)
        }
    };
}

unsafe fn tensor<'a>(func: &str, what: &str, t: *const AclTensor) -> Result<&'a AclTensor, i32> {
    let t = live(func, what, "aclTensor (destroyed?)", t)?;
    if t.dtype != ACL_FLOAT {
        return Err(fail(
            ACLNN_ERR_PARAM_INVALID,
            format!(
                "{func}: {what} dtype {} unsupported (stand-in: FLOAT only)",
                t.dtype
            ),
        ));
    }
    t.view.check_device(func, what)?;
    Ok(t)
}

unsafe fn opt_tensor<'a>(
    func: &str,
    what: &str,
    t: *const AclTensor,
) -> Result<Option<&'a AclTensor>, i32> {
    if t.is_null() {
        Ok(None)
    } else {
        tensor(func, what, t).map(Some)
    }
}

/// [`tensor`] for each `(name, pointer)`, in order.
unsafe fn tensors<'a, const N: usize>(
    func: &str,
    ts: [(&str, *const AclTensor); N],
) -> Result<[&'a AclTensor; N], i32> {
    let mut out = Vec::with_capacity(N);
    for (what, t) in ts {
        out.push(tensor(func, what, t)?);
    }
    Ok(out.try_into().unwrap_or_else(|_| unreachable!()))
}

/// [`opt_tensor`] for each `(name, pointer)`, in order.
unsafe fn opt_tensors<'a, const N: usize>(
    func: &str,
    ts: [(&str, *const AclTensor); N],
) -> Result<[Option<&'a AclTensor>; N], i32> {
    let mut out = [None; N];
    for (o, (what, t)) in out.iter_mut().zip(ts) {
        *o = opt_tensor(func, what, t)?;
    }
    Ok(out)
}

/// `Ok` when `ok`, else a phase-1 ACLNN_ERR_PARAM_INVALID error saying `msg()`.
pub(crate) fn ensure(func: &str, ok: bool, msg: impl FnOnce() -> String) -> Result<(), i32> {
    if ok {
        Ok(())
    } else {
        Err(bad(func, msg()))
    }
}

/// A live descriptor of kind `kind` (NULL: ACLNN_ERR_PARAM_NULLPTR).
unsafe fn live<'a, T>(func: &str, what: &str, kind: &str, p: *const T) -> Result<&'a T, i32> {
    if p.is_null() {
        return Err(fail(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{func}: {what} is NULL"),
        ));
    }
    if !is_live(p) {
        return Err(bad(func, format!("{what} {p:p} is not a live {kind}")));
    }
    Ok(&*p)
}

pub(crate) unsafe fn int_array<'a>(
    func: &str,
    what: &str,
    a: *const AclIntArray,
) -> Result<&'a [i64], i32> {
    live(func, what, "aclIntArray", a).map(|a| &a.0[..])
}

pub(crate) unsafe fn bool_array(func: &str, a: *const AclBoolArray) -> Result<Vec<bool>, i32> {
    live(func, "outputMask", "aclBoolArray", a).map(|a| a.0.clone())
}

/// An f32 `aclScalar` argument.
pub(crate) unsafe fn f32_scalar(func: &str, what: &str, s: *const AclScalar) -> Result<f32, i32> {
    let s = live(func, what, "aclScalar", s)?;
    if s.dtype != ACL_FLOAT {
        return Err(bad(
            func,
            format!("{what} dtype {} (stand-in: FLOAT)", s.dtype),
        ));
    }
    Ok(f32::from_ne_bytes([
        s.bits[0], s.bits[1], s.bits[2], s.bits[3],
    ]))
}

/// The views of `ts`, captured by value for the kernel.
pub(crate) fn views<const N: usize>(ts: [&AclTensor; N]) -> [View; N] {
    ts.map(|t| t.view.clone())
}

pub(crate) fn opt_views<const N: usize>(ts: [Option<&AclTensor>; N]) -> [Option<View>; N] {
    ts.map(|t| t.map(|t| t.view.clone()))
}

/// `dims(what) == want` or a phase-1 error naming both.
pub(crate) fn check_dims(func: &str, what: &str, got: &[i64], want: &[i64]) -> Result<(), i32> {
    if got == want {
        Ok(())
    } else {
        Err(bad(func, format!("{what} {got:?} != {want:?}")))
    }
}

/// A softmax dimension `dim` (negative: from the end) of a rank-`r` tensor.
pub(crate) fn softmax_dim(dim: i64, r: usize) -> Option<usize> {
    let r = r as i64;
    let d = if dim < 0 { dim + r } else { dim };
    (0..r).contains(&d).then_some(d as usize)
}

fn bad(func: &str, msg: String) -> i32 {
    fail(ACLNN_ERR_PARAM_INVALID, format!("{func}: {msg}"))
}

// ------------------------------------------------------------------ matmul

/// `out[b] = a[b] @ m[b]` on views of rank 2 (batch 1) or 3; the product is accumulated in
/// the workspace (so a workspace that is too small or freed shows up).
pub(crate) fn matmul_views(a: &View, m: &View, out: &View, ws: usize) {
    let r = a.dims.len();
    let (bsz, mm, kk, nn) = if r == 3 {
        (a.dims[0], a.dims[1], a.dims[2], m.dims[2])
    } else {
        (1, a.dims[0], a.dims[1], m.dims[1])
    };
    let acc = ws as *mut f32;
    for b in 0..bsz {
        for i in 0..mm {
            for j in 0..nn {
                let mut s = 0f32;
                for k in 0..kk {
                    let (x, y) = if r == 3 {
                        (a.get(&[b, i, k]), m.get(&[b, k, j]))
                    } else {
                        (a.get(&[i, k]), m.get(&[k, j]))
                    };
                    s += x * y;
                }
                unsafe { *acc.add((i * nn + j) as usize) = s };
            }
        }
        for i in 0..mm {
            for j in 0..nn {
                let v = unsafe { *acc.add((i * nn + j) as usize) };
                if r == 3 {
                    out.set(&[b, i, j], v)
                } else {
                    out.set(&[i, j], v)
                }
            }
        }
    }
}

unsafe fn mm_check(
    func: &str,
    rank: usize,
    a: *const AclTensor,
    m: *const AclTensor,
    out: *mut AclTensor,
    cube: i8,
) -> Result<Planned, i32> {
    let a = tensor(func, "self", a)?;
    let m = tensor(func, "mat2", m)?;
    let o = tensor(func, "out", out)?;
    check_cube(func, a.dtype, cube)?;
    let (ad, md, od) = (&a.view.dims, &m.view.dims, &o.view.dims);
    if ad.len() != rank || md.len() != rank || od.len() != rank {
        return Err(bad(
            func,
            format!("stand-in supports rank-{rank} operands, got {ad:?} {md:?} {od:?}"),
        ));
    }
    let k = rank - 1;
    let batch_ok = rank == 2 || (ad[0] == md[0] && ad[0] == od[0]);
    if ad[k] != md[k - 1] || od[k - 1] != ad[k - 1] || od[k] != md[k] || !batch_ok {
        return Err(bad(
            func,
            format!("shape mismatch: {ad:?} @ {md:?} -> {od:?}"),
        ));
    }
    let ws_size = (ad[k - 1] * md[k] * 4) as u64;
    let [av, mv, ov] = views([a, m, o]);
    Ok(Planned(
        ws_size,
        Box::new(move |w| {
            matmul_views(&av, &mv, &ov, w);
            Ok(())
        }),
    ))
}

aclnn_op!(aclnnMatmul, aclnnMatmulGetWorkspaceSize(
    a: *const AclTensor,
    m: *const AclTensor,
    out: *mut AclTensor,
    cube: i8,
) {
    mm_check(F, 2, a, m, out, cube)
});

aclnn_op!(aclnnBatchMatMul, aclnnBatchMatMulGetWorkspaceSize(
    a: *const AclTensor,
    m: *const AclTensor,
    out: *mut AclTensor,
    cube: i8,
) {
    mm_check(F, 3, a, m, out, cube)
});

// ------------------------------------------------------------------ layer norm

/// Normalise rows of `x` (row = trailing `q` dims); returns (y, mean, variance) row-major.
pub(crate) fn layer_norm_rows(
    x: &[f32],
    row: usize,
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len().checked_div(row).unwrap_or(0);
    let mut y = vec![0f32; x.len()];
    let (mut means, mut vars) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for r in 0..rows {
        let xs = &x[r * row..(r + 1) * row];
        let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / row as f64;
        let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / row as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for (j, &v) in xs.iter().enumerate() {
            let mut o = (v as f64 - mean) * rstd;
            if let Some(w) = w {
                o *= w[j] as f64;
            }
            if let Some(b) = b {
                o += b[j] as f64;
            }
            y[r * row + j] = o as f32;
        }
        means.push(mean as f32);
        vars.push(var as f32);
    }
    (y, means, vars)
}

/// `normalizedShape` must be a non-empty suffix of the input dims.
pub(crate) fn check_normalized_shape(func: &str, ns: &[i64], xd: &[i64]) -> Result<(), i32> {
    let q = ns.len();
    if q == 0 || q > xd.len() || xd[xd.len() - q..] != ns[..] {
        return Err(bad(
            func,
            format!("normalizedShape {ns:?} is not a suffix of input {xd:?}"),
        ));
    }
    Ok(())
}

aclnn_op!(aclnnLayerNorm, aclnnLayerNormGetWorkspaceSize(
    x: *const AclTensor,
    shape: *const AclIntArray,
    w: *const AclTensor,
    b: *const AclTensor,
    eps: f64,
    out: *mut AclTensor,
    mean: *mut AclTensor,
    rstd: *mut AclTensor,
) {
    let x = tensor(F, "input", x)?;
    if shape.is_null() {
        return Err(fail(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{F}: normalizedShape is NULL"),
        ));
    }
    let ns = (*shape).0.clone();
    let [w, b] = opt_tensors(F, [("weight", w), ("bias", b)])?;
    let o = tensor(F, "out", out)?;
    let [m, rs] = opt_tensors(F, [("meanOut", mean), ("rstdOut", rstd)])?;
    let xd = &x.view.dims;
    check_normalized_shape(F, &ns, xd)?;
    check_dims(F, "out", &o.view.dims, xd)?;
    let mut stat = xd.clone();
    let r = stat.len();
    for d in stat[r - ns.len()..].iter_mut() {
        *d = 1;
    }
    for (what, t, want) in [
        ("weight", w, &ns),
        ("bias", b, &ns),
        ("meanOut", m, &stat),
        ("rstdOut", rs, &stat),
    ] {
        if let Some(t) = t {
            check_dims(F, what, &t.view.dims, want)?;
        }
    }
    let row: i64 = ns.iter().product();
    let [xv, ov] = views([x, o]);
    let [wv, bv, mv, rv] = opt_views([w, b, m, rs]);
    plan(move || {
        let (wd, bd) = (wv.map(|v| v.read()), bv.map(|v| v.read()));
        let (y, means, vars) =
            layer_norm_rows(&xv.read(), row as usize, wd.as_deref(), bd.as_deref(), eps);
        ov.write(&y);
        if let Some(mv) = mv {
            mv.write(&means);
        }
        if let Some(rv) = rv {
            let rstd: Vec<f32> = vars
                .iter()
                .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
                .collect();
            rv.write(&rstd);
        }
    })
});

// ------------------------------------------------------------------ softmax

pub(crate) fn softmax_view(x: &View, dim: usize, out: &View) {
    let n = x.dims[dim];
    let mut outer = x.dims.clone();
    outer[dim] = 1;
    for_each_index(&outer, |base| {
        let mut idx = base.to_vec();
        let mut vals = Vec::with_capacity(n as usize);
        for i in 0..n {
            idx[dim] = i;
            vals.push(x.get(&idx));
        }
        let mx = vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = vals.iter().map(|v| (v - mx).exp()).sum();
        for i in 0..n {
            idx[dim] = i;
            out.set(&idx, (vals[i as usize] - mx).exp() / s);
        }
    });
}

aclnn_op!(aclnnSoftmax, aclnnSoftmaxGetWorkspaceSize(
    x: *const AclTensor,
    dim: i64,
    out: *mut AclTensor,
) {
    let x = tensor(F, "self", x)?;
    let o = tensor(F, "out", out)?;
    let d = softmax_dim(dim, x.view.dims.len()).filter(|_| o.view.dims == x.view.dims);
    let d = d.ok_or_else(|| {
        bad(F, format!("dim {dim} / shapes {:?} -> {:?}", x.view.dims, o.view.dims))
    })?;
    let [xv, ov] = views([x, o]);
    plan(move || softmax_view(&xv, d, &ov))
});

// ------------------------------------------------------------------ gelu

/// erf, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
fn erf(x: f64) -> f64 {
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    s * y
}

pub(crate) fn gelu(v: f32, tanh: bool) -> f32 {
    let x = v as f64;
    let y = if tanh {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    } else {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    };
    y as f32
}

/// `out = op(self, flag)` elementwise, same shape.
unsafe fn unary(
    f: &str,
    x: *const AclTensor,
    out: *mut AclTensor,
    op: fn(f32, bool) -> f32,
    flag: bool,
) -> Result<Planned, i32> {
    let x = tensor(f, "self", x)?;
    let o = tensor(f, "out", out)?;
    if o.view.dims != x.view.dims {
        return Err(bad(
            f,
            format!("shapes {:?} -> {:?}", x.view.dims, o.view.dims),
        ));
    }
    let [xv, ov] = views([x, o]);
    plan(move || {
        let y: Vec<f32> = xv.read().into_iter().map(|v| op(v, flag)).collect();
        ov.write(&y);
    })
}

aclnn_op!(aclnnGelu, aclnnGeluGetWorkspaceSize(x: *const AclTensor, out: *mut AclTensor) {
    unary(F, x, out, gelu, true)
});

aclnn_op!(aclnnGeluV2, aclnnGeluV2GetWorkspaceSize(
    x: *const AclTensor,
    approximate: i64,
    out: *mut AclTensor,
) {
    if !(0..=1).contains(&approximate) {
        return Err(bad(
            F,
            format!("approximate {approximate} not in {{0, 1}}"),
        ));
    }
    unary(F, x, out, gelu, approximate == 1)
});

// ------------------------------------------------------------------ add / mul / div (broadcasting)

/// NumPy broadcasting of two shapes (None: incompatible).
fn broadcast(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let r = a.len().max(b.len());
    // Dim `i` of `v` right-aligned to rank `r` (1 where `v` has no such dim).
    let dim = |v: &[i64], i: usize| (i + v.len()).checked_sub(r).map_or(1, |j| v[j]);
    (0..r)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

fn bget(v: &View, out_idx: &[i64]) -> f32 {
    let r = out_idx.len();
    let k = v.dims.len();
    let idx: Vec<i64> = (0..k)
        .map(|i| {
            if v.dims[i] == 1 {
                0
            } else {
                out_idx[r - k + i]
            }
        })
        .collect();
    v.get(&idx)
}

/// `out = op(self, other)` with broadcasting.
pub(crate) unsafe fn binary(
    f: &str,
    a: *const AclTensor,
    b: *const AclTensor,
    out: *mut AclTensor,
    op: impl Fn(f32, f32) -> f32 + Send + 'static,
) -> Result<Planned, i32> {
    let a = tensor(f, "self", a)?;
    let b = tensor(f, "other", b)?;
    let o = tensor(f, "out", out)?;
    let out_dims = broadcast(&a.view.dims, &b.view.dims);
    ensure(f, out_dims.as_ref() == Some(&o.view.dims), || {
        let (ad, bd, od) = (&a.view.dims, &b.view.dims, &o.view.dims);
        format!("cannot broadcast {ad:?} and {bd:?} to {od:?}")
    })?;
    let [av, bv, ov] = views([a, b, o]);
    plan(move || {
        let mut vals = Vec::with_capacity(ov.numel());
        for_each_index(&ov.dims, |i| vals.push(op(bget(&av, i), bget(&bv, i))));
        ov.write(&vals);
    })
}

/// Two same-shape inputs and an output of that shape (named `what`); `f(a, b)` per element.
pub(crate) unsafe fn zip2(
    func: &str,
    what: (&str, &str, &str),
    a: *const AclTensor,
    b: *const AclTensor,
    out: *mut AclTensor,
    f: impl Fn(f32, f32) -> f32 + Send + 'static,
) -> Result<Planned, i32> {
    let a = tensor(func, what.0, a)?;
    let b = tensor(func, what.1, b)?;
    let o = tensor(func, what.2, out)?;
    if a.view.dims != b.view.dims || o.view.dims != a.view.dims {
        return Err(bad(
            func,
            format!(
                "{} {:?}, {} {:?} and {} {:?} must have one shape",
                what.0, a.view.dims, what.1, b.view.dims, what.2, o.view.dims
            ),
        ));
    }
    let [av, bv, ov] = views([a, b, o]);
    plan(move || {
        let (x, y) = (av.read(), bv.read());
        let r: Vec<f32> = x.iter().zip(&y).map(|(&p, &q)| f(p, q)).collect();
        ov.write(&r);
    })
}

aclnn_op!(aclnnAdd, aclnnAddGetWorkspaceSize(
    a: *const AclTensor,
    b: *const AclTensor,
    alpha: *const AclScalar,
    out: *mut AclTensor,
) {
    let al = f32_scalar(F, "alpha", alpha)?;
    binary(F, a, b, out, move |x, y| x + al * y)
});

aclnn_op!(aclnnMul, aclnnMulGetWorkspaceSize(
    a: *const AclTensor,
    b: *const AclTensor,
    out: *mut AclTensor,
) {
    binary(F, a, b, out, |x, y| x * y)
});

mod extra;
mod flash;
mod more;
