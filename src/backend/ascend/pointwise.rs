//! Ascend backend: pointwise functions, broadcast arithmetic, reductions, softmax and bilinear resampling.

use super::*;
use medsam_kernels::rope::RopeDims;

impl PointwiseOps for AscendBackend {
    fn unary(&self, op: Unary, x: &Storage) -> Result<Storage> {
        let n = x.len();
        let xb = self.buf(x)?;
        match op {
            Unary::Gelu => {
                let mut out = self.alloc(n)?;
                if n > 0 {
                    let tx = self.input(xb, contig(&[n]))?;
                    let to =
                        TensorArg::output::<f32>(&mut out, contig(&[n])).map_err(self.err())?;
                    self.ops()
                        .gelu(&tx, GeluApprox::Erf, &to)
                        .map_err(self.err())?;
                }
                Ok(self.wrap(out, n))
            }
            Unary::Scale(s) => self.scaled(xb, n, s.0),
            Unary::Neg => self.scaled(xb, n, -1.0),
            Unary::Shift(s) => {
                self.add_views((xb, contig(&[n])), (&self.one, bcast(&[n])), s.0, &[n])
            }
            Unary::Relu => self.unary_dev(UnaryOp::Relu, xb, n),
            Unary::Sigmoid => self.unary_dev(UnaryOp::Sigmoid, xb, n),
            Unary::Exp => self.unary_dev(UnaryOp::Exp, xb, n),
            Unary::Sin => self.unary_dev(UnaryOp::Sin, xb, n),
            Unary::Cos => self.unary_dev(UnaryOp::Cos, xb, n),
        }
    }

    fn unary_backward(&self, op: Unary, x: &Storage, dy: &Storage) -> Result<Storage> {
        let n = dy.len();
        let gb = self.buf(dy)?;
        // (dy, t) as the operands of an aclnn backward call.
        let with = |t| ((gb, contig(&[n])), (t, contig(&[n])));
        match op {
            Unary::Gelu => self.zip_views(with(self.buf(x)?), &[n], |ops, g, x, o| {
                ops.gelu_backward(g, x, GeluApprox::Erf, o)
            }),
            Unary::Scale(s) => self.scaled(gb, n, s.0),
            Unary::Neg => self.scaled(gb, n, -1.0),
            Unary::Shift(_) => self.copy_view(gb, contig(&[n]), &[n]),
            // dy·1[x > 0]
            Unary::Relu => self.zip_views(with(self.buf(x)?), &[n], |ops, g, x, o| {
                ops.threshold_backward(g, x, 0.0, o)
            }),
            // dy·y·(1 − y), y = sigmoid(x)
            Unary::Sigmoid => {
                let y = self.unary_dev(UnaryOp::Sigmoid, self.buf(x)?, n)?;
                self.zip_views(with(self.buf(&y)?), &[n], |ops, g, y, o| {
                    ops.sigmoid_backward(g, y, o)
                })
            }
            // dy·exp(x), dy·cos(x), −dy·sin(x)
            Unary::Exp | Unary::Sin | Unary::Cos => {
                let f = match op {
                    Unary::Exp => UnaryOp::Exp,
                    Unary::Sin => UnaryOp::Cos,
                    _ => UnaryOp::Sin,
                };
                let d = self.unary_dev(f, self.buf(x)?, n)?;
                let p = self.mul_n(gb, self.buf(&d)?, n)?;
                if op == Unary::Cos {
                    self.scaled(self.buf(&p)?, n, -1.0)
                } else {
                    Ok(p)
                }
            }
        }
    }

    fn binary(&self, op: Binary, a: (&Storage, &View), b: (&Storage, &View)) -> Result<Storage> {
        let ((a, va), (b, vb)) = (a, b);
        let la = lay(&va.shape, &va.strides, va.offset);
        let lb = lay(&vb.shape, &vb.strides, vb.offset);
        match op {
            Binary::Add => self.add_views((self.buf(a)?, la), (self.buf(b)?, lb), 1.0, &va.shape),
            Binary::Sub => self.add_views((self.buf(a)?, la), (self.buf(b)?, lb), -1.0, &va.shape),
            Binary::Mul => self.mul_views((self.buf(a)?, la), (self.buf(b)?, lb), &va.shape),
            Binary::Div => self.div_views((self.buf(a)?, la), (self.buf(b)?, lb), &va.shape),
        }
    }

    fn sum_axes(&self, x: &Storage, shape: &[usize], reduce: &[bool]) -> Result<Storage> {
        // One ones-vector matmul per run of reduced axes (size-1 axes ignored).
        let xb = self.buf(x)?;
        let total: usize = shape.iter().product();
        let flags: Vec<(usize, bool)> = shape
            .iter()
            .zip(reduce)
            .filter(|(&s, _)| s != 1)
            .map(|(&s, &r)| (s, r))
            .collect();
        if total == 0 {
            let out_len = shape
                .iter()
                .zip(reduce)
                .map(|(&s, &r)| if r { 1 } else { s })
                .product();
            return self.zeros(out_len);
        }
        if !flags.iter().any(|f| f.1) {
            return self.copy_view(xb, contig(&[total]), &[total]);
        }
        // Reduce the runs from the last to the first; `cur` holds the partially reduced tensor.
        let mut cur: Option<Storage> = None;
        let mut dims: Vec<(usize, bool)> = flags;
        while let Some(end) = dims.iter().rposition(|f| f.1) {
            let start = dims[..end].iter().rposition(|f| !f.1).map_or(0, |i| i + 1);
            let a: usize = dims[..start].iter().map(|f| f.0).product();
            let r: usize = dims[start..=end].iter().map(|f| f.0).product();
            let b: usize = dims[end + 1..].iter().map(|f| f.0).product();
            let src = match &cur {
                Some(s) => self.buf(s)?,
                None => xb,
            };
            let next = self.reduce_middle(src, a, r, b)?;
            cur = Some(next);
            dims.drain(start..=end);
        }
        Ok(cur.expect("at least one reduced run"))
    }

    fn softmax(&self, d: RowDims, x: &Storage) -> Result<Storage> {
        let RowDims { rows, dim } = d;
        let xb = self.buf(x)?;
        let n = rows * dim;
        let mut out = self.alloc(n)?;
        if n > 0 {
            let tx = self.input(xb, contig(&[rows, dim]))?;
            let to =
                TensorArg::output::<f32>(&mut out, contig(&[rows, dim])).map_err(self.err())?;
            self.ops().softmax(&tx, -1, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    fn softmax_backward(&self, d: RowDims, y: &Storage, dy: &Storage) -> Result<Storage> {
        let l = contig(&[d.rows, d.dim]);
        let (g, y) = ((self.buf(dy)?, l.clone()), (self.buf(y)?, l));
        let dims = [d.rows, d.dim];
        self.zip_views((g, y), &dims, |ops, g, y, o| {
            ops.softmax_backward(g, y, -1, o)
        })
    }

    fn bilinear(&self, r: ResizeDims, x: &Storage) -> Result<Storage> {
        // `[planes, h, w]` as NCHW `[1, planes, h, w]`; align_corners=false (the trait's only
        // mode), scales passed explicitly as out/in.
        let ResizeDims { planes, hw, ohw } = r;
        let ((h, w), (oh, ow)) = (hw, ohw);
        let xb = self.buf(x)?;
        let n = planes * oh * ow;
        if n == 0 {
            return self.zeros(n);
        }
        if h == 0 || w == 0 {
            return Err(self.device_error(format!(
                "bilinear: empty input {h}x{w} resized to {oh}x{ow}"
            )));
        }
        let mut out = self.alloc(n)?;
        {
            let tx = self.input(xb, contig(&[1, planes, h, w]))?;
            let to = TensorArg::output::<f32>(&mut out, contig(&[1, planes, oh, ow]))
                .map_err(self.err())?;
            let scales = (oh as f64 / h as f64, ow as f64 / w as f64);
            let ops = self.ops();
            ops.upsample_bilinear2d(&tx, false, scales, &to)
                .map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    fn bilinear_backward(&self, r: ResizeDims, dy: &Storage) -> Result<Storage> {
        let ResizeDims { planes, hw, ohw } = r;
        let ((h, w), (oh, ow)) = (hw, ohw);
        let gb = self.buf(dy)?;
        let n = planes * h * w;
        if n == 0 || oh * ow == 0 {
            return self.zeros(n);
        }
        let mut out = self.alloc(n)?;
        {
            let tg = self.input(gb, contig(&[1, planes, oh, ow]))?;
            let to = TensorArg::output::<f32>(&mut out, contig(&[1, planes, h, w]))
                .map_err(self.err())?;
            let scales = (oh as f64 / h as f64, ow as f64 / w as f64);
            (self
                .ops()
                .upsample_bilinear2d_backward(&tg, false, scales, &to))
            .map_err(self.err())?;
        }
        Ok(self.wrap(out, n))
    }

    /// Host fallback (download, the CPU kernel, upload): no aclnn rotary op with SAM2's axial
    /// pair layout is wired yet. MedSAM2's memory attention calls it eight times per frame.
    fn rope(&self, d: RopeDims, x: &Storage, cos: &Storage, sin: &Storage) -> Result<Storage> {
        let host = |s: &Storage| self.host_in(s).map(Storage::Cpu);
        let r = Self::cpu().rope(d, &host(x)?, &host(cos)?, &host(sin)?)?;
        self.up(r)
    }
}
