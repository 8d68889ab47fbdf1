//! The compact volume a series is read into: modality values kept in the smallest of four element
//! types that holds them (int16, uint16, int32, float32 — as GDCM/SimpleITK return them), and
//! widened to f64 only at the boundary ([`DicomVolume::to_nifti`]) for code that wants a
//! [`NiftiVolume`]. A 300-slice 512² CT is 157 MB as int16 and 629 MB as f64.

use crate::io::nifti::{NiftiVolume, PixelKind};
use rayon::prelude::*;

/// Voxel values in `(z, y, x)` C order.
#[derive(Debug, Clone, PartialEq)]
pub enum Voxels {
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    F32(Vec<f32>),
}

/// Calls `$f` on the inner `Vec` of a [`Voxels`], whatever its element type.
macro_rules! with_voxels {
    ($v:expr, $d:ident => $f:expr) => {
        match $v {
            Voxels::I16($d) => $f,
            Voxels::U16($d) => $f,
            Voxels::I32($d) => $f,
            Voxels::F32($d) => $f,
        }
    };
}

impl Voxels {
    pub fn kind(&self) -> PixelKind {
        match self {
            Voxels::I16(_) => PixelKind::I16,
            Voxels::U16(_) => PixelKind::U16,
            Voxels::I32(_) => PixelKind::I32,
            Voxels::F32(_) => PixelKind::F32,
        }
    }

    pub fn len(&self) -> usize {
        with_voxels!(self, d => d.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f64 (exact for every kind).
    pub fn to_f64(&self) -> Vec<f64> {
        with_voxels!(self, d => d.par_iter().map(|&x| x.into()).collect())
    }

    /// `(min, max)`; `(inf, -inf)` when empty.
    pub fn range(&self) -> (f64, f64) {
        let fold = |(a, b): (f64, f64), x: f64| (a.min(x), b.max(x));
        let merge = |(a, b): (f64, f64), (c, d): (f64, f64)| (a.min(c), b.max(d));
        let id = || (f64::INFINITY, f64::NEG_INFINITY);
        with_voxels!(self, d => d
            .par_iter()
            .fold(id, |acc, &x| fold(acc, x.into()))
            .reduce(id, merge))
    }
}

/// A series' voxels with their shape and spacing (like [`NiftiVolume`], but compact).
#[derive(Debug, Clone, PartialEq)]
pub struct DicomVolume {
    /// `(z, y, x)`.
    pub shape: [usize; 3],
    pub voxels: Voxels,
    /// `(x, y, z)` in mm.
    pub spacing: [f64; 3],
}

impl DicomVolume {
    pub fn kind(&self) -> PixelKind {
        self.voxels.kind()
    }

    pub fn len(&self) -> usize {
        self.voxels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.voxels.is_empty()
    }

    /// The same volume as f64 values with its kind, as the NIfTI reader returns volumes.
    pub fn to_nifti(&self) -> NiftiVolume {
        NiftiVolume {
            shape: self.shape,
            data: self.voxels.to_f64(),
            kind: self.kind(),
            spacing: self.spacing,
        }
    }
}

/// An element type of [`Voxels`] that the decoder writes: `as` casts, the caller having checked
/// the range.
pub(super) trait Store: Copy + Default + Send + Sync + Into<f64> {
    fn from_i64(v: i64) -> Self;
    fn from_f64(v: f64) -> Self;
    fn wrap(v: Vec<Self>) -> Voxels;
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
            fn wrap(v: Vec<Self>) -> Voxels {
                Voxels::$variant(v)
            }
        }
    };
}
store!(i16, I16);
store!(u16, U16);
store!(i32, I32);
store!(f32, F32);
