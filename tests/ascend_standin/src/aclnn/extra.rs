//! Stand-in aclnn backward ops and convolution, added for the NPU `Backend`
//! (`src/backend/ascend.rs`): `aclnnLayerNormBackward`, `aclnnConvolution` (transposed=false),
//! `aclnnConvolutionBackward` (transposed=false), `aclnnSoftmaxBackward`, `aclnnGeluBackwardV2`.
//! Signatures as declared in `ffi/src/aclnn.rs`; plain f64 loops, row-major reads of the views.

use super::*;

/// The 13-/17-argument convolution signatures (with cubeMathType) exist from CANN 8.0 on
/// (ops-nn headers; CANN 7.x declares them without it): the stand-in emulating 7.x refuses.
fn check_cann8(func: &str) -> Result<(), i32> {
    match current_cann_major() {
        m if m >= 8 => Ok(()),
        0 => Err(bad(
            func,
            "emulated CANN version unknown: signature may differ".into(),
        )),
        m => Err(bad(
            func,
            format!("emulated CANN {m}.x has no cubeMathType argument here: the call is corrupt"),
        )),
    }
}

// ------------------------------------------------------------------ layer norm backward

/// `outputMask` must say which of the three outputs are given.
fn check_mask(func: &str, mask: &[bool], outs: [Option<&AclTensor>; 3]) -> Result<(), i32> {
    if mask != outs.map(|t| t.is_some()) {
        return Err(bad(
            func,
            format!("outputMask {mask:?} does not match the outputs given"),
        ));
    }
    Ok(())
}

aclnn_op!(aclnnLayerNormBackward, aclnnLayerNormBackwardGetWorkspaceSize(
    grad_out: *const AclTensor,
    input: *const AclTensor,
    shape: *const AclIntArray,
    mean: *const AclTensor,
    rstd: *const AclTensor,
    weight: *const AclTensor,
    bias: *const AclTensor,
    mask: *const AclBoolArray,
    grad_in: *mut AclTensor,
    grad_w: *mut AclTensor,
    grad_b: *mut AclTensor,
) {
    let g = tensor(F, "gradOut", grad_out)?;
    let x = tensor(F, "input", input)?;
    let ns = int_array(F, "normalizedShape", shape)?.to_vec();
    let m = tensor(F, "mean", mean)?;
    let r = tensor(F, "rstd", rstd)?;
    let [w, _b] = opt_tensors(F, [("weight", weight), ("bias", bias)])?;
    let mask = bool_array(F, mask)?;
    let outs = [("gradInput", grad_in), ("gradWeight", grad_w), ("gradBias", grad_b)];
    let [gi, gw, gb] = opt_tensors(F, outs.map(|(what, t)| (what, t as *const _)))?;
    let xd = &x.view.dims;
    check_normalized_shape(F, &ns, xd)?;
    check_dims(F, "gradOut", &g.view.dims, xd)?;
    check_mask(F, &mask, [gi, gw, gb])?;
    let row = ns.iter().product::<i64>() as usize;
    let rows = x.view.numel() / row.max(1);
    if m.view.numel() != rows || r.view.numel() != rows {
        return Err(bad(F, format!("mean/rstd need {rows} elements")));
    }
    for (what, t, want) in [
        ("weight", w, &ns),
        ("gradWeight", gw, &ns),
        ("gradBias", gb, &ns),
        ("gradInput", gi, xd),
    ] {
        if let Some(t) = t {
            check_dims(F, what, &t.view.dims, want)?;
        }
    }
    let [gv, xv, mv, rv] = views([g, x, m, r]);
    let [wv, giv, gwv, gbv] = opt_views([w, gi, gw, gb]);
    plan(move || {
        let (dy, x, mean, rstd) = (gv.read(), xv.read(), mv.read(), rv.read());
        let w = wv.map(|v| v.read()).unwrap_or_else(|| vec![1.0; row]);
        let mut dx = vec![0f32; x.len()];
        let (mut dg, mut db) = (vec![0f64; row], vec![0f64; row]);
        for i in 0..rows {
            let (m, rs) = (mean[i] as f64, rstd[i] as f64);
            let xs = &x[i * row..(i + 1) * row];
            let gs = &dy[i * row..(i + 1) * row];
            let (mut a, mut b) = (0f64, 0f64);
            for j in 0..row {
                let xh = (xs[j] as f64 - m) * rs;
                let dxh = gs[j] as f64 * w[j] as f64;
                a += dxh;
                b += dxh * xh;
                dg[j] += gs[j] as f64 * xh;
                db[j] += gs[j] as f64;
            }
            let (a, b) = (a / row as f64, b / row as f64);
            for j in 0..row {
                let xh = (xs[j] as f64 - m) * rs;
                let dxh = gs[j] as f64 * w[j] as f64;
                dx[i * row + j] = (rs * (dxh - a - xh * b)) as f32;
            }
        }
        if let Some(v) = giv {
            v.write(&dx);
        }
        write_f64(gwv, &dg);
        write_f64(gbv, &db);
    })
});

/// Write f64 results to an optional output.
fn write_f64(v: Option<View>, vals: &[f64]) {
    if let Some(v) = v {
        v.write(&vals.iter().map(|&x| x as f32).collect::<Vec<_>>());
    }
}

// ------------------------------------------------------------------ convolution

#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    s: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
    groups: usize,
}

impl Geom {
    /// Input position of output (oy, ox) and tap (ky, kx), if inside the image.
    fn at(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let y = (oy * self.s[0] + ky * self.d[0]) as isize - self.p[0] as isize;
        let x = (ox * self.s[1] + kx * self.d[1]) as isize - self.p[1] as isize;
        (y >= 0 && x >= 0 && (y as usize) < self.h && (x as usize) < self.w)
            .then_some((y as usize, x as usize))
    }
    /// Calls f(x index, w index, y index) for every multiply-add of the forward conv.
    fn for_each_mac(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (cig, cog) = (self.ci / self.groups, self.co / self.groups);
        for b in 0..self.n {
            for o in 0..self.co {
                let gi = o / cog;
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let yi = ((b * self.co + o) * self.oh + oy) * self.ow + ox;
                        for c in 0..cig {
                            let ic = gi * cig + c;
                            for ky in 0..self.kh {
                                for kx in 0..self.kw {
                                    if let Some((y, x)) = self.at(oy, ox, ky, kx) {
                                        let xi = ((b * self.ci + ic) * self.h + y) * self.w + x;
                                        let wi = ((o * cig + c) * self.kh + ky) * self.kw + kx;
                                        f(xi, wi, yi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn pair(func: &str, what: &str, v: &[i64]) -> Result<[usize; 2], i32> {
    match v {
        [a, b] if *a >= 0 && *b >= 0 => Ok([*a as usize, *b as usize]),
        [a] if *a >= 0 => Ok([*a as usize, *a as usize]),
        _ => Err(bad(
            func,
            format!("{what} {v:?} is not 1 or 2 non-negative ints"),
        )),
    }
}

/// The geometry of a convolution `x * w -> y` from its attributes, the int arrays in the
/// order of the signature: `[stride, padding, dilation, outputPadding]`.
unsafe fn conv_geom(
    func: &str,
    [x, w, y]: [&View; 3],
    [stride, padding, dilation, out_pad]: [*const AclIntArray; 4],
    transposed: bool,
    groups: i64,
) -> Result<Geom, i32> {
    if transposed {
        return Err(bad(
            func,
            "transposed=true is not implemented by the stand-in".into(),
        ));
    }
    let s = pair(func, "stride", int_array(func, "stride", stride)?)?;
    let p = pair(func, "padding", int_array(func, "padding", padding)?)?;
    let d = pair(func, "dilation", int_array(func, "dilation", dilation)?)?;
    let op = pair(
        func,
        "outputPadding",
        int_array(func, "outputPadding", out_pad)?,
    )?;
    if s.contains(&0) || d.contains(&0) || op != [0, 0] {
        return Err(bad(
            func,
            format!("stride {s:?} / dilation {d:?} / outputPadding {op:?}"),
        ));
    }
    let (xd, wd, yd) = (&x.dims, &w.dims, &y.dims);
    if xd.len() != 4 || wd.len() != 4 || yd.len() != 4 {
        return Err(bad(func, format!("NCHW only: {xd:?} {wd:?} {yd:?}")));
    }
    let g = groups.max(0) as usize;
    let (n, ci, h, wi) = (
        xd[0] as usize,
        xd[1] as usize,
        xd[2] as usize,
        xd[3] as usize,
    );
    let (co, kh, kw) = (wd[0] as usize, wd[2] as usize, wd[3] as usize);
    if g == 0 || ci % g != 0 || co % g != 0 || wd[1] as usize * g != ci {
        return Err(bad(
            func,
            format!("groups {groups}: input {xd:?}, weight {wd:?}"),
        ));
    }
    let span = |len: usize, k: usize, i: usize| {
        (len + 2 * p[i])
            .checked_sub(d[i] * (k - 1) + 1)
            .map(|v| v / s[i] + 1)
    };
    let (Some(oh), Some(ow)) = (span(h, kh, 0), span(wi, kw, 1)) else {
        return Err(bad(
            func,
            format!("kernel {wd:?} larger than padded input {xd:?}"),
        ));
    };
    if yd[..] != [n as i64, co as i64, oh as i64, ow as i64] {
        return Err(bad(
            func,
            format!("output {yd:?}, expected [{n}, {co}, {oh}, {ow}]"),
        ));
    }
    Ok(Geom {
        n,
        ci,
        h,
        w: wi,
        co,
        kh,
        kw,
        oh,
        ow,
        s,
        p,
        d,
        groups: g,
    })
}

aclnn_op!(aclnnConvolution, aclnnConvolutionGetWorkspaceSize(
    input: *const AclTensor,
    weight: *const AclTensor,
    bias: *const AclTensor,
    stride: *const AclIntArray,
    padding: *const AclIntArray,
    dilation: *const AclIntArray,
    transposed: bool,
    out_pad: *const AclIntArray,
    groups: i64,
    output: *mut AclTensor,
    cube: i8,
) {
    let x = tensor(F, "input", input)?;
    let w = tensor(F, "weight", weight)?;
    let b = opt_tensor(F, "bias", bias)?;
    let y = tensor(F, "output", output)?;
    check_cann8(F)?;
    for (what, t, allowed) in [
        ("input", x, &[FORMAT_NCHW][..]),
        ("weight", w, &[FORMAT_NCHW, FORMAT_FRACTAL_Z][..]),
        ("output", y, &[FORMAT_NCHW][..]),
    ] {
        if t.view.dims.len() == 4 {
            check_format(F, what, t, allowed)?;
        }
    }
    check_cube(F, x.dtype, cube)?;
    let arrays = [stride, padding, dilation, out_pad];
    let g = conv_geom(F, [&x.view, &w.view, &y.view], arrays, transposed, groups)?;
    if let Some(b) = b {
        check_dims(F, "bias", &b.view.dims, &[g.co as i64])?;
    }
    let [xv, wv, yv] = views([x, w, y]);
    let [bv] = opt_views([b]);
    plan(move || {
        let (xs, ws) = (xv.read(), wv.read());
        let mut acc = vec![0f64; yv.numel()];
        g.for_each_mac(|xi, wi, yi| acc[yi] += xs[xi] as f64 * ws[wi] as f64);
        if let Some(bv) = bv {
            let bs = bv.read();
            let plane = g.oh * g.ow;
            for (i, a) in acc.iter_mut().enumerate() {
                *a += bs[(i / plane) % g.co] as f64;
            }
        }
        write_f64(Some(yv), &acc);
    })
});

aclnn_op!(aclnnConvolutionBackward, aclnnConvolutionBackwardGetWorkspaceSize(
    grad_out: *const AclTensor,
    input: *const AclTensor,
    weight: *const AclTensor,
    bias_sizes: *const AclIntArray,
    stride: *const AclIntArray,
    padding: *const AclIntArray,
    dilation: *const AclIntArray,
    transposed: bool,
    out_pad: *const AclIntArray,
    groups: i32,
    mask: *const AclBoolArray,
    cube: i8,
    grad_in: *mut AclTensor,
    grad_w: *mut AclTensor,
    grad_b: *mut AclTensor,
) {
    let dy = tensor(F, "gradOutput", grad_out)?;
    let x = tensor(F, "input", input)?;
    let w = tensor(F, "weight", weight)?;
    let bs = int_array(F, "biasSizes", bias_sizes)?.to_vec();
    let mask = bool_array(F, mask)?;
    let outs = [("gradInput", grad_in), ("gradWeight", grad_w), ("gradBias", grad_b)];
    let [gi, gw, gb] = opt_tensors(F, outs.map(|(what, t)| (what, t as *const _)))?;
    check_cann8(F)?;
    for (what, t) in [
        ("gradOutput", Some(dy)),
        ("input", Some(x)),
        ("weight", Some(w)),
        ("gradInput", gi),
        ("gradWeight", gw),
    ] {
        if let Some(t) = t.filter(|t| t.view.dims.len() == 4) {
            check_format(F, what, t, &[FORMAT_NCHW])?;
        }
    }
    check_cube(F, x.dtype, cube)?;
    let arrays = [stride, padding, dilation, out_pad];
    let g = conv_geom(F, [&x.view, &w.view, &dy.view], arrays, transposed, groups as i64)?;
    check_mask(F, &mask, [gi, gw, gb])?;
    if let Some(t) = gi {
        check_dims(F, "gradInput", &t.view.dims, &x.view.dims)?;
    }
    if let Some(t) = gw {
        check_dims(F, "gradWeight", &t.view.dims, &w.view.dims)?;
    }
    if let Some(t) = gb {
        if t.view.dims != [g.co as i64] || bs != [g.co as i64] {
            return Err(bad(
                F,
                format!(
                    "gradBias {:?} / biasSizes {bs:?} != [{}]",
                    t.view.dims, g.co
                ),
            ));
        }
    }
    let [dyv, xv, wv] = views([dy, x, w]);
    let [giv, gwv, gbv] = opt_views([gi, gw, gb]);
    plan(move || {
        let (dys, xs, ws) = (dyv.read(), xv.read(), wv.read());
        let mut dx = vec![0f64; xs.len()];
        let mut dw = vec![0f64; ws.len()];
        g.for_each_mac(|xi, wi, yi| {
            dx[xi] += dys[yi] as f64 * ws[wi] as f64;
            dw[wi] += dys[yi] as f64 * xs[xi] as f64;
        });
        write_f64(giv, &dx);
        write_f64(gwv, &dw);
        if gbv.is_some() {
            let plane = g.oh * g.ow;
            let mut db = vec![0f64; g.co];
            for (i, &d) in dys.iter().enumerate() {
                db[(i / plane) % g.co] += d as f64;
            }
            write_f64(gbv, &db);
        }
    })
});

// ------------------------------------------------------------------ softmax backward

aclnn_op!(aclnnSoftmaxBackward, aclnnSoftmaxBackwardGetWorkspaceSize(
    grad_out: *const AclTensor,
    output: *const AclTensor,
    dim: i64,
    out: *mut AclTensor,
) {
    let g = tensor(F, "gradOutput", grad_out)?;
    let y = tensor(F, "output", output)?;
    let o = tensor(F, "out", out)?;
    let (gd, yd, od) = (&g.view.dims, &y.view.dims, &o.view.dims);
    let d = softmax_dim(dim, yd.len()).filter(|_| gd == yd && od == yd);
    let d = d.ok_or_else(|| bad(F, format!("dim {dim} / shapes {gd:?}, {yd:?} -> {od:?}")))?;
    let [gv, yv, ov] = views([g, y, o]);
    plan(move || {
        // Compute everything before writing: `out` may alias an input.
        let n = yv.dims[d];
        let mut outer = yv.dims.clone();
        outer[d] = 1;
        let mut res: Vec<(Vec<i64>, f32)> = Vec::with_capacity(yv.numel());
        for_each_index(&outer, |base| {
            let mut idx = base.to_vec();
            let mut dot = 0f64;
            for i in 0..n {
                idx[d] = i;
                dot += gv.get(&idx) as f64 * yv.get(&idx) as f64;
            }
            for i in 0..n {
                idx[d] = i;
                let v = yv.get(&idx) as f64 * (gv.get(&idx) as f64 - dot);
                res.push((idx.clone(), v as f32));
            }
        });
        for (idx, v) in res {
            ov.set(&idx, v);
        }
    })
});

// ------------------------------------------------------------------ gelu backward

fn gelu_grad(x: f64, tanh: bool) -> f64 {
    use std::f64::consts::{PI, SQRT_2};
    if tanh {
        let c = (2.0 / PI).sqrt();
        let u = c * (x + 0.044715 * x * x * x);
        let t = u.tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
    } else {
        let cdf = 0.5 * (1.0 + erf(x / SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
        cdf + x * pdf
    }
}

aclnn_op!(aclnnGeluBackwardV2, aclnnGeluBackwardV2GetWorkspaceSize(
    grad_out: *const AclTensor,
    x: *const AclTensor,
    approximate: *mut c_char,
    grad_in: *mut AclTensor,
) {
    for (what, t) in [("gradOutput", grad_out), ("self", x), ("gradInput", grad_in as *const _)] {
        tensor(F, what, t)?;
    }
    if approximate.is_null() {
        return Err(fail(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{F}: approximate is NULL"),
        ));
    }
    let tanh = match CStr::from_ptr(approximate).to_str() {
        Ok("none") => false,
        Ok("tanh") => true,
        other => return Err(bad(F, format!("approximate {other:?} not \"none\"/\"tanh\""))),
    };
    zip2(
        F,
        ("gradOutput", "self", "gradInput"),
        grad_out,
        x,
        grad_in,
        move |g, x| (g as f64 * gelu_grad(x as f64, tanh)) as f32,
    )
});
