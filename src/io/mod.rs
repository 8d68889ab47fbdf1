//! Reading and writing files.

pub mod limits;
pub mod stale;
