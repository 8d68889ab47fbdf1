//! Output paths checked against the inputs before anything is written: an output that is one
//! of the inputs (same file after resolving `.`/`..`/symlinks, or a hard link to it) is refused.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `path` with its directory resolved (the file itself need not exist).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(dir.canonicalize().ok()?.join(name))
}

#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &Path) -> bool {
    false
}

/// Whether writing `output` would replace `input`.
pub fn is_same_file(output: &Path, input: &Path) -> bool {
    same_inode(output, input)
        || matches!((resolved(output), resolved(input)), (Some(a), Some(b)) if a == b)
}

/// An error naming `flag` when `output` is any of `inputs`.
pub fn refuse_overwriting_input(output: &Path, flag: &str, inputs: &[&Path]) -> Result<()> {
    if let Some(i) = inputs.iter().find(|i| is_same_file(output, i)) {
        return Err(Error::arg(
            flag,
            format!(
                "{} is also an input ({}); refusing to overwrite it, choose another output path",
                output.display(),
                i.display()
            ),
        ));
    }
    Ok(())
}

/// Creates the output directory `dir` (and its parents), with an error that says which part of
/// it is a regular file rather than the bare "File exists" of the OS.
pub fn create_output_dir(dir: &Path, flag: &str) -> Result<()> {
    if let Some(file) = dir.ancestors().find(|a| a.is_file()) {
        return Err(Error::arg(
            flag,
            format!(
                "{} cannot be a directory: {} is a regular file",
                dir.display(),
                file.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_through_dots() {
        let d = std::env::temp_dir().join(format!("medsam_paths_{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let f = d.join("a.pth");
        std::fs::write(&f, b"x").unwrap();
        assert!(is_same_file(&d.join("sub/../a.pth"), &f));
        assert!(!is_same_file(&d.join("b.pth"), &f));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
