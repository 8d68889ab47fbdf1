//! Command-line front ends (argument structs + runners).

pub mod phantom;
pub mod preprocess;
