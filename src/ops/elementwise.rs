//! Broadcasting arithmetic, pointwise functions and reductions.

use super::shape::{broadcast_shapes, broadcast_view, sum_to_shape};
use crate::autograd::{record, BackwardOp};
use crate::backend::{Binary, OrdF32, Unary, View};
use crate::error::Result;
use crate::tensor::Tensor;

/// `pub fn name(&self) -> Result<Tensor>` for each `name => Unary::Variant`.
macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident,)*) => {
        $($(#[$doc])*
        pub fn $name(&self) -> Result<Tensor> {
            self.unary_op(Unary::$op)
        })*
    };
}

impl Tensor {
    fn binary_op(&self, other: &Tensor, op: Binary, name: &'static str) -> Result<Tensor> {
        super::same_device(name, self, other)?;
        let shape = broadcast_shapes(name, self.shape(), other.shape())?;
        let (va, vb) = (
            broadcast_view(self, &shape)?,
            broadcast_view(other, &shape)?,
        );
        let b = self.backend()?;
        let s = b.binary(op, (self.storage(), &va), (other.storage(), &vb))?;
        let out = Tensor::from_storage(s, &shape, self.device())?;
        let needs_inputs = matches!(op, Binary::Mul | Binary::Div);
        Ok(record(out, &[self, other], || {
            Box::new(BinaryBackward {
                op,
                a_shape: self.shape().to_vec(),
                b_shape: other.shape().to_vec(),
                saved: needs_inputs.then(|| (self.detach(), other.detach())),
            })
        }))
    }

    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        self.binary_op(o, Binary::Add, "add")
    }
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        self.binary_op(o, Binary::Sub, "sub")
    }
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        self.binary_op(o, Binary::Mul, "mul")
    }
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        self.binary_op(o, Binary::Div, "div")
    }

    fn unary_op(&self, op: Unary) -> Result<Tensor> {
        let x = self.contiguous()?;
        let b = self.backend()?;
        let dense = if x.is_dense() {
            None
        } else {
            Some(b.materialize(x.storage(), x.view())?)
        };
        let s = b.unary(op, dense.as_ref().unwrap_or(x.storage()))?;
        let out = Tensor::from_storage(s, self.shape(), self.device())?;
        let needs_x = !matches!(op, Unary::Neg | Unary::Scale(_) | Unary::Shift(_));
        Ok(record(out, &[&x], || {
            Box::new(UnaryBackward {
                op,
                x: needs_x.then(|| x.detach()),
            })
        }))
    }

    unary_methods! {
        /// Exact (erf) GELU.
        gelu => Gelu,
        relu => Relu,
        sigmoid => Sigmoid,
        neg => Neg,
        exp => Exp,
        sin => Sin,
        cos => Cos,
    }
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.unary_op(Unary::Scale(OrdF32(s)))
    }
    pub fn shift(&self, s: f32) -> Result<Tensor> {
        self.unary_op(Unary::Shift(OrdF32(s)))
    }

    /// Sum of all elements (a scalar tensor).
    pub fn sum_all(&self) -> Result<Tensor> {
        let x = self.contiguous()?;
        let out = sum_to_shape(&x.reshape(&[x.numel()])?.detach(), &[1])?.reshape(&[])?;
        let in_shape = self.shape().to_vec();
        Ok(record(out, &[&x], || Box::new(SumAll { in_shape })))
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        let n = self.numel() as f32;
        self.sum_all()?.scale(1.0 / n)
    }

    /// Sums over `dims`, keeping them as size 1.
    pub fn sum_keepdim(&self, dims: &[usize]) -> Result<Tensor> {
        let mut shape = self.shape().to_vec();
        for &d in dims {
            shape[d] = 1;
        }
        let out = sum_to_shape(&self.detach(), &shape)?;
        let in_shape = self.shape().to_vec();
        Ok(record(out, &[self], || Box::new(SumAll { in_shape })))
    }
}

struct BinaryBackward {
    op: Binary,
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
    saved: Option<(Tensor, Tensor)>,
}

impl BackwardOp for BinaryBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (ga, gb) = match (self.op, &self.saved) {
            (Binary::Add, _) => (g.clone(), g.clone()),
            (Binary::Sub, _) => (g.clone(), g.neg()?),
            (Binary::Mul, Some((a, b))) => (g.mul(b)?, g.mul(a)?),
            (Binary::Div, Some((a, b))) => {
                let ga = g.div(b)?;
                (ga.clone(), ga.mul(a)?.div(b)?.neg()?)
            }
            _ => unreachable!("mul/div always save their inputs"),
        };
        Ok(vec![
            Some(sum_to_shape(&ga, &self.a_shape)?),
            Some(sum_to_shape(&gb, &self.b_shape)?),
        ])
    }
}

struct UnaryBackward {
    op: Unary,
    x: Option<Tensor>,
}

impl BackwardOp for UnaryBackward {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let g = g.contiguous()?;
        let b = g.backend()?;
        let gd = b.materialize(g.storage(), g.view())?;
        let xs = match &self.x {
            Some(x) => b.materialize(x.storage(), x.view())?,
            None => b.zeros(0)?,
        };
        let x_ref = if self.x.is_some() { &xs } else { &gd };
        let dx = b.unary_backward(self.op, x_ref, &gd)?;
        Ok(vec![Some(Tensor::from_storage(dx, g.shape(), g.device())?)])
    }
}

struct SumAll {
    in_shape: Vec<usize>,
}

impl BackwardOp for SumAll {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let lead = vec![1; self.in_shape.len().saturating_sub(g.rank())];
        let g = g.reshape(&[lead, g.shape().to_vec()].concat())?;
        let view: View = broadcast_view(&g, &self.in_shape)?;
        Ok(vec![Some(g.raw_view(view).copy()?)])
    }
}
