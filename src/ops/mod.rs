//! Tensor operations with their backward passes. Each op computes through the tensor's
//! [`Backend`](crate::backend::Backend) and, when recording, declares what it saves for backward.

pub mod elementwise;
pub mod extra;
pub mod linalg;
pub mod loss;
pub mod nn;
pub mod precision;
pub mod quant;
pub mod rope;
pub mod shape;

pub use nn::RelPosArgs;

use crate::backend::{ConvGrads, ConvIn, NormIn, Storage};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `y`, followed by exact GELU if `gelu` (the unfused tail of the `*_act` ops).
pub(crate) fn then_gelu(y: Tensor, gelu: bool) -> Result<Tensor> {
    if gelu {
        y.gelu()
    } else {
        Ok(y)
    }
}

/// A dense buffer holding exactly `t`'s elements (the tensor's own when it already is one).
pub(crate) fn dense(t: &Tensor) -> Result<Tensor> {
    if t.is_dense() {
        Ok(t.clone())
    } else {
        t.copy()
    }
}

/// A tensor whose elements start at offset 0 of its buffer, contiguously; the buffer may hold
/// more after them (enough for operands read by length, such as a GEMM bias).
pub(crate) fn dense_from_start(t: &Tensor) -> Result<Tensor> {
    if t.offset() == 0 && t.is_contiguous() {
        Ok(t.clone())
    } else {
        t.copy()
    }
}

/// A tensor over a backend's output buffer, on `like`'s device.
pub(crate) fn wrap(s: Storage, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::from_storage(s, shape, like.device())
}

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

/// A convolution's operands from dense tensors.
pub(crate) fn conv_in<'a>(x: &'a Tensor, w: &'a Tensor, bias: Option<&'a Tensor>) -> ConvIn<'a> {
    ConvIn {
        x: x.storage(),
        w: w.storage(),
        bias: bias.map(|t| t.storage()),
    }
}

/// A convolution backward's gradients as tensors shaped like `(x, w)` (and the bias, if any),
/// on `like`'s device, in the order the op listed its inputs.
pub(crate) fn conv_grad_tensors(
    r: ConvGrads,
    (x, w): (&Tensor, &Tensor),
    like: &Tensor,
) -> Result<Vec<Option<Tensor>>> {
    let mut out = vec![
        Some(wrap(r.dx, x.shape(), like)?),
        Some(wrap(r.dw, w.shape(), like)?),
    ];
    if let Some(db) = r.dbias {
        let c_out = db.len();
        out.push(Some(wrap(db, &[c_out], like)?));
    }
    Ok(out)
}

/// A norm's input and affine parameters from dense tensors.
pub(crate) fn norm_in<'a>(x: &'a Tensor, gamma: &'a Tensor, beta: &'a Tensor) -> NormIn<'a> {
    NormIn {
        x: x.storage(),
        gamma: gamma.storage(),
        beta: beta.storage(),
    }
}
