//! Workflow tests, one module per file, built as a single test binary (`pipeline`) so that the
//! library is linked once: the `medsam` command line, preprocessing, training, evaluation and
//! metrics, npy and checkpoint files, figures, and the demo. Run one file's tests with a filter:
//! `cargo test --release --test pipeline checkpoint::`.

// Each binary uses a part of the shared helpers.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod cli;
mod demo_real;
mod eval;
mod lite_train;
mod mapped_weights;
mod metrics;
mod npy;
mod preprocess;
mod preprocess_resize;
mod quiet_library;
mod train;
mod viz;
