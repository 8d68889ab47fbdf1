//! Views and data movement: reshape, permute, narrow, broadcast, pad, concat.

use crate::autograd::{record, BackwardOp};
use crate::backend::View;
use crate::error::{Error, Result};
use crate::tensor::{contiguous_strides, Tensor};

impl Tensor {
    /// A dense copy when the view is not contiguous; otherwise the tensor itself.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = self.copy()?;
        Ok(record(out, &[self], || Box::new(Identity)))
    }

    /// Same elements, new shape; `usize::MAX` in one position is inferred.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let shape = infer_shape(shape, self.numel(), self.shape())?;
        let src = self.contiguous()?;
        let out = src.raw_view(View {
            strides: contiguous_strides(&shape),
            shape: shape.clone(),
            offset: src.offset(),
        });
        let in_shape = self.shape().to_vec();
        Ok(record(out, &[&src], || Box::new(Reshape { in_shape })))
    }

    pub fn flatten_from(&self, dim: usize) -> Result<Tensor> {
        let mut shape = self.shape()[..dim].to_vec();
        shape.push(self.shape()[dim..].iter().product());
        self.reshape(&shape)
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        if perm.len() != self.rank() || !is_permutation(perm) {
            return Err(Error::shape(
                "permute",
                format!("{perm:?} is not a permutation of {} axes", self.rank()),
            ));
        }
        let v = self.view();
        let out = self.raw_view(View {
            shape: perm.iter().map(|&p| v.shape[p]).collect(),
            strides: perm.iter().map(|&p| v.strides[p]).collect(),
            offset: v.offset,
        });
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(record(out, &[self], || Box::new(Permute { inverse })))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Elements `start..start+len` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        if dim >= self.rank() || start + len > self.shape()[dim] {
            return Err(Error::shape(
                "narrow",
                format!(
                    "{start}..{} of axis {dim} in {:?}",
                    start + len,
                    self.shape()
                ),
            ));
        }
        let v = self.view();
        let mut shape = v.shape.clone();
        shape[dim] = len;
        let out = self.raw_view(View {
            shape,
            strides: v.strides.clone(),
            offset: v.offset + start * v.strides[dim],
        });
        let (in_shape, offset) = (self.shape().to_vec(), start);
        Ok(record(out, &[self], || {
            Box::new(Narrow {
                in_shape,
                dim,
                start: offset,
            })
        }))
    }

    /// Element `index` along `dim`, that axis removed (a view, like `narrow` + squeeze).
    pub fn select(&self, dim: usize, index: usize) -> Result<Tensor> {
        let one = self.narrow(dim, index, 1)?;
        let v = one.view();
        let (mut shape, mut strides) = (v.shape.clone(), v.strides.clone());
        shape.remove(dim);
        strides.remove(dim);
        let out = one.raw_view(View {
            shape,
            strides,
            offset: v.offset,
        });
        let in_shape = one.shape().to_vec();
        Ok(record(out, &[&one], || Box::new(Reshape { in_shape })))
    }

    /// Inserts an axis of size 1.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        let mut shape = self.shape().to_vec();
        shape.insert(dim, 1);
        self.reshape(&shape)
    }

    /// A broadcast view (stride 0 on expanded axes); PyTorch's rules, leading axes added.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let view = broadcast_view(self, shape)?;
        let out = self.raw_view(view);
        let in_shape = self.shape().to_vec();
        Ok(record(out, &[self], || Box::new(SumTo { in_shape })))
    }

    /// Zero padding at the end of axes: `pads[d]` elements after axis `d` (SAM pads windows bottom/right).
    pub fn pad_end(&self, pads: &[usize]) -> Result<Tensor> {
        if pads.len() != self.rank() {
            return Err(Error::shape(
                "pad_end",
                format!("{} pads for shape {:?}", pads.len(), self.shape()),
            ));
        }
        if pads.iter().all(|&p| p == 0) {
            return Ok(self.clone());
        }
        let out_shape: Vec<usize> = self.shape().iter().zip(pads).map(|(s, p)| s + p).collect();
        let src = self.contiguous()?;
        let b = self.backend()?;
        let n: usize = out_shape.iter().product();
        let placement = View {
            shape: self.shape().to_vec(),
            strides: contiguous_strides(&out_shape),
            offset: 0,
        };
        let storage =
            b.scatter_into_zeros(&b.materialize(src.storage(), src.view())?, &placement, n)?;
        let out = Tensor::from_storage(storage, &out_shape, self.device())?;
        let in_shape = self.shape().to_vec();
        Ok(record(out, &[&src], || Box::new(PadEnd { in_shape })))
    }

    /// Concatenates along `dim`.
    pub fn cat(parts: &[Tensor], dim: usize) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::shape("cat", "no tensors"))?;
        let mut out_shape = first.shape().to_vec();
        out_shape[dim] = 0;
        for p in parts {
            let ok = p.rank() == first.rank()
                && p.shape()
                    .iter()
                    .enumerate()
                    .all(|(d, &s)| d == dim || s == first.shape()[d]);
            if !ok {
                let shapes: Vec<_> = parts.iter().map(|p| p.shape().to_vec()).collect();
                return Err(Error::shape(
                    "cat",
                    format!("shapes {shapes:?} differ outside axis {dim}"),
                ));
            }
            super::same_device("cat", first, p)?;
            out_shape[dim] += p.shape()[dim];
        }
        let views: Vec<(&crate::backend::Storage, &View)> =
            parts.iter().map(|p| (p.storage(), p.view())).collect();
        let joined = first.backend()?.concat(&views, dim, &out_shape)?;
        let sizes: Vec<usize> = parts.iter().map(|p| p.shape()[dim]).collect();
        let out = Tensor::from_storage(joined, &out_shape, first.device())?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        Ok(record(out, &refs, || Box::new(Cat { dim, sizes })))
    }

    /// Stacks equal-shaped tensors along a new axis.
    pub fn stack(parts: &[Tensor], dim: usize) -> Result<Tensor> {
        let parts: Vec<Tensor> = parts
            .iter()
            .map(|p| p.unsqueeze(dim))
            .collect::<Result<_>>()?;
        Tensor::cat(&parts, dim)
    }
}

fn is_permutation(perm: &[usize]) -> bool {
    let mut seen = vec![false; perm.len()];
    perm.iter()
        .all(|&p| p < perm.len() && !std::mem::replace(&mut seen[p], true))
}

fn infer_shape(shape: &[usize], numel: usize, from: &[usize]) -> Result<Vec<usize>> {
    let mut shape = shape.to_vec();
    let known: usize = shape.iter().filter(|&&s| s != usize::MAX).product();
    if let Some(pos) = shape.iter().position(|&s| s == usize::MAX) {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(Error::shape(
                "reshape",
                format!("cannot infer an axis reshaping {from:?}"),
            ));
        }
        shape[pos] = numel / known;
    }
    if shape.iter().product::<usize>() != numel {
        return Err(Error::shape(
            "reshape",
            format!("{from:?} ({numel} elements) into {shape:?}"),
        ));
    }
    Ok(shape)
}

/// The view of `t` broadcast to `shape` (PyTorch rules).
pub(crate) fn broadcast_view(t: &Tensor, shape: &[usize]) -> Result<View> {
    let (src, dst) = (t.shape(), shape);
    if src.len() > dst.len() {
        return Err(Error::shape("broadcast", format!("{src:?} to {dst:?}")));
    }
    let lead = dst.len() - src.len();
    let mut strides = vec![0; dst.len()];
    for d in 0..src.len() {
        let (s, o) = (src[d], dst[lead + d]);
        if s == o {
            strides[lead + d] = t.strides()[d];
        } else if s != 1 {
            return Err(Error::shape("broadcast", format!("{src:?} to {dst:?}")));
        }
    }
    Ok(View {
        shape: dst.to_vec(),
        strides,
        offset: t.offset(),
    })
}

/// The broadcast shape of two shapes.
pub(crate) fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("cannot broadcast {a:?} with {b:?}"),
                ))
            }
        };
    }
    Ok(out)
}

/// Sums `g` down to `shape` (undoing a broadcast).
pub(crate) fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let lead = g.rank() - shape.len();
    let reduce: Vec<bool> = (0..g.rank())
        .map(|d| d < lead || (shape[d - lead] == 1 && g.shape()[d] != 1))
        .collect();
    let g = g.contiguous()?;
    let b = g.backend()?;
    let dense = b.materialize(g.storage(), g.view())?;
    let summed = b.sum_axes(&dense, g.shape(), &reduce)?;
    Tensor::from_storage(summed, shape, g.device())
}

struct Identity;
impl BackwardOp for Identity {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone())])
    }
}

struct Reshape {
    in_shape: Vec<usize>,
}
impl BackwardOp for Reshape {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.reshape(&self.in_shape)?)])
    }
}

struct Permute {
    inverse: Vec<usize>,
}
impl BackwardOp for Permute {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.permute(&self.inverse)?)])
    }
}

struct Narrow {
    in_shape: Vec<usize>,
    dim: usize,
    start: usize,
}
impl BackwardOp for Narrow {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let g = g.contiguous()?;
        let b = g.backend()?;
        let strides = contiguous_strides(&self.in_shape);
        let placement = View {
            shape: g.shape().to_vec(),
            strides: strides.clone(),
            offset: self.start * strides[self.dim],
        };
        let n = self.in_shape.iter().product();
        let dense = b.materialize(g.storage(), g.view())?;
        let s = b.scatter_into_zeros(&dense, &placement, n)?;
        Ok(vec![Some(Tensor::from_storage(
            s,
            &self.in_shape,
            g.device(),
        )?)])
    }
}

struct SumTo {
    in_shape: Vec<usize>,
}
impl BackwardOp for SumTo {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(sum_to_shape(g, &self.in_shape)?)])
    }
}

struct PadEnd {
    in_shape: Vec<usize>,
}
impl BackwardOp for PadEnd {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut t = g.clone();
        for (d, &s) in self.in_shape.iter().enumerate() {
            t = t.narrow(d, 0, s)?;
        }
        Ok(vec![Some(t.copy()?)])
    }
}

struct Cat {
    dim: usize,
    sizes: Vec<usize>,
}
impl BackwardOp for Cat {
    fn backward(self: Box<Self>, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(self.sizes.len());
        for &s in &self.sizes {
            out.push(Some(g.narrow(self.dim, start, s)?.copy()?));
            start += s;
        }
        Ok(out)
    }
}
