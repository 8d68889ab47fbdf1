//! Hand-declared aclnn / nnopbase C API (no aclnn header ships in the torch-npu wheel, so these
//! cannot be bindgen'ed here). Each declaration cites the public header it was written from;
//! libloading cannot check signatures, so keep them in sync with the installed CANN
//! (`$ASCEND_HOME_PATH/include/aclnn/*.h`, `include/aclnnop/aclnn_*.h`) when upgrading.
//!
//! Sources (see /work/shared/research/ascend-cann.md §2b and §8):
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
                Self { $(
                    $f: libs.iter().find_map(|l| {
                        l.get::<unsafe extern "C" fn($($arg),*) -> $ret>(
                            concat!(stringify!($f), "\0").as_bytes(),
                        ).ok().map(|s| *s)
                    }),
                )* }
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
        /// acl_meta.h
        aclSetAclOpExecutorRepeatable: fn(*mut aclOpExecutor) -> aclnnStatus,
        /// acl_meta.h
        aclDestroyAclOpExecutor: fn(*mut aclOpExecutor) -> aclnnStatus,
        /// aclnn_base.h
        aclnnInit: fn(*const c_char) -> aclnnStatus,
        /// aclnn_base.h
        aclnnFinalize: fn() -> aclnnStatus,
    }
}

fn_table! {
    /// `libopapi.so` (and the split `libaclnn_*.so`): the aclnn operators we use.
    /// First-phase signatures end with `uint64_t *workspaceSize, aclOpExecutor **executor`.
    pub struct OpApi {
        /// ops-nn `matmul/mat_mul_v3/op_host/op_api/aclnn_matmul.h`; cubeMathType 0 = KEEP_DTYPE.
        aclnnMatmulGetWorkspaceSize: fn(*const aclTensor, *const aclTensor, *mut aclTensor, i8,
            *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_matmul.h`
        aclnnMatmul: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `matmul/mat_mul_v3/op_host/op_api/aclnn_mm.h`
        aclnnMmGetWorkspaceSize: fn(*const aclTensor, *const aclTensor, *mut aclTensor, i8,
            *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_mm.h`
        aclnnMm: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `matmul/batch_mat_mul_v3/op_host/op_api/aclnn_batch_matmul.h`
        aclnnBatchMatMulGetWorkspaceSize: fn(*const aclTensor, *const aclTensor, *mut aclTensor,
            i8, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_batch_matmul.h`
        aclnnBatchMatMul: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `norm/layer_norm_v4/op_host/op_api/aclnn_layer_norm.h`:
        /// (input, normalizedShape, weight?, bias?, double eps, out, mean?, rstd?, ws, ex)
        aclnnLayerNormGetWorkspaceSize: fn(*const aclTensor, *const aclIntArray,
            *const aclTensor, *const aclTensor, f64, *mut aclTensor, *mut aclTensor,
            *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_layer_norm.h`
        aclnnLayerNorm: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `norm/layer_norm_grad_v3/op_host/op_api/aclnn_layer_norm_backward.h`:
        /// (gradOut, input, normalizedShape, mean, rstd, weight?, bias?, outputMask,
        ///  gradInput, gradWeight, gradBias, ws, ex)
        aclnnLayerNormBackwardGetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *const aclIntArray, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclBoolArray, *mut aclTensor, *mut aclTensor,
            *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_layer_norm_backward.h`
        aclnnLayerNormBackward: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-nn `conv/convolution_forward/op_host/op_api/aclnn_convolution.h`:
        /// (input, weight, bias?, stride, padding, dilation, transposed, outputPadding,
        ///  int64 groups, output, int8 cubeMathType, ws, ex). CANN 7.x lacks cubeMathType!
        aclnnConvolutionGetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *const aclTensor, *const aclIntArray, *const aclIntArray, *const aclIntArray, bool,
            *const aclIntArray, i64, *mut aclTensor, i8, *mut u64, *mut *mut aclOpExecutor)
            -> aclnnStatus,
        /// ops-nn `aclnn_convolution.h`
        aclnnConvolution: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `conv/convolution_backward/op_api/aclnn_convolution_backward.h`:
        /// (gradOutput, input, weight, biasSizes, stride, padding, dilation, transposed,
        ///  outputPadding, int groups, outputMask, cubeMathType, gradInput, gradWeight,
        ///  gradBias, ws, ex)
        aclnnConvolutionBackwardGetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *const aclTensor, *const aclIntArray, *const aclIntArray, *const aclIntArray,
            *const aclIntArray, bool, *const aclIntArray, i32, *const aclBoolArray, i8,
            *mut aclTensor, *mut aclTensor, *mut aclTensor, *mut u64, *mut *mut aclOpExecutor)
            -> aclnnStatus,
        /// ops-nn `aclnn_convolution_backward.h`
        aclnnConvolutionBackward: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-nn `activation/softmax_v2/op_api/aclnn_softmax.h`: (self, int64 dim, out, ws, ex)
        aclnnSoftmaxGetWorkspaceSize: fn(*const aclTensor, i64, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_softmax.h`
        aclnnSoftmax: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `activation/softmax_grad/op_api/aclnn_softmax_backward.h`:
        /// (gradOutput, output, int64 dim, out, ws, ex)
        aclnnSoftmaxBackwardGetWorkspaceSize: fn(*const aclTensor, *const aclTensor, i64,
            *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_softmax_backward.h`
        aclnnSoftmaxBackward: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-nn `activation/gelu/op_api/aclnn_gelu.h` (tanh approximation): (self, out, ws, ex)
        aclnnGeluGetWorkspaceSize: fn(*const aclTensor, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_gelu.h`
        aclnnGelu: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `activation/gelu_v2/op_api/aclnn_gelu_v2.h`:
        /// (x, int64 approximate 0=none(erf) 1=tanh, y, ws, ex)
        aclnnGeluV2GetWorkspaceSize: fn(*const aclTensor, i64, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_gelu_v2.h`
        aclnnGeluV2: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn `activation/gelu_grad_v2/op_api/aclnn_gelu_backward_v2.h`:
        /// (gradOutput, self, char *approximate "none"|"tanh", gradInput, ws, ex)
        aclnnGeluBackwardV2GetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *mut c_char, *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_gelu_backward_v2.h`
        aclnnGeluBackwardV2: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-math `math/add/docs/aclnnAdd&aclnnInplaceAdd.md`:
        /// (self, other, const aclScalar *alpha, out, ws, ex); out = self + alpha * other
        aclnnAddGetWorkspaceSize: fn(*const aclTensor, *const aclTensor, *const aclScalar,
            *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-math `aclnnAdd`
        aclnnAdd: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-math `aclnn_mul.h`: (self, other, out, ws, ex)
        aclnnMulGetWorkspaceSize: fn(*const aclTensor, *const aclTensor, *mut aclTensor,
            *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-math `aclnn_mul.h`
        aclnnMul: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-math @c41933244 `math/div/op_api/aclnn_div.h`: (self, other, out, ws, ex);
        /// out = self / other (broadcasting, true division)
        aclnnDivGetWorkspaceSize: fn(*const aclTensor, *const aclTensor, *mut aclTensor,
            *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-math `aclnn_div.h`
        aclnnDiv: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-math @c41933244 `math/exp/op_api/aclnn_exp.h`: (self, out, ws, ex)
        aclnnExpGetWorkspaceSize: fn(*const aclTensor, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-math `aclnn_exp.h`
        aclnnExp: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-math @c41933244 `math/sin/op_api/aclnn_sin.h`: (self, out, ws, ex)
        aclnnSinGetWorkspaceSize: fn(*const aclTensor, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-math `aclnn_sin.h`
        aclnnSin: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-math @c41933244 `math/cos/op_api/aclnn_cos.h`: (input, out, ws, ex)
        aclnnCosGetWorkspaceSize: fn(*const aclTensor, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-math `aclnn_cos.h`
        aclnnCos: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-math @c41933244 `math/sqrt/op_api/aclnn_sqrt.h`: (self, out, ws, ex)
        aclnnSqrtGetWorkspaceSize: fn(*const aclTensor, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-math `aclnn_sqrt.h`
        aclnnSqrt: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn @e5c3fa932 `activation/relu/op_api/aclnn_relu.h`: (self, out, ws, ex)
        /// (`out` is declared `const aclTensor *` there; same ABI)
        aclnnReluGetWorkspaceSize: fn(*const aclTensor, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_relu.h`
        aclnnRelu: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn @e5c3fa932 `activation/sigmoid/op_api/aclnn_sigmoid.h`: (self, out, ws, ex)
        aclnnSigmoidGetWorkspaceSize: fn(*const aclTensor, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_sigmoid.h`
        aclnnSigmoid: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
        /// ops-nn @e5c3fa932 `activation/sigmoid_grad/op_api/aclnn_sigmoid_backward.h`:
        /// (gradOutput, output = sigmoid(x), gradInput, ws, ex); gradInput = g·y·(1 − y)
        aclnnSigmoidBackwardGetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_sigmoid_backward.h`
        aclnnSigmoidBackward: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-nn @e5c3fa932 `activation/threshold_grad_v2_d/op_api/aclnn_threshold_backward.h`:
        /// (gradOutput, self, const aclScalar *threshold, out, ws, ex);
        /// out = self > threshold ? gradOutput : 0 (ReLU backward with threshold 0)
        aclnnThresholdBackwardGetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *const aclScalar, *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_threshold_backward.h`
        aclnnThresholdBackward: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-cv @07b1cb2 `image/upsample_bilinear2d/op_host/op_api/aclnn_upsample_bilinear_2d.h`:
        /// (self NCHW, const aclIntArray *outputSize [oh, ow], bool alignCorners,
        ///  double scalesH, double scalesW, out, ws, ex)
        aclnnUpsampleBilinear2dGetWorkspaceSize: fn(*const aclTensor, *const aclIntArray, bool,
            f64, f64, *mut aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-cv `aclnn_upsample_bilinear_2d.h`
        aclnnUpsampleBilinear2d: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// No public header found for the non-V2 backward; argument order from the Ascend/op-plugin
        /// opapi kernel of `upsample_bilinear2d_backward` (`EXEC_NPU_CMD(aclnnUpsampleBilinear2dBackward, grad_output, output_size, input_size,
        /// align_corners, scales_h, scales_w, grad_input)`): (gradOut, const aclIntArray
        /// *outputSize [oh, ow], const aclIntArray *inputSize [n, c, h, w], bool alignCorners,
        /// double scalesH, double scalesW, gradInput, ws, ex)
        aclnnUpsampleBilinear2dBackwardGetWorkspaceSize: fn(*const aclTensor,
            *const aclIntArray, *const aclIntArray, bool, f64, f64, *mut aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// see `aclnnUpsampleBilinear2dBackwardGetWorkspaceSize`
        aclnnUpsampleBilinear2dBackward: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-transformer @c29bc10
        /// `attention/flash_attention_score/op_host/op_api/aclnn_flash_attention_score.h`:
        /// (query, key, value, realShift?, dropMask?, paddingMask?, attenMask?, prefix?,
        ///  double scaleValue, double keepProb, int64 preTokens, int64 nextTokens, int64 headNum,
        ///  char *inputLayout, int64 innerPrecise, int64 sparseMode, softmaxMaxOut,
        ///  softmaxSumOut, softmaxOutOut, attentionOutOut, ws, ex). Formula
        /// `Softmax(scale·(pse + Q·Kᵀ))·V`; softmaxMax/Sum fp32 `[B, N, Sq, 8]`.
        aclnnFlashAttentionScoreGetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclIntArray, f64, f64, i64, i64, i64, *mut c_char, i64, i64,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclTensor, *mut u64,
            *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-transformer `aclnn_flash_attention_score.h`
        aclnnFlashAttentionScore: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-transformer @c29bc10
        /// `attention/flash_attention_score_grad/op_host/op_api/aclnn_flash_attention_score_grad.h`:
        /// (query, keyIn, value, dy, pseShift?, dropMask?, paddingMask?, attenMask?,
        ///  softmaxMax?, softmaxSum?, softmaxIn?, attentionIn?, prefix?, double scaleValue,
        ///  double keepProb, int64 preTokens, int64 nextTokens, int64 headNum, char *inputLayout,
        ///  int64 innerPrecise, int64 sparseMode, dqOut, dkOut, dvOut, dpseOut, ws, ex)
        aclnnFlashAttentionScoreGradGetWorkspaceSize: fn(*const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *const aclTensor, *const aclIntArray, f64, f64, i64, i64, i64,
            *mut c_char, i64, i64, *const aclTensor, *const aclTensor, *const aclTensor,
            *const aclTensor, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-transformer `aclnn_flash_attention_score_grad.h`
        aclnnFlashAttentionScoreGrad: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream)
            -> aclnnStatus,
        /// ops-nn @e5c3fa932 `optim/apply_adam_w_v2/op_host/op_api/aclnn_apply_adam_w_v2.h`:
        /// (varRef, mRef, vRef, maxGradNormOptionalRef, grad, const aclTensor *step, float lr,
        ///  float beta1, float beta2, float weightDecay, float eps, bool amsgrad, bool maximize,
        ///  ws, ex); in place. The kernel (`op_kernel/apply_adam_w_v2_fp.h`) uses `step + 1` as
        /// t (torch_npu's `_fused_adamw_` passes `state_steps[i].sub(1)`).
        aclnnApplyAdamWV2GetWorkspaceSize: fn(*mut aclTensor, *mut aclTensor, *mut aclTensor,
            *mut aclTensor, *const aclTensor, *const aclTensor, f32, f32, f32, f32, f32, bool,
            bool, *mut u64, *mut *mut aclOpExecutor) -> aclnnStatus,
        /// ops-nn `aclnn_apply_adam_w_v2.h`
        aclnnApplyAdamWV2: fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> aclnnStatus,
    }
}
