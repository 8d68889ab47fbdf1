//! Matrix products on the GEMM kernel. Transposes are free: they are strides in the GEMM layout.

use super::{dense_from_start, then_gelu};
use crate::autograd::{record, records, BackwardOp};
use crate::backend::{Epilogue, GemmArgs, GemmOperand};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use medsam_kernels::gemm::{GemmDims, Layout, Precision};
use std::cell::Cell;

thread_local! {
    static AUTOCAST_BF16: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with matrix products (matmul, linear, conv, attention projections) in bf16 with f32
/// accumulation, like `torch.autocast(dtype=torch.bfloat16)`; weights stay f32.
pub fn autocast_bf16<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    crate::autograd::with_flag(&AUTOCAST_BF16, enabled, f)
}

/// Runs `f` with its matrix products in f32 whatever the autocast in force (bf16 or int8): for
/// the convolutions that models run as linear layers, which stay f32 as every convolution does.
pub fn products_in_f32<T>(f: impl FnOnce() -> T) -> T {
    super::quant::autocast_int8(false, || autocast_bf16(false, f))
}

pub fn current_precision() -> Precision {
    if AUTOCAST_BF16.with(|c| c.get()) {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// `(batch, batch_stride)` of the leading axes if they collapse into one strided axis.
fn merged_batch(t: &Tensor) -> Option<(usize, usize)> {
    let r = t.rank();
    let (shape, strides) = (&t.shape()[..r - 2], &t.strides()[..r - 2]);
    let batch: usize = shape.iter().product();
    if batch <= 1 {
        return Some((batch, 0));
    }
    let mut stride = None;
    for d in (0..shape.len()).rev() {
        if shape[d] == 1 {
            continue;
        }
        match stride {
            None => stride = Some((strides[d], strides[d] * shape[d])),
            Some((inner, expect)) => {
                if strides[d] != expect {
                    return None;
                }
                stride = Some((inner, expect * shape[d]))
            }
        }
    }
    Some((batch, stride.map(|s| s.0).unwrap_or(0)))
}

fn operand(t: &Tensor, batch_stride: usize) -> GemmOperand<'_> {
    let r = t.rank();
    GemmOperand {
        storage: t.storage(),
        offset: t.offset(),
        layout: Layout {
            batch_stride,
            row_stride: t.strides()[r - 2],
            col_stride: t.strides()[r - 1],
        },
    }
}

impl Tensor {
    /// Batched matrix product `[..., m, k] · [..., k, n]`; `other` may also be a plain `[k, n]`
    /// matrix shared by every batch.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        super::same_device("matmul", self, other)?;
        let (ra, rb) = (self.rank(), other.rank());
        if ra < 2 || rb < 2 || self.shape()[ra - 1] != other.shape()[rb - 2] {
            return Err(Error::shape(
                "matmul",
                format!("{:?} · {:?}", self.shape(), other.shape()),
            ));
        }
        if rb > 2 && self.shape()[..ra - 2] != other.shape()[..rb - 2] {
            return Err(Error::shape(
                "matmul",
                format!(
                    "batch axes differ: {:?} · {:?}",
                    self.shape(),
                    other.shape()
                ),
            ));
        }
        let (m, k, n) = (
            self.shape()[ra - 2],
            self.shape()[ra - 1],
            other.shape()[rb - 1],
        );
        let precision = current_precision();
        let b = self.backend()?;
        let mut out_shape = self.shape()[..ra - 2].to_vec();
        out_shape.extend([m, n]);
        let storage = if rb == 2 && ra == 2 {
            b.gemm(GemmArgs {
                dims: GemmDims { batch: 1, m, n, k },
                a: operand(self, 0),
                b: operand(other, 0),
                precision,
            })?
        } else if rb == 2 {
            // A shared matrix: fold every batch into M when A's rows are evenly strided.
            let a = if self.is_contiguous() {
                self.clone()
            } else {
                self.copy()?
            };
            let rows = a.numel() / k.max(1);
            let lhs = GemmOperand {
                storage: a.storage(),
                offset: a.offset(),
                layout: Layout::row_major(rows, k),
            };
            let dims = GemmDims {
                batch: 1,
                m: rows,
                n,
                k,
            };
            let rhs = operand(other, 0);
            b.gemm(GemmArgs {
                dims,
                a: lhs,
                b: rhs,
                precision,
            })?
        } else {
            let a = match merged_batch(self) {
                Some(_) => self.clone(),
                None => self.copy()?,
            };
            let o = match merged_batch(other) {
                Some(_) => other.clone(),
                None => other.copy()?,
            };
            let (batch, sa) = merged_batch(&a).expect("dense");
            let (_, sb) = merged_batch(&o).expect("dense");
            b.gemm(GemmArgs {
                dims: GemmDims { batch, m, n, k },
                a: operand(&a, sa),
                b: operand(&o, sb),
                precision,
            })?
        };
        let out = Tensor::from_storage(storage, &out_shape, self.device())?;
        Ok(record(out, &[self, other], || {
            Box::new(MatmulBackward {
                a: self.detach(),
                b: other.detach(),
            })
        }))
    }

    /// `x · Wᵀ + b` with PyTorch's weight layout `[out, in]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_act(weight, bias, false)
    }

    /// `act(x · Wᵀ + b)` with `act` exact GELU if `gelu`, else the identity. Without autograd
    /// recording the bias and activation are fused into the GEMM ([`LinalgOps::gemm_bias_act`](crate::backend::LinalgOps::gemm_bias_act)).
    pub fn linear_act(&self, weight: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
        self.linear_fused(weight, bias, None, gelu)
    }

    /// `act(x · Wᵀ + b + residual)` (`residual` shaped like the result), fused into the GEMM
    /// without autograd recording, separate differentiable ops otherwise.
    pub fn linear_fused(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        gelu: bool,
    ) -> Result<Tensor> {
        let wt = weight.transpose(0, 1)?;
        let recording = records(&[Some(self), Some(weight), bias, residual]);
        if !recording && super::quant::int8_enabled() {
            if let Some(y) = super::quant::linear_int8(self, weight, bias, residual, gelu)? {
                return Ok(y);
            }
            if super::quant::unquantized_in_bf16() && current_precision() == Precision::F32 {
                // The layers int8 leaves alone run in bf16 where this CPU makes bf16 pay.
                return super::quant::autocast_int8(false, || {
                    autocast_bf16(true, || self.linear_fused(weight, bias, residual, gelu))
                });
            }
        }
        let (r, k) = (self.rank(), weight.dim(weight.rank().saturating_sub(1)));
        let fusable = !recording
            && r >= 1
            && weight.rank() == 2
            && self.shape()[r - 1] == k
            && bias.is_none_or(|b| b.shape() == [weight.dim(0)])
            && residual.is_none_or(|res| {
                res.shape().split_last() == Some((&weight.dim(0), &self.shape()[..r - 1]))
            })
            && (bias.is_some() || residual.is_some() || gelu);
        if !fusable {
            let y = self.matmul(&wt)?;
            let y = match bias {
                Some(b) => y.add(b)?,
                None => y,
            };
            let y = match residual {
                Some(res) => res.add(&y)?,
                None => y,
            };
            return then_gelu(y, gelu);
        }
        super::same_device("linear", self, weight)?;
        let n = weight.dim(0);
        let a = self.contiguous()?;
        let rows = a.numel() / k.max(1);
        let bias = bias.map(dense_from_start).transpose()?;
        let residual = residual.map(dense_from_start).transpose()?;
        let lhs = GemmOperand {
            storage: a.storage(),
            offset: a.offset(),
            layout: Layout::row_major(rows, k),
        };
        let g = GemmArgs {
            dims: GemmDims {
                batch: 1,
                m: rows,
                n,
                k,
            },
            a: lhs,
            b: operand(&wt, 0),
            precision: current_precision(),
        };
        let storage = self.backend()?.gemm_bias_act(
            g,
            Epilogue {
                col_bias: bias.as_ref().map(|b| b.storage()),
                row_bias: None,
                residual: residual.as_ref().map(|r| r.storage()),
                gelu,
            },
        )?;
        let mut shape = self.shape()[..r - 1].to_vec();
        shape.push(n);
        Tensor::from_storage(storage, &shape, self.device())
    }

    /// `act(W · X + b[:, None])` for a `[m, k]` matrix `W`, a `[k, n]` matrix `X` and a bias
    /// per row of the result — a 1×1 convolution of one image. Fused like [`Tensor::linear_act`]
    /// when nothing records a gradient; `self` is `W`.
    /// `residual` (optional, `[m, n]`) is added after the bias, before the GELU.
    pub fn matmul_row_bias_act(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        gelu: bool,
    ) -> Result<Tensor> {
        let recording = records(&[Some(self), Some(x), bias, residual]);
        let fusable = !recording
            && self.rank() == 2
            && x.rank() == 2
            && self.dim(1) == x.dim(0)
            && bias.is_none_or(|b| b.shape() == [self.dim(0)])
            && residual.is_none_or(|r| r.shape() == [self.dim(0), x.dim(1)])
            && (bias.is_some() || residual.is_some() || gelu);
        if !fusable {
            let y = self.matmul(x)?;
            let y = match bias {
                Some(b) => y.add(&b.reshape(&[self.dim(0), 1])?)?,
                None => y,
            };
            let y = match residual {
                Some(r) => y.add(r)?,
                None => y,
            };
            return then_gelu(y, gelu);
        }
        super::same_device("matmul", self, x)?;
        let (m, k, n) = (self.dim(0), self.dim(1), x.dim(1));
        let bias = bias.map(dense_from_start).transpose()?;
        let residual = residual.map(dense_from_start).transpose()?;
        let g = GemmArgs {
            dims: GemmDims { batch: 1, m, n, k },
            a: operand(self, 0),
            b: operand(x, 0),
            precision: current_precision(),
        };
        let storage = self.backend()?.gemm_bias_act(
            g,
            Epilogue {
                col_bias: None,
                row_bias: bias.as_ref().map(|b| b.storage()),
                residual: residual.as_ref().map(|r| r.storage()),
                gelu,
            },
        )?;
        Tensor::from_storage(storage, &[m, n], self.device())
    }
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
}

impl BackwardOp for MatmulBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (ra, rb) = (self.a.rank(), self.b.rank());
        let da = g.matmul(&self.b.transpose(rb - 2, rb - 1)?)?;
        let db = if rb == 2 {
            // dB = Aᵀ·G with every batch folded into the rows.
            let k = self.a.shape()[ra - 1];
            let n = g.shape()[g.rank() - 1];
            let a2 = self.a.reshape(&[usize::MAX, k])?;
            let g2 = g.reshape(&[usize::MAX, n])?;
            a2.transpose(0, 1)?.matmul(&g2)?
        } else {
            self.a.transpose(ra - 2, ra - 1)?.matmul(g)?
        };
        Ok(vec![Some(da), Some(db)])
    }
}
