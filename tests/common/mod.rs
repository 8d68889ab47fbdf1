//! Helpers shared by the grouped test binaries (`tests/models/`, `tests/pipeline/`), which
//! declare this module once in their `main.rs`. The standalone test binaries (`tests/serve.rs`,
//! `tests/ascend_*.rs`, ...) include the files they need by `#[path]` instead; `standin.rs` and
//! `npu_parity.rs` are used only there.

pub mod fixtures;
pub mod json_numbers;
pub mod labels;
pub mod lite_fixture;
pub mod npz;
pub mod process;
pub mod slices;
pub mod summary;
pub mod train_config;
