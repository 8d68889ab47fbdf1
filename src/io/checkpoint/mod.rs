//! Checkpoint I/O: PyTorch `.pth` (zip + restricted pickle), safetensors, and
//! the MedSAM → SAM checkpoint conversion.
//!
//! Nothing in this module executes code from a checkpoint: the unpickler only
//! understands a fixed allowlist of globals and rejects everything else with an
//! error naming the offending `module.name`.

mod pickle;
pub mod pth;
pub mod safetensors;

use std::fmt;
use std::path::{Path, PathBuf};

pub use pth::{load_pth, load_pth_with_limits, save_pth, Limits};
pub use safetensors::{load_safetensors, save_safetensors};

/// Errors of checkpoint reading, writing and conversion. Every variant names
/// the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable zip archive (truncated or corrupt?): {msg}")]
    Zip { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: pickle error at byte {pos} of data.pkl: {msg}")]
    Pickle {
        path: PathBuf,
        pos: usize,
        msg: String,
    },
    #[error(
        "{path}: refusing to load global `{name}` (not in the allowlist of tensor/container types)"
    )]
    ForbiddenGlobal { path: PathBuf, name: String },
    #[error("{path}: field `{field}`: {msg}")]
    Field {
        path: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{path}: key `{key}` is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: safetensors error: {msg}")]
    Safetensors { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

crate::error::wrap_into_error!(CheckpointError);

impl CheckpointError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        CheckpointError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn field(path: &Path, field: impl Into<String>, msg: impl Into<String>) -> Self {
        CheckpointError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// Element types a torch storage can hold (the subset this crate supports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The torch legacy storage class name (`FloatStorage`, ...).
    pub fn torch_storage_name(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F64 => "DoubleStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    /// Inverse of [`DType::torch_storage_name`].
    pub fn from_torch_storage_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// A dense tensor: contiguous (row-major), little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Error of [`TensorData::new`]: byte length does not match shape × dtype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tensor of dtype {dtype} and shape {shape:?} needs {expected} bytes, got {got}")]
pub struct TensorSizeError {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub expected: usize,
    pub got: usize,
}

impl TensorData {
    /// Checked constructor.
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> std::result::Result<Self, TensorSizeError> {
        let expected = shape.iter().product::<usize>() * dtype.size();
        if expected != bytes.len() {
            return Err(TensorSizeError {
                dtype,
                shape,
                expected,
                got: bytes.len(),
            });
        }
        Ok(TensorData {
            dtype,
            shape,
            bytes,
        })
    }

    /// An f32 tensor from values (panics if `data.len()` != product of `shape`).
    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "TensorData::from_f32: shape {shape:?} does not match {} values",
            data.len()
        );
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        TensorData {
            dtype: DType::F32,
            shape,
            bytes,
        }
    }

    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values converted to f32 (f16/bf16 via `half`, integers and bools cast).
    /// Fails only if the byte length does not match the shape.
    pub fn to_f32(&self) -> std::result::Result<Vec<f32>, TensorSizeError> {
        let n = self.numel();
        let es = self.dtype.size();
        if self.bytes.len() != n * es {
            return Err(TensorSizeError {
                dtype: self.dtype,
                shape: self.shape.clone(),
                expected: n * es,
                got: self.bytes.len(),
            });
        }
        let b = &self.bytes;
        let out = match self.dtype {
            // A plain copy on little-endian hosts (the bytes are little-endian f32s).
            DType::F32 if cfg!(target_endian = "little") => {
                let mut out = vec![0.0f32; n];
                bytemuck::cast_slice_mut::<f32, u8>(&mut out).copy_from_slice(b);
                out
            }
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
                .collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as f32).collect(),
            DType::U8 => b.iter().map(|&x| x as f32).collect(),
            DType::Bool => b.iter().map(|&x| if x != 0 { 1.0 } else { 0.0 }).collect(),
        };
        Ok(out)
    }
}

/// A decoded pickle value (the subset torch checkpoints use).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Insertion ordered (both `dict` and `collections.OrderedDict`).
    Dict(Vec<(Value, Value)>),
    Tensor(TensorData),
}

impl Value {
    /// Entry of a dict under a string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.iter().find_map(|(k, v)| match k {
            Value::Str(s) if s == key => Some(v),
            _ => None,
        })
    }

    /// Entry of a dict under an integer key (e.g. optimizer `state[0]`).
    pub fn get_int(&self, key: i64) -> Option<&Value> {
        self.as_dict()?.iter().find_map(|(k, v)| match k {
            Value::Int(i) if *i == key => Some(v),
            _ => None,
        })
    }

    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Items of a list or a tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&TensorData> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Float or int as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// A dict with string keys in the given order.
    pub fn str_dict<K: Into<String>>(items: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Dict(
            items
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
        )
    }

    /// A state dict value from `(name, tensor)` pairs.
    pub fn from_state_dict(sd: Vec<(String, TensorData)>) -> Value {
        Value::Dict(
            sd.into_iter()
                .map(|(k, t)| (Value::Str(k), Value::Tensor(t)))
                .collect(),
        )
    }

    /// Short type name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Prefix added to parameter names by `DistributedDataParallel`.
pub const DDP_PREFIX: &str = "module.";

/// Extracts the model state dict from a loaded checkpoint.
///
/// Accepts a bare state dict (dict of name → tensor, e.g. `sam_vit_b_01ec64.pth`
/// and `medsam_vit_b.pth`) or a training checkpoint whose `"model"` (or
/// `"state_dict"`) entry is one. A leading `module.` (DDP) is stripped from
/// every key. Order is preserved.
pub fn state_dict_from(value: &Value) -> Result<Vec<(String, TensorData)>> {
    state_dict_from_named(value, Path::new("<checkpoint>"))
}

/// [`state_dict_from`] with the file name used in errors.
pub fn state_dict_from_named(value: &Value, path: &Path) -> Result<Vec<(String, TensorData)>> {
    Ok(state_dict_refs(value, path)?
        .into_iter()
        .map(|(k, t)| (k, t.clone()))
        .collect())
}

/// [`state_dict_from_named`] borrowing the tensors from `value` (no copy of their bytes).
pub fn state_dict_refs<'v>(value: &'v Value, path: &Path) -> Result<Vec<(String, &'v TensorData)>> {
    let top = value.as_dict().ok_or_else(|| {
        CheckpointError::format(
            path,
            format!(
                "checkpoint is a {}, expected a dict (state dict or training checkpoint)",
                value.type_name()
            ),
        )
    })?;
    let (dict, field_prefix) = if let Some(m) = value.get("model") {
        (m, "model.")
    } else if let Some(m) = value.get("state_dict") {
        (m, "state_dict.")
    } else {
        (value, "")
    };
    let items = if field_prefix.is_empty() {
        top
    } else {
        dict.as_dict().ok_or_else(|| {
            CheckpointError::field(
                path,
                field_prefix.trim_end_matches('.'),
                format!("expected a dict of tensors, found {}", dict.type_name()),
            )
        })?
    };
    let mut out = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    // An error about the entry `key` of the state dict.
    let entry_err =
        |key: &str, msg: String| CheckpointError::field(path, format!("{field_prefix}{key}"), msg);
    for (k, v) in items {
        let key = k.as_str().ok_or_else(|| {
            let msg = format!("state dict key is a {}, expected str", k.type_name());
            entry_err("<key>", msg)
        })?;
        let t = v
            .as_tensor()
            .ok_or_else(|| entry_err(key, format!("expected a tensor, found {}", v.type_name())))?;
        let name = key.strip_prefix(DDP_PREFIX).unwrap_or(key).to_string();
        if !seen.insert(name.clone()) {
            let msg = format!("duplicate parameter `{name}` after stripping `{DDP_PREFIX}`");
            return Err(entry_err(key, msg));
        }
        out.push((name, t));
    }
    Ok(out)
}
