//! safetensors read/write of named tensors.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{CheckpointError, DType, F32Tensor, Result, TensorData, TensorSizeError};
use crate::io::atomic::write_atomic;

/// `__metadata__` key under which [`save_safetensors`] records the tensor
/// order (a JSON array of names), restored by [`load_safetensors`].
pub const KEY_ORDER_METADATA: &str = "medsam.key_order";

fn to_st(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    }
}

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// `e` without a leading `<path>: ` (the error is re-wrapped with the path).
fn strip_path(path: &Path, e: &str) -> String {
    let prefix = format!("{}: ", path.display());
    e.strip_prefix(&prefix).unwrap_or(e).to_string()
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Writes named tensors as safetensors (temp file + rename). The tensor order
/// is recorded in the `__metadata__` entry [`KEY_ORDER_METADATA`]; `"format":
/// "pt"` is set as torch tools expect.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &[(String, TensorData)]) -> Result<()> {
    let path = path.as_ref();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = TensorView::new(to_st(t.dtype), t.shape.clone(), &t.bytes)
            .map_err(|e| st_err(path, format!("tensor `{name}`: {e:?}")))?;
        views.push((name.as_str(), v));
    }
    let order: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        KEY_ORDER_METADATA.to_string(),
        serde_json::to_string(&order).expect("serialising strings cannot fail"),
    );
    let bytes = safetensors::tensor::serialize(views, &Some(meta))
        .map_err(|e| st_err(path, format!("{e:?}")))?;
    write_atomic(path, CheckpointError::io, |w| {
        w.write_all(&bytes)
            .map_err(|e| CheckpointError::io(path, e))
    })
}

/// Reads all tensors of a safetensors file, in the order recorded by
/// [`save_safetensors`] if present, otherwise in file (data offset) order.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Vec<(String, TensorData)>> {
    let path = path.as_ref();
    let max = checked_size(path)?;
    let buf = crate::io::limits::read_file_bounded(path, max)
        .map_err(|e| CheckpointError::format(path, strip_path(path, &e.to_string())))?;
    tensors_of(path, &buf, |dtype, shape, data| {
        TensorData::new(dtype, shape, data.to_vec())
    })
}

/// [`load_safetensors`] with every tensor converted to f32 as it is read (NaN/infinity noted),
/// straight out of the file's mapping when it can be mapped (not with `MEDSAM_NO_MMAP=1`): for
/// the model loaders. A 4-byte aligned f32 tensor is then used in place, a window into the
/// mapping (which lives as long as the tensor); the others are copied once.
pub(crate) fn load_safetensors_f32(path: &Path) -> Result<Vec<(String, F32Tensor)>> {
    let max = checked_size(path)?;
    let file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    // SAFETY: the mapping is private and only read; it lives until the tensors are built, and as
    // long as any tensor used in place from it. As with `load_pth`, another process truncating
    // the file meanwhile can crash this one (SIGBUS); replacing it by a rename is safe.
    let map = (!crate::backend::mmap_disabled())
        .then(|| unsafe { memmap2::Mmap::map(&file) }.ok())
        .flatten();
    match map.map(std::sync::Arc::new) {
        Some(map) if map.len() as u64 <= max => tensors_of(path, &map, |dtype, shape, data| {
            F32Tensor::from_bytes_in(Some(&map), dtype, shape, data)
        }),
        _ => {
            let buf = crate::io::limits::read_file_bounded(path, max)
                .map_err(|e| CheckpointError::format(path, strip_path(path, &e.to_string())))?;
            tensors_of(path, &buf, F32Tensor::from_bytes)
        }
    }
}

/// Checks that `path` is a regular file within the byte limit; returns the limit.
fn checked_size(path: &Path) -> Result<u64> {
    // Tensor bytes up to the limit plus the JSON header (the format caps it at 100 MB).
    let max = crate::io::limits::Limits::current_or_default()
        .max_tensor_bytes
        .saturating_add(100 << 20);
    let meta = std::fs::metadata(path).map_err(|e| CheckpointError::io(path, e))?;
    if !meta.is_file() {
        return Err(CheckpointError::format(path, "not a regular file"));
    }
    if meta.len() > max {
        return Err(CheckpointError::format(
            path,
            format!(
                "{} bytes, over the limit of {max} (MEDSAM_MAX_TENSOR_BYTES)",
                meta.len()
            ),
        ));
    }
    Ok(max)
}

/// The tensors of the safetensors bytes `buf`, each made by `make` from its dtype, shape and
/// data, in the order recorded by [`save_safetensors`] if present, otherwise in file order.
fn tensors_of<T>(
    path: &Path,
    buf: &[u8],
    make: impl Fn(DType, Vec<usize>, &[u8]) -> std::result::Result<T, TensorSizeError>,
) -> Result<Vec<(String, T)>> {
    let st = SafeTensors::deserialize(buf).map_err(|e| st_err(path, format!("{e:?}")))?;
    let (_, meta) = SafeTensors::read_metadata(buf).map_err(|e| st_err(path, format!("{e:?}")))?;
    let infos = meta.tensors();
    let mut names: Vec<String> = infos.keys().cloned().collect();
    names.sort_by_key(|n| (infos[n].data_offsets, n.clone()));
    if let Some(order) = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(KEY_ORDER_METADATA))
        .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
    {
        let mut sorted_order = order.clone();
        sorted_order.sort();
        let mut sorted_names = names.clone();
        sorted_names.sort();
        if sorted_order == sorted_names {
            names = order;
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let v = st
            .tensor(&name)
            .map_err(|e| st_err(path, format!("tensor `{name}`: {e:?}")))?;
        let dtype = from_st(v.dtype()).ok_or_else(|| {
            CheckpointError::field(
                path,
                name.clone(),
                format!("unsupported safetensors dtype {:?}", v.dtype()),
            )
        })?;
        let t = make(dtype, v.shape().to_vec(), v.data())
            .map_err(|e| CheckpointError::field(path, name.clone(), e.to_string()))?;
        out.push((name, t));
    }
    Ok(out)
}
