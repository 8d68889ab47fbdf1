//! Reading a folder of DICOM files into one volume (see the module doc of [`super`]).
//!
//! Two passes: every file's header (up to PixelData) is parsed once to group files by
//! SeriesInstanceUID and check the geometry; then only the pixel data of the chosen series' files
//! is read, in parallel, each file straight into its planes of one compact volume
//! ([`DicomVolume`]: int16 unless the values need more). Native little-endian pixel data is read
//! from its offset at the end of the file without parsing the file again; other transfer
//! syntaxes (and files laid out otherwise) are parsed in full and decoded by dicom-pixeldata.

use super::voxels::{DicomVolume, Store};
use super::{
    is_supported_transfer_syntax, transfer_syntax_name, DicomError, DicomSeries, DicomWarning,
    Geometry, Result, SeriesInfo, SliceSource,
};
use crate::io::npy::NpyData;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Orientation components may differ by this much within a series (DS rounding).
const ORIENTATION_TOL: f64 = 1e-3;
/// Slice steps within this relative deviation of each other are uniform; up to
/// [`SPACING_WARN`] they give a warning, beyond it an error.
const SPACING_EXACT: f64 = 1e-3;
const SPACING_WARN: f64 = 0.05;
/// Folder depth searched for files.
const MAX_DEPTH: usize = 8;

/// One series found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSummary {
    pub uid: String,
    pub modality: String,
    /// Images (frames) in the series.
    pub images: usize,
    pub description: String,
}

/// Image headers by SeriesInstanceUID.
type Groups = BTreeMap<String, Vec<Header>>;
/// The planes of the volume one file fills: `(frame in the file, plane)`.
type Planes<'a, T> = Vec<(usize, &'a mut [T])>;
/// Transfer syntaxes whose pixel data is stored as plain little-endian samples.
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Geometry and rescale of one frame.
#[derive(Debug, Clone, Default)]
struct FrameGeo {
    ipp: Option<[f64; 3]>,
    iop: Option<[f64; 6]>,
    pixel_spacing: Option<[f64; 2]>,
    thickness: Option<f64>,
    between: Option<f64>,
    slope: f64,
    intercept: f64,
}

/// What the first pass learns about a file.
#[derive(Debug, Clone)]
struct Header {
    path: PathBuf,
    ts: String,
    sop_class: String,
    sop_instance: String,
    rows: usize,
    cols: usize,
    frames: Vec<FrameGeo>,
    multi_frame: bool,
    pixel: PixelAttrs,
    info: SeriesInfo,
}

/// The Image Pixel attributes, checked by [`layout`] only for the files that are decoded.
#[derive(Debug, Clone, Default)]
struct PixelAttrs {
    samples_per_pixel: Option<i64>,
    photometric: Option<String>,
    bits_allocated: Option<i64>,
    bits_stored: Option<i64>,
    pixel_representation: Option<i64>,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let v = obj.get(tag)?.to_multi_float64().ok()?;
    (!v.is_empty() && v.iter().all(|x| x.is_finite())).then_some(v)
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    floats(obj, tag).map(|v| v[0])
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag)?.items()?.first()
}

fn fixed<const N: usize>(
    v: Option<Vec<f64>>,
    path: &Path,
    attribute: &'static str,
) -> Result<Option<[f64; N]>> {
    match v {
        None => Ok(None),
        Some(v) => {
            <[f64; N]>::try_from(v.as_slice())
                .map(Some)
                .map_err(|_| DicomError::BadAttribute {
                    path: path.to_path_buf(),
                    attribute,
                    detail: format!("{} value(s), expected {N}", v.len()),
                })
        }
    }
}

/// Geometry attributes of a plain (single-frame style) object or of one functional-group item set.
fn frame_geo(
    path: &Path,
    pos: Option<&InMemDicomObject>,
    ori: Option<&InMemDicomObject>,
    meas: Option<&InMemDicomObject>,
    resc: Option<&InMemDicomObject>,
) -> Result<FrameGeo> {
    Ok(FrameGeo {
        ipp: fixed(
            pos.and_then(|o| floats(o, tags::IMAGE_POSITION_PATIENT)),
            path,
            "ImagePositionPatient",
        )?,
        iop: fixed(
            ori.and_then(|o| floats(o, tags::IMAGE_ORIENTATION_PATIENT)),
            path,
            "ImageOrientationPatient",
        )?,
        pixel_spacing: fixed(
            meas.and_then(|o| floats(o, tags::PIXEL_SPACING)),
            path,
            "PixelSpacing",
        )?,
        thickness: meas.and_then(|o| float(o, tags::SLICE_THICKNESS)),
        between: meas.and_then(|o| float(o, tags::SPACING_BETWEEN_SLICES)),
        slope: resc
            .and_then(|o| float(o, tags::RESCALE_SLOPE))
            .filter(|&s| s != 0.0)
            .unwrap_or(1.0),
        intercept: resc
            .and_then(|o| float(o, tags::RESCALE_INTERCEPT))
            .unwrap_or(0.0),
    })
}

/// Per-frame geometry of an enhanced (functional-group) multi-frame object.
fn enhanced_frames(obj: &InMemDicomObject, path: &Path, n: usize) -> Result<Vec<FrameGeo>> {
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    let Some(per) = per else {
        return Err(DicomError::UnsupportedPixels {
            path: path.to_path_buf(),
            detail: format!(
                "multi-frame object ({n} frames) without PerFrameFunctionalGroupsSequence; only enhanced multi-frame objects are supported"
            ),
        });
    };
    if per.len() != n {
        return Err(DicomError::BadAttribute {
            path: path.to_path_buf(),
            attribute: "PerFrameFunctionalGroupsSequence",
            detail: format!("{} item(s) for NumberOfFrames {n}", per.len()),
        });
    }
    per.iter()
        .map(|item| {
            let fg =
                |tag| first_item(item, tag).or_else(|| shared.and_then(|s| first_item(s, tag)));
            frame_geo(
                path,
                fg(tags::PLANE_POSITION_SEQUENCE),
                fg(tags::PLANE_ORIENTATION_SEQUENCE),
                fg(tags::PIXEL_MEASURES_SEQUENCE),
                fg(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE),
            )
        })
        .collect()
}

fn series_info(obj: &InMemDicomObject) -> SeriesInfo {
    let t = |tag| text(obj, tag).unwrap_or_default();
    SeriesInfo {
        series_instance_uid: t(tags::SERIES_INSTANCE_UID),
        study_instance_uid: t(tags::STUDY_INSTANCE_UID),
        frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID),
        modality: t(tags::MODALITY),
        series_description: t(tags::SERIES_DESCRIPTION),
        series_number: int(obj, tags::SERIES_NUMBER),
        patient_name: t(tags::PATIENT_NAME),
        patient_id: t(tags::PATIENT_ID),
        patient_birth_date: t(tags::PATIENT_BIRTH_DATE),
        patient_sex: t(tags::PATIENT_SEX),
        study_date: t(tags::STUDY_DATE),
        study_time: t(tags::STUDY_TIME),
        study_id: t(tags::STUDY_ID),
        accession_number: t(tags::ACCESSION_NUMBER),
        referring_physician_name: t(tags::REFERRING_PHYSICIAN_NAME),
        specific_character_set: obj
            .get(tags::SPECIFIC_CHARACTER_SET)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DicomError + '_ {
    move |source| DicomError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` positioned at `DICM` when it has the 128-byte preamble followed by `DICM`.
fn open_dicm(path: &Path) -> Result<Option<File>> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = [0u8; 132];
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).map_err(io_err(path))? {
            0 => break,
            k => got += k,
        }
    }
    if got < 132 || &buf[128..132] != b"DICM" {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(128)).map_err(io_err(path))?;
    Ok(Some(f))
}

/// First pass over one file (one open, parsed up to PixelData): `Ok(None)` for files that are
/// not DICOM images.
fn read_header(path: &Path) -> Result<Option<Header>> {
    let Some(file) = open_dicm(path)? else {
        return Ok(None);
    };
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .read_preamble(ReadPreamble::Never)
        .from_reader(file)
        .map_err(|e| DicomError::Unreadable {
            path: path.to_path_buf(),
            detail: chain(&e),
        })?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let sop_class = obj
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        .to_string();
    let sop_instance = text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_else(|| {
        obj.meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string()
    });
    // DICOMDIR, reports, structure sets …: not images
    let (Some(rows), Some(cols)) = (int(&obj, tags::ROWS), int(&obj, tags::COLUMNS)) else {
        return Ok(None);
    };
    if sop_class == "1.2.840.10008.1.3.10" {
        return Ok(None);
    }
    let bad_dim = |attribute, v: i64| DicomError::BadAttribute {
        path: path.to_path_buf(),
        attribute,
        detail: format!("{v} is not a positive size"),
    };
    if rows <= 0 {
        return Err(bad_dim("Rows", rows));
    }
    if cols <= 0 {
        return Err(bad_dim("Columns", cols));
    }
    let n_frames = int(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if n_frames < 1 {
        return Err(DicomError::BadAttribute {
            path: path.to_path_buf(),
            attribute: "NumberOfFrames",
            detail: format!("{n_frames}"),
        });
    }
    let enhanced = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .is_some();
    let frames = if n_frames > 1 || enhanced {
        enhanced_frames(&obj, path, n_frames as usize)?
    } else {
        let o = Some(&*obj);
        vec![frame_geo(path, o, o, o, o)?]
    };
    Ok(Some(Header {
        path: path.to_path_buf(),
        ts,
        sop_class,
        sop_instance,
        rows: rows as usize,
        cols: cols as usize,
        frames,
        multi_frame: n_frames > 1 || enhanced,
        pixel: PixelAttrs {
            samples_per_pixel: int(&obj, tags::SAMPLES_PER_PIXEL),
            photometric: text(&obj, tags::PHOTOMETRIC_INTERPRETATION),
            bits_allocated: int(&obj, tags::BITS_ALLOCATED),
            bits_stored: int(&obj, tags::BITS_STORED),
            pixel_representation: int(&obj, tags::PIXEL_REPRESENTATION),
        },
        info: series_info(&obj),
    }))
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| DicomError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, out)?;
            }
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// All image headers under `dir` grouped by series, and the ignored files.
fn scan(dir: &Path) -> Result<(Groups, Vec<PathBuf>)> {
    let mut files = Vec::new();
    if dir.is_file() {
        files.push(dir.to_path_buf());
    } else {
        walk(dir, 0, &mut files)?;
    }
    files.sort();
    let headers: Vec<(PathBuf, Option<Header>)> = files
        .par_iter()
        .map(|p| read_header(p).map(|h| (p.clone(), h)))
        .collect::<Result<_>>()?;
    let mut groups = Groups::new();
    let mut skipped = Vec::new();
    for (p, h) in headers {
        match h {
            Some(h) => groups
                .entry(h.info.series_instance_uid.clone())
                .or_default()
                .push(h),
            None => skipped.push(p),
        }
    }
    if groups.is_empty() {
        return Err(DicomError::NoDicom {
            dir: dir.to_path_buf(),
            files: files.len(),
        });
    }
    Ok((groups, skipped))
}

fn summaries(groups: &Groups) -> Vec<SeriesSummary> {
    groups
        .iter()
        .map(|(uid, hs)| SeriesSummary {
            uid: uid.clone(),
            modality: hs[0].info.modality.clone(),
            images: hs.iter().map(|h| h.frames.len()).sum(),
            description: hs[0].info.series_description.clone(),
        })
        .collect()
}

/// The image series in a folder (searched recursively).
pub fn list_series(dir: impl AsRef<Path>) -> Result<Vec<SeriesSummary>> {
    Ok(summaries(&scan(dir.as_ref())?.0))
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn unit(v: [f64; 3]) -> Option<[f64; 3]> {
    let n = dot(v, v).sqrt();
    (n > 1e-6).then(|| v.map(|x| x / n))
}

/// A frame of the series: which file, which frame in it, and its geometry.
struct Slice<'a> {
    header: &'a Header,
    /// Index of `header` in the series' header list.
    file: usize,
    frame: usize,
    geo: &'a FrameGeo,
}

/// Checks sizes and orientations, sorts along the normal, and works out the geometry.
fn arrange<'a>(
    dir: &Path,
    headers: &'a [Header],
    warnings: &mut Vec<DicomWarning>,
) -> Result<(Vec<Slice<'a>>, Geometry)> {
    let first = &headers[0];
    for h in headers {
        if (h.rows, h.cols) != (first.rows, first.cols) {
            return Err(DicomError::MixedSize {
                path: h.path.clone(),
                expected: (first.rows, first.cols),
                found: (h.rows, h.cols),
            });
        }
        if !is_supported_transfer_syntax(&h.ts) {
            return Err(DicomError::UnsupportedTransferSyntax {
                path: h.path.clone(),
                uid: h.ts.clone(),
                name: transfer_syntax_name(&h.ts),
            });
        }
    }
    let mut slices: Vec<Slice> = headers
        .iter()
        .enumerate()
        .flat_map(|(file, h)| {
            h.frames.iter().enumerate().map(move |(frame, geo)| Slice {
                header: h,
                file,
                frame,
                geo,
            })
        })
        .collect();
    let g0 = slices[0].geo;
    let spacing_xy = match g0.pixel_spacing {
        Some([row_sp, col_sp]) if row_sp > 0.0 && col_sp > 0.0 => [col_sp, row_sp],
        _ => {
            warnings.push(DicomWarning::NoPixelSpacing {
                path: first.path.clone(),
            });
            [1.0, 1.0]
        }
    };
    let single = slices.len() == 1;
    let (iop, ipp0) = match (g0.iop, g0.ipp) {
        (Some(iop), Some(ipp)) => (iop, ipp),
        _ if single => {
            warnings.push(DicomWarning::NoGeometry {
                path: first.path.clone(),
            });
            ([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0; 3])
        }
        (None, _) => {
            return Err(DicomError::MissingAttribute {
                path: first.path.clone(),
                attribute: "ImageOrientationPatient",
            })
        }
        (_, None) => {
            return Err(DicomError::MissingAttribute {
                path: first.path.clone(),
                attribute: "ImagePositionPatient",
            })
        }
    };
    let bad_iop = || DicomError::BadAttribute {
        path: first.path.clone(),
        attribute: "ImageOrientationPatient",
        detail: format!("{iop:?} is not two non-parallel directions"),
    };
    let ax = unit([iop[0], iop[1], iop[2]]).ok_or_else(bad_iop)?;
    let ay = unit([iop[3], iop[4], iop[5]]).ok_or_else(bad_iop)?;
    let az = unit(cross(ax, ay)).ok_or_else(bad_iop)?;
    if single {
        let (spacing_from, sz) = match (g0.between, g0.thickness) {
            (Some(b), _) if b > 0.0 => ("SpacingBetweenSlices", b),
            (_, Some(t)) if t > 0.0 => ("SliceThickness", t),
            _ => ("a default", 1.0),
        };
        warnings.push(DicomWarning::SingleSlice {
            spacing_from,
            spacing: sz,
        });
        let geometry = Geometry {
            origin: ipp0,
            axes: [ax, ay, az],
            spacing: [spacing_xy[0], spacing_xy[1], sz],
        };
        return Ok((slices, geometry));
    }
    for s in &slices {
        let path = &s.header.path;
        let Some(o) = s.geo.iop else {
            return Err(DicomError::MissingAttribute {
                path: path.clone(),
                attribute: "ImageOrientationPatient",
            });
        };
        if o.iter()
            .zip(&iop)
            .any(|(a, b)| (a - b).abs() > ORIENTATION_TOL)
        {
            return Err(DicomError::MixedOrientation {
                path: path.clone(),
                expected: iop,
                found: o,
            });
        }
        if s.geo.ipp.is_none() {
            return Err(DicomError::MissingAttribute {
                path: path.clone(),
                attribute: "ImagePositionPatient",
            });
        }
    }
    let along = |s: &Slice| dot(s.geo.ipp.unwrap_or_default(), az);
    slices.sort_by(|a, b| along(a).total_cmp(&along(b)));
    let d: Vec<f64> = slices
        .windows(2)
        .map(|w| along(&w[1]) - along(&w[0]))
        .collect();
    let mut sorted = d.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    for (i, &step) in d.iter().enumerate() {
        if step <= SPACING_EXACT * median.max(1e-3) {
            return Err(DicomError::DuplicatePosition {
                a: slices[i].header.path.clone(),
                b: slices[i + 1].header.path.clone(),
                position: slices[i + 1].geo.ipp.unwrap_or_default(),
            });
        }
    }
    let gaps: Vec<String> = d
        .iter()
        .enumerate()
        .filter_map(|(i, &step)| {
            let r = step / median;
            let k = r.round();
            (k >= 2.0 && (r - k).abs() < SPACING_WARN).then(|| {
                format!(
                    "{} slice(s) missing between {} and {} ({:.4} mm apart, the series' step is {:.4} mm)",
                    k as usize - 1,
                    slices[i].header.path.display(),
                    slices[i + 1].header.path.display(),
                    step,
                    median
                )
            })
        })
        .collect();
    if !gaps.is_empty() {
        return Err(DicomError::MissingSlices {
            dir: dir.to_path_buf(),
            detail: gaps.join("; "),
        });
    }
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    if (max - min) > SPACING_WARN * median {
        return Err(DicomError::NonUniformSpacing {
            dir: dir.to_path_buf(),
            min,
            max,
        });
    }
    let used = (along(&slices[slices.len() - 1]) - along(&slices[0])) / (slices.len() - 1) as f64;
    if (max - min) > SPACING_EXACT * median {
        warnings.push(DicomWarning::SpacingVaries { min, max, used });
    }
    let geometry = Geometry {
        origin: slices[0].geo.ipp.unwrap_or_default(),
        axes: [ax, ay, az],
        spacing: [spacing_xy[0], spacing_xy[1], used],
    };
    Ok((slices, geometry))
}

/// Pixel layout of a file, checked to be one we convert.
struct Layout {
    bytes: usize,
    bits_stored: u32,
    signed: bool,
    mono1: bool,
}

fn layout(a: &PixelAttrs, path: &Path) -> Result<Layout> {
    let unsupported = |detail: String| DicomError::UnsupportedPixels {
        path: path.to_path_buf(),
        detail,
    };
    let spp = a.samples_per_pixel.unwrap_or(1);
    if spp != 1 {
        return Err(unsupported(format!(
            "SamplesPerPixel {spp} (colour); only greyscale images are supported"
        )));
    }
    let pi = a.photometric.as_deref().unwrap_or("MONOCHROME2");
    if pi != "MONOCHROME1" && pi != "MONOCHROME2" {
        return Err(unsupported(format!(
            "PhotometricInterpretation {pi}; only MONOCHROME1/MONOCHROME2 are supported"
        )));
    }
    let ba = a.bits_allocated.ok_or(DicomError::MissingAttribute {
        path: path.to_path_buf(),
        attribute: "BitsAllocated",
    })?;
    if !matches!(ba, 8 | 16 | 32) {
        return Err(unsupported(format!(
            "BitsAllocated {ba}; 8, 16 and 32 are supported"
        )));
    }
    let bs = a.bits_stored.unwrap_or(ba);
    if bs < 1 || bs > ba {
        return Err(DicomError::BadAttribute {
            path: path.to_path_buf(),
            attribute: "BitsStored",
            detail: format!("{bs} with BitsAllocated {ba}"),
        });
    }
    Ok(Layout {
        bytes: ba as usize / 8,
        bits_stored: bs as u32,
        signed: a.pixel_representation.unwrap_or(0) == 1,
        mono1: pi == "MONOCHROME1",
    })
}

/// Writes the modality values of samples `s` (stored values, already masked / sign-extended to
/// BitsStored) into `out` as `v * slope + intercept` — in integers when `integral` — and returns
/// their range (before the cast to `T`, so that the caller can see whether `T` held them).
fn rescale<T: Store>(
    s: impl Iterator<Item = i64>,
    geo: &FrameGeo,
    integral: bool,
    out: &mut [T],
) -> (f64, f64) {
    if integral {
        let (slope, inter) = (geo.slope as i64, geo.intercept as i64);
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for (o, v) in out.iter_mut().zip(s) {
            let x = v * slope + inter;
            lo = lo.min(x);
            hi = hi.max(x);
            *o = T::from_i64(x);
        }
        (lo as f64, hi as f64)
    } else {
        let (slope, inter) = (geo.slope, geo.intercept);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (o, v) in out.iter_mut().zip(s) {
            let x = v as f64 * slope + inter;
            lo = lo.min(x);
            hi = hi.max(x);
            *o = T::from_f64(x);
        }
        (lo, hi)
    }
}

/// Converts one frame (`raw`: little-endian samples) into `out`: samples masked / sign-extended
/// to BitsStored as GDCM does, then rescaled. Returns the value range.
fn convert_frame<T: Store>(
    raw: &[u8],
    l: &Layout,
    geo: &FrameGeo,
    integral: bool,
    out: &mut [T],
) -> (f64, f64) {
    let shift = 64 - l.bits_stored;
    let sext = move |v: u64| ((v << shift) as i64) >> shift;
    let mask = move |v: u64| ((v << shift) >> shift) as i64;
    let b2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]) as u64;
    let b4 = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64;
    // one monomorphic loop per (sample size, signedness): the per-voxel work stays branch-free
    match (l.bytes, l.signed) {
        (1, true) => rescale(raw.iter().map(|&b| sext(b as u64)), geo, integral, out),
        (1, false) => rescale(raw.iter().map(|&b| mask(b as u64)), geo, integral, out),
        (2, true) => rescale(raw.chunks_exact(2).map(|c| sext(b2(c))), geo, integral, out),
        (2, false) => rescale(raw.chunks_exact(2).map(|c| mask(b2(c))), geo, integral, out),
        (_, true) => rescale(raw.chunks_exact(4).map(|c| sext(b4(c))), geo, integral, out),
        (_, false) => rescale(raw.chunks_exact(4).map(|c| mask(b4(c))), geo, integral, out),
    }
}

/// Reads the `need` bytes of native pixel data straight from the end of the file into
/// `buf[start..start + need]`, returning `start`, when PixelData (with a defined length of
/// `need`, or `need + 1` with the pad byte) is the file's last element — the usual layout.
/// `Ok(None)` when the file is laid out otherwise (the caller then parses it in full).
fn read_native_tail(
    path: &Path,
    need: usize,
    explicit: bool,
    buf: &mut Vec<u8>,
) -> Result<Option<usize>> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let head = if explicit { 12 } else { 8 };
    for vlen in [need, need + 1] {
        if vlen > need && need.is_multiple_of(2) {
            break;
        }
        let Some(start) = len.checked_sub((head + vlen) as u64) else {
            break;
        };
        buf.resize(head + need, 0);
        f.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
        f.read_exact(buf).map_err(io_err(path))?;
        let h = &buf[..head];
        let len_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as usize;
        let ok = h[..4] == [0xE0, 0x7F, 0x10, 0x00]
            && if explicit {
                matches!(&h[4..6], b"OW" | b"OB") && h[6..8] == [0, 0] && len_at(8) == vlen
            } else {
                len_at(4) == vlen
            };
        if ok {
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// Parses a whole file, checking that it has pixel data.
fn open_full(path: &Path) -> Result<dicom_object::DefaultDicomObject> {
    let obj = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| DicomError::Truncated {
            path: path.to_path_buf(),
            detail: chain(&e),
        })?;
    match obj.get(tags::PIXEL_DATA) {
        Some(e) if e.header().len.0 != 0 => Ok(obj),
        _ => Err(DicomError::NoPixelData {
            path: path.to_path_buf(),
        }),
    }
}

/// Second pass over one file: its frames into their planes of the volume. Returns whether it is
/// MONOCHROME1 and the value range. `scratch` is a reusable read buffer.
fn read_frames_into<T: Store>(
    h: &Header,
    planes: Planes<T>,
    integral: bool,
    scratch: &mut Vec<u8>,
) -> Result<(bool, f64, f64)> {
    let path = &h.path;
    let l = match layout(&h.pixel, path) {
        Ok(l) => l,
        Err(e) => {
            open_full(path)?; // a file without pixel data says so first
            return Err(e);
        }
    };
    let frame_len = h.rows * h.cols * l.bytes;
    let need = frame_len * h.frames.len();
    let convert = |data: &[u8]| -> Result<(bool, f64, f64)> {
        if data.len() < need {
            return Err(DicomError::Truncated {
                path: path.clone(),
                detail: format!(
                    "{} byte(s) of pixel data for {} frame(s) of {}×{} at {} byte(s) per sample ({need} needed)",
                    data.len(),
                    h.frames.len(),
                    h.rows,
                    h.cols,
                    l.bytes
                ),
            });
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (f, out) in planes {
            let raw = &data[f * frame_len..(f + 1) * frame_len];
            let (a, b) = convert_frame(raw, &l, &h.frames[f], integral, out);
            lo = lo.min(a);
            hi = hi.max(b);
        }
        Ok((l.mono1, lo, hi))
    };
    let native = h.ts == IMPLICIT_LE || h.ts == EXPLICIT_LE;
    let tail = if native {
        read_native_tail(path, need, h.ts == EXPLICIT_LE, scratch)?
    } else {
        None
    };
    if let Some(start) = tail {
        convert(&scratch[start..start + need])
    } else {
        let obj = open_full(path)?;
        let decoded = obj.decode_pixel_data().map_err(|e| DicomError::Decode {
            path: path.clone(),
            detail: chain(&e),
        })?;
        convert(decoded.data())
    }
}

/// Decodes every slice into a `T` volume; returns it with MONOCHROME1 and the value range.
fn decode_all<T: Store>(
    headers: &[Header],
    slices: &[Slice],
    plane: usize,
    integral: bool,
) -> Result<(Vec<T>, bool, f64, f64)> {
    // calloc'd: pages are mapped on first write, by the thread that decodes into them
    let mut data = vec![T::default(); plane * slices.len()];
    let mut jobs: Vec<(&Header, Planes<T>)> = headers.iter().map(|h| (h, Vec::new())).collect();
    for (s, chunk) in slices.iter().zip(data.chunks_mut(plane)) {
        jobs[s.file].1.push((s.frame, chunk));
    }
    let ranges: Vec<(bool, f64, f64)> = jobs
        .into_par_iter()
        .map_init(Vec::new, |scratch, (h, planes)| {
            read_frames_into(h, planes, integral, scratch)
        })
        .collect::<Result<_>>()?;
    let mono1 = ranges.iter().any(|r| r.0);
    let (lo, hi) = ranges
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
            (a.min(r.1), b.max(r.2))
        });
    Ok((data, mono1, lo, hi))
}

/// Wraps a decoded volume, inverting MONOCHROME1 (`v' = lo + hi − v`) first.
fn finish<T: Store>(mut data: Vec<T>, mono1: bool, lo: f64, hi: f64, integral: bool) -> NpyData {
    if mono1 && integral {
        let s = lo as i64 + hi as i64;
        data.par_iter_mut()
            .for_each(|x| *x = T::from_i64(s - Into::<f64>::into(*x) as i64));
    } else if mono1 {
        data.par_iter_mut()
            .for_each(|x| *x = T::from_f64(lo + hi - Into::<f64>::into(*x)));
    }
    T::wrap(data)
}

/// Decodes the volume in the smallest kind that holds its values: float32 unless every slope and
/// intercept is an integer (as GDCM), else int16, uint16 or int32 by the actual value range. The
/// first decode goes straight into int16 (the usual CT/MR case); only a volume whose values do
/// not fit is decoded again into the wider kind. Returns the voxels and MONOCHROME1.
fn decode_volume(headers: &[Header], slices: &[Slice], plane: usize) -> Result<(NpyData, bool)> {
    let integral = slices
        .iter()
        .all(|s| s.geo.slope.fract() == 0.0 && s.geo.intercept.fract() == 0.0);
    if !integral {
        let (d, mono1, lo, hi) = decode_all::<f32>(headers, slices, plane, false)?;
        return Ok((finish(d, mono1, lo, hi, false), mono1));
    }
    let (d, mono1, lo, hi) = decode_all::<i16>(headers, slices, plane, true)?;
    if lo >= i16::MIN as f64 && hi <= i16::MAX as f64 {
        return Ok((finish(d, mono1, lo, hi, true), mono1));
    }
    drop(d);
    let v = if lo >= 0.0 && hi <= u16::MAX as f64 {
        let (d, ..) = decode_all::<u16>(headers, slices, plane, true)?;
        finish(d, mono1, lo, hi, true)
    } else if lo >= i32::MIN as f64 && hi <= i32::MAX as f64 {
        let (d, ..) = decode_all::<i32>(headers, slices, plane, true)?;
        finish(d, mono1, lo, hi, true)
    } else {
        let (d, ..) = decode_all::<f32>(headers, slices, plane, false)?;
        finish(d, mono1, lo, hi, false)
    };
    Ok((v, mono1))
}

/// Reads one series from `dir` (a folder searched recursively, or one file) into a compact
/// volume. With several series in the folder, `series` (a SeriesInstanceUID) chooses one.
pub fn read_series_compact(
    dir: impl AsRef<Path>,
    series: Option<&str>,
) -> Result<DicomSeries<DicomVolume>> {
    let dir = dir.as_ref();
    let (mut groups, skipped) = scan(dir)?;
    let mut warnings = Vec::new();
    if let Some(example) = skipped.first() {
        warnings.push(DicomWarning::SkippedFiles {
            count: skipped.len(),
            example: example.clone(),
        });
    }
    let headers = match series {
        Some(uid) => match groups.remove(uid) {
            Some(h) => h,
            None => {
                return Err(DicomError::SeriesNotFound {
                    dir: dir.to_path_buf(),
                    uid: uid.to_string(),
                    available: summaries(&groups),
                })
            }
        },
        None if groups.len() > 1 => {
            return Err(DicomError::SeveralSeries {
                dir: dir.to_path_buf(),
                series: summaries(&groups),
            })
        }
        None => groups.into_values().next().unwrap_or_default(),
    };
    let (slices, geometry) = arrange(dir, &headers, &mut warnings)?;
    let (rows, cols) = (headers[0].rows, headers[0].cols);
    let (voxels, mono1) = decode_volume(&headers, &slices, rows * cols)?;
    if mono1 {
        warnings.push(DicomWarning::Monochrome1Inverted);
    }
    let sources = slices
        .iter()
        .map(|s| SliceSource {
            path: s.header.path.clone(),
            sop_class_uid: s.header.sop_class.clone(),
            sop_instance_uid: s.header.sop_instance.clone(),
            frame: s.header.multi_frame.then_some(s.frame as u32 + 1),
        })
        .collect();
    let info = headers[0].info.clone();
    Ok(DicomSeries {
        volume: DicomVolume {
            shape: [slices.len(), rows, cols],
            voxels,
            spacing: geometry.spacing,
        },
        geometry,
        info,
        slices: sources,
        warnings,
    })
}

/// [`read_series_compact`] with the volume widened to f64 ([`DicomVolume::to_nifti`]), for code
/// that takes a [`crate::io::nifti::NiftiVolume`].
pub fn read_series(dir: impl AsRef<Path>, series: Option<&str>) -> Result<DicomSeries> {
    let s = read_series_compact(dir, series)?;
    Ok(DicomSeries {
        volume: s.volume.to_nifti(),
        geometry: s.geometry,
        info: s.info,
        slices: s.slices,
        warnings: s.warnings,
    })
}
