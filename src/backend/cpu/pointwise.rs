//! CPU backend: pointwise functions, broadcast arithmetic, reductions, softmax and bilinear resampling.

use super::*;
use medsam_kernels::rope::{self, RopeDims};

impl PointwiseOps for CpuBackend {
    fn unary(&self, op: Unary, x: &Storage) -> Result<Storage> {
        let x = host(x)?;
        let y = match op {
            Unary::Gelu => {
                let mut y = buffer(x.len());
                activation::gelu_forward(x, &mut y);
                y
            }
            Unary::Relu => map_into(x, |v| v.max(0.0)),
            Unary::Sigmoid => map_into(x, sigmoid),
            Unary::Neg => map_into(x, |v| -v),
            Unary::Exp => map_into(x, f32::exp),
            Unary::Sin => map_into(x, f32::sin),
            Unary::Cos => map_into(x, f32::cos),
            Unary::Scale(s) => map_into(x, |v| v * s.0),
            Unary::Shift(s) => map_into(x, |v| v + s.0),
        };
        Ok(Storage::Cpu(y))
    }

    fn unary_backward(&self, op: Unary, x: &Storage, dy: &Storage) -> Result<Storage> {
        let (x, dy) = (host(x)?, host(dy)?);
        let dx = match op {
            Unary::Gelu => {
                let mut dx = super::zeroed(x.len());
                activation::gelu_backward(x, dy, &mut dx);
                dx
            }
            Unary::Relu => zip_into(x, dy, |v, g| if v > 0.0 { g } else { 0.0 }),
            Unary::Sigmoid => zip_into(x, dy, |v, g| {
                let s = sigmoid(v);
                g * s * (1.0 - s)
            }),
            Unary::Neg => map_into(dy, |g| -g),
            Unary::Exp => zip_into(x, dy, |v, g| g * v.exp()),
            Unary::Sin => zip_into(x, dy, |v, g| g * v.cos()),
            Unary::Cos => zip_into(x, dy, |v, g| -g * v.sin()),
            Unary::Scale(s) => map_into(dy, |g| g * s.0),
            Unary::Shift(_) => dy.to_vec(),
        };
        Ok(Storage::Cpu(dx))
    }

    fn binary(&self, op: Binary, a: (&Storage, &View), b: (&Storage, &View)) -> Result<Storage> {
        let ((a, va), (b, vb)) = ((host(a.0)?, a.1), (host(b.0)?, b.1));
        Ok(Storage::Cpu(match op {
            Binary::Add => zip_views(a, va, b, vb, |x, y| x + y),
            Binary::Sub => zip_views(a, va, b, vb, |x, y| x - y),
            Binary::Mul => zip_views(a, va, b, vb, |x, y| x * y),
            Binary::Div => zip_views(a, va, b, vb, |x, y| x / y),
        }))
    }

    fn sum_axes(&self, x: &Storage, shape: &[usize], reduce: &[bool]) -> Result<Storage> {
        let x = host(x)?;
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(reduce)
            .map(|(&s, &r)| if r { 1 } else { s })
            .collect();
        let out_len: usize = out_shape.iter().product();
        let mut out = super::zeroed(out_len);
        // Output strides (0 on reduced axes) let one pass over x accumulate into place.
        let mut ostr = vec![0usize; shape.len()];
        let mut acc = 1;
        for d in (0..shape.len()).rev() {
            ostr[d] = if reduce[d] { 0 } else { acc };
            acc *= out_shape[d];
        }
        let view = View {
            shape: shape.to_vec(),
            strides: ostr,
            offset: 0,
        };
        let inner_stride = view.strides.last().copied().unwrap_or(1);
        medsam_kernels::strided::for_each_run(strided(&view), |o, d, run| {
            if inner_stride == 0 {
                out[d] += x[o..o + run].iter().sum::<f32>();
            } else {
                for i in 0..run {
                    out[d + i * inner_stride] += x[o + i];
                }
            }
        });
        Ok(Storage::Cpu(out))
    }

    fn softmax(&self, d: RowDims, x: &Storage) -> Result<Storage> {
        let mut y = buffer(d.rows * d.dim);
        activation::softmax_forward(d.rows, d.dim, host(x)?, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn softmax_bias(&self, d: RowDims, x: &Storage, bias: (&Storage, usize)) -> Result<Storage> {
        let (RowDims { rows, dim }, (table, bias_rows)) = (d, bias);
        let mut y = buffer(rows * dim);
        activation::softmax_bias_forward(rows, dim, host(x)?, host(table)?, bias_rows, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn softmax_backward(&self, d: RowDims, y: &Storage, dy: &Storage) -> Result<Storage> {
        let mut dx = super::zeroed(d.rows * d.dim);
        activation::softmax_backward(d.rows, d.dim, host(y)?, host(dy)?, &mut dx);
        Ok(Storage::Cpu(dx))
    }

    fn bilinear(&self, r: ResizeDims, x: &Storage) -> Result<Storage> {
        let ResizeDims { planes, hw, ohw } = r;
        let mut y = super::zeroed(planes * ohw.0 * ohw.1);
        resize::bilinear_forward(planes, hw.0, hw.1, ohw.0, ohw.1, host(x)?, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn bilinear_backward(&self, r: ResizeDims, dy: &Storage) -> Result<Storage> {
        let ResizeDims { planes, hw, ohw } = r;
        let mut dx = super::zeroed(planes * hw.0 * hw.1);
        resize::bilinear_backward(planes, hw.0, hw.1, ohw.0, ohw.1, host(dy)?, &mut dx);
        Ok(Storage::Cpu(dx))
    }

    fn rope(&self, d: RopeDims, x: &Storage, cos: &Storage, sin: &Storage) -> Result<Storage> {
        let mut out = buffer(x.len());
        rope::apply(d, host(x)?, host(cos)?, host(sin)?, &mut out);
        Ok(Storage::Cpu(out))
    }
}
