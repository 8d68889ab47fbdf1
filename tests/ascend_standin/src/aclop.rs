//! Stand-in aclop: descriptors, attributes and `aclopCompileAndExecute` for MatMulV2,
//! LayerNorm and SoftmaxV2 (op types / attribute names as in torch_npu's op-plugin).

use super::aclnn::{layer_norm_rows, matmul_views, softmax_view, View};
use super::*;

pub struct TensorDesc {
    dtype: i32,
    dims: Vec<i64>,
}
pub struct DataBuffer {
    addr: usize,
    size: usize,
}
#[derive(Clone, Debug)]
enum AttrValue {
    Bool(bool),
    Int(i64),
    Float(f32),
    Str(#[allow(dead_code)] String),
    ListInt(Vec<i64>),
}
pub struct OpAttr(HashMap<String, AttrValue>);

#[no_mangle]
pub unsafe extern "C" fn aclCreateTensorDesc(
    dtype: i32,
    n: i32,
    dims: *const i64,
    _format: i32,
) -> *mut TensorDesc {
    let dims = if n <= 0 || dims.is_null() {
        vec![]
    } else {
        std::slice::from_raw_parts(dims, n as usize).to_vec()
    };
    Box::into_raw(Box::new(TensorDesc { dtype, dims }))
}
#[no_mangle]
pub unsafe extern "C" fn aclDestroyTensorDesc(d: *const TensorDesc) {
    if !d.is_null() {
        drop(Box::from_raw(d as *mut TensorDesc));
    }
}
#[no_mangle]
pub unsafe extern "C" fn aclCreateDataBuffer(data: *mut c_void, size: usize) -> *mut DataBuffer {
    Box::into_raw(Box::new(DataBuffer {
        addr: data as usize,
        size,
    }))
}
#[no_mangle]
pub unsafe extern "C" fn aclDestroyDataBuffer(b: *const DataBuffer) -> i32 {
    if !b.is_null() {
        drop(Box::from_raw(b as *mut DataBuffer));
    }
    OK
}
#[no_mangle]
pub extern "C" fn aclopCreateAttr() -> *mut OpAttr {
    Box::into_raw(Box::new(OpAttr(HashMap::new())))
}
#[no_mangle]
pub unsafe extern "C" fn aclopDestroyAttr(a: *const OpAttr) {
    if !a.is_null() {
        drop(Box::from_raw(a as *mut OpAttr));
    }
}
unsafe fn set(a: *mut OpAttr, name: *const c_char, v: AttrValue) -> i32 {
    if a.is_null() || name.is_null() {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            "aclopSetAttr*: NULL attr or name".into(),
        );
    }
    (*a).0
        .insert(CStr::from_ptr(name).to_string_lossy().into_owned(), v);
    OK
}
#[no_mangle]
pub unsafe extern "C" fn aclopSetAttrBool(a: *mut OpAttr, name: *const c_char, v: u8) -> i32 {
    set(a, name, AttrValue::Bool(v != 0))
}
#[no_mangle]
pub unsafe extern "C" fn aclopSetAttrInt(a: *mut OpAttr, name: *const c_char, v: i64) -> i32 {
    set(a, name, AttrValue::Int(v))
}
#[no_mangle]
pub unsafe extern "C" fn aclopSetAttrFloat(a: *mut OpAttr, name: *const c_char, v: f32) -> i32 {
    set(a, name, AttrValue::Float(v))
}
#[no_mangle]
pub unsafe extern "C" fn aclopSetAttrString(
    a: *mut OpAttr,
    name: *const c_char,
    v: *const c_char,
) -> i32 {
    if v.is_null() {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            "aclopSetAttrString: NULL value".into(),
        );
    }
    set(
        a,
        name,
        AttrValue::Str(CStr::from_ptr(v).to_string_lossy().into_owned()),
    )
}
#[no_mangle]
pub unsafe extern "C" fn aclopSetAttrListInt(
    a: *mut OpAttr,
    name: *const c_char,
    n: i32,
    v: *const i64,
) -> i32 {
    let v = if n <= 0 {
        vec![]
    } else {
        std::slice::from_raw_parts(v, n as usize).to_vec()
    };
    set(a, name, AttrValue::ListInt(v))
}

struct Arg {
    dims: Vec<i64>,
    view: View,
}

fn op_fail(op: &str, msg: String) -> i32 {
    fail(
        ACL_ERROR_INVALID_PARAM,
        format!("aclopCompileAndExecute({op}): {msg}"),
    )
}

unsafe fn args(
    op: &str,
    n: i32,
    descs: *const *const TensorDesc,
    bufs: *const *const DataBuffer,
) -> Result<Vec<Option<Arg>>, i32> {
    let mut v = Vec::new();
    for i in 0..n.max(0) as usize {
        let d = &**descs.add(i);
        let b = &**bufs.add(i);
        if d.dtype == ACL_DT_UNDEFINED {
            v.push(None); // absent optional input
            continue;
        }
        if d.dtype != ACL_FLOAT {
            return Err(op_fail(
                op,
                format!("tensor {i}: dtype {} (stand-in: FLOAT only)", d.dtype),
            ));
        }
        let bytes = d.dims.iter().product::<i64>() as usize * 4;
        if b.size < bytes || (bytes > 0 && !is_device(b.addr, bytes)) {
            return Err(op_fail(
                op,
                format!(
                    "tensor {i}: buffer of {} bytes at {:#x} is not {bytes} bytes of device memory",
                    b.size, b.addr
                ),
            ));
        }
        v.push(Some(Arg {
            dims: d.dims.clone(),
            view: View::contiguous(&d.dims, b.addr),
        }));
    }
    Ok(v)
}

fn attrs_known(op: &str, a: &OpAttr, known: &[&str]) -> Result<(), i32> {
    for k in a.0.keys() {
        if !known.contains(&k.as_str()) {
            return Err(op_fail(
                op,
                format!("unknown attribute {k:?} (known: {known:?})"),
            ));
        }
    }
    Ok(())
}

fn attr_bool(a: &OpAttr, k: &str) -> bool {
    matches!(a.0.get(k), Some(AttrValue::Bool(true)))
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclopCompileAndExecute(
    op_type: *const c_char,
    n_in: i32,
    in_desc: *const *const TensorDesc,
    in_buf: *const *const DataBuffer,
    n_out: i32,
    out_desc: *const *const TensorDesc,
    out_buf: *const *const DataBuffer,
    attr: *const OpAttr,
    _engine: i32,
    _compile: i32,
    _op_path: *const c_char,
    stream: *mut c_void,
) -> i32 {
    if op_type.is_null() || attr.is_null() {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            "aclopCompileAndExecute: NULL opType/attr".into(),
        );
    }
    let op = CStr::from_ptr(op_type).to_string_lossy().into_owned();
    let ins = match args(&op, n_in, in_desc, in_buf) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let outs = match args(&op, n_out, out_desc, out_buf) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let a = &*attr;
    let job: Job = match op.as_str() {
        "MatMulV2" => {
            if let Err(e) = attrs_known(&op, a, &["transpose_x1", "transpose_x2", "offset_x"]) {
                return e;
            }
            let (Some(Some(x1)), Some(Some(x2)), Some(Some(y))) =
                (ins.first(), ins.get(1), outs.first())
            else {
                return op_fail(&op, "needs x1, x2 and y".into());
            };
            if ins.iter().skip(2).any(|i| i.is_some()) || x1.dims.len() != 2 || x2.dims.len() != 2 {
                return op_fail(&op, "stand-in: 2-D x1, x2, no bias".into());
            }
            let (mut v1, mut v2) = (x1.view.clone(), x2.view.clone());
            for (v, t) in [
                (&mut v1, attr_bool(a, "transpose_x1")),
                (&mut v2, attr_bool(a, "transpose_x2")),
            ] {
                if t {
                    v.dims.swap(0, 1);
                    v.strides.swap(0, 1);
                }
            }
            if v1.dims[1] != v2.dims[0] || y.dims != [v1.dims[0], v2.dims[1]] {
                return op_fail(
                    &op,
                    format!(
                        "shape mismatch {:?} @ {:?} -> {:?}",
                        v1.dims, v2.dims, y.dims
                    ),
                );
            }
            let yv = y.view.clone();
            Box::new(move || {
                let mut acc = vec![0f32; yv.numel()];
                matmul_views(&v1, &v2, &yv, acc.as_mut_ptr() as usize);
                Ok(())
            })
        }
        "LayerNorm" => {
            if let Err(e) =
                attrs_known(&op, a, &["begin_norm_axis", "begin_params_axis", "epsilon"])
            {
                return e;
            }
            let (
                Some(AttrValue::Int(axis)),
                Some(AttrValue::Int(paxis)),
                Some(AttrValue::Float(eps)),
            ) = (
                a.0.get("begin_norm_axis"),
                a.0.get("begin_params_axis"),
                a.0.get("epsilon"),
            )
            else {
                return op_fail(
                    &op,
                    "needs begin_norm_axis, begin_params_axis (int) and epsilon (float)".into(),
                );
            };
            let (Some(Some(x)), Some(Some(g)), Some(Some(b))) =
                (ins.first(), ins.get(1), ins.get(2))
            else {
                return op_fail(&op, "needs x, gamma, beta".into());
            };
            if outs.len() != 3 || outs.iter().any(|o| o.is_none()) {
                return op_fail(&op, "needs outputs y, mean, variance".into());
            }
            let r = x.dims.len() as i64;
            if *axis != *paxis || *axis < 0 || *axis >= r {
                return op_fail(&op, format!("stand-in: begin_norm_axis == begin_params_axis in [0, {r}), got {axis}/{paxis}"));
            }
            let ns = x.dims[*axis as usize..].to_vec();
            if g.dims != ns || b.dims != ns {
                return op_fail(
                    &op,
                    format!("gamma/beta {:?}/{:?} != {ns:?}", g.dims, b.dims),
                );
            }
            let row = ns.iter().product::<i64>() as usize;
            let (xv, gv, bv) = (x.view.clone(), g.view.clone(), b.view.clone());
            let outs: Vec<View> = outs.into_iter().map(|o| o.unwrap().view).collect();
            let n_stat = xv.numel() / row.max(1);
            if outs[0].dims != xv.dims || outs[1].numel() != n_stat || outs[2].numel() != n_stat {
                return op_fail(&op, "output shapes".into());
            }
            let eps = *eps as f64;
            Box::new(move || {
                let (y, m, v) =
                    layer_norm_rows(&xv.read(), row, Some(&gv.read()), Some(&bv.read()), eps);
                outs[0].write(&y);
                outs[1].write(&m);
                outs[2].write(&v);
                Ok(())
            })
        }
        "SoftmaxV2" => {
            if let Err(e) = attrs_known(&op, a, &["axes", "half_to_float"]) {
                return e;
            }
            let axes = match a.0.get("axes") {
                Some(AttrValue::ListInt(v)) if v.len() == 1 => v[0],
                None => -1,
                other => return op_fail(&op, format!("stand-in: one axis, got {other:?}")),
            };
            let (Some(Some(x)), Some(Some(y))) = (ins.first(), outs.first()) else {
                return op_fail(&op, "needs x and y".into());
            };
            let r = x.dims.len() as i64;
            let d = if axes < 0 { axes + r } else { axes };
            if d < 0 || d >= r || y.dims != x.dims {
                return op_fail(&op, format!("axis {axes} for {:?}", x.dims));
            }
            let (xv, yv) = (x.view.clone(), y.view.clone());
            Box::new(move || {
                softmax_view(&xv, d as usize, &yv);
                Ok(())
            })
        }
        _ => {
            return fail(
                ACL_ERROR_OP_NOT_FOUND,
                format!(
                    "aclopCompileAndExecute: op type {op:?} is not implemented by the stand-in"
                ),
            );
        }
    };
    enqueue(stream, job)
}
