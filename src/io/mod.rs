//! File formats: model checkpoints (`.pth`, safetensors), NumPy `.npy`/`.npz`, NIfTI, images
//! (with the exact resize semantics of the reference tools) and the CVPR challenge's volume
//! files, all written through [`atomic::write_atomic`]. Readers check what they read and name the file and field in every error.

pub mod atomic;
pub mod checkpoint;
pub mod dicom;
pub mod image;
pub mod nifti;
pub mod npy;
pub mod volume;
