//! MedSAM in Rust.
pub mod metrics;
pub mod viz;
