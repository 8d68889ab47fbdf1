//! MedSAM training checkpoint → SAM-format weights (the semantics of
//! `utils/ckpt_convert.py` in bowang-lab/MedSAM): for every key of the SAM
//! checkpoint, in its order, take the tensor of the same name from the training
//! checkpoint's `"model"` (DDP `module.` prefix stripped) and save the result
//! as a bare state dict.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::io::checkpoint::{
    load_pth, save_pth, save_safetensors, state_dict_from_named, CheckpointError, Result,
    TensorData, Value,
};

/// Output file format of [`convert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Pth,
    Safetensors,
}

impl OutputFormat {
    /// `Safetensors` for a `.safetensors` extension, otherwise `Pth`.
    pub fn from_path(path: &Path) -> OutputFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("safetensors") => OutputFormat::Safetensors,
            _ => OutputFormat::Pth,
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Pth => "pth",
            OutputFormat::Safetensors => "safetensors",
        })
    }
}

/// What [`convert`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    pub save_path: PathBuf,
    pub format: OutputFormat,
    /// Number of tensors written (= number of keys of the SAM checkpoint).
    pub tensors: usize,
    /// Total number of elements written.
    pub parameters: usize,
    /// Total payload bytes written.
    pub bytes: usize,
    /// Keys of the training checkpoint's model that the SAM checkpoint lacks
    /// (not written).
    pub unused_keys: Vec<String>,
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} tensors ({} parameters, {} bytes) to {} ({})",
            self.tensors,
            self.parameters,
            self.bytes,
            self.save_path.display(),
            self.format
        )?;
        if !self.unused_keys.is_empty() {
            write!(
                f,
                "; {} keys of the training checkpoint were not in the SAM checkpoint: {}",
                self.unused_keys.len(),
                self.unused_keys.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Converts a MedSAM training checkpoint into SAM-format weights.
///
/// Errors: a SAM key missing from the training checkpoint (naming the key and
/// file), a shape mismatch between the two (naming the key and both shapes),
/// and any read/write error.
pub fn convert(
    sam_ckpt: impl AsRef<Path>,
    medsam_ckpt: impl AsRef<Path>,
    save_path: impl AsRef<Path>,
    format: OutputFormat,
) -> Result<ConvertReport> {
    let (sam_ckpt, medsam_ckpt, save_path) =
        (sam_ckpt.as_ref(), medsam_ckpt.as_ref(), save_path.as_ref());
    let sam = state_dict_from_named(&load_pth(sam_ckpt)?, sam_ckpt)?;
    let medsam = state_dict_from_named(&load_pth(medsam_ckpt)?, medsam_ckpt)?;
    let merged = merge(&sam, medsam, sam_ckpt, medsam_ckpt)?;
    let (out, unused_keys) = merged;
    let parameters = out.iter().map(|(_, t)| t.numel()).sum();
    let bytes = out.iter().map(|(_, t)| t.bytes.len()).sum();
    let tensors = out.len();
    match format {
        OutputFormat::Pth => save_pth(save_path, &Value::from_state_dict(out))?,
        OutputFormat::Safetensors => save_safetensors(save_path, &out)?,
    }
    Ok(ConvertReport {
        save_path: save_path.to_path_buf(),
        format,
        tensors,
        parameters,
        bytes,
        unused_keys,
    })
}

type Merged = (Vec<(String, TensorData)>, Vec<String>);

fn merge(
    sam: &[(String, TensorData)],
    medsam: Vec<(String, TensorData)>,
    sam_path: &Path,
    medsam_path: &Path,
) -> Result<Merged> {
    let mut by_name: std::collections::HashMap<String, TensorData> =
        medsam.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
    let mut out = Vec::with_capacity(sam.len());
    for (key, sam_t) in sam {
        let t = by_name
            .remove(key)
            .ok_or_else(|| CheckpointError::MissingKey {
                path: medsam_path.to_path_buf(),
                key: format!("model.{key}"),
            })?;
        if t.shape != sam_t.shape {
            return Err(CheckpointError::field(
                medsam_path,
                format!("model.{key}"),
                format!(
                    "shape {:?} does not match {:?} in {}",
                    t.shape,
                    sam_t.shape,
                    sam_path.display()
                ),
            ));
        }
        out.push((key.clone(), t));
    }
    let unused = medsam
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| by_name.contains_key(k))
        .collect();
    Ok((out, unused))
}
