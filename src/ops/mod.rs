//! Tensor operations with their backward passes. Each op computes through the tensor's
//! [`Backend`](crate::backend::Backend) and, when recording, declares what it saves for backward.

pub mod elementwise;
pub mod extra;
pub mod linalg;
pub mod loss;
pub mod nn;
pub mod quant;
pub mod shape;

pub use nn::RelPosArgs;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Errors if two tensors live on different devices.
pub(crate) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op,
            a: a.device().to_string(),
            b: b.device().to_string(),
        });
    }
    Ok(())
}
