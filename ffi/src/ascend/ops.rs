//! Operator execution: aclnn two-phase calls (preferred) with an aclop
//! (`aclopCompileAndExecute`) fallback when an aclnn symbol is missing.
//!
//! aclnn pattern (opbase `acl_meta.h`, torch_npu `EXEC_NPU_CMD`): wrap device pointers in
//! `aclTensor`s, call `aclnnXGetWorkspaceSize(.., &ws, &executor)`, allocate the workspace,
//! call `aclnnX(workspace, ws, executor, stream)` (asynchronous), destroy the descriptors;
//! the workspace is kept until the stream is synchronised ([`Stream::retain_until_sync`]).
//!
//! aclop pattern (torch_npu `OpCommand`): `aclTensorDesc` + `aclDataBuffer` per input and
//! output (absent optional inputs as an `ACL_DT_UNDEFINED` desc with a null buffer), an
//! `aclopAttr`, then `aclopCompileAndExecute(op, .., ACL_ENGINE_SYS, ACL_COMPILE_SYS, NULL,
//! stream)`. Op types and attribute names: research notes §2a.

use super::alloc::{DeviceBuffer, Element};
use super::error::{aclnn_status_class, AscendError, Result};
use super::runtime::{AscendRuntime, Stream};
use crate::aclnn::{
    aclBoolArray, aclIntArray, aclOpExecutor, aclScalar, aclTensor, aclnnStatus, NnopBase, OpApi,
};
use crate::sys::types::*;
use std::ffi::{c_void, CString};
use std::marker::PhantomData;

/// Shape, strides (in elements) and element offset of a tensor view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Sizes.
    pub dims: Vec<i64>,
    /// Strides in elements.
    pub strides: Vec<i64>,
    /// Offset of the first element, in elements.
    pub offset: i64,
}

impl Layout {
    /// Row-major contiguous layout.
    pub fn contiguous(dims: &[i64]) -> Layout {
        let mut strides = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1].max(1);
        }
        Layout {
            dims: dims.to_vec(),
            strides,
            offset: 0,
        }
    }
    /// The same storage seen with the last two dimensions swapped (a transpose view).
    pub fn transpose_last2(&self) -> Layout {
        let mut l = self.clone();
        let n = l.dims.len();
        if n >= 2 {
            l.dims.swap(n - 1, n - 2);
            l.strides.swap(n - 1, n - 2);
        }
        l
    }
    /// Number of elements of the view.
    pub fn numel(&self) -> i64 {
        self.dims.iter().product()
    }
    /// Whether the view is row-major contiguous (offset ignored).
    pub fn is_contiguous(&self) -> bool {
        *self
            == Layout {
                offset: self.offset,
                ..Layout::contiguous(&self.dims)
            }
    }
    /// One past the largest element index the view touches (0 for empty views).
    pub fn extent(&self) -> Result<i64> {
        if self.dims.len() != self.strides.len() {
            return Err(AscendError::Invalid(
                "dims and strides differ in length".into(),
            ));
        }
        if self.dims.iter().any(|&d| d < 0)
            || self.strides.iter().any(|&s| s < 0)
            || self.offset < 0
        {
            return Err(AscendError::Invalid(format!(
                "negative size/stride/offset in {self:?}"
            )));
        }
        if self.dims.contains(&0) {
            return Ok(0);
        }
        Ok(self.offset
            + 1
            + self
                .dims
                .iter()
                .zip(&self.strides)
                .map(|(d, s)| (d - 1) * s)
                .sum::<i64>())
    }
}

/// A typed view of a device buffer, passed to the operators. Inputs borrow the buffer
/// shared, outputs borrow it exclusively.
pub struct TensorArg<'a> {
    ptr: *mut c_void,
    layout: Layout,
    dtype: aclDataType,
    elem: usize,
    _borrow: PhantomData<&'a DeviceBuffer>,
}

impl<'a> TensorArg<'a> {
    fn new<T: Element>(buf: &DeviceBuffer, layout: Layout) -> Result<Self> {
        let need = layout.extent()? as usize * std::mem::size_of::<T>();
        if need > buf.len() {
            return Err(AscendError::Invalid(format!(
                "view {layout:?} needs {need} bytes, buffer has {}",
                buf.len()
            )));
        }
        Ok(TensorArg {
            ptr: buf.as_ptr(),
            layout,
            dtype: T::ACL,
            elem: std::mem::size_of::<T>(),
            _borrow: PhantomData,
        })
    }
    /// Input view of `buf` with `layout` (bounds-checked).
    pub fn input<T: Element>(buf: &'a DeviceBuffer, layout: Layout) -> Result<Self> {
        Self::new::<T>(buf, layout)
    }
    /// Output view of `buf` with `layout` (bounds-checked).
    pub fn output<T: Element>(buf: &'a mut DeviceBuffer, layout: Layout) -> Result<Self> {
        Self::new::<T>(buf, layout)
    }
    /// The view's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The `aclDataType`.
    pub fn dtype(&self) -> aclDataType {
        self.dtype
    }
    fn dims(&self) -> &[i64] {
        &self.layout.dims
    }
}

/// Which operator library to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpPath {
    /// aclnn when the runtime exports the op, else aclop.
    Auto,
    /// aclnn only (error if missing).
    Aclnn,
    /// aclop only (`aclopCompileAndExecute`).
    Aclop,
}

/// Pointwise aclnn operators of the form `(self, out)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `aclnnRelu`
    Relu,
    /// `aclnnSigmoid`
    Sigmoid,
    /// `aclnnExp`
    Exp,
    /// `aclnnSin`
    Sin,
    /// `aclnnCos`
    Cos,
    /// `aclnnSqrt`
    Sqrt,
}

impl UnaryOp {
    /// The aclnn names of both phases.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            UnaryOp::Relu => ("aclnnReluGetWorkspaceSize", "aclnnRelu"),
            UnaryOp::Sigmoid => ("aclnnSigmoidGetWorkspaceSize", "aclnnSigmoid"),
            UnaryOp::Exp => ("aclnnExpGetWorkspaceSize", "aclnnExp"),
            UnaryOp::Sin => ("aclnnSinGetWorkspaceSize", "aclnnSin"),
            UnaryOp::Cos => ("aclnnCosGetWorkspaceSize", "aclnnCos"),
            UnaryOp::Sqrt => ("aclnnSqrtGetWorkspaceSize", "aclnnSqrt"),
        }
    }
}

type UnaryPhase1 = unsafe extern "C" fn(
    *const aclTensor,
    *mut aclTensor,
    *mut u64,
    *mut *mut aclOpExecutor,
) -> aclnnStatus;

/// GELU flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluApprox {
    /// Exact, with erf (`nn.GELU()`, SAM's MLP).
    Erf,
    /// tanh approximation.
    Tanh,
}

// ------------------------------------------------------------------------------------------
// aclnn descriptors (RAII)

struct AclnnTensor<'n> {
    nn: &'n NnopBase,
    raw: *mut aclTensor,
}
impl Drop for AclnnTensor<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.nn.aclDestroyTensor {
            unsafe { f(self.raw) };
        }
    }
}
struct AclnnIntArray<'n> {
    nn: &'n NnopBase,
    raw: *mut aclIntArray,
}
impl Drop for AclnnIntArray<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.nn.aclDestroyIntArray {
            unsafe { f(self.raw) };
        }
    }
}
struct AclnnBoolArray<'n> {
    nn: &'n NnopBase,
    raw: *mut aclBoolArray,
}
impl Drop for AclnnBoolArray<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.nn.aclDestroyBoolArray {
            unsafe { f(self.raw) };
        }
    }
}
struct AclnnScalar<'n> {
    nn: &'n NnopBase,
    raw: *mut aclScalar,
}
impl Drop for AclnnScalar<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.nn.aclDestroyScalar {
            unsafe { f(self.raw) };
        }
    }
}

fn need<T>(f: Option<T>, func: &'static str, lib: &'static str) -> Result<T> {
    f.ok_or(AscendError::MissingSymbol { func, lib })
}

fn nn_tensor<'n>(nn: &'n NnopBase, t: &TensorArg) -> Result<AclnnTensor<'n>> {
    let create = need(nn.aclCreateTensor, "aclCreateTensor", "libnnopbase.so")?;
    let l = &t.layout;
    // Plain tensors: storage = view dims. Strided views: 1-D storage of the touched extent.
    let storage: Vec<i64> = if l.is_contiguous() && l.offset == 0 {
        l.dims.clone()
    } else {
        vec![l.extent()?]
    };
    // SAFETY: arrays outlive the call; the data pointer is a live device buffer.
    let raw = unsafe {
        create(
            l.dims.as_ptr(),
            l.dims.len() as u64,
            t.dtype,
            l.strides.as_ptr(),
            l.offset,
            ACL_FORMAT_ND,
            storage.as_ptr(),
            storage.len() as u64,
            t.ptr,
        )
    };
    if raw.is_null() {
        return Err(AscendError::Aclnn {
            func: "aclCreateTensor",
            code: -1,
            class: "returned NULL",
            msg: None,
        });
    }
    Ok(AclnnTensor { nn, raw })
}

fn nn_opt_tensor<'n>(nn: &'n NnopBase, t: Option<&TensorArg>) -> Result<Option<AclnnTensor<'n>>> {
    t.map(|t| nn_tensor(nn, t)).transpose()
}

fn raw_or_null(t: &Option<AclnnTensor>) -> *mut aclTensor {
    t.as_ref().map_or(std::ptr::null_mut(), |t| t.raw)
}

fn nn_int_array<'n>(nn: &'n NnopBase, v: &[i64]) -> Result<AclnnIntArray<'n>> {
    let create = need(nn.aclCreateIntArray, "aclCreateIntArray", "libnnopbase.so")?;
    let raw = unsafe { create(v.as_ptr(), v.len() as u64) };
    if raw.is_null() {
        return Err(AscendError::Aclnn {
            func: "aclCreateIntArray",
            code: -1,
            class: "returned NULL",
            msg: None,
        });
    }
    Ok(AclnnIntArray { nn, raw })
}

fn nn_bool_array<'n>(nn: &'n NnopBase, v: &[bool]) -> Result<AclnnBoolArray<'n>> {
    let create = need(
        nn.aclCreateBoolArray,
        "aclCreateBoolArray",
        "libnnopbase.so",
    )?;
    let raw = unsafe { create(v.as_ptr(), v.len() as u64) };
    if raw.is_null() {
        return Err(AscendError::Aclnn {
            func: "aclCreateBoolArray",
            code: -1,
            class: "returned NULL",
            msg: None,
        });
    }
    Ok(AclnnBoolArray { nn, raw })
}

fn nn_scalar_f32<'n>(nn: &'n NnopBase, v: f32) -> Result<AclnnScalar<'n>> {
    let create = need(nn.aclCreateScalar, "aclCreateScalar", "libnnopbase.so")?;
    let mut v = v;
    // SAFETY: aclCreateScalar copies the value.
    let raw = unsafe { create((&mut v as *mut f32).cast(), ACL_FLOAT) };
    if raw.is_null() {
        return Err(AscendError::Aclnn {
            func: "aclCreateScalar",
            code: -1,
            class: "returned NULL",
            msg: None,
        });
    }
    Ok(AclnnScalar { nn, raw })
}

/// Map an `aclnnStatus`.
pub fn check_aclnn(rt: &AscendRuntime, func: &'static str, code: aclnnStatus) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(AscendError::Aclnn {
        func,
        code,
        class: aclnn_status_class(code),
        msg: rt.recent_error_message(),
    })
}

type Phase2 =
    unsafe extern "C" fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus;

// ------------------------------------------------------------------------------------------
// aclop builder (RAII)

struct AclopCall<'r> {
    rt: &'r AscendRuntime,
    op: &'static str,
    in_desc: Vec<*mut aclTensorDesc>,
    in_buf: Vec<*mut aclDataBuffer>,
    out_desc: Vec<*mut aclTensorDesc>,
    out_buf: Vec<*mut aclDataBuffer>,
    attr: *mut aclopAttr,
}

impl Drop for AclopCall<'_> {
    fn drop(&mut self) {
        let a = &self.rt.acl;
        for d in self.in_desc.iter().chain(&self.out_desc) {
            if let Ok(f) = a.aclDestroyTensorDesc.as_ref() {
                unsafe { f(*d) };
            }
        }
        for b in self.in_buf.iter().chain(&self.out_buf) {
            if let Ok(f) = a.aclDestroyDataBuffer.as_ref() {
                unsafe { f(*b) };
            }
        }
        if !self.attr.is_null() {
            if let Ok(f) = a.aclopDestroyAttr.as_ref() {
                unsafe { f(self.attr) };
            }
        }
    }
}

fn acl_fn<T: Copy>(f: &std::result::Result<T, libloading::Error>, func: &'static str) -> Result<T> {
    f.as_ref()
        .map(|f| *f)
        .map_err(|_| AscendError::MissingSymbol {
            func,
            lib: "libascendcl.so",
        })
}

impl<'r> AclopCall<'r> {
    fn new(rt: &'r AscendRuntime, op: &'static str) -> Result<Self> {
        if rt.op_compiler.is_none() {
            return Err(AscendError::MissingSymbol {
                func: "aclopCompileAndExecute",
                lib: "libacl_op_compiler.so",
            });
        }
        let attr = unsafe { acl_fn(&rt.acl.aclopCreateAttr, "aclopCreateAttr")?() };
        if attr.is_null() {
            return Err(AscendError::Invalid("aclopCreateAttr returned NULL".into()));
        }
        Ok(AclopCall {
            rt,
            op,
            in_desc: vec![],
            in_buf: vec![],
            out_desc: vec![],
            out_buf: vec![],
            attr,
        })
    }

    /// Desc + buffer for a view whose storage is contiguous in `dims` order.
    fn desc(
        &self,
        t: &TensorArg,
        dims: &[i64],
    ) -> Result<(*mut aclTensorDesc, *mut aclDataBuffer)> {
        let cd = acl_fn(&self.rt.acl.aclCreateTensorDesc, "aclCreateTensorDesc")?;
        let cb = acl_fn(&self.rt.acl.aclCreateDataBuffer, "aclCreateDataBuffer")?;
        let d = unsafe { cd(t.dtype, dims.len() as i32, dims.as_ptr(), ACL_FORMAT_ND) };
        let bytes = dims.iter().product::<i64>() as usize * t.elem;
        let data = unsafe { (t.ptr as *mut u8).add(t.layout.offset as usize * t.elem) };
        let b = unsafe { cb(data.cast(), bytes) };
        if d.is_null() || b.is_null() {
            return Err(AscendError::Invalid(format!(
                "{}: cannot create aclop descriptors",
                self.op
            )));
        }
        Ok((d, b))
    }
    fn input(&mut self, t: &TensorArg, dims: &[i64]) -> Result<()> {
        let (d, b) = self.desc(t, dims)?;
        self.in_desc.push(d);
        self.in_buf.push(b);
        Ok(())
    }
    fn contiguous_input(&mut self, t: &TensorArg) -> Result<()> {
        require_contiguous(self.op, t)?;
        self.input(t, t.dims())
    }
    fn output(&mut self, t: &TensorArg) -> Result<()> {
        require_contiguous(self.op, t)?;
        let (d, b) = self.desc(t, t.dims())?;
        self.out_desc.push(d);
        self.out_buf.push(b);
        Ok(())
    }
    /// Absent optional input: undefined desc + null buffer (keeps input positions).
    fn none_input(&mut self) -> Result<()> {
        let cd = acl_fn(&self.rt.acl.aclCreateTensorDesc, "aclCreateTensorDesc")?;
        let cb = acl_fn(&self.rt.acl.aclCreateDataBuffer, "aclCreateDataBuffer")?;
        let d = unsafe { cd(ACL_DT_UNDEFINED, 0, std::ptr::null(), ACL_FORMAT_UNDEFINED) };
        let b = unsafe { cb(std::ptr::null_mut(), 0) };
        self.in_desc.push(d);
        self.in_buf.push(b);
        Ok(())
    }
    fn attr_bool(&mut self, name: &str, v: bool) -> Result<()> {
        let f = acl_fn(&self.rt.acl.aclopSetAttrBool, "aclopSetAttrBool")?;
        let n = CString::new(name).unwrap();
        self.rt.check("aclopSetAttrBool", unsafe {
            f(self.attr, n.as_ptr(), v as u8)
        })
    }
    fn attr_int(&mut self, name: &str, v: i64) -> Result<()> {
        let f = acl_fn(&self.rt.acl.aclopSetAttrInt, "aclopSetAttrInt")?;
        let n = CString::new(name).unwrap();
        self.rt
            .check("aclopSetAttrInt", unsafe { f(self.attr, n.as_ptr(), v) })
    }
    fn attr_float(&mut self, name: &str, v: f32) -> Result<()> {
        let f = acl_fn(&self.rt.acl.aclopSetAttrFloat, "aclopSetAttrFloat")?;
        let n = CString::new(name).unwrap();
        self.rt
            .check("aclopSetAttrFloat", unsafe { f(self.attr, n.as_ptr(), v) })
    }
    fn attr_string(&mut self, name: &str, v: &str) -> Result<()> {
        let f = acl_fn(&self.rt.acl.aclopSetAttrString, "aclopSetAttrString")?;
        let n = CString::new(name).unwrap();
        let s = CString::new(v).unwrap();
        self.rt.check("aclopSetAttrString", unsafe {
            f(self.attr, n.as_ptr(), s.as_ptr())
        })
    }
    fn attr_list_int(&mut self, name: &str, v: &[i64]) -> Result<()> {
        let f = acl_fn(&self.rt.acl.aclopSetAttrListInt, "aclopSetAttrListInt")?;
        let n = CString::new(name).unwrap();
        self.rt.check("aclopSetAttrListInt", unsafe {
            f(self.attr, n.as_ptr(), v.len() as i32, v.as_ptr())
        })
    }
    fn execute(self, stream: &Stream) -> Result<()> {
        let oc = self.rt.op_compiler.as_ref().expect("checked in new");
        let f = oc
            .aclopCompileAndExecute
            .as_ref()
            .map_err(|_| AscendError::MissingSymbol {
                func: "aclopCompileAndExecute",
                lib: "libacl_op_compiler.so",
            })?;
        let op = CString::new(self.op).unwrap();
        // SAFETY: arrays of live descriptors; buffers point at live device memory.
        let code = unsafe {
            f(
                op.as_ptr(),
                self.in_desc.len() as i32,
                self.in_desc.as_ptr() as *const *const aclTensorDesc,
                self.in_buf.as_ptr() as *const *const aclDataBuffer,
                self.out_desc.len() as i32,
                self.out_desc.as_ptr() as *const *const aclTensorDesc,
                self.out_buf.as_ptr(),
                self.attr,
                ACL_ENGINE_SYS as _,
                ACL_COMPILE_SYS as _,
                std::ptr::null(),
                stream.raw(),
            )
        };
        self.rt.check("aclopCompileAndExecute", code)
    }
}

fn require_contiguous(op: &str, t: &TensorArg) -> Result<()> {
    if t.layout.is_contiguous() {
        Ok(())
    } else {
        Err(AscendError::Invalid(format!(
            "{op} (aclop path) needs contiguous tensors, got {:?}",
            t.layout
        )))
    }
}

/// For aclop matmuls: storage dims of a view that is contiguous or a last-two-dims transpose
/// of a contiguous tensor, and whether it is transposed.
fn matrix_storage(op: &str, t: &TensorArg) -> Result<(Vec<i64>, bool)> {
    if t.layout.is_contiguous() {
        return Ok((t.layout.dims.clone(), false));
    }
    let tr = t.layout.transpose_last2();
    if t.layout.dims.len() >= 2 && tr.is_contiguous() {
        return Ok((tr.dims, true));
    }
    Err(AscendError::Invalid(format!(
        "{op} (aclop path): unsupported strided view {:?}",
        t.layout
    )))
}

// ------------------------------------------------------------------------------------------
// the operators

/// Operator launcher bound to one stream.
pub struct Ops<'s> {
    stream: &'s Stream,
    path: OpPath,
    cube_math_type: i8,
}

impl<'s> Ops<'s> {
    /// Launcher on `stream`, [`OpPath::Auto`], `cubeMathType = 0` (KEEP_DTYPE).
    pub fn new(stream: &'s Stream) -> Self {
        Ops {
            stream,
            path: OpPath::Auto,
            cube_math_type: 0,
        }
    }
    /// Choose the operator library.
    pub fn with_path(mut self, path: OpPath) -> Self {
        self.path = path;
        self
    }
    /// `cubeMathType` for matmul/conv (0 KEEP_DTYPE, 1 ALLOW_FP32_DOWN_PRECISION, 2 USE_FP16,
    /// 3 USE_HF32).
    pub fn with_cube_math_type(mut self, t: i8) -> Self {
        self.cube_math_type = t;
        self
    }

    fn rt(&self) -> &'static AscendRuntime {
        self.stream.device().runtime()
    }

    /// aclnn tables if the path allows aclnn and both phases of the op exist.
    fn aclnn<F>(
        &self,
        pick: impl Fn(&OpApi) -> Option<F>,
        name: &'static str,
    ) -> Result<Option<(&'static NnopBase, F)>> {
        let rt = self.rt();
        let found = match (rt.nnopbase.as_ref(), rt.opapi.as_ref()) {
            (Some(nn), Some(api)) => pick(api).map(|f| (nn, f)),
            _ => None,
        };
        match (self.path, found) {
            (OpPath::Aclop, _) => Ok(None),
            (_, Some(x)) => Ok(Some(x)),
            (OpPath::Aclnn, None) => Err(AscendError::MissingSymbol {
                func: name,
                lib: "libopapi.so / libnnopbase.so",
            }),
            (OpPath::Auto, None) => Ok(None),
        }
    }

    /// Run both aclnn phases on the stream.
    fn two_phase(
        &self,
        name: (&'static str, &'static str),
        phase1: impl FnOnce(*mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        phase2: Phase2,
    ) -> Result<()> {
        let rt = self.rt();
        let dev = self.stream.device();
        dev.bind_thread()?;
        let mut ws = 0u64;
        let mut ex: *mut aclOpExecutor = std::ptr::null_mut();
        check_aclnn(rt, name.0, phase1(&mut ws, &mut ex))?;
        if ex.is_null() {
            return Err(AscendError::Aclnn {
                func: name.0,
                code: -1,
                class: "returned a NULL executor",
                msg: None,
            });
        }
        let wsbuf = if ws > 0 {
            Some(dev.alloc(ws as usize)?)
        } else {
            None
        };
        let wsptr = wsbuf.as_ref().map_or(std::ptr::null_mut(), |b| b.as_ptr());
        // SAFETY: executor from phase 1, workspace of the requested size on this device.
        check_aclnn(rt, name.1, unsafe {
            phase2(wsptr, ws, ex, self.stream.raw())
        })?;
        if let Some(b) = wsbuf {
            self.stream.retain_until_sync(b);
        }
        Ok(())
    }

    /// `out = a @ b` for 2-D (and broadcast batched, aclnn only) matrices. Transposed operands
    /// are strided views ([`Layout::transpose_last2`]).
    pub fn matmul(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        if let Some((nn, (p1, p2))) = self.aclnn(
            |api| api.aclnnMatmulGetWorkspaceSize.zip(api.aclnnMatmul),
            "aclnnMatmul",
        )? {
            let (ta, tb, to) = (nn_tensor(nn, a)?, nn_tensor(nn, b)?, nn_tensor(nn, out)?);
            let cm = self.cube_math_type;
            return self.two_phase(
                ("aclnnMatmulGetWorkspaceSize", "aclnnMatmul"),
                |ws, ex| unsafe { p1(ta.raw, tb.raw, to.raw, cm, ws, ex) },
                p2,
            );
        }
        if a.dims().len() != 2 || b.dims().len() != 2 {
            return Err(AscendError::Invalid(
                "MatMulV2 (aclop) takes 2-D operands".into(),
            ));
        }
        let mut c = AclopCall::new(self.rt(), "MatMulV2")?;
        let (da, tra) = matrix_storage("MatMulV2", a)?;
        let (db, trb) = matrix_storage("MatMulV2", b)?;
        c.input(a, &da)?;
        c.input(b, &db)?;
        c.output(out)?;
        c.attr_bool("transpose_x1", tra)?;
        c.attr_bool("transpose_x2", trb)?;
        c.attr_int("offset_x", 0)?;
        c.execute(self.stream)
    }

    /// Batched `out[i] = a[i] @ b[i]` for 3-D tensors.
    pub fn batch_matmul(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        if let Some((nn, (p1, p2))) = self.aclnn(
            |api| {
                api.aclnnBatchMatMulGetWorkspaceSize
                    .zip(api.aclnnBatchMatMul)
            },
            "aclnnBatchMatMul",
        )? {
            let (ta, tb, to) = (nn_tensor(nn, a)?, nn_tensor(nn, b)?, nn_tensor(nn, out)?);
            let cm = self.cube_math_type;
            return self.two_phase(
                ("aclnnBatchMatMulGetWorkspaceSize", "aclnnBatchMatMul"),
                |ws, ex| unsafe { p1(ta.raw, tb.raw, to.raw, cm, ws, ex) },
                p2,
            );
        }
        let mut c = AclopCall::new(self.rt(), "BatchMatMul")?;
        let (da, tra) = matrix_storage("BatchMatMul", a)?;
        let (db, trb) = matrix_storage("BatchMatMul", b)?;
        c.input(a, &da)?;
        c.input(b, &db)?;
        c.output(out)?;
        c.attr_bool("adj_x1", tra)?;
        c.attr_bool("adj_x2", trb)?;
        c.execute(self.stream)
    }

    /// Layer norm over the trailing `normalized` dims. aclnn writes `mean` and `rstd`
    /// (`1/sqrt(var+eps)`); the aclop fallback produces mean and *variance*, so `rstd` must be
    /// `None` there.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        x: &TensorArg,
        normalized: &[i64],
        weight: Option<&TensorArg>,
        bias: Option<&TensorArg>,
        eps: f64,
        out: &TensorArg,
        mean: Option<&TensorArg>,
        rstd: Option<&TensorArg>,
    ) -> Result<()> {
        if let Some((nn, (p1, p2))) = self.aclnn(
            |api| api.aclnnLayerNormGetWorkspaceSize.zip(api.aclnnLayerNorm),
            "aclnnLayerNorm",
        )? {
            let tx = nn_tensor(nn, x)?;
            let ns = nn_int_array(nn, normalized)?;
            let (tw, tb) = (nn_opt_tensor(nn, weight)?, nn_opt_tensor(nn, bias)?);
            let to = nn_tensor(nn, out)?;
            let (tm, tr) = (nn_opt_tensor(nn, mean)?, nn_opt_tensor(nn, rstd)?);
            return self.two_phase(
                ("aclnnLayerNormGetWorkspaceSize", "aclnnLayerNorm"),
                |ws, ex| unsafe {
                    p1(
                        tx.raw,
                        ns.raw,
                        raw_or_null(&tw),
                        raw_or_null(&tb),
                        eps,
                        to.raw,
                        raw_or_null(&tm),
                        raw_or_null(&tr),
                        ws,
                        ex,
                    )
                },
                p2,
            );
        }
        if rstd.is_some() {
            return Err(AscendError::Invalid(
                "aclop LayerNorm yields variance, not rstd".into(),
            ));
        }
        let (Some(w), Some(b)) = (weight, bias) else {
            return Err(AscendError::Invalid(
                "aclop LayerNorm needs gamma and beta".into(),
            ));
        };
        let r = x.dims().len() as i64;
        let axis = r - normalized.len() as i64;
        // mean / variance have x's shape with the normalised dims set to 1.
        let mut stat_dims = x.dims().to_vec();
        for d in stat_dims.iter_mut().skip(axis as usize) {
            *d = 1;
        }
        let n_stat = stat_dims.iter().product::<i64>() as usize;
        let dev = self.stream.device();
        let tmp_mean = dev.alloc(n_stat * x.elem)?;
        let tmp_var = dev.alloc(n_stat * x.elem)?;
        let mut c = AclopCall::new(self.rt(), "LayerNorm")?;
        c.contiguous_input(x)?;
        c.contiguous_input(w)?;
        c.contiguous_input(b)?;
        c.output(out)?;
        let sl = Layout::contiguous(&stat_dims);
        let own_mean;
        let mean_arg = match mean {
            Some(m) => m,
            None => {
                own_mean = TensorArg::new::<f32>(&tmp_mean, sl.clone())?.with_dtype(x);
                &own_mean
            }
        };
        c.output(mean_arg)?;
        let var_arg = TensorArg::new::<f32>(&tmp_var, sl)?.with_dtype(x);
        c.output(&var_arg)?;
        c.attr_int("begin_norm_axis", axis)?;
        c.attr_int("begin_params_axis", axis)?;
        c.attr_float("epsilon", eps as f32)?;
        c.execute(self.stream)?;
        self.stream.retain_until_sync(tmp_mean);
        self.stream.retain_until_sync(tmp_var);
        Ok(())
    }

    /// Layer-norm backward (aclnn only): gradients for input / weight / bias (each optional).
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        grad_out: &TensorArg,
        x: &TensorArg,
        normalized: &[i64],
        mean: &TensorArg,
        rstd: &TensorArg,
        weight: Option<&TensorArg>,
        bias: Option<&TensorArg>,
        grad_in: Option<&TensorArg>,
        grad_weight: Option<&TensorArg>,
        grad_bias: Option<&TensorArg>,
    ) -> Result<()> {
        let Some((nn, (p1, p2))) = self.aclnn(
            |api| {
                api.aclnnLayerNormBackwardGetWorkspaceSize
                    .zip(api.aclnnLayerNormBackward)
            },
            "aclnnLayerNormBackward",
        )?
        else {
            return Err(AscendError::MissingSymbol {
                func: "aclnnLayerNormBackward",
                lib: "libopapi.so",
            });
        };
        let (tg, tx) = (nn_tensor(nn, grad_out)?, nn_tensor(nn, x)?);
        let ns = nn_int_array(nn, normalized)?;
        let (tm, tr) = (nn_tensor(nn, mean)?, nn_tensor(nn, rstd)?);
        let (tw, tb) = (nn_opt_tensor(nn, weight)?, nn_opt_tensor(nn, bias)?);
        let mask = nn_bool_array(
            nn,
            &[
                grad_in.is_some(),
                grad_weight.is_some(),
                grad_bias.is_some(),
            ],
        )?;
        let (gi, gw, gb) = (
            nn_opt_tensor(nn, grad_in)?,
            nn_opt_tensor(nn, grad_weight)?,
            nn_opt_tensor(nn, grad_bias)?,
        );
        self.two_phase(
            (
                "aclnnLayerNormBackwardGetWorkspaceSize",
                "aclnnLayerNormBackward",
            ),
            |ws, ex| unsafe {
                p1(
                    tg.raw,
                    tx.raw,
                    ns.raw,
                    tm.raw,
                    tr.raw,
                    raw_or_null(&tw),
                    raw_or_null(&tb),
                    mask.raw,
                    raw_or_null(&gi),
                    raw_or_null(&gw),
                    raw_or_null(&gb),
                    ws,
                    ex,
                )
            },
            p2,
        )
    }

    /// 2-D convolution, NCHW input, OIHW weight, optional bias `[Cout]`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &self,
        x: &TensorArg,
        w: &TensorArg,
        bias: Option<&TensorArg>,
        stride: [i64; 2],
        padding: [i64; 2],
        dilation: [i64; 2],
        groups: i64,
        out: &TensorArg,
    ) -> Result<()> {
        if let Some((nn, (p1, p2))) = self.aclnn(
            |api| {
                api.aclnnConvolutionGetWorkspaceSize
                    .zip(api.aclnnConvolution)
            },
            "aclnnConvolution",
        )? {
            let (tx, tw, tb, to) = (
                nn_tensor(nn, x)?,
                nn_tensor(nn, w)?,
                nn_opt_tensor(nn, bias)?,
                nn_tensor(nn, out)?,
            );
            let (s, p, d, op) = (
                nn_int_array(nn, &stride)?,
                nn_int_array(nn, &padding)?,
                nn_int_array(nn, &dilation)?,
                nn_int_array(nn, &[0, 0])?,
            );
            let cm = self.cube_math_type;
            return self.two_phase(
                ("aclnnConvolutionGetWorkspaceSize", "aclnnConvolution"),
                |ws, ex| unsafe {
                    p1(
                        tx.raw,
                        tw.raw,
                        raw_or_null(&tb),
                        s.raw,
                        p.raw,
                        d.raw,
                        false,
                        op.raw,
                        groups,
                        to.raw,
                        cm,
                        ws,
                        ex,
                    )
                },
                p2,
            );
        }
        let mut c = AclopCall::new(self.rt(), "Conv2D")?;
        c.contiguous_input(x)?;
        c.contiguous_input(w)?;
        match bias {
            Some(b) => c.contiguous_input(b)?,
            None => c.none_input()?,
        }
        c.none_input()?; // offset_w
        c.output(out)?;
        c.attr_list_int("strides", &[1, 1, stride[0], stride[1]])?;
        c.attr_list_int("pads", &[padding[0], padding[0], padding[1], padding[1]])?;
        c.attr_list_int("dilations", &[1, 1, dilation[0], dilation[1]])?;
        c.attr_int("groups", groups)?;
        c.attr_string("data_format", "NCHW")?;
        c.attr_int("offset_x", 0)?;
        c.execute(self.stream)
    }

    /// Convolution backward (aclnn only). `bias_sizes` = `[Cout]` when `grad_bias` is wanted.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_backward(
        &self,
        grad_out: &TensorArg,
        x: &TensorArg,
        w: &TensorArg,
        bias_sizes: &[i64],
        stride: [i64; 2],
        padding: [i64; 2],
        dilation: [i64; 2],
        groups: i32,
        grad_in: Option<&TensorArg>,
        grad_weight: Option<&TensorArg>,
        grad_bias: Option<&TensorArg>,
    ) -> Result<()> {
        let Some((nn, (p1, p2))) = self.aclnn(
            |api| {
                api.aclnnConvolutionBackwardGetWorkspaceSize
                    .zip(api.aclnnConvolutionBackward)
            },
            "aclnnConvolutionBackward",
        )?
        else {
            return Err(AscendError::MissingSymbol {
                func: "aclnnConvolutionBackward",
                lib: "libopapi.so",
            });
        };
        let (tg, tx, tw) = (
            nn_tensor(nn, grad_out)?,
            nn_tensor(nn, x)?,
            nn_tensor(nn, w)?,
        );
        let bs = nn_int_array(nn, bias_sizes)?;
        let (s, p, d, op) = (
            nn_int_array(nn, &stride)?,
            nn_int_array(nn, &padding)?,
            nn_int_array(nn, &dilation)?,
            nn_int_array(nn, &[0, 0])?,
        );
        let mask = nn_bool_array(
            nn,
            &[
                grad_in.is_some(),
                grad_weight.is_some(),
                grad_bias.is_some(),
            ],
        )?;
        let (gi, gw, gb) = (
            nn_opt_tensor(nn, grad_in)?,
            nn_opt_tensor(nn, grad_weight)?,
            nn_opt_tensor(nn, grad_bias)?,
        );
        let cm = self.cube_math_type;
        self.two_phase(
            (
                "aclnnConvolutionBackwardGetWorkspaceSize",
                "aclnnConvolutionBackward",
            ),
            |ws, ex| unsafe {
                p1(
                    tg.raw,
                    tx.raw,
                    tw.raw,
                    bs.raw,
                    s.raw,
                    p.raw,
                    d.raw,
                    false,
                    op.raw,
                    groups,
                    mask.raw,
                    cm,
                    raw_or_null(&gi),
                    raw_or_null(&gw),
                    raw_or_null(&gb),
                    ws,
                    ex,
                )
            },
            p2,
        )
    }

    /// Softmax along `dim` (negative counts from the end).
    pub fn softmax(&self, x: &TensorArg, dim: i64, out: &TensorArg) -> Result<()> {
        if let Some((nn, (p1, p2))) = self.aclnn(
            |api| api.aclnnSoftmaxGetWorkspaceSize.zip(api.aclnnSoftmax),
            "aclnnSoftmax",
        )? {
            let (tx, to) = (nn_tensor(nn, x)?, nn_tensor(nn, out)?);
            return self.two_phase(
                ("aclnnSoftmaxGetWorkspaceSize", "aclnnSoftmax"),
                |ws, ex| unsafe { p1(tx.raw, dim, to.raw, ws, ex) },
                p2,
            );
        }
        let mut c = AclopCall::new(self.rt(), "SoftmaxV2")?;
        c.contiguous_input(x)?;
        c.output(out)?;
        c.attr_list_int("axes", &[dim])?;
        c.execute(self.stream)
    }

    /// Softmax backward (aclnn only): `grad_in` from `grad_out` and the forward output `y`.
    pub fn softmax_backward(
        &self,
        grad_out: &TensorArg,
        y: &TensorArg,
        dim: i64,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let Some((nn, (p1, p2))) = self.aclnn(
            |api| {
                api.aclnnSoftmaxBackwardGetWorkspaceSize
                    .zip(api.aclnnSoftmaxBackward)
            },
            "aclnnSoftmaxBackward",
        )?
        else {
            return Err(AscendError::MissingSymbol {
                func: "aclnnSoftmaxBackward",
                lib: "libopapi.so",
            });
        };
        let (tg, ty, ti) = (
            nn_tensor(nn, grad_out)?,
            nn_tensor(nn, y)?,
            nn_tensor(nn, grad_in)?,
        );
        self.two_phase(
            (
                "aclnnSoftmaxBackwardGetWorkspaceSize",
                "aclnnSoftmaxBackward",
            ),
            |ws, ex| unsafe { p1(tg.raw, ty.raw, dim, ti.raw, ws, ex) },
            p2,
        )
    }

    /// GELU. aclnn: `aclnnGeluV2(approximate)`, or `aclnnGelu` for the tanh form when V2 is
    /// missing; aclop: `GeluV2{approximate}`.
    pub fn gelu(&self, x: &TensorArg, approx: GeluApprox, out: &TensorArg) -> Result<()> {
        let code = match approx {
            GeluApprox::Erf => 0i64,
            GeluApprox::Tanh => 1,
        };
        if let Some((nn, (p1, p2))) = self
            .aclnn(
                |api| api.aclnnGeluV2GetWorkspaceSize.zip(api.aclnnGeluV2),
                "aclnnGeluV2",
            )
            .or_else(|e| {
                if approx == GeluApprox::Tanh {
                    Ok(None)
                } else {
                    Err(e)
                }
            })?
        {
            let (tx, to) = (nn_tensor(nn, x)?, nn_tensor(nn, out)?);
            return self.two_phase(
                ("aclnnGeluV2GetWorkspaceSize", "aclnnGeluV2"),
                |ws, ex| unsafe { p1(tx.raw, code, to.raw, ws, ex) },
                p2,
            );
        }
        if approx == GeluApprox::Tanh {
            if let Some((nn, (p1, p2))) = self.aclnn(
                |api| api.aclnnGeluGetWorkspaceSize.zip(api.aclnnGelu),
                "aclnnGelu",
            )? {
                let (tx, to) = (nn_tensor(nn, x)?, nn_tensor(nn, out)?);
                return self.two_phase(
                    ("aclnnGeluGetWorkspaceSize", "aclnnGelu"),
                    |ws, ex| unsafe { p1(tx.raw, to.raw, ws, ex) },
                    p2,
                );
            }
        }
        let mut c = AclopCall::new(self.rt(), "GeluV2")?;
        c.contiguous_input(x)?;
        c.output(out)?;
        c.attr_string(
            "approximate",
            if approx == GeluApprox::Erf {
                "none"
            } else {
                "tanh"
            },
        )?;
        c.execute(self.stream)
    }

    /// GELU backward (aclnn `aclnnGeluBackwardV2` only).
    pub fn gelu_backward(
        &self,
        grad_out: &TensorArg,
        x: &TensorArg,
        approx: GeluApprox,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let Some((nn, (p1, p2))) = self.aclnn(
            |api| {
                api.aclnnGeluBackwardV2GetWorkspaceSize
                    .zip(api.aclnnGeluBackwardV2)
            },
            "aclnnGeluBackwardV2",
        )?
        else {
            return Err(AscendError::MissingSymbol {
                func: "aclnnGeluBackwardV2",
                lib: "libopapi.so",
            });
        };
        let (tg, tx, ti) = (
            nn_tensor(nn, grad_out)?,
            nn_tensor(nn, x)?,
            nn_tensor(nn, grad_in)?,
        );
        let mode = CString::new(if approx == GeluApprox::Erf {
            "none"
        } else {
            "tanh"
        })
        .unwrap();
        self.two_phase(
            ("aclnnGeluBackwardV2GetWorkspaceSize", "aclnnGeluBackwardV2"),
            |ws, ex| unsafe { p1(tg.raw, tx.raw, mode.as_ptr() as *mut _, ti.raw, ws, ex) },
            p2,
        )
    }

    /// `out = a + alpha * b` (broadcasting). aclop fallback: `Add` (alpha must be 1).
    pub fn add(&self, a: &TensorArg, b: &TensorArg, alpha: f32, out: &TensorArg) -> Result<()> {
        if let Some((nn, (p1, p2))) = self.aclnn(
            |api| api.aclnnAddGetWorkspaceSize.zip(api.aclnnAdd),
            "aclnnAdd",
        )? {
            let (ta, tb, to) = (nn_tensor(nn, a)?, nn_tensor(nn, b)?, nn_tensor(nn, out)?);
            let al = nn_scalar_f32(nn, alpha)?;
            return self.two_phase(
                ("aclnnAddGetWorkspaceSize", "aclnnAdd"),
                |ws, ex| unsafe { p1(ta.raw, tb.raw, al.raw, to.raw, ws, ex) },
                p2,
            );
        }
        if alpha != 1.0 {
            return Err(AscendError::Invalid("aclop Add: alpha must be 1".into()));
        }
        let mut c = AclopCall::new(self.rt(), "Add")?;
        c.contiguous_input(a)?;
        c.contiguous_input(b)?;
        c.output(out)?;
        c.execute(self.stream)
    }

    /// `out = a * b` (broadcasting). aclop fallback: `Mul`.
    pub fn mul(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        if let Some((nn, (p1, p2))) = self.aclnn(
            |api| api.aclnnMulGetWorkspaceSize.zip(api.aclnnMul),
            "aclnnMul",
        )? {
            let (ta, tb, to) = (nn_tensor(nn, a)?, nn_tensor(nn, b)?, nn_tensor(nn, out)?);
            return self.two_phase(
                ("aclnnMulGetWorkspaceSize", "aclnnMul"),
                |ws, ex| unsafe { p1(ta.raw, tb.raw, to.raw, ws, ex) },
                p2,
            );
        }
        let mut c = AclopCall::new(self.rt(), "Mul")?;
        c.contiguous_input(a)?;
        c.contiguous_input(b)?;
        c.output(out)?;
        c.execute(self.stream)
    }
}

impl Ops<'_> {
    /// The aclnn pair of an op that has no aclop fallback (error naming it when missing).
    fn aclnn_only<F>(
        &self,
        pick: impl Fn(&OpApi) -> Option<F>,
        name: &'static str,
    ) -> Result<(&'static NnopBase, F)> {
        self.aclnn(pick, name)?.ok_or(AscendError::MissingSymbol {
            func: name,
            lib: "libopapi.so",
        })
    }

    /// `out = op(x)` elementwise (aclnn only): Relu, Sigmoid, Exp, Sin, Cos, Sqrt.
    pub fn unary(&self, op: UnaryOp, x: &TensorArg, out: &TensorArg) -> Result<()> {
        let names = op.names();
        let (nn, (p1, p2)): (_, (UnaryPhase1, Phase2)) = self.aclnn_only(
            |api| match op {
                UnaryOp::Relu => api.aclnnReluGetWorkspaceSize.zip(api.aclnnRelu),
                UnaryOp::Sigmoid => api.aclnnSigmoidGetWorkspaceSize.zip(api.aclnnSigmoid),
                UnaryOp::Exp => api.aclnnExpGetWorkspaceSize.zip(api.aclnnExp),
                UnaryOp::Sin => api.aclnnSinGetWorkspaceSize.zip(api.aclnnSin),
                UnaryOp::Cos => api.aclnnCosGetWorkspaceSize.zip(api.aclnnCos),
                UnaryOp::Sqrt => api.aclnnSqrtGetWorkspaceSize.zip(api.aclnnSqrt),
            },
            names.1,
        )?;
        let (tx, to) = (nn_tensor(nn, x)?, nn_tensor(nn, out)?);
        self.two_phase(names, |ws, ex| unsafe { p1(tx.raw, to.raw, ws, ex) }, p2)
    }

    /// `out = a / b` (broadcasting; aclnn `aclnnDiv` only).
    pub fn div(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| api.aclnnDivGetWorkspaceSize.zip(api.aclnnDiv),
            "aclnnDiv",
        )?;
        let (ta, tb, to) = (nn_tensor(nn, a)?, nn_tensor(nn, b)?, nn_tensor(nn, out)?);
        self.two_phase(
            ("aclnnDivGetWorkspaceSize", "aclnnDiv"),
            |ws, ex| unsafe { p1(ta.raw, tb.raw, to.raw, ws, ex) },
            p2,
        )
    }

    /// `grad_in = x > threshold ? grad_out : 0` (`aclnnThresholdBackward`; ReLU backward with
    /// threshold 0).
    pub fn threshold_backward(
        &self,
        grad_out: &TensorArg,
        x: &TensorArg,
        threshold: f32,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| {
                api.aclnnThresholdBackwardGetWorkspaceSize
                    .zip(api.aclnnThresholdBackward)
            },
            "aclnnThresholdBackward",
        )?;
        let (tg, tx, ti) = (
            nn_tensor(nn, grad_out)?,
            nn_tensor(nn, x)?,
            nn_tensor(nn, grad_in)?,
        );
        let th = nn_scalar_f32(nn, threshold)?;
        self.two_phase(
            (
                "aclnnThresholdBackwardGetWorkspaceSize",
                "aclnnThresholdBackward",
            ),
            |ws, ex| unsafe { p1(tg.raw, tx.raw, th.raw, ti.raw, ws, ex) },
            p2,
        )
    }

    /// `grad_in = grad_out · y · (1 − y)` with `y = sigmoid(x)` (`aclnnSigmoidBackward`).
    pub fn sigmoid_backward(
        &self,
        grad_out: &TensorArg,
        y: &TensorArg,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| {
                api.aclnnSigmoidBackwardGetWorkspaceSize
                    .zip(api.aclnnSigmoidBackward)
            },
            "aclnnSigmoidBackward",
        )?;
        let (tg, ty, ti) = (
            nn_tensor(nn, grad_out)?,
            nn_tensor(nn, y)?,
            nn_tensor(nn, grad_in)?,
        );
        self.two_phase(
            (
                "aclnnSigmoidBackwardGetWorkspaceSize",
                "aclnnSigmoidBackward",
            ),
            |ws, ex| unsafe { p1(tg.raw, ty.raw, ti.raw, ws, ex) },
            p2,
        )
    }

    /// Bilinear resize of an NCHW tensor to `out` (`aclnnUpsampleBilinear2d`). `scales` are
    /// `(oh/h, ow/w)`: passed explicitly because torch_npu releases disagree on what an absent
    /// scale is (0 or 1); with PyTorch semantics an explicit scale gives the same source
    /// coordinates as the size ratio.
    pub fn upsample_bilinear2d(
        &self,
        x: &TensorArg,
        align_corners: bool,
        scales: (f64, f64),
        out: &TensorArg,
    ) -> Result<()> {
        let od = out.dims();
        if od.len() != 4 || x.dims().len() != 4 {
            return Err(AscendError::Invalid(format!(
                "aclnnUpsampleBilinear2d: input {:?} and out {od:?} must be NCHW",
                x.dims()
            )));
        }
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| {
                api.aclnnUpsampleBilinear2dGetWorkspaceSize
                    .zip(api.aclnnUpsampleBilinear2d)
            },
            "aclnnUpsampleBilinear2d",
        )?;
        let (tx, to) = (nn_tensor(nn, x)?, nn_tensor(nn, out)?);
        let size = nn_int_array(nn, &od[2..])?;
        self.two_phase(
            (
                "aclnnUpsampleBilinear2dGetWorkspaceSize",
                "aclnnUpsampleBilinear2d",
            ),
            |ws, ex| unsafe {
                p1(
                    tx.raw,
                    size.raw,
                    align_corners,
                    scales.0,
                    scales.1,
                    to.raw,
                    ws,
                    ex,
                )
            },
            p2,
        )
    }

    /// Backward of [`Ops::upsample_bilinear2d`] (`aclnnUpsampleBilinear2dBackward`):
    /// `grad_in` NCHW of the forward input's shape from `grad_out`.
    pub fn upsample_bilinear2d_backward(
        &self,
        grad_out: &TensorArg,
        align_corners: bool,
        scales: (f64, f64),
        grad_in: &TensorArg,
    ) -> Result<()> {
        let (gd, id) = (grad_out.dims(), grad_in.dims());
        if gd.len() != 4 || id.len() != 4 {
            return Err(AscendError::Invalid(format!(
                "aclnnUpsampleBilinear2dBackward: gradOut {gd:?} and gradInput {id:?} must be NCHW"
            )));
        }
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| {
                api.aclnnUpsampleBilinear2dBackwardGetWorkspaceSize
                    .zip(api.aclnnUpsampleBilinear2dBackward)
            },
            "aclnnUpsampleBilinear2dBackward",
        )?;
        let (tg, ti) = (nn_tensor(nn, grad_out)?, nn_tensor(nn, grad_in)?);
        let osize = nn_int_array(nn, &gd[2..])?;
        let isize = nn_int_array(nn, id)?;
        self.two_phase(
            (
                "aclnnUpsampleBilinear2dBackwardGetWorkspaceSize",
                "aclnnUpsampleBilinear2dBackward",
            ),
            |ws, ex| unsafe {
                p1(
                    tg.raw,
                    osize.raw,
                    isize.raw,
                    align_corners,
                    scales.0,
                    scales.1,
                    ti.raw,
                    ws,
                    ex,
                )
            },
            p2,
        )
    }
}

/// Attributes of full (unmasked, no dropout) flash attention in the `BNSD` layout.
#[derive(Clone, Copy, Debug)]
pub struct FlashAttn {
    /// Multiplies `Q·Kᵀ` before the softmax.
    pub scale: f64,
    /// `N` of `[B, N, S, D]`.
    pub head_num: i64,
}

impl FlashAttn {
    /// preTokens / nextTokens for no band limit (torch_npu `npu_fusion_attention` defaults).
    const ALL_TOKENS: i64 = 2147483647;
}

impl Ops<'_> {
    /// `out = softmax(scale·Q·Kᵀ)·V` (`aclnnFlashAttentionScore`, layout `BNSD`, keepProb 1,
    /// sparseMode 0, no pse / masks). `softmax_max` / `softmax_sum` are fp32 `[B, N, Sq, 8]`
    /// (saved for [`Ops::flash_attention_backward`]); `softmax_out` is the reserved output,
    /// passed as an empty tensor as torch_npu does.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention(
        &self,
        q: &TensorArg,
        k: &TensorArg,
        v: &TensorArg,
        attr: FlashAttn,
        softmax_max: &TensorArg,
        softmax_sum: &TensorArg,
        softmax_out: &TensorArg,
        out: &TensorArg,
    ) -> Result<()> {
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| {
                api.aclnnFlashAttentionScoreGetWorkspaceSize
                    .zip(api.aclnnFlashAttentionScore)
            },
            "aclnnFlashAttentionScore",
        )?;
        let (tq, tk, tv) = (nn_tensor(nn, q)?, nn_tensor(nn, k)?, nn_tensor(nn, v)?);
        let (tm, ts, tso, to) = (
            nn_tensor(nn, softmax_max)?,
            nn_tensor(nn, softmax_sum)?,
            nn_tensor(nn, softmax_out)?,
            nn_tensor(nn, out)?,
        );
        let layout = CString::new("BNSD").unwrap();
        let null = std::ptr::null();
        self.two_phase(
            (
                "aclnnFlashAttentionScoreGetWorkspaceSize",
                "aclnnFlashAttentionScore",
            ),
            |ws, ex| unsafe {
                p1(
                    tq.raw,
                    tk.raw,
                    tv.raw,
                    null,
                    null,
                    null,
                    null,
                    std::ptr::null(),
                    attr.scale,
                    1.0,
                    FlashAttn::ALL_TOKENS,
                    FlashAttn::ALL_TOKENS,
                    attr.head_num,
                    layout.as_ptr() as *mut _,
                    0,
                    0,
                    tm.raw,
                    ts.raw,
                    tso.raw,
                    to.raw,
                    ws,
                    ex,
                )
            },
            p2,
        )
    }

    /// Backward of [`Ops::flash_attention`] (`aclnnFlashAttentionScoreGrad`): dq, dk, dv from
    /// the forward's inputs, output and softmax statistics. `empty` is a zero-element tensor
    /// passed for softmaxIn and dpseOut (no pse), as torch_npu / DeepLink do.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_backward(
        &self,
        q: &TensorArg,
        k: &TensorArg,
        v: &TensorArg,
        dy: &TensorArg,
        attr: FlashAttn,
        saved: (&TensorArg, &TensorArg, &TensorArg),
        empty: &TensorArg,
        grads: (&TensorArg, &TensorArg, &TensorArg),
    ) -> Result<()> {
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| {
                api.aclnnFlashAttentionScoreGradGetWorkspaceSize
                    .zip(api.aclnnFlashAttentionScoreGrad)
            },
            "aclnnFlashAttentionScoreGrad",
        )?;
        let (tq, tk, tv, tdy) = (
            nn_tensor(nn, q)?,
            nn_tensor(nn, k)?,
            nn_tensor(nn, v)?,
            nn_tensor(nn, dy)?,
        );
        let (tm, ts, tout) = (
            nn_tensor(nn, saved.0)?,
            nn_tensor(nn, saved.1)?,
            nn_tensor(nn, saved.2)?,
        );
        let (te1, te2) = (nn_tensor(nn, empty)?, nn_tensor(nn, empty)?);
        let (gq, gk, gv) = (
            nn_tensor(nn, grads.0)?,
            nn_tensor(nn, grads.1)?,
            nn_tensor(nn, grads.2)?,
        );
        let layout = CString::new("BNSD").unwrap();
        let null = std::ptr::null();
        self.two_phase(
            (
                "aclnnFlashAttentionScoreGradGetWorkspaceSize",
                "aclnnFlashAttentionScoreGrad",
            ),
            |ws, ex| unsafe {
                p1(
                    tq.raw,
                    tk.raw,
                    tv.raw,
                    tdy.raw,
                    null,
                    null,
                    null,
                    null,
                    tm.raw,
                    ts.raw,
                    te1.raw,
                    tout.raw,
                    std::ptr::null(),
                    attr.scale,
                    1.0,
                    FlashAttn::ALL_TOKENS,
                    FlashAttn::ALL_TOKENS,
                    attr.head_num,
                    layout.as_ptr() as *mut _,
                    0,
                    0,
                    gq.raw,
                    gk.raw,
                    gv.raw,
                    te2.raw,
                    ws,
                    ex,
                )
            },
            p2,
        )
    }
}

/// Hyper-parameters of [`Ops::apply_adamw_v2`] (f32, as the C API takes them).
#[derive(Clone, Copy, Debug)]
pub struct AdamWHyper {
    /// Learning rate.
    pub lr: f32,
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// Decoupled weight decay λ.
    pub weight_decay: f32,
    /// ε, added after the bias-corrected square root.
    pub eps: f32,
}

impl Ops<'_> {
    /// One fused AdamW update in place (`aclnnApplyAdamWV2`, amsgrad and maximize off):
    /// `var`, `m`, `v` are read and written; `step` is a one-element tensor holding the number
    /// of updates made **before** this one (the kernel uses `step + 1`).
    pub fn apply_adamw_v2(
        &self,
        (var, m, v): (&TensorArg, &TensorArg, &TensorArg),
        grad: &TensorArg,
        step: &TensorArg,
        h: AdamWHyper,
    ) -> Result<()> {
        let (nn, (p1, p2)) = self.aclnn_only(
            |api| {
                api.aclnnApplyAdamWV2GetWorkspaceSize
                    .zip(api.aclnnApplyAdamWV2)
            },
            "aclnnApplyAdamWV2",
        )?;
        let (tw, tm, tv) = (nn_tensor(nn, var)?, nn_tensor(nn, m)?, nn_tensor(nn, v)?);
        let (tg, ts) = (nn_tensor(nn, grad)?, nn_tensor(nn, step)?);
        self.two_phase(
            ("aclnnApplyAdamWV2GetWorkspaceSize", "aclnnApplyAdamWV2"),
            |ws, ex| unsafe {
                p1(
                    tw.raw,
                    tm.raw,
                    tv.raw,
                    std::ptr::null_mut(),
                    tg.raw,
                    ts.raw,
                    h.lr,
                    h.beta1,
                    h.beta2,
                    h.weight_decay,
                    h.eps,
                    false,
                    false,
                    ws,
                    ex,
                )
            },
            p2,
        )
    }
}

impl TensorArg<'_> {
    fn with_dtype(mut self, like: &TensorArg) -> Self {
        self.dtype = like.dtype;
        self.elem = like.elem;
        self
    }
}
