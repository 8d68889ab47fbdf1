//! DICOM in and out (`medsam::io::dicom`) on the fixtures of tests/fixtures/make_dicom_fixtures.py:
//! a CT series written from the repo's NIfTI test data reads back as that NIfTI (values,
//! spacing, LPS orientation); an oblique series, an enhanced multi-frame object, MONOCHROME1 and
//! pydicom's bundled files (explicit/implicit VR, RLE, deflate) decode as pydicom decodes them;
//! every bad input gives its named error. The SEG we write is read back here, by highdicom/pydicom
//! (tests/fixtures/check_dicom_seg.py through `MEDSAM_PYTHON`) and by `dciodvfy` (dicom3tools)
//! when they are installed — otherwise those checks print "SKIPPED: ...".

#[path = "common/json_numbers.rs"]
mod json_numbers;
#[path = "common/process.rs"]
mod process;
use medsam::io::dicom::{
    list_series, read_series, read_series_compact, write_nifti_with_geometry, write_seg,
    DicomError, DicomSeries, DicomWarning, SegOptions,
};
use medsam::io::nifti::{read_nifti, NiftiVolume, PixelKind};
use process::{output_text, python_importing};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fx(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn json(p: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fx(p)).unwrap()).unwrap()
}

fn vec3(v: &serde_json::Value) -> [f64; 3] {
    std::array::from_fn(|i| v[i].as_f64().unwrap())
}

fn close3(what: &str, got: [f64; 3], want: [f64; 3], tol: f64) {
    for i in 0..3 {
        assert!(
            (got[i] - want[i]).abs() <= tol,
            "{what}: got {got:?}, want {want:?}"
        );
    }
}

/// Shape, spacing, origin and axes against the fixture's JSON (ITK's view of the NIfTI).
fn check_geometry(s: &DicomSeries, meta: &serde_json::Value) {
    assert_eq!(
        s.volume.shape.to_vec(),
        json_numbers::usizes(&meta["shape_zyx"])
    );
    close3("spacing", s.geometry.spacing, vec3(&meta["spacing"]), 1e-5);
    close3("origin", s.geometry.origin, vec3(&meta["origin"]), 1e-5);
    for a in 0..3 {
        close3(
            &format!("axis {a}"),
            s.geometry.axes[a],
            vec3(&meta["direction_columns"][a]),
            1e-6,
        );
    }
}

/// The series `dicom/<name>`, its JSON and the NIfTI it was written from, after checking the
/// series' geometry against the JSON.
fn series_with_its_nifti(name: &str) -> (DicomSeries, serde_json::Value, NiftiVolume) {
    let s = read_series(fx(&format!("dicom/{name}")), None).unwrap();
    let meta = json(&format!("dicom/{name}.json"));
    let nii = read_nifti(fx(meta["nifti"].as_str().unwrap())).unwrap();
    check_geometry(&s, &meta);
    (s, meta, nii)
}

#[test]
fn ct_series_reads_back_as_the_nifti_it_came_from() {
    let (s, meta, nii) = series_with_its_nifti("ct_case01");
    assert_eq!(s.volume.shape, nii.shape);
    assert_eq!(
        s.volume.data, nii.data,
        "HU values (uint16 + intercept -1024)"
    );
    assert_eq!(s.volume.kind, PixelKind::I16);
    for i in 0..3 {
        assert!((s.volume.spacing[i] - nii.spacing[i]).abs() < 1e-5);
    }
    assert_eq!(
        s.info.series_instance_uid,
        meta["series_uid"].as_str().unwrap()
    );
    assert_eq!(s.info.modality, "CT");
    // file names run against slice order: slice z comes from the instance numbered z + 1
    let inst: Vec<String> = s
        .slices
        .iter()
        .map(|x| x.sop_instance_uid.clone())
        .collect();
    for (z, uid) in inst.iter().enumerate() {
        assert!(uid.ends_with(&format!(".1.3.{}", z + 1)), "{z}: {uid}");
    }
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn oblique_series_matches_its_nifti_and_geometry_round_trips() {
    let (s, _, nii) = series_with_its_nifti("oblique");
    assert_eq!(s.volume.data, nii.data, "slope 2, intercept -5");
    assert_eq!(
        s.volume.kind,
        PixelKind::I16,
        "integral rescale keeps integers"
    );
    // NIfTI written with the series geometry: sform and qform both give the RAS affine
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lab.nii.gz");
    let labels: Vec<u8> = (0..s.volume.len()).map(|i| (i % 3) as u8).collect();
    write_nifti_with_geometry(&out, s.volume.shape, &labels, &s.geometry).unwrap();
    let back = read_nifti(&out).unwrap();
    assert_eq!(back.to_u8_labels(), labels);
    let bytes = {
        use std::io::Read;
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap())
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    let f32_at = |o: usize| f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as f64;
    let want = s.geometry.ras_affine();
    for (r, row) in want.iter().enumerate() {
        for (c, &w) in row.iter().enumerate() {
            assert!(
                (f32_at(280 + 16 * r + 4 * c) - w).abs() < 1e-4,
                "srow {r},{c}"
            );
        }
    }
    // qform: rotation from the quaternion, times pixdim, third column times qfac
    let (b, c, d) = (f32_at(256), f32_at(260), f32_at(264));
    let a = (1.0 - b * b - c * c - d * d).max(0.0).sqrt();
    let rot = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let qfac = f32_at(76);
    for r in 0..3 {
        for col in 0..3 {
            let sign = if col == 2 { qfac } else { 1.0 };
            let q = rot[r][col] * f32_at(80 + 4 * col) * sign;
            assert!(
                (q - want[r][col]).abs() < 1e-4,
                "qform {r},{col}: {q} vs {}",
                want[r][col]
            );
        }
        assert!((f32_at(268 + 4 * r) - want[r][3]).abs() < 1e-4);
    }
}

#[test]
fn enhanced_multiframe_equals_the_single_frame_series() {
    let single = read_series(fx("dicom/ct_case01"), None).unwrap();
    let multi = read_series(fx("dicom/enhanced"), None).unwrap();
    assert_eq!(multi.volume.shape, single.volume.shape);
    assert_eq!(multi.volume.data, single.volume.data);
    check_geometry(&multi, &json("dicom/ct_case01.json"));
    let frames: Vec<Option<u32>> = multi.slices.iter().map(|s| s.frame).collect();
    assert!(frames.iter().all(|f| f.is_some()));
    let uids: std::collections::BTreeSet<_> =
        multi.slices.iter().map(|s| &s.sop_instance_uid).collect();
    assert_eq!(uids.len(), 1, "one multi-frame instance");
}

#[test]
fn monochrome1_is_inverted_with_a_warning() {
    let s = read_series(fx("dicom/mono1"), None).unwrap();
    let meta = json("dicom/mono1.json");
    let stored = json_numbers::f64s(&meta["stored"]);
    let (lo, hi) = (stored[0], stored[stored.len() - 1]);
    let want: Vec<f64> = stored.iter().map(|v| lo + hi - v).collect();
    assert_eq!(s.volume.data, want);
    assert!(s.warnings.contains(&DicomWarning::Monochrome1Inverted));
}

#[test]
fn pydicom_files_decode_like_pydicom() {
    for name in [
        "MR_small",
        "MR_small_implicit",
        "MR_small_bigendian",
        "MR_small_RLE",
        "image_dfl",
    ] {
        let s = read_series(fx(&format!("dicom/pydicom/{name}")), None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = medsam::io::npy::read_npy(fx(&format!("dicom/pydicom/{name}.npy"))).unwrap();
        let [d, h, w] = s.volume.shape;
        assert_eq!(d, 1, "{name}");
        assert_eq!(want.shape, vec![h, w], "{name}");
        assert_eq!(s.volume.data, want.to_f64(), "{name}");
        assert!(
            s.warnings
                .iter()
                .any(|w| matches!(w, DicomWarning::SingleSlice { .. })),
            "{name}: {:?}",
            s.warnings
        );
    }
}

#[test]
fn jpeg_baseline_decodes_within_a_grey_level_of_libjpeg() {
    let s = read_series(fx("dicom/jpeg_baseline"), None).unwrap();
    let want = medsam::io::npy::read_npy(fx("dicom/jpeg_baseline.npy")).unwrap();
    assert_eq!(s.volume.shape, [1, 32, 40]);
    let worst = s
        .volume
        .data
        .iter()
        .zip(want.to_f64())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // the IDCTs of jpeg-decoder and libjpeg (Pillow, pydicom's decoder here) may round differently
    assert!(worst <= 2.0, "max difference {worst}");
}

/// `<name>.npy.gz` of tests/fixtures/dicom/codecs as f64 values.
fn gz_npy(name: &str) -> (Vec<usize>, Vec<f64>) {
    let path = fx(&format!("dicom/codecs/{name}.npy.gz"));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()),
        &mut bytes,
    )
    .unwrap();
    let a = medsam::io::npy::parse_npy(&bytes, &path).unwrap();
    (a.shape.clone(), a.to_f64())
}

/// One-image files of tests/fixtures/dicom/codecs against pydicom's decode.
fn codec_matches_reference(name: &str) {
    let s = read_series(fx(&format!("dicom/codecs/{name}")), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (shape, want) = gz_npy(name);
    let [d, h, w] = s.volume.shape;
    assert_eq!((d, vec![h, w]), (1, shape), "{name}");
    assert_eq!(s.volume.data, want, "{name}");
}

#[test]
fn jpeg2000_decodes_like_openjpeg() {
    // lossless (equals the uncompressed MR_small) and lossy, as pydicom + OpenJPEG decode them
    for name in ["MR_small_jp2klossless", "JPEG2000", "693_J2KI"] {
        codec_matches_reference(name);
    }
    let (_, mr) = gz_npy("MR_small_jp2klossless");
    let raw = medsam::io::npy::read_npy(fx("dicom/pydicom/MR_small.npy")).unwrap();
    assert_eq!(mr, raw.to_f64(), "J2K lossless twin of MR_small");
    // a series in J2K lossless reads as its uncompressed original
    let j2k = read_series(fx("dicom/codecs/ct_case01_j2k"), None).unwrap();
    let raw = read_series(fx("dicom/ct_case01"), None).unwrap();
    assert_eq!(j2k.volume.shape, raw.volume.shape);
    assert_eq!(j2k.volume.data, raw.volume.data);
    assert_eq!(j2k.geometry, raw.geometry);
}

#[test]
fn jpeg_ls_decodes_like_charls_or_is_named() {
    if cfg!(feature = "jpegls") {
        for name in ["MR_small_jpeg_ls_lossless", "JPEGLSNearLossless_16"] {
            codec_matches_reference(name);
        }
        return;
    }
    eprintln!(
        "SKIPPED: JPEG-LS decoding (build without the cargo feature `jpegls`); checking the error"
    );
    match err("dicom/bad/jpegls") {
        DicomError::UnsupportedTransferSyntax { uid, name, .. } => {
            assert_eq!(uid, "1.2.840.10008.1.2.4.80");
            assert_eq!(name, "JPEG-LS Lossless");
        }
        e => panic!("{e}"),
    }
}

/// ct_case01 rewritten into `to`, each file changed by `edit`.
fn edited_ct_case01(to: &Path, edit: impl Fn(&mut dicom_object::DefaultDicomObject)) {
    for e in std::fs::read_dir(fx("dicom/ct_case01")).unwrap() {
        let e = e.unwrap();
        let mut o = dicom_object::open_file(e.path()).unwrap();
        edit(&mut o);
        o.write_to_file(to.join(e.file_name())).unwrap();
    }
}

#[test]
fn compact_volume_keeps_the_smallest_kind_that_holds_the_values() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let base = read_series(fx("dicom/ct_case01"), None).unwrap();
    let compact = read_series_compact(fx("dicom/ct_case01"), None).unwrap();
    assert!(matches!(
        compact.volume.voxels,
        medsam::io::npy::NpyData::I16(_)
    ));
    assert_eq!(compact.volume.to_f64(), base.volume.data);
    assert_eq!(compact.volume.to_nifti().kind, base.volume.kind);
    // a fractional intercept gives float32; intercepts that push the values out of int16 give
    // uint16, then int32 (the second decode)
    for (intercept, kind) in [
        ("-1023.5", PixelKind::F32),
        ("40000", PixelKind::U16),
        ("-40000", PixelKind::I32),
    ] {
        let dir = tempfile::tempdir().unwrap();
        edited_ct_case01(dir.path(), |o| {
            o.put(DataElement::new(
                tags::RESCALE_INTERCEPT,
                VR::DS,
                PrimitiveValue::from(intercept),
            ));
        });
        let s = read_series_compact(dir.path(), None).unwrap();
        assert_eq!(s.volume.kind(), kind, "intercept {intercept}");
        let shift = intercept.parse::<f64>().unwrap() + 1024.0;
        let want: Vec<f64> = base.volume.data.iter().map(|v| v + shift).collect();
        assert_eq!(s.volume.to_f64(), want, "intercept {intercept}");
    }
    // PixelData not the last element (trailing padding): parsed in full, same values
    let dir = tempfile::tempdir().unwrap();
    edited_ct_case01(dir.path(), |o| {
        o.put(DataElement::new(
            dicom_core::Tag(0xFFFC, 0xFFFC),
            VR::OB,
            PrimitiveValue::from(vec![0u8; 6]),
        ));
    });
    let s = read_series(dir.path(), None).unwrap();
    assert_eq!(s.volume.data, base.volume.data, "trailing padding");
}

fn err(dir: &str) -> DicomError {
    match read_series(fx(dir), None) {
        Ok(_) => panic!("{dir}: read without error"),
        Err(e) => e,
    }
}

#[test]
fn bad_inputs_give_named_errors() {
    let e = err("dicom/bad/mixed_size");
    assert!(
        matches!(e, DicomError::MixedSize { found: (6, 9), .. }),
        "{e}"
    );
    let e = err("dicom/bad/mixed_orientation");
    assert!(matches!(e, DicomError::MixedOrientation { .. }), "{e}");
    assert!(e.to_string().contains("IM0002.dcm"), "{e}");
    let e = err("dicom/bad/no_pixel_data");
    assert!(
        matches!(&e, DicomError::NoPixelData { path } if path.ends_with("IM0001.dcm")),
        "{e}"
    );
    let e = err("dicom/bad/nonuniform");
    assert!(matches!(e, DicomError::NonUniformSpacing { .. }), "{e}");
    let e = err("dicom/bad/missing_slice");
    assert!(matches!(e, DicomError::MissingSlices { .. }), "{e}");
    assert!(e.to_string().contains("1 slice(s) missing"), "{e}");
    let e = err("dicom/bad/jpeg12");
    assert!(matches!(e, DicomError::Decode { .. }), "{e}");
    assert!(e.to_string().contains("JPGExtended.dcm"), "{e}");
    let e = err("dicom/bad/truncated");
    assert!(
        matches!(
            e,
            DicomError::Truncated { .. } | DicomError::Unreadable { .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("MR_truncated.dcm"), "{e}");
    let e = err("dicom/bad/empty");
    assert!(matches!(e, DicomError::NoDicom { files: 1, .. }), "{e}");
    let e = err("dicom/does_not_exist");
    assert!(matches!(e, DicomError::Io { .. }), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn truncated_slice_and_duplicate_position_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("ct");
    copy_dir(&fx("dicom/ct_case01"), &d);
    let victim = d.join("slice_21.dcm");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 1000]).unwrap();
    let e = read_series(&d, None).unwrap_err();
    assert!(matches!(e, DicomError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("slice_21.dcm"), "{e}");
    // the same file twice under another name: same position
    std::fs::write(&victim, &bytes).unwrap();
    std::fs::copy(&victim, d.join("copy.dcm")).unwrap();
    let e = read_series(&d, None).unwrap_err();
    assert!(matches!(e, DicomError::DuplicatePosition { .. }), "{e}");
}

#[test]
fn several_series_are_listed_and_chosen_by_uid() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fx("dicom/ct_case01"), &dir.path().join("a"));
    copy_dir(&fx("dicom/oblique"), &dir.path().join("b"));
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let e = read_series(dir.path(), None).unwrap_err();
    let DicomError::SeveralSeries { series, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(series.len(), 2);
    assert!(e.to_string().contains("--series"), "{e}");
    assert_eq!(list_series(dir.path()).unwrap(), *series);
    let ct_uid = json("dicom/ct_case01.json")["series_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let s = read_series(dir.path(), Some(&ct_uid)).unwrap();
    assert_eq!(s.volume.shape, [6, 40, 48]);
    assert!(matches!(
        s.warnings.as_slice(),
        [DicomWarning::SkippedFiles { count: 1, .. }]
    ));
    let e = read_series(dir.path(), Some("1.2.3")).unwrap_err();
    assert!(matches!(e, DicomError::SeriesNotFound { .. }), "{e}");
}

/// The label map of case01 (same grid as the CT series) and two segment names.
fn case01_labels() -> (DicomSeries, Vec<u8>, Vec<String>) {
    let s = read_series(fx("dicom/ct_case01"), None).unwrap();
    let lab = read_nifti(fx("preprocess/nifti/ct/labels/case01.nii.gz")).unwrap();
    assert_eq!(lab.shape, s.volume.shape);
    let labels = lab.to_u8_labels();
    let n = *labels.iter().max().unwrap() as usize;
    let names = (1..=n).map(|k| format!("organ {k} — ü")).collect();
    (s, labels, names)
}

#[test]
fn seg_is_written_atomically_and_reads_back() {
    let (s, labels, names) = case01_labels();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seg.dcm");
    let opts = SegOptions {
        label_names: names.clone(),
        ..Default::default()
    };
    let sum = write_seg(&out, &s, &labels, &opts).unwrap();
    assert_eq!(sum.segments, names.len());
    let listing: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(listing.len(), 1, "no temporary file left behind");

    // read back with dicom-rs
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(&out).unwrap();
    let get = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
    assert_eq!(get(tags::MODALITY), "SEG");
    assert_eq!(get(tags::NUMBER_OF_FRAMES), sum.frames.to_string());
    assert_eq!(get(tags::STUDY_INSTANCE_UID), s.info.study_instance_uid);
    let segs = obj
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(segs.len(), names.len());
    assert_eq!(
        segs[0]
            .element(tags::SEGMENT_LABEL)
            .unwrap()
            .to_str()
            .unwrap(),
        names[0]
    );
    let frames_expected: usize = (1..=names.len())
        .map(|k| {
            (0..s.volume.shape[0])
                .filter(|&z| {
                    let p = s.volume.shape[1] * s.volume.shape[2];
                    labels[z * p..(z + 1) * p].iter().any(|&v| v as usize == k)
                })
                .count()
                .max(1)
        })
        .sum();
    assert_eq!(sum.frames, frames_expected);

    // a label volume of the wrong size is refused, nothing written
    let bad = dir.path().join("bad.dcm");
    let e = write_seg(&bad, &s, &labels[1..], &opts).unwrap_err();
    assert!(matches!(e, DicomError::Write { .. }), "{e}");
    assert!(!bad.exists());

    // highdicom / pydicom
    match python_importing("pydicom, highdicom, numpy") {
        None => eprintln!(
            "SKIPPED: highdicom/pydicom check (set MEDSAM_PYTHON to a python with pydicom, highdicom)"
        ),
        Some(py) => {
            let npy = dir.path().join("labels.npy");
            medsam::io::npy::write_npy_u8(&npy, &s.volume.shape, &labels).unwrap();
            let o = Command::new(py)
                .arg(fx("check_dicom_seg.py"))
                .arg(&out)
                .arg(fx("dicom/ct_case01"))
                .arg(&npy)
                .arg(serde_json::to_string(&names).unwrap())
                .output()
                .unwrap();
            let text = output_text(&o);
            assert!(o.status.success(), "check_dicom_seg.py failed:\n{text}");
            eprintln!("{}", text.trim());
        }
    }

    // dciodvfy (dicom3tools): no errors
    match Command::new("dciodvfy").arg(&out).output() {
        Err(_) => eprintln!("SKIPPED: dciodvfy not installed (Debian package dicom3tools)"),
        Ok(o) => {
            let text = output_text(&o);
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
            assert!(errors.is_empty(), "dciodvfy:\n{text}");
            eprintln!(
                "dciodvfy: no errors, {} warning line(s):\n{}",
                text.lines().filter(|l| l.starts_with("Warning")).count(),
                text.trim()
            );
        }
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `medsam preprocess --dicom-path` on the CT series gives byte-identical slices to the NIfTI
/// it was written from.
#[test]
fn preprocess_from_dicom_equals_preprocess_from_nifti() {
    let dir = tempfile::tempdir().unwrap();
    let (dcm, gt, nii) = (
        dir.path().join("dcm"),
        dir.path().join("gt"),
        dir.path().join("nii"),
    );
    copy_dir(&fx("dicom/ct_case01"), &dcm.join("case01"));
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::create_dir_all(&nii).unwrap();
    std::fs::copy(
        fx("preprocess/nifti/ct/labels/case01.nii.gz"),
        gt.join("case01.nii.gz"),
    )
    .unwrap();
    std::fs::copy(
        fx("preprocess/nifti/ct/images/case01_0000.nii.gz"),
        nii.join("case01_0000.nii.gz"),
    )
    .unwrap();
    let run = |src: (&str, &Path), out: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_medsam"))
            .arg("preprocess")
            .arg(src.0)
            .arg(src.1)
            .arg("--gt-path")
            .arg(&gt)
            .arg("--npy-path")
            .arg(out)
            .args(["--image-size", "32", "--voxel-num-thre2d", "10"])
            .args(["--voxel-num-thre3d", "50", "--num-workers", "1"])
            .output()
            .unwrap();
        let text = output_text(&o);
        assert!(o.status.success(), "{text}");
        assert!(text.contains("1 cases done, 0 skipped"), "{text}");
    };
    let (out_d, out_n) = (dir.path().join("out_dcm"), dir.path().join("out_nii"));
    run(("--dicom-path", &dcm), &out_d);
    run(("--nii-path", &nii), &out_n);
    for sub in ["imgs", "gts"] {
        let (a, b) = (files(&out_d.join(sub)), files(&out_n.join(sub)));
        assert!(!a.is_empty());
        assert_eq!(a, b, "{sub}");
    }
}

/// `medsam dicom`: lists several series, reads one and converts it to NIfTI.
#[test]
fn dicom_subcommand_lists_reads_and_converts() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fx("dicom/ct_case01"), &dir.path().join("a"));
    copy_dir(&fx("dicom/oblique"), &dir.path().join("b"));
    let medsam = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_medsam"))
            .arg("dicom")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        text
    };
    let text = medsam(&[]);
    assert!(
        text.contains("2 series") && text.contains("--series"),
        "{text}"
    );
    let uid = json("dicom/ct_case01.json")["series_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let out = dir.path().join("ct.nii.gz");
    let text = medsam(&["--series", &uid, "--to-nifti", out.to_str().unwrap()]);
    assert!(text.contains("6×40×48"), "{text}");
    let back = read_nifti(&out).unwrap();
    let want = read_nifti(fx("preprocess/nifti/ct/images/case01_0000.nii.gz")).unwrap();
    assert_eq!(back.data, want.data);
    assert_eq!(back.kind, PixelKind::I16);
}
