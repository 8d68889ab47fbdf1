//! Hand-declared aclnn / nnopbase C API (no aclnn header ships in the torch-npu wheel, so these
//! cannot be bindgen'ed on every machine). Each declaration cites the public header it was
//! written from. **Checked by the compiler where real headers exist**: when
//! `$ASCEND_HOME_PATH/include/aclnnop` (or `$MEDSAM_CANN_INCLUDE/aclnnop`) is present, `build.rs`
//! bindgens `aclnn/acl_meta.h`, `aclnn/aclnn_base.h` and the `aclnnop/<header>` named beside
//! each operator below, and [`header_check`] assigns every bindgen'ed function to the field
//! type declared here: a signature that differs (even in `const`) fails the build.
//! Verified against the CANN 8.1.RC1 toolkit headers (docs/ASCEND.md, "What was verified").
//!
//! Operators are declared once, by op name (`Matmul`), with the arguments of the first phase
//! before `(uint64_t *workspaceSize, aclOpExecutor **executor)`: the table resolves both
//! `aclnn<Op>GetWorkspaceSize` and `aclnn<Op>` from that one name (ggml-cann's
//! `GGML_CANN_CALL_ACLNN_OP` idea), so an operator name is written once per call site.
//!
//! Sources (public; the project research notes on CANN, §2b and §8, list the commits):
//! * CANN 8.1.RC1 toolkit headers `include/aclnn/acl_meta.h`, `include/aclnnop/aclnn_*.h`
//!   (public copy: GitHub `leideng/CANN-8.1.RC1`) — what the signature check was run against;
//! * hicann/opbase @aa3cd74 `include/nnopbase/aclnn/acl_meta.h` — tensors, arrays, scalars;
//! * hicann/opbase @aa3cd74 `include/nnopbase/aclnn/aclnn_base.h` — `aclnnInit`;
//! * hicann/ops-nn @e5c3fa932 — per-op headers named at each function below;
//! * hicann/ops-math — `math/add/docs/aclnnAdd&aclnnInplaceAdd.md`, `aclnn_mul.h` (Add/Mul);
//!   @c41933244 `math/{div,exp,sin,cos,sqrt}/op_api/aclnn_*.h`;
//! * hicann/ops-cv @07b1cb2 — `image/upsample_bilinear2d/op_host/op_api/aclnn_upsample_bilinear_2d.h`;
//! * hicann/ops-transformer @c29bc10 — `attention/flash_attention_score*/op_host/op_api/*.h`.
#![allow(non_camel_case_types, non_snake_case)]

use crate::sys::types::{aclDataType, aclFormat, aclrtStream};
use std::ffi::{c_char, c_void};
use std::marker::{PhantomData, PhantomPinned};

/// `typedef int32_t aclnnStatus;` (acl_meta.h)
pub type aclnnStatus = i32;

macro_rules! opaque {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {$(
        $(#[$m])*
        #[repr(C)]
        pub struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}
opaque!(
    /// Opaque `aclTensor` (acl_meta.h).
    aclTensor,
    /// Opaque `aclScalar` (acl_meta.h).
    aclScalar,
    /// Opaque `aclIntArray` (acl_meta.h).
    aclIntArray,
    /// Opaque `aclFloatArray` (acl_meta.h).
    aclFloatArray,
    /// Opaque `aclBoolArray` (acl_meta.h).
    aclBoolArray,
    /// Opaque `aclTensorList` (acl_meta.h).
    aclTensorList,
    /// Opaque `aclOpExecutor` (acl_meta.h).
    aclOpExecutor,
);

/// Every second-phase function: `aclnnStatus aclnnX(void *workspace, uint64_t workspaceSize,
/// aclOpExecutor *executor, aclrtStream stream)`.
pub type AclnnRunFn =
    unsafe extern "C" fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus;

/// The first symbol of `libs` named `name` (NUL-terminated), as a function pointer `F`.
///
/// # Safety
/// `F` must be the symbol's C signature.
unsafe fn lookup<F: Copy>(libs: &[&libloading::Library], name: &str) -> Option<F> {
    libs.iter()
        .find_map(|l| l.get::<F>(name.as_bytes()).ok().map(|s| *s))
}

/// Declares a table of optional C functions resolved by name from a list of libraries.
macro_rules! fn_table {
    ($(#[$m:meta])* pub struct $name:ident {
        $( $(#[$fm:meta])* $f:ident : fn($($arg:ty),* $(,)?) -> $ret:ty ),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy)]
        pub struct $name {
            $( $(#[$fm])* pub $f: Option<unsafe extern "C" fn($($arg),*) -> $ret>, )*
        }
        impl $name {
            /// Resolve every function from the first library that exports it.
            ///
            /// # Safety
            /// The declared signatures must match the library's; the libraries must never be
            /// unloaded while the table is used.
            pub unsafe fn resolve(libs: &[&libloading::Library]) -> Self {
                Self { $( $f: lookup(libs, concat!(stringify!($f), "\0")), )* }
            }
            /// Names of the functions that were not found.
            pub fn missing(&self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.$f.is_none() { v.push(stringify!($f)); } )*
                v
            }
        }
    };
}

/// Declares the aclnn operator table: one field per operator holding both phases, resolved
/// from `aclnn<Op>GetWorkspaceSize` and `aclnn<Op>`. The string after each name is its header
/// under `aclnnop/` (read by `build.rs` for the signature check).
macro_rules! aclnn_ops {
    ($(#[$m:meta])* pub struct $name:ident {
        $( $(#[$fm:meta])* $op:ident ($hdr:literal) : fn($($arg:ty),* $(,)?) ),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy)]
        pub struct $name {
            $( $(#[$fm])* pub $op: Option<(
                unsafe extern "C" fn($($arg,)* *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
                AclnnRunFn,
            )>, )*
        }
        impl $name {
            /// Resolve both phases of every operator from the first library that exports them
            /// (an operator counts as present only when both are).
            ///
            /// # Safety
            /// As for [`NnopBase::resolve`].
            pub unsafe fn resolve(libs: &[&libloading::Library]) -> Self {
                Self { $(
                    $op: lookup(libs, concat!("aclnn", stringify!($op), "GetWorkspaceSize\0"))
                        .zip(lookup(libs, concat!("aclnn", stringify!($op), "\0"))),
                )* }
            }
            /// `aclnn<Op>` names of the operators that were not found.
            pub fn missing(&self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.$op.is_none() { v.push(concat!("aclnn", stringify!($op))); } )*
                v
            }
        }
    };
}

fn_table! {
    /// `libnnopbase.so`: tensor / array / scalar descriptors (opbase `acl_meta.h`,
    /// `aclnn_base.h`).
    pub struct NnopBase {
        /// acl_meta.h
        aclCreateTensor: fn(*const i64, u64, aclDataType, *const i64, i64, aclFormat,
            *const i64, u64, *mut c_void) -> *mut aclTensor,
        /// acl_meta.h
        aclDestroyTensor: fn(*const aclTensor) -> aclnnStatus,
        /// acl_meta.h
        aclCreateScalar: fn(*mut c_void, aclDataType) -> *mut aclScalar,
        /// acl_meta.h
        aclDestroyScalar: fn(*const aclScalar) -> aclnnStatus,
        /// acl_meta.h
        aclCreateIntArray: fn(*const i64, u64) -> *mut aclIntArray,
        /// acl_meta.h
        aclDestroyIntArray: fn(*const aclIntArray) -> aclnnStatus,
        /// acl_meta.h
        aclCreateFloatArray: fn(*const f32, u64) -> *mut aclFloatArray,
        /// acl_meta.h
        aclDestroyFloatArray: fn(*const aclFloatArray) -> aclnnStatus,
        /// acl_meta.h
        aclCreateBoolArray: fn(*const bool, u64) -> *mut aclBoolArray,
        /// acl_meta.h
        aclDestroyBoolArray: fn(*const aclBoolArray) -> aclnnStatus,
        /// acl_meta.h (present in CANN 8.1)
        aclSetAclOpExecutorRepeatable: fn(*mut aclOpExecutor) -> aclnnStatus,
        /// acl_meta.h (present in CANN 8.1): releases an executor that phase 2 will not run.
        aclDestroyAclOpExecutor: fn(*mut aclOpExecutor) -> aclnnStatus,
        /// aclnn_base.h
        aclnnInit: fn(*const c_char) -> aclnnStatus,
        /// aclnn_base.h
        aclnnFinalize: fn() -> aclnnStatus,
    }
}

aclnn_ops! {
    /// `libopapi.so` (CANN ≤ 8.x) or `libopapi_{math,nn,cv,transformer,legacy}.so` (split
    /// op API of newer releases): the aclnn operators we use.
    pub struct OpApi {
        /// ops-nn `matmul/mat_mul_v3/op_host/op_api/aclnn_matmul.h`:
        /// (self, mat2, out, int8 cubeMathType)
        Matmul("aclnn_matmul.h"): fn(*const aclTensor, *const aclTensor, *mut aclTensor, i8),
        /// ops-nn `matmul/mat_mul_v3/op_host/op_api/aclnn_mm.h`
        Mm("aclnn_mm.h"): fn(*const aclTensor, *const aclTensor, *mut aclTensor, i8),
        /// ops-nn `matmul/batch_mat_mul_v3/op_host/op_api/aclnn_batch_matmul.h` (3-D only)
        BatchMatMul("aclnn_batch_matmul.h"): fn(*const aclTensor, *const aclTensor,
            *mut aclTensor, i8),
        /// ops-nn `norm/layer_norm_v4/op_host/op_api/aclnn_layer_norm.h`:
        /// (input, normalizedShape, weight?, bias?, double eps, out, mean?, rstd?)
        LayerNorm("aclnn_layer_norm.h"): fn(*const aclTensor, *const aclIntArray,
            *const aclTensor, *const aclTensor, f64, *mut aclTensor, *mut aclTensor,
            *mut aclTensor),
        /// ops-nn `norm/layer_norm_grad_v3/op_host/op_api/aclnn_layer_norm_backward.h`:
        /// (gradOut, input, normalizedShape, mean, rstd, weight?, bias?, outputMask,
        ///  gradInput, gradWeight, gradBias)
        LayerNormBackward("aclnn_layer_norm_backward.h"): fn(*const aclTensor,
            *const aclTensor, *const aclIntArray, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclBoolArray, *mut aclTensor,
            *mut aclTensor, *mut aclTensor),
        /// ops-nn `conv/convolution_forward/op_host/op_api/aclnn_convolution.h` (CANN ≥ 8.0):
        /// (input, weight, bias?, stride, padding, dilation, transposed, outputPadding,
        ///  int64 groups, output, int8 cubeMathType). CANN 7.x declares it without
        /// cubeMathType: `Ops` refuses the call there (version gate).
        Convolution("aclnn_convolution.h"): fn(*const aclTensor, *const aclTensor,
            *const aclTensor, *const aclIntArray, *const aclIntArray, *const aclIntArray, bool,
            *const aclIntArray, i64, *mut aclTensor, i8),
        /// ops-nn `conv/convolution_backward/op_api/aclnn_convolution_backward.h`:
        /// (gradOutput, input, weight, biasSizes, stride, padding, dilation, transposed,
        ///  outputPadding, int groups, outputMask, cubeMathType, gradInput, gradWeight,
        ///  gradBias)
        ConvolutionBackward("aclnn_convolution_backward.h"): fn(*const aclTensor,
            *const aclTensor, *const aclTensor, *const aclIntArray, *const aclIntArray,
            *const aclIntArray, *const aclIntArray, bool, *const aclIntArray, i32,
            *const aclBoolArray, i8, *mut aclTensor, *mut aclTensor, *mut aclTensor),
        /// ops-nn `activation/softmax_v2/op_api/aclnn_softmax.h`: (self, int64 dim, out)
        Softmax("aclnn_softmax.h"): fn(*const aclTensor, i64, *mut aclTensor),
        /// ops-nn `activation/softmax_grad/op_api/aclnn_softmax_backward.h`:
        /// (gradOutput, output, int64 dim, out)
        SoftmaxBackward("aclnn_softmax_backward.h"): fn(*const aclTensor, *const aclTensor,
            i64, *mut aclTensor),
        /// ops-nn `activation/gelu/op_api/aclnn_gelu.h` (tanh approximation): (self, out)
        Gelu("aclnn_gelu.h"): fn(*const aclTensor, *mut aclTensor),
        /// ops-nn `activation/gelu_v2/op_api/aclnn_gelu_v2.h`:
        /// (x, int64 approximate 0=none(erf) 1=tanh, y)
        GeluV2("aclnn_gelu_v2.h"): fn(*const aclTensor, i64, *mut aclTensor),
        /// ops-nn `activation/gelu_grad_v2/op_api/aclnn_gelu_backward_v2.h`:
        /// (gradOutput, self, char *approximate "none"|"tanh", gradInput)
        GeluBackwardV2("aclnn_gelu_backward_v2.h"): fn(*const aclTensor, *const aclTensor,
            *mut c_char, *mut aclTensor),
        /// ops-math `math/add/docs/aclnnAdd&aclnnInplaceAdd.md`:
        /// (self, other, const aclScalar *alpha, out); out = self + alpha * other
        Add("aclnn_add.h"): fn(*const aclTensor, *const aclTensor, *const aclScalar,
            *mut aclTensor),
        /// ops-math `aclnn_mul.h`: (self, other, out)
        Mul("aclnn_mul.h"): fn(*const aclTensor, *const aclTensor, *mut aclTensor),
        /// ops-math @c41933244 `math/div/op_api/aclnn_div.h`: (self, other, out);
        /// out = self / other (broadcasting, true division)
        Div("aclnn_div.h"): fn(*const aclTensor, *const aclTensor, *mut aclTensor),
        /// CANN 8.1.RC1 toolkit `aclnnop/aclnn_maximum.h`: (self, other, out); elementwise
        /// maximum with broadcasting (`torch.maximum`: NaN propagates)
        Maximum("aclnn_maximum.h"): fn(*const aclTensor, *const aclTensor, *mut aclTensor),
        /// CANN 8.1.RC1 toolkit `aclnnop/aclnn_index_select.h`: (self, int64 dim, index, out);
        /// `out = self.index_select(dim, index)` (index INT32 or INT64, 1-D)
        IndexSelect("aclnn_index_select.h"): fn(*const aclTensor, i64, *const aclTensor,
            *mut aclTensor),
        /// ops-math @c41933244 `math/exp/op_api/aclnn_exp.h`: (self, out)
        Exp("aclnn_exp.h"): fn(*const aclTensor, *mut aclTensor),
        /// ops-math @c41933244 `math/sin/op_api/aclnn_sin.h`: (self, out)
        Sin("aclnn_sin.h"): fn(*const aclTensor, *mut aclTensor),
        /// ops-math @c41933244 `math/cos/op_api/aclnn_cos.h`: (input, out)
        Cos("aclnn_cos.h"): fn(*const aclTensor, *mut aclTensor),
        /// ops-math @c41933244 `math/sqrt/op_api/aclnn_sqrt.h`: (self, out)
        Sqrt("aclnn_sqrt.h"): fn(*const aclTensor, *mut aclTensor),
        /// ops-nn @e5c3fa932 `activation/relu/op_api/aclnn_relu.h`: (self, out); the header
        /// declares `out` as `const aclTensor *`.
        Relu("aclnn_relu.h"): fn(*const aclTensor, *const aclTensor),
        /// ops-nn @e5c3fa932 `activation/sigmoid/op_api/aclnn_sigmoid.h`: (self, out)
        Sigmoid("aclnn_sigmoid.h"): fn(*const aclTensor, *mut aclTensor),
        /// ops-nn @e5c3fa932 `activation/sigmoid_grad/op_api/aclnn_sigmoid_backward.h`:
        /// (gradOutput, output = sigmoid(x), gradInput); gradInput = g·y·(1 − y)
        SigmoidBackward("aclnn_sigmoid_backward.h"): fn(*const aclTensor, *const aclTensor,
            *mut aclTensor),
        /// ops-nn @e5c3fa932 `activation/threshold_grad_v2_d/op_api/aclnn_threshold_backward.h`:
        /// (gradOutput, self, const aclScalar *threshold, out);
        /// out = self > threshold ? gradOutput : 0 (ReLU backward with threshold 0)
        ThresholdBackward("aclnn_threshold_backward.h"): fn(*const aclTensor,
            *const aclTensor, *const aclScalar, *mut aclTensor),
        /// ops-cv @07b1cb2 `image/upsample_bilinear2d/op_host/op_api/aclnn_upsample_bilinear_2d.h`:
        /// (self NCHW, const aclIntArray *outputSize [oh, ow], bool alignCorners,
        ///  double scalesH, double scalesW, out)
        UpsampleBilinear2d("aclnn_upsample_bilinear_2d.h"): fn(*const aclTensor,
            *const aclIntArray, bool, f64, f64, *mut aclTensor),
        /// CANN 8.1 `aclnnop/aclnn_upsample_bilinear_2d_backward.h` (also torch_npu's
        /// `EXEC_NPU_CMD(aclnnUpsampleBilinear2dBackward, ...)`): (gradOut NCHW,
        /// const aclIntArray *outputSize [oh, ow], const aclIntArray *inputSize [n, c, h, w],
        /// bool alignCorners, double scalesH, double scalesW, out)
        UpsampleBilinear2dBackward("aclnn_upsample_bilinear_2d_backward.h"): fn(
            *const aclTensor, *const aclIntArray, *const aclIntArray, bool, f64, f64,
            *mut aclTensor),
        /// ops-transformer @c29bc10
        /// `attention/flash_attention_score/op_host/op_api/aclnn_flash_attention_score.h`:
        /// (query, key, value, realShift?, dropMask?, paddingMask?, attenMask?, prefix?,
        ///  double scaleValue, double keepProb, int64 preTokens, int64 nextTokens, int64 headNum,
        ///  char *inputLayout, int64 innerPrecise, int64 sparseMode, softmaxMaxOut,
        ///  softmaxSumOut, softmaxOutOut, attentionOutOut). Formula
        /// `Softmax(scale·(pse + Q·Kᵀ))·V`; softmaxMax/Sum fp32 `[B, N, Sq, 8]`.
        FlashAttentionScore("aclnn_flash_attention_score.h"): fn(*const aclTensor,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclIntArray, f64, f64, i64, i64, i64,
            *mut c_char, i64, i64, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor),
        /// ops-transformer @c29bc10
        /// `attention/flash_attention_score_grad/op_host/op_api/aclnn_flash_attention_score_grad.h`:
        /// (query, keyIn, value, dy, pseShift?, dropMask?, paddingMask?, attenMask?,
        ///  softmaxMax?, softmaxSum?, softmaxIn?, attentionIn?, prefix?, double scaleValue,
        ///  double keepProb, int64 preTokens, int64 nextTokens, int64 headNum, char *inputLayout,
        ///  int64 innerPrecise, int64 sparseMode, dqOut, dkOut, dvOut, dpseOut)
        FlashAttentionScoreGrad("aclnn_flash_attention_score_grad.h"): fn(*const aclTensor,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclIntArray, f64, f64,
            i64, i64, i64, *mut c_char, i64, i64, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor),
        /// ops-nn @e5c3fa932 `optim/apply_adam_w_v2/op_host/op_api/aclnn_apply_adam_w_v2.h`:
        /// (varRef, mRef, vRef, maxGradNormOptionalRef, grad, const aclTensor *step, float lr,
        ///  float beta1, float beta2, float weightDecay, float eps, bool amsgrad, bool maximize);
        /// in place. The kernel (`op_kernel/apply_adam_w_v2_fp.h`) uses `step + 1` as t
        /// (torch_npu's `_fused_adamw_` passes `state_steps[i].sub(1)`).
        ApplyAdamWV2("aclnn_apply_adam_w_v2.h"): fn(*mut aclTensor, *mut aclTensor,
            *mut aclTensor, *mut aclTensor, *const aclTensor, *const aclTensor, f32, f32, f32,
            f32, f32, bool, bool),
    }
}

/// Compile-time signature check against the installed headers (see the module doc). Only
/// compiled when `build.rs` found `aclnnop/` headers; each line of the generated file is
/// `same(table.Field, headers::cFunction)`, which does not type-check if they differ.
#[cfg(medsam_aclnn_headers)]
#[allow(dead_code, non_upper_case_globals, clippy::all)]
pub mod header_check {
    use super::*;
    /// bindgen's declarations of the functions we call, from the real headers.
    mod headers {
        use super::super::*;
        #[allow(unused_imports)]
        use crate::sys::types::*;
        include!(concat!(env!("OUT_DIR"), "/aclnn_headers.rs"));
    }
    fn same<F>(_: Option<F>, _: F) {}
    fn check(nn: &NnopBase, api: &OpApi) {
        include!(concat!(env!("OUT_DIR"), "/aclnn_check.rs"));
    }
}
