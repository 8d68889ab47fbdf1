//! Foreign interfaces for device backends. With the `ascend` feature, bindgen-generated CANN
//! ACL/HCCL bindings loaded at run time.
#[cfg(feature = "ascend")]
pub mod sys;
