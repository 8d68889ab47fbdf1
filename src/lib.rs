//! MedSAM in Rust: a kernel-first compute library (tensor, device backends, autograd), the
//! SAM/MedSAM models, and the MedSAM workflow (preprocess, train, convert, evaluate, infer).
//!
//! The folders are the layers, each using only the ones above it in this list:
//!
//! - core: [`tensor`], [`backend`] (CPU and Ascend NPU), [`autograd`], [`ops`], [`optim`],
//!   [`rng`], [`error`];
//! - [`models`]: SAM/MedSAM, LiteMedSAM, their shared layers, loading;
//! - [`io`]: checkpoints (.pth, safetensors), npy/npz, NIfTI, images, volumes;
//! - [`pipeline`]: preprocess, data, train, eval, metrics, infer, convert;
//! - [`dist`] (data-parallel communicators) and [`viz`] (figures);
//! - [`serve`]: the HTTP server (web page, nnInteractive protocols) on top of the pipeline.
//!
//! The command line (`src/main.rs`, `src/cli/`) and the demo sit in the binary, on top.
//!
//! The library never prints: it returns [`Error`]s and reports progress through callbacks.

pub mod autograd;
pub mod backend;
pub mod dist;
pub mod error;
pub mod io;
pub mod models;
pub mod ops;
pub mod optim;
pub mod pipeline;
pub mod rng;
pub mod serve;
pub mod tensor;
pub mod viz;

pub use backend::Device;
pub use error::{Error, Result};
pub use tensor::Tensor;

// Paths from before the layout move (`medsam::model`, `medsam::npy`, ...), kept so code written
// against them keeps compiling. New code uses the paths above.
#[doc(hidden)]
pub use io::npy;
#[doc(hidden)]
pub use models::{load as weights, seg_model};
#[doc(hidden)]
pub use pipeline::infer::{lite as infer_lite, sam as infer};
#[doc(hidden)]
pub use pipeline::{data, eval, metrics, train};

#[doc(hidden)]
pub mod checkpoint {
    //! Old path of [`crate::io::checkpoint`] and [`crate::pipeline::convert`].
    pub use crate::io::checkpoint::*;
    pub use crate::pipeline::convert::{self, convert, ConvertReport, OutputFormat};
}

#[doc(hidden)]
pub mod model {
    //! Old path of [`crate::models`]: SAM at the top, LiteMedSAM in `lite`.
    pub use crate::models::lite::{self, tiny_vit};
    pub use crate::models::sam::*;
    pub use crate::models::{common, config};
}

#[doc(hidden)]
pub mod preprocess {
    //! Old path of [`crate::pipeline::preprocess`], [`crate::io::nifti`] and
    //! [`crate::io::image::resize`].
    pub use crate::io::image::resize;
    pub use crate::io::nifti as nifti_io;
    pub use crate::pipeline::preprocess::*;
}
