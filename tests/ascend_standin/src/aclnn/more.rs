//! Stand-in pointwise ops, division, activation backwards and bilinear resize, added to move
//! host fallbacks of the NPU `Backend` to device: `aclnnRelu`, `aclnnSigmoid`, `aclnnExp`,
//! `aclnnSin`, `aclnnCos`, `aclnnSqrt`, `aclnnDiv`, `aclnnMaximum`, `aclnnIndexSelect` (INT32 or
//! INT64 index), `aclnnThresholdBackward`,
//! `aclnnSigmoidBackward`, `aclnnUpsampleBilinear2d` and `aclnnUpsampleBilinear2dBackward`
//! (align_corners=false only), `aclnnApplyAdamWV2` (amsgrad / maximize off). Signatures as declared in `ffi/src/aclnn.rs`; plain loops,
//! row-major reads of the views; shapes, dtypes and attributes are checked in the first phase.

use super::*;

fn relu(v: f32, _: bool) -> f32 {
    v.max(0.0)
}
fn sigmoid(v: f32, _: bool) -> f32 {
    (1.0 / (1.0 + (-(v as f64)).exp())) as f32
}
fn exp(v: f32, _: bool) -> f32 {
    (v as f64).exp() as f32
}
fn sin(v: f32, _: bool) -> f32 {
    (v as f64).sin() as f32
}
fn cos(v: f32, _: bool) -> f32 {
    (v as f64).cos() as f32
}
fn sqrt(v: f32, _: bool) -> f32 {
    (v as f64).sqrt() as f32
}

macro_rules! unary_op {
    ($op:ident, $p1:ident, $f:ident) => {
        aclnn_op!($op, $p1(x: *const AclTensor, out: *mut AclTensor) {
            unary(F, x, out, $f, false)
        });
    };
}

unary_op!(aclnnRelu, aclnnReluGetWorkspaceSize, relu);
unary_op!(aclnnSigmoid, aclnnSigmoidGetWorkspaceSize, sigmoid);
unary_op!(aclnnExp, aclnnExpGetWorkspaceSize, exp);
unary_op!(aclnnSin, aclnnSinGetWorkspaceSize, sin);
unary_op!(aclnnCos, aclnnCosGetWorkspaceSize, cos);
unary_op!(aclnnSqrt, aclnnSqrtGetWorkspaceSize, sqrt);

// ------------------------------------------------------------------ div

aclnn_op!(aclnnDiv, aclnnDivGetWorkspaceSize(
    a: *const AclTensor,
    b: *const AclTensor,
    out: *mut AclTensor,
) {
    binary(F, a, b, out, |x, y| x / y)
});

// ------------------------------------------------------------------ maximum

aclnn_op!(aclnnMaximum, aclnnMaximumGetWorkspaceSize(
    a: *const AclTensor,
    b: *const AclTensor,
    out: *mut AclTensor,
) {
    // torch.maximum: NaN in either input gives NaN.
    binary(F, a, b, out, |x, y| if x.is_nan() || y.is_nan() { f32::NAN } else { x.max(y) })
});

// ------------------------------------------------------------------ activation backwards

aclnn_op!(aclnnThresholdBackward, aclnnThresholdBackwardGetWorkspaceSize(
    grad_out: *const AclTensor,
    x: *const AclTensor,
    threshold: *const AclScalar,
    out: *mut AclTensor,
) {
    let t = f32_scalar(F, "threshold", threshold)?;
    zip2(
        F,
        ("gradOutput", "self", "out"),
        grad_out,
        x,
        out,
        move |g, v| if v > t { g } else { 0.0 },
    )
});

aclnn_op!(aclnnSigmoidBackward, aclnnSigmoidBackwardGetWorkspaceSize(
    grad_out: *const AclTensor,
    y: *const AclTensor,
    out: *mut AclTensor,
) {
    zip2(
        F,
        ("gradOutput", "output", "gradInput"),
        grad_out,
        y,
        out,
        |g, y| (g as f64 * y as f64 * (1.0 - y as f64)) as f32,
    )
});

// ------------------------------------------------------------------ bilinear resize

/// PyTorch `area_pixel_compute_scale` (align_corners=false): 1/scale when a positive scale is
/// given, else in/out.
fn ratio(n_in: i64, n_out: i64, scale: f64) -> f64 {
    if scale > 0.0 {
        1.0 / scale
    } else {
        n_in as f64 / n_out as f64
    }
}

/// Taps `(i0, i1, w0, w1)` of output index `o` (PyTorch align_corners=false).
fn taps(n_in: i64, r: f64, o: i64) -> (i64, i64, f64, f64) {
    let src = ((o as f64 + 0.5) * r - 0.5).max(0.0);
    let i0 = (src.floor() as i64).min(n_in - 1);
    let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
    let l1 = src - i0 as f64;
    (i0, i1, 1.0 - l1, l1)
}

unsafe fn resize_attrs(
    func: &str,
    align: bool,
    sh: f64,
    sw: f64,
    size: *const AclIntArray,
) -> Result<[i64; 2], i32> {
    if align {
        return Err(bad(
            func,
            "alignCorners=true is not implemented by the stand-in".into(),
        ));
    }
    if !(sh.is_finite() && sw.is_finite() && sh >= 0.0 && sw >= 0.0) {
        return Err(bad(
            func,
            format!("scales ({sh}, {sw}) must be finite and >= 0"),
        ));
    }
    match int_array(func, "outputSize", size)? {
        &[a, b] if a > 0 && b > 0 => Ok([a, b]),
        v => Err(bad(
            func,
            format!("outputSize {v:?} is not 2 positive ints"),
        )),
    }
}

aclnn_op!(aclnnUpsampleBilinear2d, aclnnUpsampleBilinear2dGetWorkspaceSize(
    x: *const AclTensor,
    size: *const AclIntArray,
    align: bool,
    sh: f64,
    sw: f64,
    out: *mut AclTensor,
) {
    let [x, o] = tensors(F, [("self", x), ("out", out)])?;
    // ops-cv aclnn_upsample_bilinear_2d.cpp CheckFormat: NCHW or NHWC only.
    check_format(F, "self", x, &[FORMAT_NCHW, FORMAT_NHWC])?;
    check_format(F, "out", o, &[FORMAT_NCHW, FORMAT_NHWC])?;
    if x.format != FORMAT_NCHW || o.format != FORMAT_NCHW {
        return Err(bad(F, "the stand-in implements NCHW only".into()));
    }
    let [oh, ow] = resize_attrs(F, align, sh, sw, size)?;
    let (xd, od) = (&x.view.dims, &o.view.dims);
    let ok = xd.len() == 4 && xd[2] > 0 && xd[3] > 0 && *od == [xd[0], xd[1], oh, ow];
    ensure(F, ok, || {
        format!("self {xd:?} (NCHW, h, w > 0) and out {od:?} for outputSize [{oh}, {ow}]")
    })?;
    let (h, w) = (xd[2], xd[3]);
    let (rh, rw) = (ratio(h, oh, sh), ratio(w, ow, sw));
    let [xv, ov] = views([x, o]);
    plan(move || {
        for_each_index(&ov.dims.clone(), |i| {
            let (y0, y1, a0, a1) = taps(h, rh, i[2]);
            let (x0, x1, b0, b1) = taps(w, rw, i[3]);
            let g = |y: i64, x: i64| xv.get(&[i[0], i[1], y, x]) as f64;
            let v = a0 * (b0 * g(y0, x0) + b1 * g(y0, x1)) + a1 * (b0 * g(y1, x0) + b1 * g(y1, x1));
            ov.set(i, v as f32);
        });
    })
});

aclnn_op!(aclnnUpsampleBilinear2dBackward, aclnnUpsampleBilinear2dBackwardGetWorkspaceSize(
    grad_out: *const AclTensor,
    out_size: *const AclIntArray,
    in_size: *const AclIntArray,
    align: bool,
    sh: f64,
    sw: f64,
    grad_in: *mut AclTensor,
) {
    let [g, gi] = tensors(F, [("gradOut", grad_out), ("gradInput", grad_in)])?;
    let [oh, ow] = resize_attrs(F, align, sh, sw, out_size)?;
    let isz = int_array(F, "inputSize", in_size)?.to_vec();
    let (gd, id) = (&g.view.dims, &gi.view.dims);
    // ops-cv aclnn_upsample_bilinear_2d_backward.cpp CheckShape: a gradOut that is not NCHW
    // is read as NHWC, so its dims must be [n, oh, ow, c].
    if g.format != FORMAT_NCHW && isz.len() == 4 {
        let want = [isz[0], oh, ow, isz[1]];
        if *gd != want {
            return Err(bad(
                F,
                format!(
                    "gradOut {gd:?} in format {} is read as NHWC: dims must be {want:?}",
                    format_name(g.format)
                ),
            ));
        }
        return Err(bad(F, "the stand-in implements NCHW only".into()));
    }
    let ok = isz.len() == 4 && isz[2] > 0 && isz[3] > 0;
    ensure(F, ok && *id == isz && *gd == [isz[0], isz[1], oh, ow], || {
        format!("gradOut {gd:?}, gradInput {id:?}, inputSize {isz:?}, outputSize [{oh}, {ow}]")
    })?;
    let [gv, iv] = views([g, gi]);
    let (c, h, w) = (isz[1], isz[2], isz[3]);
    let (rh, rw) = (ratio(h, oh, sh), ratio(w, ow, sw));
    plan(move || {
        let mut acc = vec![0f64; iv.numel()];
        let at = |i: &[i64], y: i64, x: i64| (((i[0] * c + i[1]) * h + y) * w + x) as usize;
        for_each_index(&gv.dims.clone(), |i| {
            let d = gv.get(i) as f64;
            let (y0, y1, a0, a1) = taps(h, rh, i[2]);
            let (x0, x1, b0, b1) = taps(w, rw, i[3]);
            acc[at(i, y0, x0)] += a0 * b0 * d;
            acc[at(i, y0, x1)] += a0 * b1 * d;
            acc[at(i, y1, x0)] += a1 * b0 * d;
            acc[at(i, y1, x1)] += a1 * b1 * d;
        });
        iv.write(&acc.iter().map(|&v| v as f32).collect::<Vec<_>>());
    })
});

// ------------------------------------------------------------------ fused AdamW

aclnn_op!(
    /// `aclnnApplyAdamWV2` with amsgrad and maximize off (others are rejected): PyTorch AdamW in
    /// place, t = step + 1, scalars in f32 like the CANN kernel (`apply_adam_w_v2_fp.h`).
    aclnnApplyAdamWV2,
    aclnnApplyAdamWV2GetWorkspaceSize(
        var: *mut AclTensor,
        m: *mut AclTensor,
        v: *mut AclTensor,
        max_grad_norm: *mut AclTensor,
        grad: *const AclTensor,
        step: *const AclTensor,
        lr: f32,
        beta1: f32,
        beta2: f32,
        weight_decay: f32,
        eps: f32,
        amsgrad: bool,
        maximize: bool,
    ) {
        let w = tensor(F, "varRef", var)?;
        let mt = tensor(F, "mRef", m)?;
        let vt = tensor(F, "vRef", v)?;
        let g = tensor(F, "grad", grad)?;
        let st = tensor(F, "step", step)?;
        if amsgrad || maximize || !max_grad_norm.is_null() {
            return Err(bad(
                F,
                format!(
                    "amsgrad {amsgrad} / maximize {maximize} / maxGradNorm: the stand-in \
                     implements amsgrad = maximize = false without maxGradNorm"
                ),
            ));
        }
        if st.view.numel() != 1 {
            return Err(bad(
                F,
                format!("step {:?} must have one element", st.view.dims),
            ));
        }
        for (what, t) in [("mRef", mt), ("vRef", vt), ("grad", g)] {
            if t.view.dims != w.view.dims {
                return Err(bad(
                    F,
                    format!("{what} {:?} != varRef {:?}", t.view.dims, w.view.dims),
                ));
            }
        }
        if !(lr.is_finite()
            && eps.is_finite()
            && (0.0..1.0).contains(&beta1)
            && (0.0..1.0).contains(&beta2))
        {
            return Err(bad(
                F,
                format!("lr {lr}, beta1 {beta1}, beta2 {beta2}, eps {eps}"),
            ));
        }
        let [wv, mv, vv, gv, sv] = views([w, mt, vt, g, st]);
        Ok(Planned(
            0,
            Box::new(move |_| {
                let t = sv.read()[0] + 1.0;
                if t < 1.0 {
                    return Err((
                        ACLNN_ERR_PARAM_INVALID,
                        "aclnnApplyAdamWV2: step < 0".into(),
                    ));
                }
                let step_size = lr / (1.0 - beta1.powf(t));
                let bc2_rsqrt = 1.0 / (1.0 - beta2.powf(t)).sqrt();
                let decay = 1.0 - lr * weight_decay;
                let (mut w, mut m, mut v, g) = (wv.read(), mv.read(), vv.read(), gv.read());
                for i in 0..w.len() {
                    w[i] *= decay;
                    m[i] += (g[i] - m[i]) * (1.0 - beta1);
                    v[i] = v[i] * beta2 + g[i] * g[i] * (1.0 - beta2);
                    let denom = v[i].sqrt() * bc2_rsqrt + eps;
                    w[i] -= m[i] / denom * step_size;
                }
                wv.write(&w);
                mv.write(&m);
                vv.write(&v);
                Ok(())
            }),
        ))
    }
);

// ------------------------------------------------------------------ index select

/// `aclDataType` (CANN `acl_base.h`).
const ACL_INT32: i32 = 3;
const ACL_INT64: i32 = 9;

/// An INT32 or INT64 1-D index tensor in device memory: its view and element size.
unsafe fn index_tensor(func: &str, t: *const AclTensor) -> Result<(View, usize), i32> {
    let t = live(func, "index", "aclTensor (destroyed?)", t)?;
    let size = match t.dtype {
        ACL_INT32 => 4,
        ACL_INT64 => 8,
        d => return Err(bad(func, format!("index dtype {d} (INT32 or INT64 only)"))),
    };
    let v = &t.view;
    ensure(func, v.dims.len() == 1 && v.strides.len() == 1, || {
        format!("index must be 1-D, got dims {:?}", v.dims)
    })?;
    ensure(func, v.dims[0] >= 0 && v.strides[0] >= 0 && v.offset >= 0, || {
        format!("index has a bad layout {v:?}")
    })?;
    let bytes = v.extent() * size;
    ensure(func, v.numel() == 0 || is_device(v.addr, bytes), || {
        "index data is not device memory (or out of bounds)".into()
    })?;
    Ok((v.clone(), size))
}

aclnn_op!(aclnnIndexSelect, aclnnIndexSelectGetWorkspaceSize(
    x: *const AclTensor,
    dim: i64,
    index: *const AclTensor,
    out: *mut AclTensor,
) {
    let [x, o] = tensors(F, [("self", x), ("out", out)])?;
    let (iv, size) = index_tensor(F, index)?;
    let r = x.view.dims.len();
    // Negative dims count from the end, as in torch.index_select.
    let d = softmax_dim(dim, r.max(1)).ok_or_else(|| bad(F, format!("dim {dim} of rank {r}")))?;
    let mut want = x.view.dims.clone();
    if r > 0 {
        want[d] = iv.dims[0];
    }
    check_dims(F, "out", &o.view.dims, &want)?;
    let [xv, ov] = views([x, o]);
    Ok(Planned(
        0,
        Box::new(move |_| {
            let n = if r > 0 { xv.dims[d] } else { 1 };
            let at = |k: i64| -> i64 {
                let p = (iv.addr as *const u8).wrapping_add(((iv.offset + k * iv.strides[0]) as usize) * size);
                // SAFETY: checked to lie in device memory in phase 1.
                unsafe {
                    match size {
                        4 => *(p as *const i32) as i64,
                        _ => *(p as *const i64),
                    }
                }
            };
            let picks: Vec<i64> = (0..iv.dims[0]).map(at).collect();
            if let Some(bad) = picks.iter().find(|&&i| !(0..n).contains(&i)) {
                return Err((
                    ACLNN_ERR_PARAM_INVALID,
                    format!("aclnnIndexSelect: index {bad} out of range 0..{n}"),
                ));
            }
            let mut vals = Vec::with_capacity(ov.numel());
            for_each_index(&ov.dims, |i| {
                let mut src = i.to_vec();
                if r > 0 {
                    src[d] = picks[i[d] as usize];
                }
                vals.push(xv.get(&src));
            });
            ov.write(&vals);
            Ok(())
        }),
    ))
});
