//! The compact volume a series is read into: modality values kept in the smallest of four element
//! types that holds them (int16, uint16, int32, float32 — as GDCM/SimpleITK return them), stored
//! as [`NpyData`], and widened to f64 only at the boundary ([`DicomVolume::to_nifti`]) for code
//! that wants a [`NiftiVolume`]. A 300-slice 512² CT is 157 MB as int16 and 629 MB as f64.

use crate::io::nifti::{NiftiVolume, PixelKind};
use crate::io::npy::NpyData;
use rayon::prelude::*;

/// A series' voxels with their shape and spacing (like [`NiftiVolume`], but compact).
#[derive(Debug, Clone, PartialEq)]
pub struct DicomVolume {
    /// `(z, y, x)`.
    pub shape: [usize; 3],
    /// `(z, y, x)` C order; the reader only produces `I16`, `U16`, `I32` and `F32`.
    pub voxels: NpyData,
    /// `(x, y, z)` in mm.
    pub spacing: [f64; 3],
}

impl DicomVolume {
    pub fn kind(&self) -> PixelKind {
        match self.voxels {
            NpyData::I16(_) => PixelKind::I16,
            NpyData::U16(_) => PixelKind::U16,
            NpyData::I32(_) => PixelKind::I32,
            NpyData::F32(_) => PixelKind::F32,
            _ => PixelKind::F64,
        }
    }

    pub fn len(&self) -> usize {
        self.voxels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.voxels.is_empty()
    }

    /// The values as f64 (exact for every kind the reader produces).
    pub fn to_f64(&self) -> Vec<f64> {
        let v = &self.voxels;
        (0..v.len()).into_par_iter().map(|i| v.get_f64(i)).collect()
    }

    /// `(min, max)`; `(inf, -inf)` when empty.
    pub fn range(&self) -> (f64, f64) {
        let v = &self.voxels;
        let id = || (f64::INFINITY, f64::NEG_INFINITY);
        (0..v.len())
            .into_par_iter()
            .fold(id, |(a, b), i| {
                let x = v.get_f64(i);
                (a.min(x), b.max(x))
            })
            .reduce(id, |(a, b), (c, d)| (a.min(c), b.max(d)))
    }

    /// The same volume as f64 values with its kind, as the NIfTI reader returns volumes.
    pub fn to_nifti(&self) -> NiftiVolume {
        NiftiVolume {
            shape: self.shape,
            data: self.to_f64(),
            kind: self.kind(),
            spacing: self.spacing,
        }
    }
}

/// An element type the decoder writes: `as` casts, the caller having checked the range.
pub(super) trait Store: Copy + Default + Send + Sync + Into<f64> {
    fn from_i64(v: i64) -> Self;
    fn from_f64(v: f64) -> Self;
    fn wrap(v: Vec<Self>) -> NpyData;
}

macro_rules! store {
    ($t:ty, $variant:ident) => {
        impl Store for $t {
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn wrap(v: Vec<Self>) -> NpyData {
                NpyData::$variant(v)
            }
        }
    };
}
store!(i16, I16);
store!(u16, U16);
store!(i32, I32);
store!(f32, F32);
