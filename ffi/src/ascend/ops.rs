//! Operator execution through the aclnn two-phase API.
//!
//! Pattern (opbase `acl_meta.h`, torch_npu `EXEC_NPU_CMD`, ggml-cann `GGML_CANN_CALL_ACLNN_OP`):
//! wrap device pointers in `aclTensor`s ([`AclHandle`], destroyed on drop), call
//! `aclnnXGetWorkspaceSize(.., &ws, &executor)`, allocate the workspace, call
//! `aclnnX(workspace, ws, executor, stream)` (asynchronous). The descriptors may be destroyed
//! once phase 2 is enqueued (torch_npu releases them at the same point); the workspace is kept
//! until the stream is synchronised ([`Stream::retain_until_sync`]). An executor whose phase 2
//! will not run (workspace allocation failed) is released with `aclDestroyAclOpExecutor`.
//! Every operator body is: descriptors, then one [`aclnn!`] line.
//!
//! Conventions CANN checks and we follow (sources in docs/ASCEND.md, "Contract"):
//! * **format by rank**, as torch_npu's `ConvertType` (op-plugin `op_api_common.h`): 3-D NCL,
//!   4-D NCHW, 5-D NCDHW, else ND. Convolution and its backward need NCHW for 4-D
//!   (ops-nn `FormatChecker` / `CheckFormatValid`); bilinear upsample takes NCHW or NHWC and its
//!   backward reads every non-NCHW tensor as NHWC (ops-cv `CheckFormat` / `CheckShape`);
//! * **cubeMathType per SoC and dtype** ([`cube_math_type`]);
//! * **CANN ≥ 8.0** for the operators whose first phase changed arity (Convolution and its
//!   backward gained `cubeMathType`): refused on older or unknown versions.
//!
//! There is no aclop (`aclopCompileAndExecute`) fallback: every operator we call exists in
//! aclnn since CANN 8.0, the fallback served no backend call, and ggml-cann has none either.
//! A missing operator is a [`AscendError::MissingSymbol`] naming it.

use super::alloc::{DeviceBuffer, Element};
use super::error::{aclnn_status_class, AscendError, Result};
use super::runtime::{AscendRuntime, Stream};
use crate::aclnn::{
    aclBoolArray, aclIntArray, aclOpExecutor, aclScalar, aclTensor, aclnnStatus, AclnnRunFn,
    NnopBase, OpApi,
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

/// GELU flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluApprox {
    /// Exact, with erf (`nn.GELU()`, SAM's MLP).
    Erf,
    /// tanh approximation.
    Tanh,
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

/// The `aclFormat` torch_npu gives a plain tensor of this rank (op-plugin `ConvertType`):
/// 3-D NCL, 4-D NCHW, 5-D NCDHW, anything else ND.
pub fn format_for_rank(rank: usize) -> aclFormat {
    match rank {
        3 => ACL_FORMAT_NCL,
        4 => ACL_FORMAT_NCHW,
        5 => ACL_FORMAT_NCDHW,
        _ => ACL_FORMAT_ND,
    }
}

/// What the caller wants from the cube unit (matmul, convolution) for fp32 operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CubePrecision {
    /// fp32 products where the SoC can (Atlas A2/A3: KEEP_DTYPE). Atlas training (910A) and
    /// inference SoCs have no fp32 cube path: there fp32 is computed in fp16.
    Exact,
    /// Faster reduced-precision products: HF32 on Atlas A2/A3, fp16 elsewhere.
    Reduced,
}

/// Whether `soc` (`aclrtGetSocName`) is an Atlas A2/A3-class chip (Ascend910B1..B4,
/// Ascend910_93xx, Ascend950): torch_npu `NpuVariables.cpp` `SocVersion` ranks these above the
/// first-generation Ascend910A/ProA/PremiumA/ProB/"Ascend910B" and the 310 inference chips.
/// `None` (the query is missing) counts as A2-class, the only SoC this code targets.
pub fn soc_is_a2_class(soc: Option<&str>) -> bool {
    let Some(s) = soc else { return true };
    if let Some(rest) = s.strip_prefix("Ascend910B") {
        return rest.starts_with(|c: char| c.is_ascii_digit());
    }
    s.starts_with("Ascend910_93") || s.starts_with("Ascend950")
}

/// `cubeMathType` for a matmul/convolution (ops-nn `aclnnMatmul.md` / `aclnnConvolution.md`):
/// 0 KEEP_DTYPE, 1 ALLOW_FP32_DOWN_PRECISION. Non-fp32 operands keep their dtype everywhere.
/// fp32 with KEEP_DTYPE is **not supported** on Atlas training (910A) and inference SoCs, so
/// there fp32 gets 1 (computed in fp16); on A2/A3, 1 means HF32.
pub fn cube_math_type(soc: Option<&str>, dtype: aclDataType, want: CubePrecision) -> i8 {
    if dtype != ACL_FLOAT {
        return 0;
    }
    match (soc_is_a2_class(soc), want) {
        (true, CubePrecision::Exact) => 0,
        _ => 1,
    }
}

// ------------------------------------------------------------------------------------------
// descriptors: one owning handle type

/// A descriptor type of `libnnopbase.so` and its destroy function.
pub trait Descriptor {
    /// C name of the destroy function (for diagnostics).
    const DESTROY: &'static str;
    /// The destroy function, if the library has it.
    fn destroy_fn(nn: &NnopBase) -> Option<unsafe extern "C" fn(*const Self) -> aclnnStatus>;
}
macro_rules! descriptor {
    ($t:ty, $f:ident) => {
        impl Descriptor for $t {
            const DESTROY: &'static str = stringify!($f);
            fn destroy_fn(
                nn: &NnopBase,
            ) -> Option<unsafe extern "C" fn(*const Self) -> aclnnStatus> {
                nn.$f
            }
        }
    };
}
descriptor!(aclTensor, aclDestroyTensor);
descriptor!(aclScalar, aclDestroyScalar);
descriptor!(aclIntArray, aclDestroyIntArray);
descriptor!(aclBoolArray, aclDestroyBoolArray);

/// An owned `aclTensor` / `aclScalar` / `aclIntArray` / `aclBoolArray`, destroyed on drop
/// (ggml-cann's `acl_tensor_ptr` with `acl_deleter`).
pub struct AclHandle<T: Descriptor> {
    nn: &'static NnopBase,
    raw: *mut T,
}

impl<T: Descriptor> AclHandle<T> {
    fn new(nn: &'static NnopBase, raw: *mut T, create: &'static str) -> Result<Self> {
        if raw.is_null() {
            return Err(AscendError::Aclnn {
                func: create,
                code: -1,
                class: "returned NULL",
                msg: None,
            });
        }
        Ok(AclHandle { nn, raw })
    }
    /// The raw pointer, valid while `self` lives.
    pub fn raw(&self) -> *mut T {
        self.raw
    }
}

impl<T: Descriptor> Drop for AclHandle<T> {
    fn drop(&mut self) {
        if let Some(f) = T::destroy_fn(self.nn) {
            // SAFETY: created by the matching create function, destroyed once.
            unsafe { f(self.raw) };
        }
    }
}

/// Raw pointer of an optional descriptor (NULL when absent: aclnn's `xxxOptional`).
/// A backward's output mask and its optional gradient outputs (see `Ops::grad_outputs`).
type GradOutputs = (AclHandle<aclBoolArray>, [Option<AclHandle<aclTensor>>; 3]);

fn raw_opt<T: Descriptor>(h: &Option<AclHandle<T>>) -> *mut T {
    h.as_ref().map_or(std::ptr::null_mut(), |h| h.raw)
}

fn need<T>(f: Option<T>, func: &'static str) -> Result<T> {
    f.ok_or(AscendError::MissingSymbol {
        func,
        lib: "libnnopbase.so",
    })
}

/// Map an `aclnnStatus`.
pub fn check_aclnn(rt: &AscendRuntime, func: &'static str, code: aclnnStatus) -> Result<()> {
    match code {
        0 => Ok(()),
        _ => Err(AscendError::Aclnn {
            func,
            code,
            class: aclnn_status_class(code),
            msg: rt.recent_error_message(),
        }),
    }
}

/// One aclnn operator call: `aclnn!(ops, Op(args...))` looks up `aclnn<Op>GetWorkspaceSize` /
/// `aclnn<Op>` in the [`OpApi`] table and runs both phases ([`Ops::two_phase`]). The arguments
/// are those before `(workspaceSize, executor)`.
macro_rules! aclnn {
    ($ops:expr, $op:ident ( $($arg:expr),* $(,)? )) => {{
        let ops: &Ops = $ops;
        let (p1, p2) = ops.op(|api| api.$op, concat!("aclnn", stringify!($op)))?;
        ops.two_phase(
            (
                concat!("aclnn", stringify!($op), "GetWorkspaceSize"),
                concat!("aclnn", stringify!($op)),
            ),
            // SAFETY: the table's signature is the header's (checked at build time where the
            // headers exist); the descriptors outlive the call.
            |ws, ex| unsafe { p1($($arg,)* ws, ex) },
            p2,
        )
    }};
}

/// `aclnnFlashAttentionScore` / `aclnnFlashAttentionScoreGrad` through [`aclnn!`], with the
/// arguments the two share written once: `$lead`, the four absent masks (pse / realShift,
/// dropMask, paddingMask, attenMask), `$mid`, then no prefix and the attributes of `$attr`
/// (scaleValue, keepProb 1, pre/next tokens covering every key, headNum, layout "BNSD",
/// innerPrecise 0, sparseMode 0), then `$out`.
macro_rules! flash_aclnn {
    ($ops:expr, $op:ident, $attr:expr, [$($lead:expr),*], [$($mid:expr),*], [$($out:expr),*]) => {{
        let attr: FlashAttn = $attr;
        let layout = CString::new("BNSD").expect("no NUL");
        let null = std::ptr::null();
        aclnn!(
            $ops,
            $op(
                $($lead,)*
                null, null, null, null,
                $($mid,)*
                std::ptr::null(),
                attr.scale, 1.0, FlashAttn::ALL_TOKENS, FlashAttn::ALL_TOKENS, attr.head_num,
                layout.as_ptr() as *mut _, 0, 0,
                $($out),*
            )
        )
    }};
}

/// `aclnnConvolution` / `aclnnConvolutionBackward` through [`aclnn!`]: `$lead`, then the
/// attributes the two share — stride, padding, dilation, transposed = false, outputPadding
/// (`$arrays`, from [`Ops::conv_arrays`]) and groups — then `$tail`.
macro_rules! conv_aclnn {
    ($ops:expr, $op:ident, [$($lead:expr),*], $arrays:expr, $groups:expr, [$($tail:expr),*]) => {{
        let [s, p, d, op]: &[AclHandle<aclIntArray>; 4] = &$arrays;
        aclnn!(
            $ops,
            $op($($lead,)* s.raw(), p.raw(), d.raw(), false, op.raw(), $groups, $($tail),*)
        )
    }};
}

// ------------------------------------------------------------------------------------------
// the operators

/// Operator launcher bound to one stream.
pub struct Ops<'s> {
    stream: &'s Stream,
    precision: CubePrecision,
}

impl<'s> Ops<'s> {
    /// Launcher on `stream` with [`CubePrecision::Exact`].
    pub fn new(stream: &'s Stream) -> Self {
        Ops {
            stream,
            precision: CubePrecision::Exact,
        }
    }
    /// Cube-unit precision of matmul / convolution ([`cube_math_type`] picks the
    /// `cubeMathType` per SoC and dtype).
    pub fn with_precision(mut self, p: CubePrecision) -> Self {
        self.precision = p;
        self
    }

    /// Transitional: callers written before [`CubePrecision`] passed a raw cubeMathType
    /// (0 = exact, otherwise reduced). It only selects the precision; the cubeMathType sent to
    /// CANN is still chosen per SoC and dtype ([`cube_math_type`]).
    #[doc(hidden)]
    pub fn with_cube_math_type(self, t: i8) -> Self {
        self.with_precision(if t == 0 {
            CubePrecision::Exact
        } else {
            CubePrecision::Reduced
        })
    }

    fn rt(&self) -> &'static AscendRuntime {
        self.stream.device().runtime()
    }

    fn nn(&self) -> Result<&'static NnopBase> {
        self.rt()
            .nnopbase
            .as_ref()
            .ok_or(AscendError::MissingSymbol {
                func: "aclCreateTensor",
                lib: "libnnopbase.so",
            })
    }

    /// Both phases of one operator, or an error naming it.
    fn op<F>(&self, pick: impl Fn(&OpApi) -> Option<F>, name: &'static str) -> Result<F> {
        self.rt()
            .opapi
            .as_ref()
            .and_then(pick)
            .ok_or(AscendError::MissingSymbol {
                func: name,
                lib: "libopapi.so / libopapi_{math,nn,cv,transformer}.so",
            })
    }

    /// `cubeMathType` for operands of `dtype` on this device's SoC.
    fn cube(&self, dtype: aclDataType) -> i8 {
        cube_math_type(self.rt().soc_name().as_deref(), dtype, self.precision)
    }

    /// Refuse an operator whose first phase has a different arity before CANN 8.0.
    fn require_cann8(&self, op: &'static str) -> Result<()> {
        match self.rt().cann_version() {
            Some(v) if v.major >= 8 => Ok(()),
            Some(v) => Err(AscendError::Unsupported(format!(
                "{op}: CANN {} declares it without cubeMathType; this build calls the CANN 8.x \
                 signature (install CANN 8.0 or newer)",
                v.text
            ))),
            None => Err(AscendError::Unsupported(format!(
                "{op}: the CANN version is unknown (aclsysGetCANNVersion missing or failed), and \
                 before 8.0 this operator has a different signature"
            ))),
        }
    }

    /// `aclCreateTensor` for a view: format by rank, strided views as 1-D storage of the
    /// touched extent with the element offset (torch_npu's convention).
    pub fn tensor(&self, t: &TensorArg) -> Result<AclHandle<aclTensor>> {
        let nn = self.nn()?;
        let create = need(nn.aclCreateTensor, "aclCreateTensor")?;
        let l = &t.layout;
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
                format_for_rank(l.dims.len()),
                storage.as_ptr(),
                storage.len() as u64,
                t.ptr,
            )
        };
        AclHandle::new(nn, raw, "aclCreateTensor")
    }

    /// Descriptors of `ts`, made in order.
    fn tensors<const N: usize>(&self, ts: [&TensorArg; N]) -> Result<[AclHandle<aclTensor>; N]> {
        let mut out = Vec::with_capacity(N);
        for t in ts {
            out.push(self.tensor(t)?);
        }
        Ok(out
            .try_into()
            .unwrap_or_else(|_| unreachable!("N descriptors")))
    }

    fn opt_tensor(&self, t: Option<&TensorArg>) -> Result<Option<AclHandle<aclTensor>>> {
        t.map(|t| self.tensor(t)).transpose()
    }

    /// A backward's output mask and its optional gradient outputs (input, weight, bias).
    fn grad_outputs(&self, grads: [Option<&TensorArg>; 3]) -> Result<GradOutputs> {
        let mask = self.bool_array(&grads.map(|g| g.is_some()))?;
        let [i, w, b] = grads;
        let outs = [
            self.opt_tensor(i)?,
            self.opt_tensor(w)?,
            self.opt_tensor(b)?,
        ];
        Ok((mask, outs))
    }

    /// A convolution's stride, padding and dilation, and a zero output padding.
    fn conv_arrays(
        &self,
        stride: [i64; 2],
        padding: [i64; 2],
        dilation: [i64; 2],
    ) -> Result<[AclHandle<aclIntArray>; 4]> {
        let (s, p) = (self.int_array(&stride)?, self.int_array(&padding)?);
        Ok([s, p, self.int_array(&dilation)?, self.int_array(&[0, 0])?])
    }

    /// A descriptor holding a copy of `v`, made by the nnopbase function `name`.
    fn array<E, T: Descriptor>(
        &self,
        create: fn(&NnopBase) -> Option<unsafe extern "C" fn(*const E, u64) -> *mut T>,
        name: &'static str,
        v: &[E],
    ) -> Result<AclHandle<T>> {
        let nn = self.nn()?;
        let create = need(create(nn), name)?;
        // SAFETY: the array is copied.
        AclHandle::new(nn, unsafe { create(v.as_ptr(), v.len() as u64) }, name)
    }

    fn int_array(&self, v: &[i64]) -> Result<AclHandle<aclIntArray>> {
        self.array(|nn| nn.aclCreateIntArray, "aclCreateIntArray", v)
    }

    fn bool_array(&self, v: &[bool]) -> Result<AclHandle<aclBoolArray>> {
        self.array(|nn| nn.aclCreateBoolArray, "aclCreateBoolArray", v)
    }

    fn scalar_f32(&self, v: f32) -> Result<AclHandle<aclScalar>> {
        let nn = self.nn()?;
        let create = need(nn.aclCreateScalar, "aclCreateScalar")?;
        let mut v = v;
        // SAFETY: aclCreateScalar copies the value.
        let raw = unsafe { create((&mut v as *mut f32).cast(), ACL_FLOAT) };
        AclHandle::new(nn, raw, "aclCreateScalar")
    }

    /// Run both aclnn phases on the stream; `name` = (phase 1, phase 2) C names.
    fn two_phase(
        &self,
        name: (&'static str, &'static str),
        phase1: impl FnOnce(*mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        phase2: AclnnRunFn,
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
            match dev.alloc(ws as usize) {
                Ok(b) => Some(b),
                Err(e) => {
                    // Phase 2 will not run: release the executor it would have consumed.
                    if let Some(d) = rt.nnopbase.as_ref().and_then(|n| n.aclDestroyAclOpExecutor) {
                        // SAFETY: executor from phase 1, never run.
                        unsafe { d(ex) };
                    }
                    return Err(e);
                }
            }
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

    /// `out = a @ b` for 2-D (and broadcast batched) matrices. Transposed operands are
    /// strided views ([`Layout::transpose_last2`]).
    pub fn matmul(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        let cm = self.cube(a.dtype);
        let (a, b, out) = (self.tensor(a)?, self.tensor(b)?, self.tensor(out)?);
        aclnn!(self, Matmul(a.raw(), b.raw(), out.raw(), cm))
    }

    /// Batched `out[i] = a[i] @ b[i]` for 3-D tensors.
    pub fn batch_matmul(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        let cm = self.cube(a.dtype);
        let (a, b, out) = (self.tensor(a)?, self.tensor(b)?, self.tensor(out)?);
        aclnn!(self, BatchMatMul(a.raw(), b.raw(), out.raw(), cm))
    }

    /// Layer norm over the trailing `normalized` dims; writes `mean` and `rstd`
    /// (`1/sqrt(var+eps)`, shape `[rows, 1]`) when given.
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
        let (x, ns) = (self.tensor(x)?, self.int_array(normalized)?);
        let (w, b) = (self.opt_tensor(weight)?, self.opt_tensor(bias)?);
        let out = self.tensor(out)?;
        let (m, r) = (self.opt_tensor(mean)?, self.opt_tensor(rstd)?);
        aclnn!(
            self,
            LayerNorm(
                x.raw(),
                ns.raw(),
                raw_opt(&w),
                raw_opt(&b),
                eps,
                out.raw(),
                raw_opt(&m),
                raw_opt(&r)
            )
        )
    }

    /// Layer-norm backward: gradients for input / weight / bias (each optional).
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
        let (g, x, ns) = (
            self.tensor(grad_out)?,
            self.tensor(x)?,
            self.int_array(normalized)?,
        );
        let (m, r) = (self.tensor(mean)?, self.tensor(rstd)?);
        let (w, b) = (self.opt_tensor(weight)?, self.opt_tensor(bias)?);
        let (mask, [gi, gw, gb]) = self.grad_outputs([grad_in, grad_weight, grad_bias])?;
        aclnn!(
            self,
            LayerNormBackward(
                g.raw(),
                x.raw(),
                ns.raw(),
                m.raw(),
                r.raw(),
                raw_opt(&w),
                raw_opt(&b),
                mask.raw(),
                raw_opt(&gi),
                raw_opt(&gw),
                raw_opt(&gb)
            )
        )
    }

    /// 2-D convolution, NCHW input, OIHW weight, optional bias `[Cout]` (CANN ≥ 8.0).
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
        self.require_cann8("aclnnConvolution")?;
        let cm = self.cube(x.dtype);
        let (x, w, b, out) = (
            self.tensor(x)?,
            self.tensor(w)?,
            self.opt_tensor(bias)?,
            self.tensor(out)?,
        );
        let attrs = self.conv_arrays(stride, padding, dilation)?;
        conv_aclnn!(
            self,
            Convolution,
            [x.raw(), w.raw(), raw_opt(&b)],
            attrs,
            groups,
            [out.raw(), cm]
        )
    }

    /// Convolution backward (CANN ≥ 8.0). `bias_sizes` = `[Cout]` when `grad_bias` is wanted.
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
        self.require_cann8("aclnnConvolutionBackward")?;
        let cm = self.cube(x.dtype);
        let (g, x, w) = (self.tensor(grad_out)?, self.tensor(x)?, self.tensor(w)?);
        let bs = self.int_array(bias_sizes)?;
        let attrs = self.conv_arrays(stride, padding, dilation)?;
        let (mask, [gi, gw, gb]) = self.grad_outputs([grad_in, grad_weight, grad_bias])?;
        conv_aclnn!(
            self,
            ConvolutionBackward,
            [g.raw(), x.raw(), w.raw(), bs.raw()],
            attrs,
            groups,
            [mask.raw(), cm, raw_opt(&gi), raw_opt(&gw), raw_opt(&gb)]
        )
    }

    /// Softmax along `dim` (negative counts from the end).
    pub fn softmax(&self, x: &TensorArg, dim: i64, out: &TensorArg) -> Result<()> {
        let (x, out) = (self.tensor(x)?, self.tensor(out)?);
        aclnn!(self, Softmax(x.raw(), dim, out.raw()))
    }

    /// Softmax backward: `grad_in` from `grad_out` and the forward output `y`.
    pub fn softmax_backward(
        &self,
        grad_out: &TensorArg,
        y: &TensorArg,
        dim: i64,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let [g, y, gi] = self.tensors([grad_out, y, grad_in])?;
        aclnn!(self, SoftmaxBackward(g.raw(), y.raw(), dim, gi.raw()))
    }

    /// GELU: `aclnnGeluV2(approximate)`, or `aclnnGelu` for the tanh form when V2 is missing.
    pub fn gelu(&self, x: &TensorArg, approx: GeluApprox, out: &TensorArg) -> Result<()> {
        let (x, out) = (self.tensor(x)?, self.tensor(out)?);
        let has_v2 = self.rt().opapi.as_ref().is_some_and(|a| a.GeluV2.is_some());
        match approx {
            GeluApprox::Tanh if !has_v2 => aclnn!(self, Gelu(x.raw(), out.raw())),
            GeluApprox::Tanh => aclnn!(self, GeluV2(x.raw(), 1, out.raw())),
            GeluApprox::Erf => aclnn!(self, GeluV2(x.raw(), 0, out.raw())),
        }
    }

    /// GELU backward (`aclnnGeluBackwardV2`).
    pub fn gelu_backward(
        &self,
        grad_out: &TensorArg,
        x: &TensorArg,
        approx: GeluApprox,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let [g, x, gi] = self.tensors([grad_out, x, grad_in])?;
        let mode = CString::new(match approx {
            GeluApprox::Erf => "none",
            GeluApprox::Tanh => "tanh",
        })
        .expect("no NUL");
        aclnn!(
            self,
            GeluBackwardV2(g.raw(), x.raw(), mode.as_ptr() as *mut _, gi.raw())
        )
    }

    /// `out = a + alpha * b` (broadcasting).
    pub fn add(&self, a: &TensorArg, b: &TensorArg, alpha: f32, out: &TensorArg) -> Result<()> {
        let (a, b, out) = (self.tensor(a)?, self.tensor(b)?, self.tensor(out)?);
        let alpha = self.scalar_f32(alpha)?;
        aclnn!(self, Add(a.raw(), b.raw(), alpha.raw(), out.raw()))
    }

    /// `out = a * b` (broadcasting).
    pub fn mul(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        let (a, b, out) = (self.tensor(a)?, self.tensor(b)?, self.tensor(out)?);
        aclnn!(self, Mul(a.raw(), b.raw(), out.raw()))
    }

    /// `out = op(x)` elementwise: Relu, Sigmoid, Exp, Sin, Cos, Sqrt.
    pub fn unary(&self, op: UnaryOp, x: &TensorArg, out: &TensorArg) -> Result<()> {
        let (x, out) = (self.tensor(x)?, self.tensor(out)?);
        let (x, out) = (x.raw(), out.raw());
        match op {
            UnaryOp::Relu => aclnn!(self, Relu(x, out)),
            UnaryOp::Sigmoid => aclnn!(self, Sigmoid(x, out)),
            UnaryOp::Exp => aclnn!(self, Exp(x, out)),
            UnaryOp::Sin => aclnn!(self, Sin(x, out)),
            UnaryOp::Cos => aclnn!(self, Cos(x, out)),
            UnaryOp::Sqrt => aclnn!(self, Sqrt(x, out)),
        }
    }

    /// `out = a / b` (broadcasting).
    pub fn div(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        let (a, b, out) = (self.tensor(a)?, self.tensor(b)?, self.tensor(out)?);
        aclnn!(self, Div(a.raw(), b.raw(), out.raw()))
    }

    /// `out = max(a, b)` elementwise (broadcasting; NaN propagates).
    pub fn maximum(&self, a: &TensorArg, b: &TensorArg, out: &TensorArg) -> Result<()> {
        let (a, b, out) = (self.tensor(a)?, self.tensor(b)?, self.tensor(out)?);
        aclnn!(self, Maximum(a.raw(), b.raw(), out.raw()))
    }

    /// `out = x.index_select(dim, index)`: the slices of `x` along `dim` named by the 1-D
    /// integer tensor `index`, in its order.
    pub fn index_select(
        &self,
        x: &TensorArg,
        dim: i64,
        index: &TensorArg,
        out: &TensorArg,
    ) -> Result<()> {
        let [x, i, out] = self.tensors([x, index, out])?;
        aclnn!(self, IndexSelect(x.raw(), dim, i.raw(), out.raw()))
    }

    /// `grad_in = x > threshold ? grad_out : 0` (ReLU backward with threshold 0).
    pub fn threshold_backward(
        &self,
        grad_out: &TensorArg,
        x: &TensorArg,
        threshold: f32,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let [g, x, gi] = self.tensors([grad_out, x, grad_in])?;
        let th = self.scalar_f32(threshold)?;
        aclnn!(
            self,
            ThresholdBackward(g.raw(), x.raw(), th.raw(), gi.raw())
        )
    }

    /// `grad_in = grad_out · y · (1 − y)` with `y = sigmoid(x)`.
    pub fn sigmoid_backward(
        &self,
        grad_out: &TensorArg,
        y: &TensorArg,
        grad_in: &TensorArg,
    ) -> Result<()> {
        let [g, y, gi] = self.tensors([grad_out, y, grad_in])?;
        aclnn!(self, SigmoidBackward(g.raw(), y.raw(), gi.raw()))
    }

    /// Bilinear resize of an NCHW tensor to `out`. `scales` are `(oh/h, ow/w)`: passed
    /// explicitly because torch_npu releases disagree on what an absent scale is (0 or 1);
    /// with PyTorch semantics an explicit scale gives the same source coordinates as the size
    /// ratio.
    pub fn upsample_bilinear2d(
        &self,
        x: &TensorArg,
        align_corners: bool,
        scales: (f64, f64),
        out: &TensorArg,
    ) -> Result<()> {
        let od = out.dims().to_vec();
        if od.len() != 4 || x.dims().len() != 4 {
            return Err(AscendError::Invalid(format!(
                "aclnnUpsampleBilinear2d: input {:?} and out {od:?} must be NCHW",
                x.dims()
            )));
        }
        let (x, out, size) = (
            self.tensor(x)?,
            self.tensor(out)?,
            self.int_array(&od[2..])?,
        );
        aclnn!(
            self,
            UpsampleBilinear2d(
                x.raw(),
                size.raw(),
                align_corners,
                scales.0,
                scales.1,
                out.raw()
            )
        )
    }

    /// Backward of [`Ops::upsample_bilinear2d`]: `grad_in` NCHW of the forward input's shape
    /// from `grad_out`.
    pub fn upsample_bilinear2d_backward(
        &self,
        grad_out: &TensorArg,
        align_corners: bool,
        scales: (f64, f64),
        grad_in: &TensorArg,
    ) -> Result<()> {
        let (gd, id) = (grad_out.dims().to_vec(), grad_in.dims().to_vec());
        if gd.len() != 4 || id.len() != 4 {
            return Err(AscendError::Invalid(format!(
                "aclnnUpsampleBilinear2dBackward: gradOut {gd:?} and gradInput {id:?} must be NCHW"
            )));
        }
        let (g, gi) = (self.tensor(grad_out)?, self.tensor(grad_in)?);
        let (osize, isize) = (self.int_array(&gd[2..])?, self.int_array(&id)?);
        aclnn!(
            self,
            UpsampleBilinear2dBackward(
                g.raw(),
                osize.raw(),
                isize.raw(),
                align_corners,
                scales.0,
                scales.1,
                gi.raw()
            )
        )
    }

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
        let (q, k, v) = (self.tensor(q)?, self.tensor(k)?, self.tensor(v)?);
        let [m, s, so, out] = self.tensors([softmax_max, softmax_sum, softmax_out, out])?;
        flash_aclnn!(
            self,
            FlashAttentionScore,
            attr,
            [q.raw(), k.raw(), v.raw()],
            [],
            [m.raw(), s.raw(), so.raw(), out.raw()]
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
        let [q, k, v, dy] = self.tensors([q, k, v, dy])?;
        let [m, s, out] = self.tensors([saved.0, saved.1, saved.2])?;
        let (e1, e2) = (self.tensor(empty)?, self.tensor(empty)?);
        let [gq, gk, gv] = self.tensors([grads.0, grads.1, grads.2])?;
        flash_aclnn!(
            self,
            FlashAttentionScoreGrad,
            attr,
            [q.raw(), k.raw(), v.raw(), dy.raw()],
            [m.raw(), s.raw(), e1.raw(), out.raw()],
            [gq.raw(), gk.raw(), gv.raw(), e2.raw()]
        )
    }

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
        let (w, m, v) = (self.tensor(var)?, self.tensor(m)?, self.tensor(v)?);
        let (g, s) = (self.tensor(grad)?, self.tensor(step)?);
        aclnn!(
            self,
            ApplyAdamWV2(
                w.raw(),
                m.raw(),
                v.raw(),
                std::ptr::null_mut(),
                g.raw(),
                s.raw(),
                h.lr,
                h.beta1,
                h.beta2,
                h.weight_decay,
                h.eps,
                false,
                false
            )
        )
    }
}
