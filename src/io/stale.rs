//! Removal of temporary files our atomic writers left behind when a process was killed.
//!
//! The writers name them `.<file>.tmp<pid>` (checkpoints) and `.<file>.tmp.<pid>.<n>` (arrays);
//! one is stale when its process no longer runs. Only names of that exact form are touched,
//! and only when the process table can be read (Linux `/proc`); elsewhere nothing is removed.

use std::path::Path;

/// The writer's process id when `name` is one of our temp-file names.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp")?;
    let pid = match tail.strip_prefix('.') {
        // `.tmp.<pid>.<n>`
        Some(t) => {
            let (pid, n) = t.split_once('.')?;
            n.parse::<u64>().ok()?;
            pid
        }
        // `.tmp<pid>`
        None => tail,
    };
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn process_alive(pid: u32) -> Option<bool> {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return None;
    }
    Some(proc_root.join(pid.to_string()).exists())
}

/// Removes stale temp files of our naming in `dir`; returns how many were removed. Errors are
/// ignored: cleaning is a courtesy, never a reason to fail a run.
pub fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if pid != std::process::id()
            && process_alive(pid) == Some(false)
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// [`clean_stale_temps`] in `dir` and in each of its direct subdirectories (a work directory
/// and its run directories).
pub fn clean_stale_temps_below(dir: &Path) -> usize {
    let mut n = clean_stale_temps(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += clean_stale_temps(&e.path());
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(temp_owner(".medsam_model_latest.pth.tmp1234"), Some(1234));
        assert_eq!(temp_owner(".a.npy.tmp.99.3"), Some(99));
        assert_eq!(temp_owner("medsam_model_latest.pth"), None);
        assert_eq!(temp_owner(".x.tmpabc"), None);
        assert_eq!(temp_owner(".x.tmp"), None);
    }
}
