//! Error values for every CANN call: the function name, the raw code, a coarse class derived
//! from the documented code ranges, and the runtime's own text when it has one.

use std::fmt;

/// Result of the Ascend wrappers.
pub type Result<T> = std::result::Result<T, AscendError>;

/// An error from the Ascend runtime or from our side of the FFI.
#[derive(Debug, thiserror::Error)]
pub enum AscendError {
    /// No CANN library could be opened (CPU-only machine, or `set_env.sh` not sourced).
    #[error("Ascend runtime not found: {0}")]
    NotFound(String),
    /// The library was opened but does not export a function we need (older/newer CANN).
    #[error("{func} is not available in {lib} (CANN version too old or too new?)")]
    MissingSymbol {
        /// C function name.
        func: &'static str,
        /// Library it was looked up in.
        lib: &'static str,
    },
    /// An ACL function (`aclError`, `acl/acl_base_rt.h`, `acl/error_codes/rt_error_codes.h`)
    /// returned non-zero.
    #[error("{func} failed: ACL error {code} ({class}){}", Msg(.msg))]
    Acl {
        /// C function name.
        func: &'static str,
        /// Raw `aclError`.
        code: i32,
        /// Class of the code (from its documented range).
        class: &'static str,
        /// `aclGetRecentErrMsg()` at the time of the failure, if any.
        msg: Option<String>,
    },
    /// An aclnn function (`aclnnStatus`, opbase `op_errno.h`) returned non-zero.
    #[error("{func} failed: aclnn status {code} ({class}){}", Msg(.msg))]
    Aclnn {
        /// C function name.
        func: &'static str,
        /// Raw `aclnnStatus`.
        code: i32,
        /// Class of the code.
        class: &'static str,
        /// `aclGetRecentErrMsg()` at the time of the failure, if any.
        msg: Option<String>,
    },
    /// An HCCL function (`HcclResult`, `hccl/hccl_types.h`) returned non-zero.
    #[error("{func} failed: HCCL error {code} ({text})")]
    Hccl {
        /// C function name.
        func: &'static str,
        /// Raw `HcclResult`.
        code: u32,
        /// `HcclGetErrorString(code)` or our own name for the code.
        text: String,
    },
    /// Not supported by the installed CANN version or this SoC (checked before the call).
    #[error("not supported here: {0}")]
    Unsupported(String),
    /// A caller error detected before calling into CANN (shape, size, dtype ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

struct Msg<'a>(&'a Option<String>);
impl fmt::Display for Msg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(m) if !m.trim().is_empty() => write!(f, ": {}", m.trim()),
            _ => Ok(()),
        }
    }
}

impl AscendError {
    /// Raw numeric code, if this error came from CANN.
    pub fn code(&self) -> Option<i64> {
        match self {
            AscendError::Acl { code, .. } | AscendError::Aclnn { code, .. } => Some(*code as i64),
            AscendError::Hccl { code, .. } => Some(*code as i64),
            _ => None,
        }
    }
}

/// Class of an `aclError` / runtime error code, from the ranges documented in
/// `acl/acl_base_rt.h` and `acl/error_codes/rt_error_codes.h`.
// Known codes by name first, then the documented ranges.
#[allow(clippy::match_overlapping_arm)]
pub fn acl_error_class(code: i32) -> &'static str {
    match code {
        0 => "success",
        100000 => "ACL_ERROR_INVALID_PARAM",
        100001 => "ACL_ERROR_UNINITIALIZE",
        100002 => "ACL_ERROR_REPEAT_INITIALIZE",
        100024 => "ACL_ERROR_OP_NOT_FOUND",
        200000 => "ACL_ERROR_BAD_ALLOC",
        200001 => "ACL_ERROR_API_NOT_SUPPORT",
        200002 => "ACL_ERROR_INVALID_DEVICE",
        107000 => "ACL_ERROR_RT_PARAM_INVALID",
        107001 => "ACL_ERROR_RT_INVALID_DEVICEID",
        207000 => "ACL_ERROR_RT_FEATURE_NOT_SUPPORT",
        207001 => "ACL_ERROR_RT_MEMORY_ALLOCATION",
        207004 => "ACL_ERROR_RT_NO_DEVICE",
        507015 => "ACL_ERROR_RT_AICORE_EXCEPTION",
        507046 => "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
        107002..=107999 => "runtime parameter error",
        100000..=148999 => "parameter / usage error",
        200003..=299999 => "resource error",
        300000..=399999 => "storage error",
        500000..=599999 => "internal error",
        _ => "unknown",
    }
}

/// Class of an `aclnnStatus` (opbase `include/nnopbase/opdev/op_errno.h`).
#[allow(clippy::match_overlapping_arm)]
pub fn aclnn_status_class(code: i32) -> &'static str {
    match code {
        0 => "ACLNN_SUCCESS",
        161001 => "ACLNN_ERR_PARAM_NULLPTR",
        161002 => "ACLNN_ERR_PARAM_INVALID",
        361001 => "ACLNN_ERR_RUNTIME_ERROR",
        561003 => "ACLNN_ERR_INNER_FIND_KERNEL_ERROR",
        561107 => "ACLNN_ERR_INNER_OPP_PATH_NOT_FOUND",
        561112 => "ACLNN_ERR_INNER_OPP_KERNEL_PKG_NOT_FOUND",
        161000..=161999 => "parameter error",
        361000..=361999 => "runtime error",
        561000..=561999 => "internal error",
        _ => "unknown",
    }
}

/// Name of an `HcclResult` (`hccl/hccl_types.h`), used when `HcclGetErrorString` is missing.
pub fn hccl_result_name(code: u32) -> &'static str {
    match code {
        0 => "HCCL_SUCCESS",
        1 => "HCCL_E_PARA",
        2 => "HCCL_E_PTR",
        3 => "HCCL_E_MEMORY",
        4 => "HCCL_E_INTERNAL",
        5 => "HCCL_E_NOT_SUPPORT",
        6 => "HCCL_E_NOT_FOUND",
        7 => "HCCL_E_UNAVAIL",
        8 => "HCCL_E_SYSCALL",
        9 => "HCCL_E_TIMEOUT",
        10 => "HCCL_E_OPEN_FILE_FAILURE",
        11 => "HCCL_E_TCP_CONNECT",
        12 => "HCCL_E_ROCE_CONNECT",
        13 => "HCCL_E_TCP_TRANSFER",
        14 => "HCCL_E_ROCE_TRANSFER",
        15 => "HCCL_E_RUNTIME",
        16 => "HCCL_E_DRV",
        17 => "HCCL_E_PROFILING",
        18 => "HCCL_E_CCE",
        19 => "HCCL_E_NETWORK",
        20 => "HCCL_E_AGAIN",
        21 => "HCCL_E_REMOTE",
        22 => "HCCL_E_SUSPENDING",
        23 => "HCCL_E_OPRETRY_FAIL",
        24 => "HCCL_E_OOM",
        _ => "unknown HcclResult",
    }
}
