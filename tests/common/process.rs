//! Running other programs from tests: the Python oracle (`MEDSAM_PYTHON`) and the `medsam`
//! binary's output.
#![allow(dead_code)] // each test binary uses a part

use std::process::{Command, Output};

/// `MEDSAM_PYTHON` (default `python3`) if it can `import <modules>` (e.g. `"numpy, nibabel"`).
pub fn python_importing(modules: &str) -> Option<String> {
    let py = std::env::var("MEDSAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

/// [`python_importing`]; when that Python cannot import `modules`, prints
/// `SKIPPED: <python> (MEDSAM_PYTHON) cannot import <modules>` and returns `None`.
pub fn python_or_skip(modules: &str) -> Option<String> {
    let py = python_importing(modules);
    if py.is_none() {
        let name = std::env::var("MEDSAM_PYTHON").unwrap_or_else(|_| "python3".into());
        eprintln!("SKIPPED: {name} (MEDSAM_PYTHON) cannot import {modules}");
    }
    py
}

/// Runs `python -c <script>`; whether it succeeded.
pub fn python_script_succeeds(python: &str, script: &str) -> bool {
    Command::new(python)
        .arg("-c")
        .arg(script)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"))
        .success()
}

/// A process's stdout followed by its stderr.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Panics, showing stdout and stderr, unless the process succeeded; returns its stdout.
pub fn success_stdout(o: &Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout.into_owned()
}
