//! MedSAM in Rust: a kernel-first compute library (tensor, device backends, autograd), the
//! SAM/MedSAM model, and the MedSAM workflow (preprocess, train, convert, evaluate, infer).
//!
//! The library never prints: it returns [`Error`]s and reports progress through callbacks.

pub mod autograd;
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod demo_real;
pub mod dist;
pub mod error;
pub mod eval;
pub mod infer;
pub mod infer_lite;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod ops;
pub mod optim;
pub mod preprocess;
pub mod rng;
pub mod seg_model;
pub mod serve;
pub mod tensor;
pub mod train;
pub mod viz;
pub mod weights;

pub use backend::Device;
pub use error::{Error, Result};
pub use tensor::Tensor;
