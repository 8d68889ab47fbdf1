//! Model families. (SAM / MedSAM still live in `crate::model` until the layering move lands.)

pub mod sam2;
