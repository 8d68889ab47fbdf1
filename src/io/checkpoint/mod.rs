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
use std::sync::Arc;

use crate::backend::{HostBuf, MappedF32};

pub(crate) use pth::load_pth_f32;
pub use pth::{load_pth, load_pth_with_limits, save_pth, Limits};
pub(crate) use safetensors::load_safetensors_f32;
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
        let mut out = Vec::with_capacity(n);
        extend_f32(self.dtype, &self.bytes, &mut out);
        Ok(out)
    }
}

/// Appends `b` (little-endian elements of `dtype`; a trailing partial element is ignored)
/// converted to f32 to `out`, writing each value once (no zero-fill first): f16/bf16 via `half`,
/// f64 rounded, integers and bools cast.
pub(crate) fn extend_f32(dtype: DType, b: &[u8], out: &mut Vec<f32>) {
    match dtype {
        // A plain copy on little-endian hosts (the bytes are little-endian f32s).
        DType::F32 if cfg!(target_endian = "little") => {
            let n = b.len() / 4;
            out.reserve(n);
            let spare = &mut out.spare_capacity_mut()[..n];
            // SAFETY: `spare` is `n` writable f32 slots, `b` holds at least `4 n` bytes, the two
            // do not overlap (`out` owns its buffer), and every bit pattern is an f32, so after
            // the copy the first `n` spare slots are initialised.
            unsafe {
                std::ptr::copy_nonoverlapping(b.as_ptr(), spare.as_mut_ptr().cast::<u8>(), n * 4);
                out.set_len(out.len() + n);
            }
        }
        DType::F32 => out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::F16 => out.extend(
            b.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::BF16 => out.extend(
            b.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::F64 => out.extend(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32),
        ),
        DType::I64 => out.extend(
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32),
        ),
        DType::I32 => out.extend(
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32),
        ),
        DType::I16 => out.extend(
            b.chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32),
        ),
        DType::I8 => out.extend(b.iter().map(|&x| x as i8 as f32)),
        DType::U8 => out.extend(b.iter().map(|&x| x as f32)),
        DType::Bool => out.extend(b.iter().map(|&x| if x != 0 { 1.0 } else { 0.0 })),
    }
}

/// A tensor converted to f32 as it is read, with NaN/infinity looked for in the same pass: what
/// the model loaders read a checkpoint into ([`crate::models::load`]). Stored f32 tensors that
/// lie whole, aligned and uncompressed in a memory-mapped file are used in place (`data` is a
/// window into the mapping, no copy); the others are copied once from the file (or its mapping)
/// into the buffer the model keeps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct F32Tensor {
    /// The element type stored in the file (the reader's byte limits count its bytes).
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: HostBuf,
    /// Index of the first NaN or infinite value.
    pub first_non_finite: Option<usize>,
}

impl F32Tensor {
    /// An empty tensor of `shape` whose `numel` values are about to be appended.
    pub(crate) fn with_capacity(dtype: DType, shape: Vec<usize>, numel: usize) -> Self {
        F32Tensor {
            dtype,
            shape,
            data: HostBuf::Owned(prefaulted(numel)),
            first_non_finite: None,
        }
    }

    /// The f32 tensor of `shape` whose `numel` values are stored (little-endian) at byte
    /// `offset` of `map`, read in place and scanned for NaN/infinity; `None` when there is
    /// nothing to map or the window is out of bounds or not 4-byte aligned (then copy it).
    pub(crate) fn in_map(
        map: &Arc<memmap2::Mmap>,
        offset: usize,
        shape: &[usize],
        numel: usize,
    ) -> Option<Self> {
        if numel == 0 {
            return None;
        }
        let data = MappedF32::new(map.clone(), offset, numel)?;
        Some(F32Tensor {
            dtype: DType::F32,
            shape: shape.to_vec(),
            first_non_finite: first_non_finite_par(&data),
            data: HostBuf::Mapped(data),
        })
    }

    /// The tensor of `shape` whose elements are `bytes` (little-endian `dtype`); an error if
    /// their count does not match the shape.
    pub(crate) fn from_bytes(
        dtype: DType,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> std::result::Result<Self, TensorSizeError> {
        Self::from_bytes_in(None, dtype, shape, bytes)
    }

    /// [`F32Tensor::from_bytes`] of `bytes` that lie inside `map` when it is given: an f32 tensor
    /// is then used in place ([`F32Tensor::in_map`]) when it can be.
    pub(crate) fn from_bytes_in(
        map: Option<&Arc<memmap2::Mmap>>,
        dtype: DType,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> std::result::Result<Self, TensorSizeError> {
        // Checked: a wrapped product must not size the allocation.
        let n = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
        let expected = n.and_then(|n| n.checked_mul(dtype.size()));
        let Some(n) = n.filter(|_| expected == Some(bytes.len())) else {
            return Err(TensorSizeError {
                dtype,
                shape,
                expected: expected.unwrap_or(usize::MAX),
                got: bytes.len(),
            });
        };
        if let Some(map) = map.filter(|_| dtype == DType::F32) {
            let offset = (bytes.as_ptr() as usize).wrapping_sub(map.as_ptr() as usize);
            if let Some(t) = F32Tensor::in_map(map, offset, &shape, n) {
                return Ok(t);
            }
        }
        let mut t = F32Tensor::with_capacity(dtype, shape, n);
        t.extend(bytes);
        Ok(t)
    }

    /// Appends the values of `b` (little-endian `dtype` elements), looking for the first
    /// non-finite one while they are still in cache.
    pub(crate) fn extend(&mut self, b: &[u8]) {
        let dtype = self.dtype;
        let data = self.data.to_mut();
        // A multiple of every element size; small enough to stay in L2 between copy and scan.
        const CHUNK: usize = 64 << 10;
        for c in b.chunks(CHUNK) {
            let start = data.len();
            extend_f32(dtype, c, data);
            if self.first_non_finite.is_none() {
                self.first_non_finite = first_non_finite(&data[start..]).map(|i| start + i);
            }
        }
    }

    /// Bytes the tensor holds as stored in the file.
    pub(crate) fn stored_bytes(&self) -> usize {
        self.data.len() * self.dtype.size()
    }
}

/// Index of the first NaN or infinite value of `x`.
fn first_non_finite(x: &[f32]) -> Option<usize> {
    // An exponent of all ones is NaN or ±inf. A branch-free OR over the chunk (vectorised);
    // the search runs only when it found one.
    let any = x.iter().fold(0u32, |a, v| {
        a | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
    });
    if any == 0 {
        return None;
    }
    x.iter().position(|v| !v.is_finite())
}

/// [`first_non_finite`] of a large buffer split across threads (the first of the per-chunk
/// finds): a mapped tensor is scanned where it lies, with no copy to hide the scan behind.
fn first_non_finite_par(x: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 18;
    if x.len() <= CHUNK {
        return first_non_finite(x);
    }
    x.par_chunks(CHUNK)
        .enumerate()
        .filter_map(|(i, c)| first_non_finite(c).map(|j| i * CHUNK + j))
        .min()
}

/// An empty vector with room for `n` values, about to be written in full. On Linux, a large one
/// has its pages faulted in by one `madvise(MADV_POPULATE_WRITE)` call rather than one page
/// fault per page as it is written (a hint; contents unchanged, failures ignored).
fn prefaulted(n: usize) -> Vec<f32> {
    let v: Vec<f32> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    if n * 4 >= 1 << 20 {
        const MADV_POPULATE_WRITE: i32 = 23;
        const PAGE: usize = 4096;
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (v.as_ptr() as usize + n * 4) / PAGE * PAGE;
        if end > start {
            // SAFETY: the whole pages of the vector's own allocation; populating them for writing
            // leaves their (uninitialised, unread) contents as they are.
            unsafe {
                madvise(
                    start as *mut std::ffi::c_void,
                    end - start,
                    MADV_POPULATE_WRITE,
                );
            }
        }
    }
    v
}

/// A decoded pickle value (the subset torch checkpoints use).
pub type Value = Tree<TensorData>;

/// A decoded pickle value whose tensors are `T`s: [`Value`] (tensors as stored) — or, inside the
/// crate, tensors converted to f32 as they are read.
#[derive(Debug, Clone, PartialEq)]
pub enum Tree<T> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Tree<T>>),
    Tuple(Vec<Tree<T>>),
    /// Insertion ordered (both `dict` and `collections.OrderedDict`).
    Dict(Vec<(Tree<T>, Tree<T>)>),
    Tensor(T),
}

impl<T> Tree<T> {
    /// Entry of a dict under a string key.
    pub fn get(&self, key: &str) -> Option<&Tree<T>> {
        self.as_dict()?.iter().find_map(|(k, v)| match k {
            Tree::Str(s) if s == key => Some(v),
            _ => None,
        })
    }

    /// Entry of a dict under an integer key (e.g. optimizer `state[0]`).
    pub fn get_int(&self, key: i64) -> Option<&Tree<T>> {
        self.as_dict()?.iter().find_map(|(k, v)| match k {
            Tree::Int(i) if *i == key => Some(v),
            _ => None,
        })
    }

    pub fn as_dict(&self) -> Option<&[(Tree<T>, Tree<T>)]> {
        match self {
            Tree::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Items of a list or a tuple.
    pub fn as_seq(&self) -> Option<&[Tree<T>]> {
        match self {
            Tree::List(v) | Tree::Tuple(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&T> {
        match self {
            Tree::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Tree::Int(i) => Some(*i),
            Tree::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Float or int as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Tree::Float(f) => Some(*f),
            Tree::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Tree::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Tree::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Tree::None)
    }

    /// A dict with string keys in the given order.
    pub fn str_dict<K: Into<String>>(items: impl IntoIterator<Item = (K, Tree<T>)>) -> Tree<T> {
        Tree::Dict(
            items
                .into_iter()
                .map(|(k, v)| (Tree::Str(k.into()), v))
                .collect(),
        )
    }

    /// A state dict value from `(name, tensor)` pairs.
    pub fn from_state_dict(sd: Vec<(String, T)>) -> Tree<T> {
        Tree::Dict(
            sd.into_iter()
                .map(|(k, t)| (Tree::Str(k), Tree::Tensor(t)))
                .collect(),
        )
    }

    /// Short type name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Tree::None => "None",
            Tree::Bool(_) => "bool",
            Tree::Int(_) => "int",
            Tree::Float(_) => "float",
            Tree::Str(_) => "str",
            Tree::Bytes(_) => "bytes",
            Tree::List(_) => "list",
            Tree::Tuple(_) => "tuple",
            Tree::Dict(_) => "dict",
            Tree::Tensor(_) => "tensor",
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
pub fn state_dict_refs<'v, T>(value: &'v Tree<T>, path: &Path) -> Result<Vec<(String, &'v T)>> {
    let (items, names) = locate_state_dict(value, path)?;
    Ok(names
        .into_iter()
        .zip(items)
        .filter_map(|(name, (_, v))| Some((name, v.as_tensor()?)))
        .collect())
}

/// [`state_dict_refs`] taking the tensors out of `value` (no copy of their data).
pub(crate) fn into_state_dict<T>(value: Tree<T>, path: &Path) -> Result<Vec<(String, T)>> {
    let names = locate_state_dict(&value, path)?.1;
    let slot = state_dict_slot(&value);
    let Tree::Dict(top) = value else {
        unreachable!("checked by locate_state_dict")
    };
    let items = match slot {
        Some((i, _)) => match top.into_iter().nth(i) {
            Some((_, Tree::Dict(d))) => d,
            _ => unreachable!("checked by locate_state_dict"),
        },
        None => top,
    };
    Ok(names
        .into_iter()
        .zip(items)
        .filter_map(|(name, (_, v))| match v {
            Tree::Tensor(t) => Some((name, t)),
            _ => None,
        })
        .collect())
}

/// Where the state dict of a training checkpoint is: the index of the top-level `"model"` (else
/// `"state_dict"`) entry and its field prefix for errors; `None` for a bare state dict.
fn state_dict_slot<T>(value: &Tree<T>) -> Option<(usize, &'static str)> {
    let top = value.as_dict()?;
    let find = |key: &str| {
        top.iter()
            .position(|(k, _)| matches!(k, Tree::Str(s) if s == key))
    };
    find("model")
        .map(|i| (i, "model."))
        .or_else(|| find("state_dict").map(|i| (i, "state_dict.")))
}

/// The state dict's entries in `value` with their parameter names (DDP's prefix stripped), after
/// checking that every key is a string, every value a tensor and no name repeats.
#[allow(clippy::type_complexity)]
fn locate_state_dict<'v, T>(
    value: &'v Tree<T>,
    path: &Path,
) -> Result<(&'v [(Tree<T>, Tree<T>)], Vec<String>)> {
    let top = value.as_dict().ok_or_else(|| {
        CheckpointError::format(
            path,
            format!(
                "checkpoint is a {}, expected a dict (state dict or training checkpoint)",
                value.type_name()
            ),
        )
    })?;
    let (items, field_prefix) = match state_dict_slot(value) {
        None => (top, ""),
        Some((i, field_prefix)) => {
            let dict = &top[i].1;
            let items = dict.as_dict().ok_or_else(|| {
                CheckpointError::field(
                    path,
                    field_prefix.trim_end_matches('.'),
                    format!("expected a dict of tensors, found {}", dict.type_name()),
                )
            })?;
            (items, field_prefix)
        }
    };
    let mut names = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    // An error about the entry `key` of the state dict.
    let entry_err =
        |key: &str, msg: String| CheckpointError::field(path, format!("{field_prefix}{key}"), msg);
    for (k, v) in items {
        let key = k.as_str().ok_or_else(|| {
            let msg = format!("state dict key is a {}, expected str", k.type_name());
            entry_err("<key>", msg)
        })?;
        if v.as_tensor().is_none() {
            return Err(entry_err(
                key,
                format!("expected a tensor, found {}", v.type_name()),
            ));
        }
        let name = key.strip_prefix(DDP_PREFIX).unwrap_or(key).to_string();
        if !seen.insert(name.clone()) {
            let msg = format!("duplicate parameter `{name}` after stripping `{DDP_PREFIX}`");
            return Err(entry_err(key, msg));
        }
        names.push(name);
    }
    Ok((items, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// One pass (convert + finite check, chunk by chunk) gives the values of `to_f32` bit for
    /// bit, for every dtype, and the index of the first non-finite value wherever it falls.
    #[test]
    fn f32_tensor_matches_to_f32_and_finds_the_first_non_finite() {
        let n = 40_000; // several conversion chunks for every element size
        let vals: Vec<f64> = (0..n).map(|i| (i as f64 * 0.731).sin() * 300.0).collect();
        let cases: Vec<(DType, Vec<u8>)> = vec![
            (
                DType::F32,
                vals.iter()
                    .flat_map(|&v| (v as f32).to_le_bytes())
                    .collect(),
            ),
            (
                DType::F16,
                vals.iter()
                    .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                    .collect(),
            ),
            (
                DType::BF16,
                vals.iter()
                    .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
                    .collect(),
            ),
            (
                DType::F64,
                vals.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            ),
            (
                DType::I64,
                vals.iter()
                    .flat_map(|&v| (v as i64).to_le_bytes())
                    .collect(),
            ),
            (
                DType::I32,
                vals.iter()
                    .flat_map(|&v| (v as i32).to_le_bytes())
                    .collect(),
            ),
            (
                DType::I16,
                vals.iter()
                    .flat_map(|&v| (v as i16).to_le_bytes())
                    .collect(),
            ),
            (DType::I8, vals.iter().map(|&v| v as i8 as u8).collect()),
            (DType::U8, vals.iter().map(|&v| v as u8).collect()),
            (
                DType::Bool,
                vals.iter().map(|&v| u8::from(v > 0.0)).collect(),
            ),
        ];
        for (dtype, bytes) in cases {
            let want = TensorData::new(dtype, vec![n / 100, 100], bytes.clone())
                .unwrap()
                .to_f32()
                .unwrap();
            let t = F32Tensor::from_bytes(dtype, vec![n / 100, 100], &bytes).unwrap();
            assert_eq!(bits(&t.data), bits(&want), "{dtype}");
            assert_eq!(t.first_non_finite, None, "{dtype}");
            assert_eq!(t.stored_bytes(), bytes.len());
        }
        // Non-finite values: the first one is found (a later one does not matter), in the
        // first chunk or a later one.
        for (at, v) in [
            (0, f32::NAN),
            (20_000, f32::INFINITY),
            (39_999, f32::NEG_INFINITY),
        ] {
            let mut x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            x[at] = v;
            if at + 7 < n {
                x[at + 7] = f32::NAN;
            }
            let bytes = TensorData::from_f32(vec![n], &x).bytes;
            let t = F32Tensor::from_bytes(DType::F32, vec![n], &bytes).unwrap();
            assert_eq!(t.first_non_finite, Some(at));
            assert_eq!(t.data[at].to_bits(), v.to_bits());
        }
        let mut h: Vec<u8> = (0..n)
            .flat_map(|i| half::f16::from_f32(i as f32).to_le_bytes())
            .collect();
        h[2 * 33_000..2 * 33_000 + 2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        let t = F32Tensor::from_bytes(DType::F16, vec![n], &h).unwrap();
        assert_eq!(t.first_non_finite, Some(33_000));
    }

    /// A byte count that does not fit the shape is the error `TensorData::new` gives, also when
    /// the shape's product overflows.
    #[test]
    fn f32_tensor_size_errors() {
        let e = F32Tensor::from_bytes(DType::F32, vec![3], &[0; 8]).unwrap_err();
        assert_eq!(
            e,
            TensorData::new(DType::F32, vec![3], vec![0; 8]).unwrap_err()
        );
        let e = F32Tensor::from_bytes(DType::F16, vec![usize::MAX, 2], &[]).unwrap_err();
        assert_eq!(e.got, 0);
    }
}
