//! Reading and writing files.

pub mod limits;
