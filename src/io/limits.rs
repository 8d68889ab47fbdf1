//! Size limits for everything read from a file, checked before memory is reserved.
//!
//! Defaults are sized for the largest legitimate inputs: a ViT-H checkpoint (2.6 GB of f32,
//! 5.1 GB if saved as f64) and a 1024³ volume. Each limit can be lowered or raised through an
//! environment variable (`MEDSAM_MAX_TENSOR_BYTES`, `MEDSAM_MAX_VOXELS`,
//! `MEDSAM_MAX_IMAGE_PIXELS`, `MEDSAM_MAX_FILE_BYTES`; a number with an optional K/M/G/T
//! suffix, powers of 1024). Readers call [`Limits::current`], which reads the environment once.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// Resource caps for input files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of the tensors of one checkpoint (after materialising views).
    pub max_tensor_bytes: u64,
    /// Elements of one array read from .npy/.npz/NIfTI (a 1024³ volume by default).
    pub max_voxels: u64,
    /// Pixels of one decoded 2-D image (PNG/JPEG/TIFF/BMP).
    pub max_image_pixels: u64,
    /// Bytes read from one file or one decompressed stream (gzip, zip member) that is not a
    /// checkpoint tensor: 8 bytes per voxel of the largest volume.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let voxels = 1u64 << 30;
        Limits {
            max_tensor_bytes: 8 << 30,
            max_voxels: voxels,
            max_image_pixels: 1 << 28,
            max_file_bytes: voxels * 8 + (1 << 20),
        }
    }
}

static CURRENT: OnceLock<std::result::Result<Limits, String>> = OnceLock::new();

/// `"64M"` → 64 MiB; plain numbers are bytes (or counts).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        't' | 'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

impl Limits {
    /// The defaults with the `MEDSAM_MAX_*` environment overrides applied.
    pub fn from_env() -> std::result::Result<Limits, String> {
        let mut l = Limits::default();
        for (var, field) in [
            ("MEDSAM_MAX_TENSOR_BYTES", &mut l.max_tensor_bytes),
            ("MEDSAM_MAX_VOXELS", &mut l.max_voxels),
            ("MEDSAM_MAX_IMAGE_PIXELS", &mut l.max_image_pixels),
            ("MEDSAM_MAX_FILE_BYTES", &mut l.max_file_bytes),
        ] {
            if let Ok(v) = std::env::var(var) {
                *field = parse_size(&v).filter(|&n| n > 0).ok_or_else(|| {
                    format!("environment variable {var}={v:?} is not a positive size (e.g. 512M)")
                })?;
            }
        }
        Ok(l)
    }

    /// Fixes the process's limits (before any file is read; tests and embedders). Returns
    /// false when they were already fixed, by an earlier call or a first read.
    pub fn set_for_process(l: Limits) -> bool {
        CURRENT.set(Ok(l)).is_ok()
    }

    /// The process's limits ([`Limits::from_env`], read once).
    pub fn current() -> Result<Limits> {
        CURRENT
            .get_or_init(Limits::from_env)
            .clone()
            .map_err(|e| Error::arg("limits", e))
    }

    /// The process's limits, or the defaults when the environment holds a bad value (the CLI
    /// reports that once at start through [`Limits::current`]).
    pub fn current_or_default() -> Limits {
        Limits::current().unwrap_or_default()
    }
}

/// Product of `dims` with overflow checked (`None` on overflow).
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Reads all of `r` but at most `limit` bytes: more is an error naming `path`, `what` and the
/// limit. Memory is reserved as data arrives (never from a size the file claims).
pub fn read_bounded(r: impl Read, limit: u64, path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::file(path, format!("{what}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(too_big(path, what, limit));
    }
    Ok(buf)
}

/// Reads a whole file, at most `limit` bytes (also safe on `/dev/zero` and pipes).
pub fn read_file_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_bounded(f, limit, path, "file")
}

/// The error for a stream longer than its limit.
pub fn too_big(path: &Path, what: &str, limit: u64) -> Error {
    Error::file(
        path,
        format!(
            "{what} is larger than the limit of {limit} bytes (raise it with the MEDSAM_MAX_* environment variables)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn bounded_read_refuses_long_streams() {
        let p = Path::new("zero");
        assert!(read_bounded(std::io::repeat(0), 1000, p, "x").is_err());
        assert_eq!(read_bounded(&[1u8, 2][..], 2, p, "x").unwrap(), vec![1, 2]);
    }
}
