//! The one way this crate writes a file, so a crash or an error never leaves a torn file under
//! the target's name and never touches an input:
//!
//! 1. the content goes through a 1 MiB buffer into `.<name>.tmp.<pid>.<n>` in the target's
//!    directory (same file system, so the rename below is atomic; `<n>` keeps concurrent writers
//!    in one process apart);
//! 2. the buffer is flushed and the file synced (`sync_all`): its data is on disk before any name
//!    points at it, so after a power loss the target holds the old content or the new, whole;
//! 3. the temporary file is renamed over the target.
//!
//! On any error the temporary file is removed and the target is left as it was. The directory
//! entry is not synced: a crash right after the rename may bring back the old file, never a torn
//! one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically (see the module doc): `write` fills the file; `io_error` turns an I/O
/// failure at a path (the temporary file, or the target for the rename) into the caller's error.
pub fn write_atomic<E>(
    path: &Path,
    io_error: impl Fn(&Path, std::io::Error) -> E,
    write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let Some(name) = path.file_name() else {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file");
        return Err(io_error(path, e));
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let f = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| io_error(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] of a byte string, I/O errors as [`std::io::Error`] (the caller names the
/// file).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, |_, e| e, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_the_target_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("medsam-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let r = write_atomic(
            &target,
            |_, e| e.to_string(),
            |w| {
                w.write_all(b"partial").map_err(|e| e.to_string())?;
                Err("refused".to_string())
            },
        );
        assert_eq!(r, Err("refused".to_string()));
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        write_bytes_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the target remains");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
