//! The MedSAM workflow, built on the models and file formats: [`preprocess`] (NIfTI → training
//! slices), [`data`] (slices → batches), [`train`], [`convert`] (training checkpoint → SAM
//! weights), [`infer`] (predictors), [`eval`] and its [`metrics`].

pub mod bench;
pub mod convert;
pub mod data;
pub mod eval;
pub mod eval3d;
pub mod infer;
pub mod metrics;
pub mod preprocess;
pub mod train;
