//! NIfTI-1 / NIfTI-2 single-file (`.nii`, `.nii.gz`) reading and `.nii.gz` writing.
//!
//! Reading returns the voxel array the way SimpleITK's `GetArrayFromImage` does (what MedSAM's
//! preprocessing uses): shape `(z, y, x)` in C order, i.e. exactly the file's storage order
//! (x fastest), with no reorientation from the affine. `scl_slope`/`scl_inter` are applied
//! when the slope is non-zero and not the identity, and — like ITK — such a volume is then
//! reported as float32. The header is parsed here (rather than through the `nifti` crate) so
//! the native voxel type, which decides the arithmetic precision of the reference pipeline,
//! stays known and truncated files are reported precisely.

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt gzip stream (truncated or damaged .nii.gz): {source}")]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a NIfTI-1/2 file: {detail}")]
    NotNifti { path: PathBuf, detail: String },
    #[error("{path}: bad header field `{field}`: {detail}")]
    Header {
        path: PathBuf,
        field: &'static str,
        detail: String,
    },
    #[error("{path}: unsupported datatype code {code}")]
    Datatype { path: PathBuf, code: i16 },
    #[error(
        "{path}: voxel data truncated: need {expected} bytes after the header, file has {actual}"
    )]
    Truncated {
        path: PathBuf,
        expected: usize,
        actual: usize,
    },
}

pub type Result<T> = std::result::Result<T, NiftiError>;

crate::error::wrap_into_error!(NiftiError);

/// Element type of the array SimpleITK would return for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelKind {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl PixelKind {
    fn from_code(code: i16) -> Option<(PixelKind, usize)> {
        Some(match code {
            2 => (PixelKind::U8, 1),
            256 => (PixelKind::I8, 1),
            4 => (PixelKind::I16, 2),
            512 => (PixelKind::U16, 2),
            8 => (PixelKind::I32, 4),
            768 => (PixelKind::U32, 4),
            1024 => (PixelKind::I64, 8),
            1280 => (PixelKind::U64, 8),
            16 => (PixelKind::F32, 4),
            64 => (PixelKind::F64, 8),
            _ => return None,
        })
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, PixelKind::F32 | PixelKind::F64)
    }
}

/// A volume as `(z, y, x)` C-order f64 values (exact for every NIfTI integer type up to 32 bits
/// and for float32/float64).
#[derive(Debug, Clone)]
pub struct NiftiVolume {
    /// `(z, y, x)`; 2-D files give `z = 1`.
    pub shape: [usize; 3],
    pub data: Vec<f64>,
    /// Type of the array SimpleITK returns (float32 when a rescale slope/intercept applies).
    pub kind: PixelKind,
    /// Voxel spacing `(x, y, z)` from `pixdim[1..4]`.
    pub spacing: [f64; 3],
}

impl NiftiVolume {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `np.uint8(array)`: integers wrap modulo 256, floats truncate toward zero first.
    pub fn to_u8_labels(&self) -> Vec<u8> {
        self.data.iter().map(|&v| (v as i64) as u8).collect()
    }
}

struct RawHeader {
    little: bool,
    dims: Vec<usize>,
    code: i16,
    pixdim: [f64; 4],
    vox_offset: usize,
    slope: f64,
    inter: f64,
}

/// Reads up to `n` bytes (fewer only at the end of the stream).
fn read_up_to(r: &mut dyn Read, n: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
    r.take(n as u64).read_to_end(buf).map(|_| ())
}

/// A reader over the file's bytes, inflating when the content is gzip; and whether it is.
fn open_reader(path: &Path) -> Result<(Box<dyn Read>, bool)> {
    let io_err = |source| NiftiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io_err)?);
    let gz = {
        use std::io::BufRead;
        let head = file.fill_buf().map_err(io_err)?;
        head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
    };
    Ok(if gz {
        (Box::new(GzDecoder::new(file)), true)
    } else {
        (Box::new(file), false)
    })
}

/// The file's bytes (inflated when gzip-compressed), read only as far as the header says the
/// voxel data reaches, and only after that extent was checked against the limits: a small
/// `.nii.gz` cannot inflate beyond the volume it declares, nor declare more than the limit.
fn read_all(path: &Path) -> Result<Vec<u8>> {
    let (mut reader, gz) = open_reader(path)?;
    let wrap = |source: std::io::Error| {
        if gz {
            NiftiError::Gzip {
                path: path.to_path_buf(),
                source,
            }
        } else {
            NiftiError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut bytes = Vec::new();
    read_up_to(&mut reader, 544, &mut bytes).map_err(wrap)?;
    let h = parse_header(&bytes, path)?;
    let (_, esize) = PixelKind::from_code(h.code).ok_or(NiftiError::Datatype {
        path: path.to_path_buf(),
        code: h.code,
    })?;
    let end = voxel_extent(&h, esize, path)?;
    if end > bytes.len() {
        bytes.reserve(end.min(64 << 20));
        read_up_to(&mut reader, end - bytes.len(), &mut bytes).map_err(wrap)?;
    }
    Ok(bytes)
}

/// Offset one past the last voxel byte, checked: the voxel count against the limits
/// (`MEDSAM_MAX_VOXELS`) and every product and sum for overflow.
fn voxel_extent(h: &RawHeader, esize: usize, path: &Path) -> Result<usize> {
    let max = crate::io::limits::Limits::current_or_default().max_voxels;
    let n = crate::io::limits::checked_product(&h.dims)
        .filter(|&n| n as u64 <= max)
        .ok_or_else(|| NiftiError::Header {
            path: path.to_path_buf(),
            field: "dim",
            detail: format!(
                "{:?} holds more than {max} voxels, the limit (MEDSAM_MAX_VOXELS)",
                h.dims
            ),
        })?;
    if h.vox_offset > 1 << 30 {
        return Err(NiftiError::Header {
            path: path.to_path_buf(),
            field: "vox_offset",
            detail: format!("{} is past the 1 GiB a header may take", h.vox_offset),
        });
    }
    Ok(h.vox_offset + n * esize)
}

/// A reader of the `$t` at byte offset `o` of the header bytes `$b`, little-endian if `$little`.
macro_rules! header_at {
    ($b:expr, $little:expr, $t:ty) => {
        |o: usize| {
            let a = $b[o..o + std::mem::size_of::<$t>()].try_into().unwrap();
            if $little {
                <$t>::from_le_bytes(a)
            } else {
                <$t>::from_be_bytes(a)
            }
        }
    };
}

fn parse_header(b: &[u8], path: &Path) -> Result<RawHeader> {
    let p = || path.to_path_buf();
    if b.len() < 348 {
        return Err(NiftiError::NotNifti {
            path: p(),
            detail: format!("only {} bytes, a NIfTI header needs at least 348", b.len()),
        });
    }
    let le32 = i32::from_le_bytes(b[0..4].try_into().unwrap());
    let be32 = i32::from_be_bytes(b[0..4].try_into().unwrap());
    let (little, v2) = match (le32, be32) {
        (348, _) => (true, false),
        (_, 348) => (false, false),
        (540, _) => (true, true),
        (_, 540) => (false, true),
        _ => {
            return Err(NiftiError::NotNifti {
                path: p(),
                detail: format!("sizeof_hdr is {le32}, expected 348 or 540"),
            })
        }
    };
    let (i16_at, f32_at) = (header_at!(b, little, i16), header_at!(b, little, f32));
    let (i64_at, f64_at) = (header_at!(b, little, i64), header_at!(b, little, f64));
    let (dims_raw, code, pixdim, vox_offset, slope, inter): (
        Vec<i64>,
        i16,
        [f64; 4],
        f64,
        f64,
        f64,
    );
    if !v2 {
        let magic = &b[344..348];
        if magic != b"n+1\0" {
            return Err(NiftiError::NotNifti {
                path: p(),
                detail: format!(
                    "magic {:?} (only single-file n+1 is supported)",
                    String::from_utf8_lossy(magic)
                ),
            });
        }
        dims_raw = (0..8).map(|i| i16_at(40 + 2 * i) as i64).collect();
        code = i16_at(70);
        pixdim = [
            f32_at(76) as f64,
            f32_at(80) as f64,
            f32_at(84) as f64,
            f32_at(88) as f64,
        ];
        vox_offset = f32_at(108) as f64;
        slope = f32_at(112) as f64;
        inter = f32_at(116) as f64;
    } else {
        if b.len() < 540 || &b[4..8] != b"n+2\0" {
            return Err(NiftiError::NotNifti {
                path: p(),
                detail: "bad NIfTI-2 magic (only single-file n+2 is supported)".into(),
            });
        }
        code = i16_at(12);
        dims_raw = (0..8).map(|i| i64_at(16 + 8 * i)).collect();
        pixdim = [f64_at(104), f64_at(112), f64_at(120), f64_at(128)];
        vox_offset = i64_at(168) as f64;
        slope = f64_at(176);
        inter = f64_at(184);
    }
    let ndim = dims_raw[0];
    if !(1..=7).contains(&ndim) {
        return Err(NiftiError::Header {
            path: p(),
            field: "dim[0]",
            detail: format!("{ndim} is not in 1..=7"),
        });
    }
    let mut dims = Vec::new();
    for (i, &d) in dims_raw[1..=ndim as usize].iter().enumerate() {
        if d < 1 {
            return Err(NiftiError::Header {
                path: p(),
                field: "dim",
                detail: format!("dim[{}] = {d}", i + 1),
            });
        }
        dims.push(d as usize);
    }
    if dims.len() > 3 && dims[3..].iter().any(|&d| d != 1) {
        return Err(NiftiError::Header {
            path: p(),
            field: "dim",
            detail: format!(
                "{dims:?}: only 2-D/3-D volumes (extra dimensions of size 1) are supported"
            ),
        });
    }
    dims.truncate(3);
    while dims.len() < 3 {
        dims.push(1);
    }
    let min_off = if v2 { 544.0 } else { 352.0 };
    if !(vox_offset.is_finite() && vox_offset >= 0.0) {
        return Err(NiftiError::Header {
            path: p(),
            field: "vox_offset",
            detail: format!("{vox_offset}"),
        });
    }
    let vox_offset = if vox_offset < min_off {
        min_off as usize
    } else {
        vox_offset as usize
    };
    Ok(RawHeader {
        little,
        dims,
        code,
        pixdim,
        vox_offset,
        slope,
        inter,
    })
}

/// Reads a `.nii` or `.nii.gz` (gzip detected from the content).
pub fn read_nifti(path: impl AsRef<Path>) -> Result<NiftiVolume> {
    let path = path.as_ref();
    let bytes = read_all(path)?;
    let h = parse_header(&bytes, path)?;
    let (kind, esize) = PixelKind::from_code(h.code).ok_or(NiftiError::Datatype {
        path: path.to_path_buf(),
        code: h.code,
    })?;
    let need = voxel_extent(&h, esize, path)? - h.vox_offset;
    let avail = bytes.len().saturating_sub(h.vox_offset);
    if avail < need {
        return Err(NiftiError::Truncated {
            path: path.to_path_buf(),
            expected: need,
            actual: avail,
        });
    }
    let raw = &bytes[h.vox_offset..h.vox_offset + need];
    let little = h.little;
    macro_rules! dec {
        ($t:ty, $n:expr) => {
            raw.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().unwrap();
                    (if little {
                        <$t>::from_le_bytes(a)
                    } else {
                        <$t>::from_be_bytes(a)
                    }) as f64
                })
                .collect::<Vec<f64>>()
        };
    }
    let mut data: Vec<f64> = match kind {
        PixelKind::U8 => raw.iter().map(|&v| v as f64).collect(),
        PixelKind::I8 => raw.iter().map(|&v| v as i8 as f64).collect(),
        PixelKind::I16 => dec!(i16, 2),
        PixelKind::U16 => dec!(u16, 2),
        PixelKind::I32 => dec!(i32, 4),
        PixelKind::U32 => dec!(u32, 4),
        PixelKind::I64 => dec!(i64, 8),
        PixelKind::U64 => dec!(u64, 8),
        PixelKind::F32 => dec!(f32, 4),
        PixelKind::F64 => dec!(f64, 8),
    };
    let mut kind = kind;
    let scaled = h.slope != 0.0 && h.slope.is_finite() && !(h.slope == 1.0 && h.inter == 0.0);
    if scaled {
        let (s, i) = (h.slope, if h.inter.is_finite() { h.inter } else { 0.0 });
        if kind == PixelKind::F64 {
            data.iter_mut().for_each(|v| *v = *v * s + i);
        } else {
            data.iter_mut()
                .for_each(|v| *v = (*v * s + i) as f32 as f64);
            kind = PixelKind::F32;
        }
    }
    let abs = |v: f64| {
        if v.is_finite() && v != 0.0 {
            v.abs()
        } else {
            1.0
        }
    };
    Ok(NiftiVolume {
        shape: [h.dims[2], h.dims[1], h.dims[0]],
        data,
        kind,
        spacing: [abs(h.pixdim[1]), abs(h.pixdim[2]), abs(h.pixdim[3])],
    })
}

/// Voxel types [`write_nifti_gz`] can store.
pub trait NiftiElement: Copy {
    const CODE: i16;
    const BITPIX: i16;
    fn put_le(self, out: &mut Vec<u8>);
}

impl NiftiElement for u8 {
    const CODE: i16 = 2;
    const BITPIX: i16 = 8;
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(self);
    }
}

impl NiftiElement for i16 {
    const CODE: i16 = 4;
    const BITPIX: i16 = 16;
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NiftiElement for f32 {
    const CODE: i16 = 16;
    const BITPIX: i16 = 32;
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// Writes a `(z, y, x)` C-order volume as a gzipped NIfTI-1 file with an axis-aligned
/// affine `diag(spacing)` (qform and sform code 1, "scanner"), atomically.
pub fn write_nifti_gz<T: NiftiElement>(
    path: impl AsRef<Path>,
    shape: [usize; 3],
    data: &[T],
    spacing: [f64; 3],
) -> Result<()> {
    write_nifti_gz_affine(path, shape, data, spacing, None)
}

/// Quaternion `(b, c, d)` and `qfac` of the rotation part of a RAS affine (`nifti1_io`'s
/// `mat44_to_quatern` for an orthonormal matrix).
fn quatern(affine: &[[f64; 4]; 3], spacing: [f64; 3]) -> ([f64; 3], f64) {
    let mut r = [[0.0f64; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = affine[i][j] / spacing[j];
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if det < 0.0 {
        r.iter_mut().for_each(|row| row[2] = -row[2]);
    }
    let trace1 = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (a, mut b, mut c, mut d): (f64, f64, f64, f64);
    if trace1 > 0.5 {
        a = 0.5 * trace1.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r[0][1] + r[1][0]) / b;
            d = 0.25 * (r[0][2] + r[2][0]) / b;
            a = 0.25 * (r[2][1] - r[1][2]) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r[0][1] + r[1][0]) / c;
            d = 0.25 * (r[1][2] + r[2][1]) / c;
            a = 0.25 * (r[0][2] - r[2][0]) / c;
        } else {
            let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r[0][2] + r[2][0]) / d;
            c = 0.25 * (r[1][2] + r[2][1]) / d;
            a = 0.25 * (r[1][0] - r[0][1]) / d;
        }
        if a < 0.0 {
            (b, c, d) = (-b, -c, -d);
        }
    }
    ([b, c, d], qfac)
}

/// The spatial fields of a NIfTI header — what places the voxels in the scanner — copied
/// unchanged to a segmentation so that it lies on its image (NIfTI-2 values are kept as f64
/// here and stored as NIfTI-1 float32 on writing).
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiGeometry {
    /// `pixdim[0..8]`: `pixdim[0]` is qfac, `pixdim[1..4]` the spacing as stored (signs kept).
    pub pixdim: [f64; 8],
    pub xyzt_units: u8,
    pub qform_code: i16,
    pub sform_code: i16,
    /// `quatern_b, quatern_c, quatern_d`.
    pub quatern: [f64; 3],
    /// `qoffset_x, qoffset_y, qoffset_z`.
    pub qoffset: [f64; 3],
    /// `srow_x, srow_y, srow_z`.
    pub srow: [[f64; 4]; 3],
}

impl NiftiGeometry {
    /// The geometry [`write_nifti_gz_affine`] stores: `affine` (default `diag(spacing)`) as both
    /// qform and sform (code 1, "scanner"), units mm and s.
    pub fn from_affine(spacing: [f64; 3], affine: Option<[[f64; 4]; 3]>) -> Self {
        let srow = affine.unwrap_or([
            [spacing[0], 0.0, 0.0, 0.0],
            [0.0, spacing[1], 0.0, 0.0],
            [0.0, 0.0, spacing[2], 0.0],
        ]);
        let (quat, qfac) = quatern(&srow, spacing);
        NiftiGeometry {
            pixdim: [qfac, spacing[0], spacing[1], spacing[2], 1.0, 1.0, 1.0, 1.0],
            xyzt_units: 10,
            qform_code: 1,
            sform_code: 1,
            quatern: quat,
            qoffset: [srow[0][3], srow[1][3], srow[2][3]],
            srow,
        }
    }

    /// Voxel spacing `(x, y, z)` as stored; `Err((i, pixdim[i]))` for the first one that is
    /// zero, negative or not finite (where the reader falls back to `|v|` or 1).
    pub fn positive_spacing(&self) -> std::result::Result<[f64; 3], (usize, f64)> {
        let out = [self.pixdim[1], self.pixdim[2], self.pixdim[3]];
        match out.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            Some(i) => Err((i + 1, out[i])),
            None => Ok(out),
        }
    }
}

/// The spatial header fields of a `.nii` / `.nii.gz` (only the header is read).
pub fn read_nifti_geometry(path: impl AsRef<Path>) -> Result<NiftiGeometry> {
    let path = path.as_ref();
    let (mut reader, _) = open_reader(path)?;
    let mut b = Vec::new();
    read_up_to(&mut reader, 544, &mut b).map_err(|source| NiftiError::Gzip {
        path: path.to_path_buf(),
        source,
    })?;
    let h = parse_header(&b, path)?;
    let v2 = b.len() >= 8 && &b[4..8] == b"n+2\0";
    let f32_raw = header_at!(b, h.little, f32);
    let f32_at = |o: usize| f32_raw(o) as f64;
    let (f64_at, i16_at) = (header_at!(b, h.little, f64), header_at!(b, h.little, i16));
    let i32_at = header_at!(b, h.little, i32);
    let g = if v2 {
        let fl = |o: usize| f64_at(o);
        NiftiGeometry {
            pixdim: std::array::from_fn(|i| fl(104 + 8 * i)),
            xyzt_units: i32_at(500) as u8,
            qform_code: i32_at(344) as i16,
            sform_code: i32_at(348) as i16,
            quatern: std::array::from_fn(|i| fl(352 + 8 * i)),
            qoffset: std::array::from_fn(|i| fl(376 + 8 * i)),
            srow: std::array::from_fn(|r| std::array::from_fn(|c| fl(400 + 32 * r + 8 * c))),
        }
    } else {
        NiftiGeometry {
            pixdim: std::array::from_fn(|i| f32_at(76 + 4 * i)),
            xyzt_units: b[123],
            qform_code: i16_at(252),
            sform_code: i16_at(254),
            quatern: std::array::from_fn(|i| f32_at(256 + 4 * i)),
            qoffset: std::array::from_fn(|i| f32_at(268 + 4 * i)),
            srow: std::array::from_fn(|r| std::array::from_fn(|c| f32_at(280 + 16 * r + 4 * c))),
        }
    };
    Ok(g)
}

/// [`write_nifti_gz`] with a given RAS affine (rows of the 3×4 matrix; its columns' lengths
/// must equal `spacing`), stored as both qform and sform; `None` = `diag(spacing)`.
pub fn write_nifti_gz_affine<T: NiftiElement>(
    path: impl AsRef<Path>,
    shape: [usize; 3],
    data: &[T],
    spacing: [f64; 3],
    affine: Option<[[f64; 4]; 3]>,
) -> Result<()> {
    write_nifti_gz_geometry(
        path,
        shape,
        data,
        &NiftiGeometry::from_affine(spacing, affine),
    )
}

/// Writes a `(z, y, x)` C-order volume as a gzipped NIfTI-1 file carrying `geometry`
/// (e.g. the input's, from [`read_nifti_geometry`]) unchanged, atomically.
pub fn write_nifti_gz_geometry<T: NiftiElement>(
    path: impl AsRef<Path>,
    shape: [usize; 3],
    data: &[T],
    geometry: &NiftiGeometry,
) -> Result<()> {
    let path = path.as_ref();
    let [nz, ny, nx] = shape;
    if data.len() != nz * ny * nx
        || [nx, ny, nz]
            .iter()
            .any(|&d| d == 0 || d > i16::MAX as usize)
    {
        return Err(NiftiError::Header {
            path: path.to_path_buf(),
            field: "dim",
            detail: format!(
                "shape {shape:?} does not fit {} voxels / NIfTI-1 limits",
                data.len()
            ),
        });
    }
    let g = geometry;
    let mut h = vec![0u8; 352];
    let put_i16 = |h: &mut Vec<u8>, o: usize, v: i16| h[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, o: usize, v: f32| h[o..o + 4].copy_from_slice(&v.to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    h[38] = b'r'; // regular
    for (i, d) in [3usize, nx, ny, nz, 1, 1, 1, 1].iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d as i16);
    }
    put_i16(&mut h, 70, T::CODE);
    put_i16(&mut h, 72, T::BITPIX);
    for (i, v) in g.pixdim.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * i, *v as f32);
    }
    put_f32(&mut h, 108, 352.0); // vox_offset
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = g.xyzt_units;
    put_i16(&mut h, 252, g.qform_code);
    put_i16(&mut h, 254, g.sform_code);
    for (i, v) in g.quatern.iter().chain(&g.qoffset).enumerate() {
        put_f32(&mut h, 256 + 4 * i, *v as f32);
    }
    for (r, row) in g.srow.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put_f32(&mut h, 280 + 16 * r + 4 * c, *v as f32);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    let mut body = Vec::with_capacity(std::mem::size_of_val(data));
    for &v in data {
        v.put_le(&mut body);
    }
    let io_error = |p: &Path, source| NiftiError::Io {
        path: p.to_path_buf(),
        source,
    };
    crate::io::atomic::write_atomic(path, io_error, |w| {
        let mut enc = GzEncoder::new(w, flate2::Compression::new(6));
        enc.write_all(&h).map_err(|e| io_error(path, e))?;
        enc.write_all(&body).map_err(|e| io_error(path, e))?;
        enc.finish().map_err(|e| io_error(path, e))?;
        Ok(())
    })
}
