//! Data pipeline: NIfTI → MedSAM `.npy` slices (parity with MedSAM's `utils/pre_CT_MR.py`).

pub mod resize;
