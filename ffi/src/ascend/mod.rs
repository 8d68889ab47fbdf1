//! Safe wrappers over the CANN runtime (feature `ascend`). Everything is loaded with
//! `dlopen` at run time; see `docs/ASCEND.md`.

mod alloc;
mod custom;
mod error;
mod hccl;
mod kernel;
mod ops;
mod runtime;

pub use alloc::{size_class, AllocStats, CachingAllocator, DeviceBuffer, Element};
pub use custom::{
    pack_gm_args, plan_layer_norm2d, plan_rel_pos_attention, AttnOperands, AttnShape,
    CustomKernels, Hardware, LaunchPlan, Ln2dShape, KERNELS_ENV, KERNEL_NAMES,
};
pub use error::{acl_error_class, aclnn_status_class, hccl_result_name, AscendError, Result};
pub use hccl::{HcclComm, ReduceOp, ROOT_INFO_BYTES};
pub use kernel::{KernelArgs, KernelBinary, KernelFunction};
pub use ops::{
    check_aclnn, cube_math_type, format_for_rank, soc_is_a2_class, AclHandle, AdamWHyper,
    CubePrecision, Descriptor, FlashAttn, GeluApprox, Layout, Ops, TensorArg, UnaryOp,
};
pub use runtime::{
    default_search_dirs, AscendRuntime, CannVersion, Device, Event, Stream, LIB_DIR_ENV, OPAPI_LIBS,
};
