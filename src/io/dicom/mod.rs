//! DICOM in and out: a folder of CT/MR images (one series) → a volume, and a label volume →
//! DICOM SEG (plus NIfTI with the series' geometry).
//!
//! Conventions (stated once):
//! - The volume is `(z, y, x)` in C order, like [`crate::io::nifti::NiftiVolume`] and
//!   SimpleITK's `GetArrayFromImage`: `x` = column index, `y` = row index, `z` = slice index, slices
//!   sorted by ascending position of ImagePositionPatient along the normal of
//!   ImageOrientationPatient (row direction × column direction) — the order ITK/GDCM use.
//! - Geometry is in DICOM patient coordinates (LPS, millimetres), as ITK reports it:
//!   `origin` = ImagePositionPatient of slice 0, `axes[0]` = direction of increasing column index
//!   (the first ImageOrientationPatient triplet), `axes[1]` = increasing row index (second
//!   triplet), `axes[2]` = increasing slice index (the normal). `spacing` is `(x, y, z)`.
//! - Values are modality values: RescaleSlope/RescaleIntercept applied per slice (HU for CT).
//!   When every slope and intercept is an integer the volume keeps an integer kind (as GDCM does:
//!   int16, else uint16, else int32, by the value range), otherwise it is float32. The reader
//!   keeps the values in that type ([`DicomVolume`]); [`read_series`] widens them to f64.
//! - MONOCHROME1 (low values shown bright) is inverted within the volume's value range
//!   (`v' = min + max − v`) so that high always means bright, with a warning.
//!
//! Transfer syntaxes enabled (decoded in pure Rust by dicom-rs — its `native` feature set and the
//! `openjp2` JPEG 2000 decoder, a Rust port of OpenJPEG — so the default build needs no C
//! library): implicit/explicit VR little endian, explicit VR big endian (retired), deflated
//! explicit VR little endian, JPEG baseline (8-bit), JPEG extended (8-bit only: the pure-Rust
//! decoder refuses 12-bit samples, reported as [`DicomError::Decode`]), JPEG lossless (process 14,
//! and selection value 1), RLE lossless, JPEG 2000 (lossless and lossy, Part 1 and Part 2) and
//! HTJ2K. JPEG-LS needs the CharLS C++ library, which the `charls` crate builds from its own
//! sources with CMake: it is enabled only with the cargo feature `jpegls`. Not enabled: JPEG-LS
//! in the default build, JPEG XL, MPEG/HEVC video; files in those syntaxes give
//! [`DicomError::UnsupportedTransferSyntax`] naming the syntax.
//!
//! Errors name the file and the attribute; inconsistencies within a series (sizes, orientations,
//! spacing, gaps, duplicate positions) are errors rather than silently resampled volumes. The
//! library never prints: warnings are returned in [`DicomSeries::warnings`].

pub mod read;
pub mod seg;
mod uid;
mod voxels;

pub use read::{list_series, read_series, read_series_compact, SeriesSummary};
pub use seg::{write_nifti_with_geometry, write_seg, SegOptions};
pub use voxels::DicomVolume;

use crate::io::nifti::NiftiVolume;
use std::fmt;
use std::path::PathBuf;

/// Transfer syntaxes every build decodes: `(uid, name)`.
pub const SUPPORTED_TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    (
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
    ),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    (
        "1.2.840.10008.1.2.4.51",
        "JPEG Extended (Process 2 & 4; 8-bit only)",
    ),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless (Process 14)"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless (Process 14, SV1)"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
    ("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Lossless"),
    ("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2"),
    ("1.2.840.10008.1.2.4.201", "HTJ2K Lossless"),
    ("1.2.840.10008.1.2.4.202", "HTJ2K Lossless RPCL"),
    ("1.2.840.10008.1.2.4.203", "HTJ2K"),
];

/// JPEG-LS: decoded only in builds with the cargo feature `jpegls` (CharLS, C++).
pub const JPEG_LS_TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
];

/// Names of well-known transfer syntaxes no build decodes (for error messages).
const KNOWN_UNSUPPORTED: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"),
    ("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression"),
    ("1.2.840.10008.1.2.4.112", "JPEG XL"),
    ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile"),
    ("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264"),
    ("1.2.840.10008.1.2.4.107", "HEVC/H.265"),
];

/// Whether this build decodes transfer syntax `uid`.
pub fn is_supported_transfer_syntax(uid: &str) -> bool {
    SUPPORTED_TRANSFER_SYNTAXES.iter().any(|(u, _)| *u == uid)
        || (cfg!(feature = "jpegls") && JPEG_LS_TRANSFER_SYNTAXES.iter().any(|(u, _)| *u == uid))
}

/// Name of a transfer syntax UID (`"unknown"` when not listed).
pub fn transfer_syntax_name(uid: &str) -> &'static str {
    SUPPORTED_TRANSFER_SYNTAXES
        .iter()
        .chain(JPEG_LS_TRANSFER_SYNTAXES)
        .chain(KNOWN_UNSUPPORTED)
        .find(|(u, _)| *u == uid)
        .map_or("unknown", |(_, n)| n)
}

/// Patient-space geometry of a volume (LPS, mm); see the module doc for the axes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub origin: [f64; 3],
    /// Unit vectors of increasing x (column), y (row) and z (slice) index.
    pub axes: [[f64; 3]; 3],
    /// `(x, y, z)` in mm.
    pub spacing: [f64; 3],
}

impl Geometry {
    /// Position (LPS) of voxel `(x, y, z)`.
    pub fn position(&self, x: f64, y: f64, z: f64) -> [f64; 3] {
        let idx = [x, y, z];
        std::array::from_fn(|r| {
            self.origin[r]
                + (0..3)
                    .map(|a| self.axes[a][r] * self.spacing[a] * idx[a])
                    .sum::<f64>()
        })
    }

    /// The NIfTI (RAS) affine rows `[3][4]`: LPS → RAS negates the first two rows.
    pub fn ras_affine(&self) -> [[f64; 4]; 3] {
        let sign = [-1.0, -1.0, 1.0];
        std::array::from_fn(|r| {
            let mut row = [0.0; 4];
            for (a, v) in row.iter_mut().take(3).enumerate() {
                *v = sign[r] * self.axes[a][r] * self.spacing[a];
            }
            row[3] = sign[r] * self.origin[r];
            row
        })
    }
}

/// Study/patient attributes copied into derived objects (SEG).
#[derive(Debug, Clone, Default)]
pub struct SeriesInfo {
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub frame_of_reference_uid: Option<String>,
    pub modality: String,
    pub series_description: String,
    pub series_number: Option<i64>,
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    pub specific_character_set: Option<String>,
}

/// The source object of one slice of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceSource {
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// 1-based frame number inside a multi-frame object; `None` for single-frame objects.
    pub frame: Option<u32>,
}

/// A series read into a volume: a [`NiftiVolume`] (f64 values, from [`read_series`]) or a
/// compact [`DicomVolume`] (from [`read_series_compact`]).
#[derive(Debug, Clone)]
pub struct DicomSeries<V = NiftiVolume> {
    pub volume: V,
    pub geometry: Geometry,
    pub info: SeriesInfo,
    /// One entry per slice `z` of the volume.
    pub slices: Vec<SliceSource>,
    pub warnings: Vec<DicomWarning>,
}

/// Something the reader did that the user should know about.
#[derive(Debug, Clone, PartialEq)]
pub enum DicomWarning {
    /// Files that are not DICOM (or DICOMDIR, or objects without an image) were ignored.
    SkippedFiles { count: usize, example: PathBuf },
    /// Slice steps vary slightly; the mean step was used.
    SpacingVaries { min: f64, max: f64, used: f64 },
    /// MONOCHROME1 was inverted.
    Monochrome1Inverted,
    /// A lone image without ImagePositionPatient/ImageOrientationPatient: identity geometry.
    NoGeometry { path: PathBuf },
    /// No PixelSpacing: 1 mm assumed.
    NoPixelSpacing { path: PathBuf },
    /// One slice: the slice spacing comes from this attribute (or 1 mm).
    SingleSlice {
        spacing_from: &'static str,
        spacing: f64,
    },
}

impl fmt::Display for DicomWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DicomWarning::SkippedFiles { count, example } => write!(
                f,
                "{count} file(s) that are not DICOM images were ignored (e.g. {})",
                example.display()
            ),
            DicomWarning::SpacingVaries { min, max, used } => write!(
                f,
                "slice steps vary between {min:.4} and {max:.4} mm (within 5%); used the mean step {used:.4} mm"
            ),
            DicomWarning::Monochrome1Inverted => f.write_str(
                "MONOCHROME1 (low values bright): values inverted within the volume's range so that high is bright",
            ),
            DicomWarning::NoGeometry { path } => write!(
                f,
                "{}: no ImagePositionPatient/ImageOrientationPatient; identity orientation and origin 0 assumed",
                path.display()
            ),
            DicomWarning::NoPixelSpacing { path } => write!(
                f,
                "{}: no PixelSpacing; 1 mm assumed",
                path.display()
            ),
            DicomWarning::SingleSlice { spacing_from, spacing } => write!(
                f,
                "single-slice series: slice spacing {spacing} mm taken from {spacing_from}"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no DICOM image files found ({files} file(s) looked at; files must start with the 128-byte preamble and `DICM`)")]
    NoDicom { dir: PathBuf, files: usize },
    #[error("{dir} holds {} series; choose one with --series UID:\n{}", .series.len(), format_series_list(.series))]
    SeveralSeries {
        dir: PathBuf,
        series: Vec<SeriesSummary>,
    },
    #[error("{dir}: no series with SeriesInstanceUID {uid}; the folder holds:\n{}", format_series_list(.available))]
    SeriesNotFound {
        dir: PathBuf,
        uid: String,
        available: Vec<SeriesSummary>,
    },
    #[error("{path}: not readable as DICOM (truncated or damaged file): {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("{path}: pixel data truncated: {detail}")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path}: no pixel data (PixelData (7FE0,0010) is missing or empty)")]
    NoPixelData { path: PathBuf },
    #[error("{path}: transfer syntax {name} ({uid}) is not supported by this build (supported: native/deflate little endian, big endian, JPEG baseline/extended/lossless, RLE lossless, JPEG 2000, HTJ2K; JPEG-LS only in builds with the cargo feature `jpegls`); convert it first, e.g. `gdcmconv --raw` or `dcmdjpls`")]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: &'static str,
    },
    #[error("{path}: unsupported pixel format: {detail}")]
    UnsupportedPixels { path: PathBuf, detail: String },
    #[error("{path}: missing attribute {attribute}")]
    MissingAttribute {
        path: PathBuf,
        attribute: &'static str,
    },
    #[error("{path}: bad attribute {attribute}: {detail}")]
    BadAttribute {
        path: PathBuf,
        attribute: &'static str,
        detail: String,
    },
    #[error("{path}: image size {found:?} (rows, columns) differs from the series' {expected:?}")]
    MixedSize {
        path: PathBuf,
        expected: (usize, usize),
        found: (usize, usize),
    },
    #[error("{path}: ImageOrientationPatient {found:?} differs from the series' {expected:?} (a localizer or a second stack? choose files or split the series)")]
    MixedOrientation {
        path: PathBuf,
        expected: [f64; 6],
        found: [f64; 6],
    },
    #[error("{dir}: non-uniform slice spacing: steps between {min:.4} and {max:.4} mm (more than 5% apart); a volume with one slice spacing would misplace slices")]
    NonUniformSpacing { dir: PathBuf, min: f64, max: f64 },
    #[error("{dir}: missing slices: {detail}")]
    MissingSlices { dir: PathBuf, detail: String },
    #[error("{a} and {b} lie at the same position {position:?} (several acquisitions/echoes in one series?)")]
    DuplicatePosition {
        a: PathBuf,
        b: PathBuf,
        position: [f64; 3],
    },
    #[error("{path}: cannot decode pixel data: {detail}")]
    Decode { path: PathBuf, detail: String },
    #[error("{path}: cannot write: {detail}")]
    Write { path: PathBuf, detail: String },
}

pub type Result<T> = std::result::Result<T, DicomError>;

/// Summary lines for a list of series (used by errors and `--series` listings).
pub fn format_series_list(series: &[SeriesSummary]) -> String {
    series
        .iter()
        .map(|s| {
            format!(
                "  {}  {:<3} {:>5} image(s)  {}",
                s.uid, s.modality, s.images, s.description
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
