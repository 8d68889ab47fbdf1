//! The `medsam` command line: thin shells over the library, one file per subcommand.

pub mod bench;
pub mod common;
pub mod convert;
pub mod demo;
pub mod dicom;
pub mod eval;
pub mod infer;
pub mod infer_sam2;
pub mod phantom;
pub mod preprocess;
pub mod serve;
pub mod train;
