//! Rotary position embedding for inference: SAM2's axial RoPE (`compute_axial_cis`,
//! `apply_rotary_enc` in `sam2/modeling/position_encoding.py`). The kernel and its conventions
//! are in `medsam_kernels::rope`. No backward yet: recording a gradient through it is an error.

use super::{dense, same_device, wrap};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::Device;
use medsam_kernels::rope::{self, RopeDims};

/// SAM2's `compute_axial_cis(dim, end_x, end_y, theta)` as `(cos, sin)`, each
/// `[end_x·end_y, dim/2]`; `dim` a multiple of 4.
pub fn axial_rope_tables(
    dim: usize,
    end_x: usize,
    end_y: usize,
    theta: f32,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    if !dim.is_multiple_of(4) || dim == 0 {
        return Err(Error::arg(
            "dim",
            format!("axial RoPE needs a head width that is a positive multiple of 4, got {dim}"),
        ));
    }
    let (cos, sin) = rope::axial_tables(dim, end_x, end_y, theta);
    let shape = [end_x * end_y, dim / 2];
    Ok((
        Tensor::from_slice(&cos, &shape, device)?,
        Tensor::from_slice(&sin, &shape, device)?,
    ))
}

/// SAM2's `apply_rotary_enc` for one operand: `x [.., n, dim]` rotated by `cos`/`sin` tables of
/// `[t, dim/2]`; `n` a multiple of `t` (keys that repeat the query grid, `repeat_freqs_k`).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    same_device("rope", x, cos)?;
    same_device("rope", x, sin)?;
    let bad = |why: &str| {
        Error::shape(
            "rope",
            format!(
                "{why}: x {:?}, cos {:?}, sin {:?}",
                x.shape(),
                cos.shape(),
                sin.shape()
            ),
        )
    };
    if x.rank() < 2 || cos.rank() != 2 || sin.shape() != cos.shape() {
        return Err(bad("x must be [.., n, dim] and the tables [t, dim/2]"));
    }
    let (n, dim) = (x.dim(x.rank() - 2), x.dim(x.rank() - 1));
    let table_len = cos.dim(0);
    if !dim.is_multiple_of(2) || cos.dim(1) * 2 != dim {
        return Err(bad("dim must be even and twice the tables' width"));
    }
    if table_len == 0 || !n.is_multiple_of(table_len) {
        return Err(bad("the positions must be a whole number of table lengths"));
    }
    if crate::autograd::is_grad_enabled() && x.requires_grad() {
        return Err(Error::Autograd(
            "rope has no backward yet; run it under no_grad".into(),
        ));
    }
    let d = RopeDims {
        rows: x.numel() / (n * dim).max(1),
        n,
        dim,
        table_len,
    };
    let (xd, cd, sd) = (dense(x)?, dense(cos)?, dense(sin)?);
    let out = x
        .backend()?
        .rope(d, xd.storage(), cd.storage(), sd.storage())?;
    wrap(out, x.shape(), x)
}
