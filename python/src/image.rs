//! numpy arrays in: dtype dispatch, borrowing (C-contiguous) or copying (any other layout), and
//! the checks every image input gets (rank, channels, value range) with messages naming the
//! argument.

use crate::value_err;
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::borrow::Cow;

/// A numpy array of one of the element types the bindings accept.
pub(crate) enum ArrayIn<'py> {
    U8(PyReadonlyArrayDyn<'py, u8>),
    Bool(PyReadonlyArrayDyn<'py, bool>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    I32(PyReadonlyArrayDyn<'py, i32>),
}

/// The array's elements in C order: borrowed when contiguous, else copied.
pub(crate) fn c_order<'a, T: Element + Clone>(a: &'a PyReadonlyArrayDyn<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().cloned().collect()),
    }
}

fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| obj.get_type().name().map_or("?".into(), |n| n.to_string()))
}

impl<'py> ArrayIn<'py> {
    /// `obj` as one of the accepted arrays; `what` names the argument in errors.
    pub(crate) fn extract(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        macro_rules! try_as {
            ($t:ty, $v:ident) => {
                if let Ok(a) = obj.downcast::<PyArrayDyn<$t>>() {
                    return Ok(ArrayIn::$v(a.try_readonly()?));
                }
            };
        }
        if !obj.hasattr("__array_interface__")? {
            return Err(value_err(format!(
                "{what}: expected a numpy array, found {}",
                obj.get_type().name()?
            )));
        }
        try_as!(u8, U8);
        try_as!(bool, Bool);
        try_as!(f32, F32);
        try_as!(f64, F64);
        try_as!(i64, I64);
        try_as!(i32, I32);
        Err(value_err(format!(
            "{what}: unsupported dtype {} (expected uint8, bool, int32, int64, float32 or float64)",
            dtype_name(obj)
        )))
    }

    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            ArrayIn::U8(a) => a.shape().to_vec(),
            ArrayIn::Bool(a) => a.shape().to_vec(),
            ArrayIn::F32(a) => a.shape().to_vec(),
            ArrayIn::F64(a) => a.shape().to_vec(),
            ArrayIn::I64(a) => a.shape().to_vec(),
            ArrayIn::I32(a) => a.shape().to_vec(),
        }
    }

    pub(crate) fn dtype(&self) -> &'static str {
        match self {
            ArrayIn::U8(_) => "uint8",
            ArrayIn::Bool(_) => "bool",
            ArrayIn::F32(_) => "float32",
            ArrayIn::F64(_) => "float64",
            ArrayIn::I64(_) => "int64",
            ArrayIn::I32(_) => "int32",
        }
    }

    /// A borrowed view usable with the GIL released.
    pub(crate) fn view(&self) -> View<'_> {
        match self {
            ArrayIn::U8(a) => View::U8(c_order(a)),
            ArrayIn::Bool(a) => View::Bool(c_order(a)),
            ArrayIn::F32(a) => View::F32(c_order(a)),
            ArrayIn::F64(a) => View::F64(c_order(a)),
            ArrayIn::I64(a) => View::I64(c_order(a)),
            ArrayIn::I32(a) => View::I32(c_order(a)),
        }
    }
}

/// An array's elements (C order), `Send` so compute can run without the GIL.
pub(crate) enum View<'a> {
    U8(Cow<'a, [u8]>),
    Bool(Cow<'a, [bool]>),
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
    I64(Cow<'a, [i64]>),
    I32(Cow<'a, [i32]>),
}

impl View<'_> {
    /// Every element as f64.
    pub(crate) fn to_f64(&self) -> Vec<f64> {
        match self {
            View::U8(v) => v.iter().map(|&x| x as f64).collect(),
            View::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
            View::F32(v) => v.iter().map(|&x| x as f64).collect(),
            View::F64(v) => v.to_vec(),
            View::I64(v) => v.iter().map(|&x| x as f64).collect(),
            View::I32(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Non-zero elements as `true` (masks).
    pub(crate) fn to_bool(&self) -> Vec<bool> {
        match self {
            View::U8(v) => v.iter().map(|&x| x != 0).collect(),
            View::Bool(v) => v.to_vec(),
            View::F32(v) => v.iter().map(|&x| x != 0.0).collect(),
            View::F64(v) => v.iter().map(|&x| x != 0.0).collect(),
            View::I64(v) => v.iter().map(|&x| x != 0).collect(),
            View::I32(v) => v.iter().map(|&x| x != 0).collect(),
        }
    }
}

/// A checked image: `h × w × c` (c = 1 or 3), uint8 or float in [0, 1].
pub(crate) struct ImageIn<'py> {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub array: ArrayIn<'py>,
}

impl<'py> ImageIn<'py> {
    /// Checks rank, channels and dtype (the value range of floats is checked by [`Self::pixels`]).
    pub(crate) fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array = ArrayIn::extract(obj, "image")?;
        let shape = array.shape();
        let (h, w, c) = match shape.as_slice() {
            &[h, w] => (h, w, 1),
            &[h, w, 3] => (h, w, 3),
            &[h, w, 1] => (h, w, 1),
            s => {
                return Err(value_err(format!(
                    "image: expected shape (H, W, 3) or (H, W), found {s:?}"
                )))
            }
        };
        if h == 0 || w == 0 {
            return Err(value_err(format!("image: has no pixels (shape {shape:?})")));
        }
        if !matches!(array, ArrayIn::U8(_) | ArrayIn::F32(_) | ArrayIn::F64(_)) {
            return Err(value_err(format!(
                "image: dtype {} is not supported (expected uint8, or float32/float64 in [0, 1])",
                array.dtype()
            )));
        }
        Ok(ImageIn { h, w, c, array })
    }
}

/// An image's pixels without the GIL: uint8 as read, floats checked to lie in [0, 1].
pub(crate) struct Pixels<'a> {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub view: View<'a>,
}

impl Pixels<'_> {
    pub(crate) fn is_float(&self) -> bool {
        !matches!(self.view, View::U8(_))
    }

    /// Errors unless every float value is finite and in [0, 1].
    pub(crate) fn check_range(&self) -> Result<(), String> {
        let (lo, hi) = match &self.view {
            View::F32(v) => v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x as f64), b.max(x as f64))
                }),
            View::F64(v) => v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                }),
            _ => return Ok(()),
        };
        let has_nan = match &self.view {
            View::F32(v) => v.iter().any(|x| x.is_nan()),
            View::F64(v) => v.iter().any(|x| x.is_nan()),
            _ => false,
        };
        if has_nan || lo < 0.0 || hi > 1.0 {
            return Err(format!(
                "image: float pixels must lie in [0, 1] (found min {lo}, max {hi}{}); pass uint8 for 0-255 data",
                if has_nan { ", NaN" } else { "" }
            ));
        }
        Ok(())
    }

    /// `h × w × 3` values as f64 (grey repeated), in the input's own scale.
    pub(crate) fn hwc3_f64(&self) -> Vec<f64> {
        let v = self.view.to_f64();
        if self.c == 3 {
            v
        } else {
            v.iter().flat_map(|&x| [x, x, x]).collect()
        }
    }

    /// uint8 pixels `h × w × c`: uint8 as given, floats in [0, 1] scaled by 255 and rounded.
    pub(crate) fn to_u8(&self) -> Vec<u8> {
        match &self.view {
            View::U8(v) => v.to_vec(),
            other => other
                .to_f64()
                .iter()
                .map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8)
                .collect(),
        }
    }
}

impl<'py> ImageIn<'py> {
    pub(crate) fn pixels(&self) -> Pixels<'_> {
        Pixels {
            h: self.h,
            w: self.w,
            c: self.c,
            view: self.array.view(),
        }
    }
}

impl<'a> Pixels<'a> {
    /// Channels reversed (BGR → RGB, SamPredictor's `image_format="BGR"`); grey is unchanged.
    pub(crate) fn reversed_channels(self) -> Pixels<'a> {
        fn rev<T: Clone>(v: &[T]) -> Vec<T> {
            v.chunks_exact(3)
                .flat_map(|p| [p[2].clone(), p[1].clone(), p[0].clone()])
                .collect()
        }
        if self.c != 3 {
            return self;
        }
        let view = match &self.view {
            View::U8(v) => View::U8(Cow::Owned(rev(v))),
            View::Bool(v) => View::Bool(Cow::Owned(rev(v))),
            View::F32(v) => View::F32(Cow::Owned(rev(v))),
            View::F64(v) => View::F64(Cow::Owned(rev(v))),
            View::I64(v) => View::I64(Cow::Owned(rev(v))),
            View::I32(v) => View::I32(Cow::Owned(rev(v))),
        };
        Pixels {
            h: self.h,
            w: self.w,
            c: self.c,
            view,
        }
    }
}
