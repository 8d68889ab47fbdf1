//! MedSAM in Rust.
