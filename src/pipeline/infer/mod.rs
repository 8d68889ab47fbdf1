//! Inference: one predictor per model family ([`sam`] for SAM/MedSAM at 1024², [`lite`] for
//! LiteMedSAM at 256² with its 2D/3D challenge conventions).

pub mod lite;
pub mod sam;
