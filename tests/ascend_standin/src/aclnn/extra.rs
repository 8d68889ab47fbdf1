//! Stand-in aclnn backward ops and convolution, added for the NPU `Backend`
//! (`src/backend/ascend.rs`): `aclnnLayerNormBackward`, `aclnnConvolution` (transposed=false),
//! `aclnnConvolutionBackward` (transposed=false), `aclnnSoftmaxBackward`, `aclnnGeluBackwardV2`.
//! Signatures as declared in `ffi/src/aclnn.rs`; plain f64 loops, row-major reads of the views.

use super::*;

unsafe fn int_array<'a>(func: &str, what: &str, a: *const AclIntArray) -> Result<&'a [i64], i32> {
    if a.is_null() {
        return Err(fail(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{func}: {what} is NULL"),
        ));
    }
    if !is_live(a) {
        return Err(bad(func, format!("{what} {a:p} is not a live aclIntArray")));
    }
    Ok(&(*a).0)
}

unsafe fn bool_array(func: &str, a: *const AclBoolArray) -> Result<Vec<bool>, i32> {
    if a.is_null() {
        return Err(fail(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{func}: outputMask is NULL"),
        ));
    }
    if !is_live(a) {
        return Err(bad(
            func,
            format!("outputMask {a:p} is not a live aclBoolArray"),
        ));
    }
    Ok((*a).0.clone())
}

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

#[no_mangle]
pub unsafe extern "C" fn aclnnLayerNormBackwardGetWorkspaceSize(
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
    ws: *mut u64,
    ex: *mut *mut Executor,
) -> i32 {
    const F: &str = "aclnnLayerNormBackwardGetWorkspaceSize";
    let g = try_i32!(tensor(F, "gradOut", grad_out));
    let x = try_i32!(tensor(F, "input", input));
    let ns = try_i32!(int_array(F, "normalizedShape", shape)).to_vec();
    let m = try_i32!(tensor(F, "mean", mean));
    let r = try_i32!(tensor(F, "rstd", rstd));
    let w = try_i32!(opt_tensor(F, "weight", weight));
    let _b = try_i32!(opt_tensor(F, "bias", bias));
    let mask = try_i32!(bool_array(F, mask));
    let gi = try_i32!(opt_tensor(F, "gradInput", grad_in));
    let gw = try_i32!(opt_tensor(F, "gradWeight", grad_w));
    let gb = try_i32!(opt_tensor(F, "gradBias", grad_b));
    let xd = &x.view.dims;
    let q = ns.len();
    if q == 0 || q > xd.len() || xd[xd.len() - q..] != ns[..] {
        return bad(
            F,
            format!("normalizedShape {ns:?} is not a suffix of {xd:?}"),
        );
    }
    if g.view.dims != *xd {
        return bad(F, format!("gradOut {:?} != input {xd:?}", g.view.dims));
    }
    if mask.len() != 3 || mask != [gi.is_some(), gw.is_some(), gb.is_some()] {
        return bad(
            F,
            format!("outputMask {mask:?} does not match the outputs given"),
        );
    }
    let row = ns.iter().product::<i64>() as usize;
    let rows = x.view.numel() / row.max(1);
    if m.view.numel() != rows || r.view.numel() != rows {
        return bad(F, format!("mean/rstd need {rows} elements"));
    }
    for (what, t) in [("weight", w), ("gradWeight", gw), ("gradBias", gb)] {
        if let Some(t) = t {
            if t.view.dims != ns {
                return bad(F, format!("{what} {:?} != {ns:?}", t.view.dims));
            }
        }
    }
    if let Some(t) = gi {
        if t.view.dims != *xd {
            return bad(F, format!("gradInput {:?} != {xd:?}", t.view.dims));
        }
    }
    let (gv, xv, mv, rv) = (
        g.view.clone(),
        x.view.clone(),
        m.view.clone(),
        r.view.clone(),
    );
    let wv = w.map(|t| t.view.clone());
    let (giv, gwv, gbv) = (
        gi.map(|t| t.view.clone()),
        gw.map(|t| t.view.clone()),
        gb.map(|t| t.view.clone()),
    );
    finish_phase1(
        "aclnnLayerNormBackward",
        0,
        Box::new(move |_| {
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
            if let Some(v) = gwv {
                v.write(&dg.iter().map(|&v| v as f32).collect::<Vec<_>>());
            }
            if let Some(v) = gbv {
                v.write(&db.iter().map(|&v| v as f32).collect::<Vec<_>>());
            }
            Ok(())
        }),
        ws,
        ex,
    )
}
run_fn!(aclnnLayerNormBackward, "aclnnLayerNormBackward");

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

#[allow(clippy::too_many_arguments)]
unsafe fn conv_geom(
    func: &str,
    x: &View,
    w: &View,
    y: &View,
    stride: *const AclIntArray,
    padding: *const AclIntArray,
    dilation: *const AclIntArray,
    transposed: bool,
    out_pad: *const AclIntArray,
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

#[no_mangle]
pub unsafe extern "C" fn aclnnConvolutionGetWorkspaceSize(
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
    ws: *mut u64,
    ex: *mut *mut Executor,
) -> i32 {
    const F: &str = "aclnnConvolutionGetWorkspaceSize";
    let x = try_i32!(tensor(F, "input", input));
    let w = try_i32!(tensor(F, "weight", weight));
    let b = try_i32!(opt_tensor(F, "bias", bias));
    let y = try_i32!(tensor(F, "output", output));
    try_i32!(check_cann8(F));
    for (what, t, allowed) in [
        ("input", x, &[FORMAT_NCHW][..]),
        ("weight", w, &[FORMAT_NCHW, FORMAT_FRACTAL_Z][..]),
        ("output", y, &[FORMAT_NCHW][..]),
    ] {
        if t.view.dims.len() == 4 {
            try_i32!(check_format(F, what, t, allowed));
        }
    }
    try_i32!(check_cube(F, x.dtype, cube));
    let g = try_i32!(conv_geom(
        F, &x.view, &w.view, &y.view, stride, padding, dilation, transposed, out_pad, groups
    ));
    if let Some(b) = b {
        if b.view.dims != [g.co as i64] {
            return bad(F, format!("bias {:?} != [{}]", b.view.dims, g.co));
        }
    }
    let (xv, wv, yv) = (x.view.clone(), w.view.clone(), y.view.clone());
    let bv = b.map(|t| t.view.clone());
    finish_phase1(
        "aclnnConvolution",
        0,
        Box::new(move |_| {
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
            yv.write(&acc.iter().map(|&v| v as f32).collect::<Vec<_>>());
            Ok(())
        }),
        ws,
        ex,
    )
}
run_fn!(aclnnConvolution, "aclnnConvolution");

#[no_mangle]
pub unsafe extern "C" fn aclnnConvolutionBackwardGetWorkspaceSize(
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
    ws: *mut u64,
    ex: *mut *mut Executor,
) -> i32 {
    const F: &str = "aclnnConvolutionBackwardGetWorkspaceSize";
    let dy = try_i32!(tensor(F, "gradOutput", grad_out));
    let x = try_i32!(tensor(F, "input", input));
    let w = try_i32!(tensor(F, "weight", weight));
    let bs = try_i32!(int_array(F, "biasSizes", bias_sizes)).to_vec();
    let mask = try_i32!(bool_array(F, mask));
    let gi = try_i32!(opt_tensor(F, "gradInput", grad_in));
    let gw = try_i32!(opt_tensor(F, "gradWeight", grad_w));
    let gb = try_i32!(opt_tensor(F, "gradBias", grad_b));
    try_i32!(check_cann8(F));
    for (what, t) in [
        ("gradOutput", Some(dy)),
        ("input", Some(x)),
        ("weight", Some(w)),
        ("gradInput", gi),
        ("gradWeight", gw),
    ] {
        if let Some(t) = t.filter(|t| t.view.dims.len() == 4) {
            try_i32!(check_format(F, what, t, &[FORMAT_NCHW]));
        }
    }
    try_i32!(check_cube(F, x.dtype, cube));
    let g = try_i32!(conv_geom(
        F,
        &x.view,
        &w.view,
        &dy.view,
        stride,
        padding,
        dilation,
        transposed,
        out_pad,
        groups as i64
    ));
    if mask.len() != 3 || mask != [gi.is_some(), gw.is_some(), gb.is_some()] {
        return bad(
            F,
            format!("outputMask {mask:?} does not match the outputs given"),
        );
    }
    if let Some(t) = gi {
        if t.view.dims != x.view.dims {
            return bad(
                F,
                format!("gradInput {:?} != input {:?}", t.view.dims, x.view.dims),
            );
        }
    }
    if let Some(t) = gw {
        if t.view.dims != w.view.dims {
            return bad(
                F,
                format!("gradWeight {:?} != weight {:?}", t.view.dims, w.view.dims),
            );
        }
    }
    if let Some(t) = gb {
        if t.view.dims != [g.co as i64] || bs != [g.co as i64] {
            return bad(
                F,
                format!(
                    "gradBias {:?} / biasSizes {bs:?} != [{}]",
                    t.view.dims, g.co
                ),
            );
        }
    }
    let (dyv, xv, wv) = (dy.view.clone(), x.view.clone(), w.view.clone());
    let (giv, gwv, gbv) = (
        gi.map(|t| t.view.clone()),
        gw.map(|t| t.view.clone()),
        gb.map(|t| t.view.clone()),
    );
    finish_phase1(
        "aclnnConvolutionBackward",
        0,
        Box::new(move |_| {
            let (dys, xs, ws) = (dyv.read(), xv.read(), wv.read());
            let mut dx = vec![0f64; xs.len()];
            let mut dw = vec![0f64; ws.len()];
            g.for_each_mac(|xi, wi, yi| {
                dx[xi] += dys[yi] as f64 * ws[wi] as f64;
                dw[wi] += dys[yi] as f64 * xs[xi] as f64;
            });
            let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
            if let Some(v) = giv {
                v.write(&f(dx));
            }
            if let Some(v) = gwv {
                v.write(&f(dw));
            }
            if let Some(v) = gbv {
                let plane = g.oh * g.ow;
                let mut db = vec![0f64; g.co];
                for (i, &d) in dys.iter().enumerate() {
                    db[(i / plane) % g.co] += d as f64;
                }
                v.write(&f(db));
            }
            Ok(())
        }),
        ws,
        ex,
    )
}
run_fn!(aclnnConvolutionBackward, "aclnnConvolutionBackward");

// ------------------------------------------------------------------ softmax backward

#[no_mangle]
pub unsafe extern "C" fn aclnnSoftmaxBackwardGetWorkspaceSize(
    grad_out: *const AclTensor,
    output: *const AclTensor,
    dim: i64,
    out: *mut AclTensor,
    ws: *mut u64,
    ex: *mut *mut Executor,
) -> i32 {
    const F: &str = "aclnnSoftmaxBackwardGetWorkspaceSize";
    let g = try_i32!(tensor(F, "gradOutput", grad_out));
    let y = try_i32!(tensor(F, "output", output));
    let o = try_i32!(tensor(F, "out", out));
    let r = y.view.dims.len() as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r || g.view.dims != y.view.dims || o.view.dims != y.view.dims {
        return bad(
            F,
            format!(
                "dim {dim} / shapes {:?}, {:?} -> {:?}",
                g.view.dims, y.view.dims, o.view.dims
            ),
        );
    }
    let (gv, yv, ov) = (g.view.clone(), y.view.clone(), o.view.clone());
    let d = d as usize;
    finish_phase1(
        "aclnnSoftmaxBackward",
        0,
        Box::new(move |_| {
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
            Ok(())
        }),
        ws,
        ex,
    )
}
run_fn!(aclnnSoftmaxBackward, "aclnnSoftmaxBackward");

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

#[no_mangle]
pub unsafe extern "C" fn aclnnGeluBackwardV2GetWorkspaceSize(
    grad_out: *const AclTensor,
    x: *const AclTensor,
    approximate: *mut c_char,
    grad_in: *mut AclTensor,
    ws: *mut u64,
    ex: *mut *mut Executor,
) -> i32 {
    const F: &str = "aclnnGeluBackwardV2GetWorkspaceSize";
    let g = try_i32!(tensor(F, "gradOutput", grad_out));
    let x = try_i32!(tensor(F, "self", x));
    let o = try_i32!(tensor(F, "gradInput", grad_in));
    if approximate.is_null() {
        return fail(ACLNN_ERR_PARAM_NULLPTR, format!("{F}: approximate is NULL"));
    }
    let tanh = match CStr::from_ptr(approximate).to_str() {
        Ok("none") => false,
        Ok("tanh") => true,
        other => return bad(F, format!("approximate {other:?} not \"none\"/\"tanh\"")),
    };
    if g.view.dims != x.view.dims || o.view.dims != x.view.dims {
        return bad(
            F,
            format!(
                "shapes {:?}, {:?} -> {:?}",
                g.view.dims, x.view.dims, o.view.dims
            ),
        );
    }
    let (gv, xv, ov) = (g.view.clone(), x.view.clone(), o.view.clone());
    finish_phase1(
        "aclnnGeluBackwardV2",
        0,
        Box::new(move |_| {
            let (gs, xs) = (gv.read(), xv.read());
            let dx: Vec<f32> = gs
                .iter()
                .zip(&xs)
                .map(|(&g, &x)| (g as f64 * gelu_grad(x as f64, tanh)) as f32)
                .collect();
            ov.write(&dx);
            Ok(())
        }),
        ws,
        ex,
    )
}
run_fn!(aclnnGeluBackwardV2, "aclnnGeluBackwardV2");
