//! CPU kernels for MedSAM: each operator has a plain `reference` implementation (obviously correct,
//! used as the oracle in property tests) and a fast implementation (SIMD micro-kernels chosen at run
//! time, multi-threaded with rayon). All buffers are f32 row-major unless a function says otherwise.
//!
//! The library crate `medsam` wraps these in its CPU backend; device backends (Ascend) implement the
//! same operator set and are tested against the reference versions here.

pub mod activation;
pub mod adamw;
pub mod ascend_tiled;
pub mod attention;
pub mod batchnorm;
pub mod conv;
pub mod cpu;
pub mod depthwise;
pub mod gemm;
pub mod mbconv;
pub mod norm;
pub mod pool;
pub mod resize;
pub mod rope;
mod scratch;
pub mod strided;
#[doc(hidden)]
pub mod testing;
pub mod window;
