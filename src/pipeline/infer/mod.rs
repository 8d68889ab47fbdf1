//! Inference: one predictor per model family ([`sam`] for SAM/MedSAM at 1024², [`lite`] for
//! LiteMedSAM at 256² with its 2D/3D challenge conventions), and [`challenge2d`], the 2D
//! challenge `.npz` (one image, several boxes, one label map) for every family.

pub mod challenge2d;
pub mod lite;
pub mod sam;
