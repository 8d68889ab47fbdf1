//! MedSAM in Rust.

pub mod cli;
pub mod npy;
pub mod preprocess;
