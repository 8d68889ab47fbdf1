//! The libraries never print: progress and results go back to the caller (the command line in
//! `src/main.rs` and `src/cli/` is the only place that writes to stdout or stderr). A print left
//! in a kernel or a model (a timing probe, say) would spam every caller's terminal, the server's
//! log and the Python package's notebook, so this scans the sources for the print macros outside
//! `#[cfg(test)]` modules (which report skipped tests on stderr).

use std::path::{Path, PathBuf};

/// Crate source folders that must stay quiet, relative to the workspace root.
const LIBRARY_DIRS: [&str; 4] = ["src", "kernels/src", "ffi/src", "python/src"];
/// The command line: the one place allowed to print.
const CLI: [&str; 2] = ["src/main.rs", "src/cli"];
const PRINTS: [&str; 5] = ["println!", "eprintln!", "print!(", "eprint!(", "dbg!("];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries.map(|e| e.unwrap().path()) {
        if e.is_dir() {
            rust_files(&e, out);
        } else if e.extension().is_some_and(|x| x == "rs") {
            out.push(e);
        }
    }
}

/// The lines before the file's `#[cfg(test)] mod …` (tests sit at the end of a file here).
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|l| l.trim_start().starts_with("mod "))
        })
        .unwrap_or(lines.len());
    lines[..end].iter().copied().enumerate().collect()
}

#[test]
fn library_code_never_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in LIBRARY_DIRS {
        rust_files(&root.join(d), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if CLI
            .iter()
            .any(|c| rel == *c || rel.starts_with(&format!("{c}/")))
        {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in non_test_lines(&text) {
            let code = line.split("//").next().unwrap_or("");
            if PRINTS.iter().any(|p| code.contains(p)) {
                found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "library code prints:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_sees_prints_and_skips_test_modules() {
    let text = "fn f() {\n    eprintln!(\"x\");\n}\n#[cfg(test)]\nmod tests {\n    fn g() { println!(\"y\"); }\n}\n";
    let lines = non_test_lines(text);
    assert_eq!(lines.len(), 3);
    assert!(lines[1].1.contains("eprintln!"));
}
