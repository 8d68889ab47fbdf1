//! MedSAM in Rust.

pub mod npy;
pub mod preprocess;
