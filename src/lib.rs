//! MedSAM in Rust.
pub mod checkpoint;
pub mod cli;
