//! Command-line front ends.
pub mod convert;
