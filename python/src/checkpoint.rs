//! `load_checkpoint` / `save_checkpoint`: PyTorch `.pth` files (read without executing pickle
//! code: only tensors and plain containers) and safetensors, as Python objects with numpy arrays
//! for tensors. float16/bfloat16 tensors load as float32 (numpy has no bfloat16).

use crate::{ckpt_to_py, value_err};
use medsam::io::checkpoint::{DType, TensorData, Value};
use numpy::{
    Element, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::path::PathBuf;

fn le_array<'py, T: Element, const N: usize>(
    py: Python<'py>,
    t: &TensorData,
    f: impl Fn([u8; N]) -> T,
) -> PyResult<Bound<'py, PyAny>> {
    let v: Vec<T> = t
        .bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk of N bytes")))
        .collect();
    Ok(PyArray1::from_vec(py, v)
        .reshape(t.shape.clone())?
        .into_any())
}

fn tensor_to_py<'py>(py: Python<'py>, t: &TensorData) -> PyResult<Bound<'py, PyAny>> {
    match t.dtype {
        DType::F32 => le_array(py, t, f32::from_le_bytes),
        DType::F64 => le_array(py, t, f64::from_le_bytes),
        DType::I64 => le_array(py, t, i64::from_le_bytes),
        DType::I32 => le_array(py, t, i32::from_le_bytes),
        DType::I16 => le_array(py, t, i16::from_le_bytes),
        DType::I8 => le_array(py, t, |b: [u8; 1]| b[0] as i8),
        DType::U8 => le_array(py, t, |b: [u8; 1]| b[0]),
        DType::Bool => le_array(py, t, |b: [u8; 1]| b[0] != 0),
        DType::F16 | DType::BF16 => {
            let v = t.to_f32().map_err(|e| value_err(e.to_string()))?;
            Ok(PyArray1::from_vec(py, v)
                .reshape(t.shape.clone())?
                .into_any())
        }
    }
}

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::None => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::List(items) => {
            let l = PyList::empty(py);
            for i in items {
                l.append(value_to_py(py, i)?)?;
            }
            l.into_any()
        }
        Value::Tuple(items) => {
            let v = items
                .iter()
                .map(|i| value_to_py(py, i))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, v)?.into_any()
        }
        Value::Dict(items) => {
            let d = PyDict::new(py);
            for (k, v) in items {
                d.set_item(value_to_py(py, k)?, value_to_py(py, v)?)?;
            }
            d.into_any()
        }
        Value::Tensor(t) => tensor_to_py(py, t)?,
    })
}

fn array_data<T: Element + Copy, const N: usize>(
    a: &Bound<'_, PyArrayDyn<T>>,
    dtype: DType,
    to_le: impl Fn(T) -> [u8; N],
) -> PyResult<TensorData> {
    let r: PyReadonlyArrayDyn<'_, T> = a.try_readonly()?;
    let shape = r.shape().to_vec();
    let vals = crate::image::c_order(&r);
    let bytes = vals.iter().flat_map(|&x| to_le(x)).collect();
    TensorData::new(dtype, shape, bytes).map_err(|e| value_err(e.to_string()))
}

fn array_to_tensor(obj: &Bound<'_, PyAny>, path: &str) -> PyResult<Option<TensorData>> {
    macro_rules! try_as {
        ($t:ty, $dt:expr, $f:expr) => {
            if let Ok(a) = obj.downcast::<PyArrayDyn<$t>>() {
                return array_data(a, $dt, $f).map(Some);
            }
        };
    }
    try_as!(f32, DType::F32, f32::to_le_bytes);
    try_as!(f64, DType::F64, f64::to_le_bytes);
    try_as!(i64, DType::I64, i64::to_le_bytes);
    try_as!(i32, DType::I32, i32::to_le_bytes);
    try_as!(i16, DType::I16, i16::to_le_bytes);
    try_as!(i8, DType::I8, i8::to_le_bytes);
    try_as!(u8, DType::U8, u8::to_le_bytes);
    try_as!(bool, DType::Bool, |b: bool| [b as u8]);
    if obj.hasattr("__array_interface__")? {
        let dt = obj.getattr("dtype")?.str()?.to_string();
        return Err(value_err(format!(
            "{path}: arrays of dtype {dt} cannot be saved (float32/64, int8/16/32/64, uint8, bool)"
        )));
    }
    Ok(None)
}

fn py_to_value(obj: &Bound<'_, PyAny>, path: &str, depth: usize) -> PyResult<Value> {
    if depth > 64 {
        return Err(value_err(format!("{path}: nested more than 64 levels")));
    }
    if obj.is_none() {
        return Ok(Value::None);
    }
    if let Ok(b) = obj.downcast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        return Ok(Value::Int(obj.extract()?));
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(obj.extract()?));
    }
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(Value::Str(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if let Some(t) = array_to_tensor(obj, path)? {
        return Ok(Value::Tensor(t));
    }
    // A torch tensor (when torch is there): through numpy.
    if obj.hasattr("detach")? && obj.hasattr("numpy")? {
        let a = obj
            .call_method0("detach")?
            .call_method0("cpu")?
            .call_method0("numpy")?;
        return py_to_value(&a, path, depth + 1);
    }
    // numpy scalars (np.int64, np.float32, ...).
    if obj.hasattr("item")? && obj.hasattr("dtype")? {
        return py_to_value(&obj.call_method0("item")?, path, depth + 1);
    }
    if let Ok(d) = obj.downcast::<PyDict>() {
        let mut items = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = py_to_value(&k, path, depth + 1)?;
            let sub = format!("{path}[{}]", k.repr()?);
            items.push((key, py_to_value(&v, &sub, depth + 1)?));
        }
        return Ok(Value::Dict(items));
    }
    let items = |seq: &Bound<'_, PyAny>| -> PyResult<Vec<Value>> {
        seq.try_iter()?
            .enumerate()
            .map(|(i, v)| py_to_value(&v?, &format!("{path}[{i}]"), depth + 1))
            .collect()
    };
    if obj.downcast::<PyList>().is_ok() {
        return items(obj).map(Value::List);
    }
    if obj.downcast::<PyTuple>().is_ok() {
        return items(obj).map(Value::Tuple);
    }
    Err(value_err(format!(
        "{path}: a {} cannot be saved (None, bool, int, float, str, bytes, list, tuple, dict, numpy array)",
        obj.get_type().name()?
    )))
}

fn is_safetensors(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Reads a `.pth` (torch zip; no code is executed) or `.safetensors` file: dicts, lists, tuples,
/// scalars and numpy arrays for tensors.
#[pyfunction]
fn load_checkpoint<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    if !path.is_file() {
        return Err(crate::not_found_err(format!(
            "{}: checkpoint not found",
            path.display()
        )));
    }
    let value = py
        .allow_threads(|| {
            if is_safetensors(&path) {
                medsam::io::checkpoint::load_safetensors(&path).map(Value::from_state_dict)
            } else {
                medsam::io::checkpoint::load_pth(&path)
            }
        })
        .map_err(ckpt_to_py)?;
    value_to_py(py, &value)
}

/// Writes `obj` for `torch.load` (`.pth`, torch's zip format) or, for a flat dict of arrays, a
/// `.safetensors` file; atomically (temporary file, then rename).
#[pyfunction]
fn save_checkpoint(py: Python<'_>, path: PathBuf, obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let value = py_to_value(obj, "obj", 0)?;
    if is_safetensors(&path) {
        let items = value
            .as_dict()
            .ok_or_else(|| value_err("obj: a .safetensors file holds a dict of arrays"))?;
        let tensors = items
            .iter()
            .map(|(k, v)| match (k.as_str(), v.as_tensor()) {
                (Some(k), Some(t)) => Ok((k.to_string(), t.clone())),
                _ => Err(value_err(format!(
                    "obj: a .safetensors file holds str keys and arrays only (found {} → {})",
                    k.type_name(),
                    v.type_name()
                ))),
            })
            .collect::<PyResult<Vec<_>>>()?;
        return py
            .allow_threads(|| medsam::io::checkpoint::save_safetensors(&path, &tensors))
            .map_err(ckpt_to_py);
    }
    py.allow_threads(|| medsam::io::checkpoint::save_pth(&path, &value))
        .map_err(ckpt_to_py)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(save_checkpoint, m)?)?;
    Ok(())
}
