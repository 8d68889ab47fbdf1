//! Stand-in `aclnnFlashAttentionScore` / `aclnnFlashAttentionScoreGrad` for full attention:
//! layout "BNSD" only, no pse / dropout / padding / attention masks / prefix, keepProb 1,
//! sparseMode 0 and preTokens / nextTokens covering every key (anything else is rejected in the
//! first phase). softmaxMax / softmaxSum are `[B, N, Sq, 8]` (the value repeated 8 times, as
//! CANN documents); softmaxOut / softmaxIn / dpseOut must be empty. Plain f64 loops.

use super::*;

#[derive(Clone)]
struct Attn {
    b: i64,
    n: i64,
    sq: i64,
    sk: i64,
    d: i64,
    scale: f64,
}

fn check_stats(func: &str, a: &Attn, m: &View, s: &View) -> Result<(), i32> {
    let want = [a.b, a.n, a.sq, 8];
    if m.dims != want || s.dims != want {
        return Err(bad(
            func,
            format!(
                "softmaxMax {:?} / softmaxSum {:?} must be {want:?}",
                m.dims, s.dims
            ),
        ));
    }
    Ok(())
}

fn check_empty(func: &str, what: &str, t: Option<&AclTensor>) -> Result<(), i32> {
    match t {
        Some(t) if t.view.numel() != 0 => {
            Err(bad(func, format!("{what} {:?} must be empty", t.view.dims)))
        }
        _ => Ok(()),
    }
}

/// Row `(b, n, i)` of a BNSD view.
fn row(v: &View, b: i64, n: i64, i: i64, d: i64) -> Vec<f64> {
    (0..d).map(|j| v.get(&[b, n, i, j]) as f64).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The scaled scores of query row `i` against every key.
fn scores(a: &Attn, q: &View, k: &View, b: i64, n: i64, i: i64) -> Vec<f64> {
    let qi = row(q, b, n, i, a.d);
    (0..a.sk)
        .map(|j| a.scale * dot(&qi, &row(k, b, n, j, a.d)))
        .collect()
}

/// Both flash-attention entry points: `aclnn_op!` with the parameters the two share — the
/// four optional masks (named as in the header, e.g. `"dropMask" drop_mask`) and the
/// attributes from `prefix` to `sparseMode` — written once. `$attn(q, k, v)` in the body
/// checks those (NULL masks and prefix, BNSD full attention) and the q/k/v shapes.
macro_rules! flash_op {
    (
        $op:ident,
        $p1:ident(
            [$($lead:ident: $lead_ty:ty),* $(,)?],
            masks($($mask_name:literal $mask:ident),*),
            [$($mid:ident: $mid_ty:ty),* $(,)?],
            attributes,
            [$($out:ident: $out_ty:ty),* $(,)?] $(,)?
        ) |$attn:ident| $body:block
    ) => {
        aclnn_op!($op, $p1(
            $($lead: $lead_ty,)*
            $($mask: *const AclTensor,)*
            $($mid: $mid_ty,)*
            prefix: *const AclIntArray,
            scale: f64,
            keep_prob: f64,
            pre: i64,
            next: i64,
            head_num: i64,
            layout: *mut c_char,
            inner_precise: i64,
            sparse_mode: i64,
            $($out: $out_ty,)*
        ) {
            let $attn = |q: &View, k: &View, v: &View| -> Result<Attn, i32> {
                for (what, t) in [$(($mask_name, $mask)),*] {
                    if !t.is_null() {
                        return Err(bad(
                            F,
                            format!("{what} is not implemented by the stand-in (pass NULL)"),
                        ));
                    }
                }
                if !prefix.is_null() {
                    return Err(bad(
                        F,
                        "prefix is not implemented by the stand-in".into(),
                    ));
                }
                if layout.is_null() {
                    return Err(fail(
                        ACLNN_ERR_PARAM_NULLPTR,
                        format!("{F}: inputLayout is NULL"),
                    ));
                }
                match CStr::from_ptr(layout).to_str() {
                    Ok("BNSD") => {}
                    other => {
                        return Err(bad(
                            F,
                            format!("inputLayout {other:?}: the stand-in implements \"BNSD\" only"),
                        ))
                    }
                }
                if keep_prob != 1.0 || sparse_mode != 0 || !(0..=2).contains(&inner_precise) {
                    return Err(bad(
                        F,
                        format!(
                            "keepProb {keep_prob} / sparseMode {sparse_mode} / innerPrecise {inner_precise}: \
                             the stand-in implements keepProb 1, sparseMode 0"
                        ),
                    ));
                }
                if !scale.is_finite() {
                    return Err(bad(F, format!("scaleValue {scale}")));
                }
                let (qd, kd, vd) = (&q.dims, &k.dims, &v.dims);
                if qd.len() != 4 || kd.len() != 4 || vd.len() != 4 {
                    return Err(bad(
                        F,
                        format!("BNSD needs 4-D q/k/v: {qd:?} {kd:?} {vd:?}"),
                    ));
                }
                let (b, n, sq, d) = (qd[0], qd[1], qd[2], qd[3]);
                let sk = kd[2];
                if kd[..] != [b, n, sk, d] || vd[..] != [b, n, sk, d] || head_num != n {
                    return Err(bad(
                        F,
                        format!("q {qd:?}, k {kd:?}, v {vd:?}, headNum {head_num}"),
                    ));
                }
                if pre < sk || next < sk {
                    return Err(bad(
                        F,
                        format!(
                            "preTokens {pre} / nextTokens {next} limit the band: the stand-in implements \
                             full attention only"
                        ),
                    ));
                }
                Ok(Attn { b, n, sq, sk, d, scale })
            };
            $body
        });
    };
}

flash_op!(aclnnFlashAttentionScore, aclnnFlashAttentionScoreGetWorkspaceSize(
    [query: *const AclTensor, key: *const AclTensor, value: *const AclTensor],
    masks("realShift" real_shift, "dropMask" drop_mask, "paddingMask" padding_mask, "attenMask" atten_mask),
    [],
    attributes,
    [
        softmax_max: *const AclTensor,
        softmax_sum: *const AclTensor,
        softmax_out: *const AclTensor,
        attention_out: *const AclTensor,
    ],
) |attn| {
    let [q, k, v, m, s] = tensors(F, [
        ("query", query),
        ("key", key),
        ("value", value),
        ("softmaxMaxOut", softmax_max),
        ("softmaxSumOut", softmax_sum),
    ])?;
    let (so, o) = (
        opt_tensor(F, "softmaxOutOut", softmax_out)?,
        tensor(F, "attentionOutOut", attention_out)?,
    );
    let a = attn(&q.view, &k.view, &v.view)?;
    check_stats(F, &a, &m.view, &s.view)?;
    check_empty(F, "softmaxOutOut", so)?;
    check_dims(F, "attentionOut", &o.view.dims, &q.view.dims)?;
    let [qv, kv, vv, mv, sv, ov] = views([q, k, v, m, s, o]);
    plan(move || {
        for b in 0..a.b {
            for n in 0..a.n {
                for i in 0..a.sq {
                    let sc = scores(&a, &qv, &kv, b, n, i);
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..a.d {
                        let acc: f64 = (0..a.sk)
                            .map(|j| e[j as usize] * vv.get(&[b, n, j, c]) as f64)
                            .sum();
                        ov.set(&[b, n, i, c], (acc / sum) as f32);
                    }
                    for t in 0..8 {
                        mv.set(&[b, n, i, t], mx as f32);
                        sv.set(&[b, n, i, t], sum as f32);
                    }
                }
            }
        }
    })
});

flash_op!(aclnnFlashAttentionScoreGrad, aclnnFlashAttentionScoreGradGetWorkspaceSize(
    [
        query: *const AclTensor,
        key: *const AclTensor,
        value: *const AclTensor,
        dy: *const AclTensor,
    ],
    masks("pseShift" pse_shift, "dropMask" drop_mask, "paddingMask" padding_mask, "attenMask" atten_mask),
    [
        softmax_max: *const AclTensor,
        softmax_sum: *const AclTensor,
        softmax_in: *const AclTensor,
        attention_in: *const AclTensor,
    ],
    attributes,
    [dq: *const AclTensor, dk: *const AclTensor, dv: *const AclTensor, dpse: *const AclTensor],
) |attn| {
    // The stand-in recomputes P from the statistics, so both are required here.
    let [q, k, v, g, m, s] = tensors(F, [
        ("query", query),
        ("keyIn", key),
        ("value", value),
        ("dy", dy),
        ("softmaxMax", softmax_max),
        ("softmaxSum", softmax_sum),
    ])?;
    let si = opt_tensor(F, "softmaxIn", softmax_in)?;
    let o = tensor(F, "attentionIn", attention_in)?;
    let [tq, tk, tv] = tensors(F, [("dqOut", dq), ("dkOut", dk), ("dvOut", dv)])?;
    let tp = opt_tensor(F, "dpseOut", dpse)?;
    let a = attn(&q.view, &k.view, &v.view)?;
    check_stats(F, &a, &m.view, &s.view)?;
    check_empty(F, "softmaxIn", si)?;
    check_empty(F, "dpseOut", tp)?;
    for (what, t, like) in [
        ("dy", g, q),
        ("attentionIn", o, q),
        ("dqOut", tq, q),
        ("dkOut", tk, k),
        ("dvOut", tv, v),
    ] {
        check_dims(F, what, &t.view.dims, &like.view.dims)?;
    }
    let [qv, kv, vv, gv, mv, sv, ov, dqv, dkv, dvv] = views([q, k, v, g, m, s, o, tq, tk, tv]);
    plan(move || {
        let (d, sk) = (a.d as usize, a.sk as usize);
        for b in 0..a.b {
            for n in 0..a.n {
                let mut dkk = vec![0f64; sk * d];
                let mut dvs = vec![0f64; sk * d];
                for i in 0..a.sq {
                    let sc = scores(&a, &qv, &kv, b, n, i);
                    let (mx, sum) = (mv.get(&[b, n, i, 0]) as f64, sv.get(&[b, n, i, 0]) as f64);
                    let p: Vec<f64> = sc.iter().map(|x| (x - mx).exp() / sum).collect();
                    let (go, oi) = (row(&gv, b, n, i, a.d), row(&ov, b, n, i, a.d));
                    let di = dot(&go, &oi);
                    let qi = row(&qv, b, n, i, a.d);
                    let mut dqi = vec![0f64; d];
                    for j in 0..sk {
                        let (kj, vj) = (row(&kv, b, n, j as i64, a.d), row(&vv, b, n, j as i64, a.d));
                        let ds = p[j] * (dot(&go, &vj) - di);
                        for c in 0..d {
                            dvs[j * d + c] += p[j] * go[c];
                            dqi[c] += a.scale * ds * kj[c];
                            dkk[j * d + c] += a.scale * ds * qi[c];
                        }
                    }
                    for (c, &g) in dqi.iter().enumerate() {
                        dqv.set(&[b, n, i, c as i64], g as f32);
                    }
                }
                for j in 0..sk {
                    for c in 0..d {
                        dkv.set(&[b, n, j as i64, c as i64], dkk[j * d + c] as f32);
                        dvv.set(&[b, n, j as i64, c as i64], dvs[j * d + c] as f32);
                    }
                }
            }
        }
    })
});
