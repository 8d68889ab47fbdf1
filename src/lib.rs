//! MedSAM in Rust.
pub mod checkpoint;
