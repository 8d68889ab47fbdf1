//! Writing a label volume as a DICOM Segmentation (binary SEG) on top of its source series, and
//! as NIfTI with the series' geometry.
//!
//! The SEG holds one segment per label `1..=n` (named from [`SegOptions::label_names`]), one
//! 1-bit frame per (segment, slice) that holds voxels of the segment (an empty segment keeps one
//! empty frame so that it stays referenced). Each frame records its ImagePositionPatient and the
//! source SOP instance it was derived from; orientation and pixel spacing are shared. Study,
//! patient and frame of reference come from the source series, so viewers overlay it on the
//! images. Written as explicit VR little endian, through a temporary file and a rename.

use super::uid::{new_uid, now_da_tm};
use super::{DicomError, DicomSeries, Geometry, Result};
use crate::io::nifti::{write_nifti_gz_affine, NiftiElement};
use dicom_core::value::DataSetSequence;
use dicom_core::{dicom_value, DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::Path;

const SEG_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.66.4";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Implementation Class UID of this writer (a fixed UUID-derived UID).
const IMPLEMENTATION_UID: &str = "2.25.119798678713667997418053329795829252554";

/// What to put in the SEG besides the masks.
#[derive(Debug, Clone)]
pub struct SegOptions {
    /// Name of label `i + 1`; labels beyond the list are called "Segment `k`".
    pub label_names: Vec<String>,
    pub series_description: String,
    pub series_number: i64,
    pub algorithm_name: String,
}

impl Default for SegOptions {
    fn default() -> Self {
        SegOptions {
            label_names: Vec::new(),
            series_description: "MedSAM segmentation".into(),
            series_number: 901,
            algorithm_name: "MedSAM".into(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegSummary {
    pub segments: usize,
    pub frames: usize,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
}

/// A decimal string (DS, at most 16 characters).
fn ds(v: f64) -> String {
    let s = format!("{v}");
    if s.len() <= 16 {
        return s;
    }
    for p in (0..=14).rev() {
        let t = format!("{v:.p$}");
        let t = if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t
        };
        if t.len() <= 16 {
            return t;
        }
    }
    format!("{v:.6e}")
}

fn put_str(o: &mut InMemDicomObject, tag: Tag, vr: VR, s: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(s)));
}

fn put_strs(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &[String]) {
    o.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(v.iter().cloned().collect()),
    ));
}

fn put_ds(o: &mut InMemDicomObject, tag: Tag, v: &[f64]) {
    let s: Vec<String> = v.iter().map(|&x| ds(x)).collect();
    put_strs(o, tag, VR::DS, &s);
}

fn put_us(o: &mut InMemDicomObject, tag: Tag, v: u16) {
    o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
}

fn put_seq(o: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    o.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn item(build: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    build(&mut o);
    o
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(|o| {
        put_str(o, tags::CODE_VALUE, VR::SH, value);
        put_str(o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
        put_str(o, tags::CODE_MEANING, VR::LO, meaning);
    })
}

/// Copies the patient, study and frame-of-reference attributes of the source.
fn put_source_modules(o: &mut InMemDicomObject, s: &DicomSeries, for_uid: &str) {
    let i = &s.info;
    put_str(o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put_str(o, tags::PATIENT_NAME, VR::PN, &i.patient_name);
    put_str(o, tags::PATIENT_ID, VR::LO, &i.patient_id);
    put_str(o, tags::PATIENT_BIRTH_DATE, VR::DA, &i.patient_birth_date);
    put_str(o, tags::PATIENT_SEX, VR::CS, &i.patient_sex);
    put_str(o, tags::STUDY_INSTANCE_UID, VR::UI, &i.study_instance_uid);
    put_str(o, tags::STUDY_DATE, VR::DA, &i.study_date);
    put_str(o, tags::STUDY_TIME, VR::TM, &i.study_time);
    put_str(o, tags::STUDY_ID, VR::SH, &i.study_id);
    put_str(o, tags::ACCESSION_NUMBER, VR::SH, &i.accession_number);
    put_str(
        o,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        &i.referring_physician_name,
    );
    put_str(o, tags::FRAME_OF_REFERENCE_UID, VR::UI, for_uid);
    put_str(o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
}

/// One segment's description.
fn segment_item(k: u16, name: &str, algorithm: &str) -> InMemDicomObject {
    item(|o| {
        put_us(o, tags::SEGMENT_NUMBER, k);
        put_str(o, tags::SEGMENT_LABEL, VR::LO, name);
        put_str(o, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
        put_str(o, tags::SEGMENT_ALGORITHM_NAME, VR::LO, algorithm);
        // the generic "Tissue" category/type (SNOMED CT 85756007), as 3D Slicer uses by default
        put_seq(
            o,
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![code("85756007", "SCT", "Tissue")],
        );
        put_seq(
            o,
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            vec![code("85756007", "SCT", "Tissue")],
        );
    })
}

/// The per-frame functional groups of the frame of segment `k` on slice `z`.
fn frame_item(s: &DicomSeries, k: u16, z: usize) -> InMemDicomObject {
    let src = &s.slices[z];
    let pos = s.geometry.position(0.0, 0.0, z as f64);
    item(|o| {
        let source = item(|r| {
            put_str(
                r,
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                &src.sop_class_uid,
            );
            put_str(
                r,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &src.sop_instance_uid,
            );
            if let Some(f) = src.frame {
                r.put(DataElement::new(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    PrimitiveValue::from(f.to_string()),
                ));
            }
            put_seq(
                r,
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![code(
                    "121322",
                    "DCM",
                    "Source image for image processing operation",
                )],
            );
        });
        let derivation = item(|d| {
            put_seq(
                d,
                tags::DERIVATION_CODE_SEQUENCE,
                vec![code("113076", "DCM", "Segmentation")],
            );
            put_seq(d, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
        });
        put_seq(o, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
        let content = item(|c| {
            c.put(DataElement::new(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                dicom_value!(U32, [k as u32, z as u32 + 1]),
            ));
        });
        put_seq(o, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
        let plane = item(|p| put_ds(p, tags::IMAGE_POSITION_PATIENT, &pos));
        put_seq(o, tags::PLANE_POSITION_SEQUENCE, vec![plane]);
        let seg_id = item(|i| put_us(i, tags::REFERENCED_SEGMENT_NUMBER, k));
        put_seq(o, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![seg_id]);
    })
}

fn shared_item(g: &Geometry) -> InMemDicomObject {
    item(|o| {
        let measures = item(|m| {
            put_ds(m, tags::PIXEL_SPACING, &[g.spacing[1], g.spacing[0]]);
            put_ds(m, tags::SLICE_THICKNESS, &[g.spacing[2]]);
            put_ds(m, tags::SPACING_BETWEEN_SLICES, &[g.spacing[2]]);
        });
        put_seq(o, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
        let [x, y, _] = g.axes;
        let orient = item(|p| {
            put_ds(
                p,
                tags::IMAGE_ORIENTATION_PATIENT,
                &[x[0], x[1], x[2], y[0], y[1], y[2]],
            )
        });
        put_seq(o, tags::PLANE_ORIENTATION_SEQUENCE, vec![orient]);
    })
}

fn dimension_index(org: &str, pointer: Tag, group: Tag, label: &str) -> InMemDicomObject {
    item(|o| {
        put_str(o, tags::DIMENSION_ORGANIZATION_UID, VR::UI, org);
        o.put(DataElement::new(
            tags::DIMENSION_INDEX_POINTER,
            VR::AT,
            dicom_value!(Tags, [pointer]),
        ));
        o.put(DataElement::new(
            tags::FUNCTIONAL_GROUP_POINTER,
            VR::AT,
            dicom_value!(Tags, [group]),
        ));
        put_str(o, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    })
}

/// Frames `(segment, z)` to store, in order.
fn frame_list(labels: &[u8], plane: usize, depth: usize, segments: u16) -> Vec<(u16, usize)> {
    let mut frames = Vec::new();
    for k in 1..=segments {
        let before = frames.len();
        for z in 0..depth {
            if labels[z * plane..(z + 1) * plane]
                .iter()
                .any(|&v| v as u16 == k)
            {
                frames.push((k, z));
            }
        }
        if frames.len() == before {
            frames.push((k, 0));
        }
    }
    frames
}

/// Packs the 1-bit frames back to back, least significant bit first (PS3.5 8.1.1), padded to
/// an even length.
fn pack_frames(labels: &[u8], plane: usize, frames: &[(u16, usize)]) -> Vec<u8> {
    let bits = frames.len() * plane;
    let mut out = vec![0u8; bits.div_ceil(8).next_multiple_of(2)];
    for (f, &(k, z)) in frames.iter().enumerate() {
        let base = f * plane;
        for (i, &v) in labels[z * plane..(z + 1) * plane].iter().enumerate() {
            if v as u16 == k {
                let b = base + i;
                out[b / 8] |= 1 << (b % 8);
            }
        }
    }
    out
}

/// Writes `labels` (`(z, y, x)` like `series.volume`, 0 = background) as a binary DICOM SEG
/// referencing `series`.
pub fn write_seg(
    path: impl AsRef<Path>,
    series: &DicomSeries,
    labels: &[u8],
    opts: &SegOptions,
) -> Result<SegSummary> {
    let path = path.as_ref();
    let [depth, rows, cols] = series.volume.shape;
    let plane = rows * cols;
    let bad = |detail: String| DicomError::Write {
        path: path.to_path_buf(),
        detail,
    };
    if labels.len() != depth * plane || series.slices.len() != depth {
        return Err(bad(format!(
            "{} label voxels for a {depth}×{rows}×{cols} series",
            labels.len()
        )));
    }
    if rows > u16::MAX as usize || cols > u16::MAX as usize {
        return Err(bad(format!(
            "{rows}×{cols} exceeds the 65535 rows/columns limit"
        )));
    }
    let max_label = labels.iter().copied().max().unwrap_or(0) as usize;
    let segments = max_label.max(opts.label_names.len());
    if segments == 0 {
        return Err(bad(
            "no labels to write (all voxels are 0 and no label names given)".into(),
        ));
    }
    let frames = frame_list(labels, plane, depth, segments as u16);
    let sop = new_uid();
    let series_uid = new_uid();
    let org = new_uid();
    let for_uid = series
        .info
        .frame_of_reference_uid
        .clone()
        .unwrap_or_else(new_uid);
    let (date, time) = now_da_tm();

    let mut o = InMemDicomObject::new_empty();
    put_source_modules(&mut o, series, &for_uid);
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, SEG_SOP_CLASS);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop);
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    put_str(&mut o, tags::MODALITY, VR::CS, "SEG");
    put_str(
        &mut o,
        tags::SERIES_NUMBER,
        VR::IS,
        &opts.series_number.to_string(),
    );
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &opts.series_description,
    );
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut o, tags::SERIES_DATE, VR::DA, &date);
    put_str(&mut o, tags::SERIES_TIME, VR::TM, &time);
    // General / Enhanced General Equipment
    put_str(&mut o, tags::MANUFACTURER, VR::LO, "medsam-rs");
    put_str(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, "medsam");
    put_str(&mut o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    // Segmentation Image module
    put_strs(
        &mut o,
        tags::IMAGE_TYPE,
        VR::CS,
        &["DERIVED".into(), "PRIMARY".into()],
    );
    put_str(&mut o, tags::CONTENT_LABEL, VR::CS, "MEDSAM");
    put_str(
        &mut o,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        &opts.series_description,
    );
    put_str(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, "");
    put_str(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    let segs: Vec<InMemDicomObject> = (1..=segments)
        .map(|k| {
            let name = opts
                .label_names
                .get(k - 1)
                .cloned()
                .unwrap_or_else(|| format!("Segment {k}"));
            segment_item(k as u16, &name, &opts.algorithm_name)
        })
        .collect();
    put_seq(&mut o, tags::SEGMENT_SEQUENCE, segs);
    // Image Pixel
    put_us(&mut o, tags::SAMPLES_PER_PIXEL, 1);
    put_str(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_us(&mut o, tags::ROWS, rows as u16);
    put_us(&mut o, tags::COLUMNS, cols as u16);
    put_us(&mut o, tags::BITS_ALLOCATED, 1);
    put_us(&mut o, tags::BITS_STORED, 1);
    put_us(&mut o, tags::HIGH_BIT, 0);
    put_us(&mut o, tags::PIXEL_REPRESENTATION, 0);
    put_str(
        &mut o,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    );
    // Multi-frame Dimension module: frames indexed by (segment, position)
    put_seq(
        &mut o,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(|i| {
            put_str(i, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &org)
        })],
    );
    put_str(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
    put_seq(
        &mut o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension_index(
                &org,
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "ReferencedSegmentNumber",
            ),
            dimension_index(
                &org,
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "ImagePositionPatient",
            ),
        ],
    );
    // Functional groups
    put_seq(
        &mut o,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_item(&series.geometry)],
    );
    let per: Vec<InMemDicomObject> = frames
        .iter()
        .map(|&(k, z)| frame_item(series, k, z))
        .collect();
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per);
    // Common Instance Reference: every source instance
    let mut seen = std::collections::BTreeSet::new();
    let refs: Vec<InMemDicomObject> = series
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.clone()))
        .map(|s| {
            item(|r| {
                put_str(r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &s.sop_class_uid);
                put_str(
                    r,
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &s.sop_instance_uid,
                );
            })
        })
        .collect();
    let ref_series = item(|r| {
        put_str(
            r,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &series.info.series_instance_uid,
        );
        put_seq(r, tags::REFERENCED_INSTANCE_SEQUENCE, refs);
    });
    put_seq(&mut o, tags::REFERENCED_SERIES_SEQUENCE, vec![ref_series]);
    let pixels = pack_frames(labels, plane, &frames);
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pixels.into()),
    ));

    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(SEG_SOP_CLASS)
        .media_storage_sop_instance_uid(sop.as_str())
        .transfer_syntax(EXPLICIT_VR_LE)
        .implementation_class_uid(IMPLEMENTATION_UID)
        .implementation_version_name("MEDSAM_RS")
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let file = o.with_exact_meta(meta);
    crate::io::atomic::write_atomic(
        path,
        |_, e| bad(e.to_string()),
        |w| file.write_all(w).map_err(|e| bad(e.to_string())),
    )?;
    Ok(SegSummary {
        segments,
        frames: frames.len(),
        sop_instance_uid: sop,
        series_instance_uid: series_uid,
    })
}

/// Writes a `(z, y, x)` volume (labels, or the image itself) as `.nii.gz` with the series'
/// geometry (RAS affine from the LPS origin and axes), so it overlays the series in NIfTI viewers.
pub fn write_nifti_with_geometry<T: NiftiElement>(
    path: impl AsRef<Path>,
    shape: [usize; 3],
    labels: &[T],
    geometry: &Geometry,
) -> Result<()> {
    let path = path.as_ref();
    write_nifti_gz_affine(
        path,
        shape,
        labels,
        geometry.spacing,
        Some(geometry.ras_affine()),
    )
    .map_err(|e| DicomError::Write {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_fits_16_chars() {
        assert_eq!(ds(1.5), "1.5");
        assert_eq!(ds(-158.135803), "-158.135803");
        let s = ds(std::f64::consts::PI * 1000.0);
        assert!(s.len() <= 16, "{s}");
        assert!((s.parse::<f64>().unwrap() - std::f64::consts::PI * 1000.0).abs() < 1e-9);
    }

    #[test]
    fn packing_is_lsb_first_and_frames_are_contiguous() {
        // 2 slices of 3 pixels; label 1 at (0, 0) and (1, 2), label 2 nowhere
        let labels = [1, 0, 0, 0, 0, 1];
        let frames = frame_list(&labels, 3, 2, 2);
        assert_eq!(frames, vec![(1, 0), (1, 1), (2, 0)]);
        let packed = pack_frames(&labels, 3, &frames);
        // bits: frame0 = 1,0,0 ; frame1 = 0,0,1 ; frame2 = 0,0,0 -> bit0 and bit5
        assert_eq!(packed, vec![0b0010_0001, 0]);
    }
}
