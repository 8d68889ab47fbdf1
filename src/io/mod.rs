//! File formats: model checkpoints (`.pth`, safetensors), NumPy `.npy`/`.npz`, NIfTI, images
//! (with the exact resize semantics of the reference tools) and the CVPR challenge's volume
//! files, all written through [`atomic::write_atomic`]. Readers check what they read and name the
//! file and field in every error; every size a file states is checked against
//! [`limits::Limits`] before memory is reserved.

pub mod atomic;
pub mod checkpoint;
pub(crate) mod clock;
pub mod dicom;
pub mod image;
pub mod limits;
pub mod nifti;
pub mod npy;
pub mod paths;
pub mod stale;
pub mod volume;
