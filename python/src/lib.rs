//! `medsam_rs._native`: the compiled half of the `medsam_rs` Python package (the package itself,
//! with its stubs, is medsam_rs/ beside this crate).
//!
//! Conventions for every binding here:
//! - compute runs with the GIL released (`py.allow_threads`); Python callbacks re-acquire it;
//! - numpy inputs are borrowed (`as_slice`) when C-contiguous and copied only otherwise;
//! - library errors keep their message and become `MedsamError` (base), `InvalidArgumentError`
//!   (also a `ValueError`) or `MedsamFileNotFoundError` (also a `FileNotFoundError`).

/// A progress event as the one-argument tuple `({"event": name, field: value, ...},)` a Python
/// callback receives: each listed variant's fields are bound by name and stored under it.
macro_rules! event_args {
    ($py:expr, $event:expr, $($enum:ident::$variant:ident $name:literal { $($field:ident),* }),+ $(,)?) => {{
        let d = pyo3::types::PyDict::new($py);
        match $event {
            $($enum::$variant { $($field),* } => {
                d.set_item("event", $name)?;
                $(d.set_item(stringify!($field), $field)?;)*
            })+
        }
        pyo3::types::PyTuple::new($py, [d])
    }};
}

mod checkpoint;
mod functions;
mod image;
mod predictor;
mod train;
mod video;

use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple, PyType};

pyo3::create_exception!(
    medsam_rs,
    MedsamError,
    PyException,
    "Base class of every error raised by medsam_rs."
);

static VALUE_ERROR: GILOnceCell<Py<PyType>> = GILOnceCell::new();
static NOT_FOUND: GILOnceCell<Py<PyType>> = GILOnceCell::new();

/// `type(name, (MedsamError, base), {...})`: a library error that is also the builtin Python
/// users catch (`except ValueError`).
fn subclass<'py>(
    py: Python<'py>,
    name: &str,
    base: Bound<'py, PyType>,
    doc: &str,
) -> PyResult<Py<PyType>> {
    let dict = PyDict::new(py);
    dict.set_item("__module__", "medsam_rs")?;
    dict.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, [py.get_type::<MedsamError>(), base])?;
    let t = py
        .get_type::<PyType>()
        .call1((name, bases, dict))?
        .downcast_into::<PyType>()?;
    Ok(t.unbind())
}

fn value_error_type(py: Python<'_>) -> &Py<PyType> {
    VALUE_ERROR.get(py).expect("module initialised")
}

fn not_found_type(py: Python<'_>) -> &Py<PyType> {
    NOT_FOUND.get(py).expect("module initialised")
}

/// A bad argument from the Python side (shape, dtype, range), as `InvalidArgumentError`.
pub(crate) fn value_err(msg: impl Into<String>) -> PyErr {
    Python::with_gil(|py| PyErr::from_type(value_error_type(py).bind(py).clone(), msg.into()))
}

/// A missing input file, as `MedsamFileNotFoundError`.
pub(crate) fn not_found_err(msg: impl Into<String>) -> PyErr {
    Python::with_gil(|py| PyErr::from_type(not_found_type(py).bind(py).clone(), msg.into()))
}

/// `MedsamFileNotFoundError` unless `path` (the argument `what`) is a directory.
pub(crate) fn require_dir(what: &str, path: &std::path::Path) -> PyResult<()> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(not_found_err(format!(
            "{what}: {} is not a directory",
            path.display()
        )))
    }
}

/// True when a library error means "this file does not exist".
fn is_not_found(e: &medsam::Error) -> bool {
    match e {
        medsam::Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        medsam::Error::File { path, detail } => {
            !path.exists() && (detail.contains("not found") || detail.contains("no such file"))
        }
        _ => false,
    }
}

/// A library error as the matching Python exception, with the library's message.
pub(crate) fn to_py(e: medsam::Error) -> PyErr {
    let msg = e.to_string();
    if is_not_found(&e) {
        return not_found_err(msg);
    }
    match e {
        medsam::Error::InvalidArgument { .. } | medsam::Error::Shape { .. } => value_err(msg),
        _ => MedsamError::new_err(msg),
    }
}

/// A checkpoint-module error (reading or writing files) as a Python exception.
pub(crate) fn ckpt_to_py(e: medsam::io::checkpoint::CheckpointError) -> PyErr {
    use medsam::io::checkpoint::CheckpointError as C;
    let msg = e.to_string();
    match &e {
        C::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => not_found_err(msg),
        _ => MedsamError::new_err(msg),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MedsamError", py.get_type::<MedsamError>())?;
    let subclasses = [
        (
            &VALUE_ERROR,
            "InvalidArgumentError",
            py.get_type::<PyValueError>(),
            "A bad argument: shape, dtype, range or option (also a ValueError).",
        ),
        (
            &NOT_FOUND,
            "MedsamFileNotFoundError",
            py.get_type::<PyFileNotFoundError>(),
            "An input file that does not exist (also a FileNotFoundError).",
        ),
    ];
    for (cell, name, base, doc) in subclasses {
        let t = subclass(py, name, base, doc)?;
        m.add(name, t.bind(py))?;
        // A second import (sub-interpreter, reload) keeps the first types.
        let _ = cell.set(py, t);
    }
    m.add_class::<predictor::Predictor>()?;
    m.add_class::<video::VideoPredictor>()?;
    m.add_class::<video::InferenceState>()?;
    functions::register(m)?;
    checkpoint::register(m)?;
    train::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
