//! Library and model tests, one module per file, built as a single test binary (`models`) so
//! that the library is linked once: tensors and autograd, the tiny SAM / SAM2 / LiteMedSAM
//! parity with the committed PyTorch fixtures, training parity, and the checks on the real
//! pretrained weights (skipped without them). Run one file's tests with a filter:
//! `cargo test --release --test models sam_parity::`.

// Each binary uses a part of the shared helpers.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

mod attention_precision;
mod autograd;
mod hiera_inference;
mod int8_rule;
mod lite_real;
mod lite_tiny;
mod sam2_parity;
mod sam_parity;
mod tensor_props;
mod train_parity;
mod vit_b_parity;
