//! Preprocessing parity with the Python reference (MedSAM `utils/pre_CT_MR.py` logic with
//! SimpleITK + cc3d + skimage), components vs cc3d, NIfTI reading, phantoms.
//! Fixtures: `tests/fixtures/make_preprocess_fixtures.py`.
//!
//! Image tolerance: 1e-9 absolute on values in [0, 1]. The u8 volume before resizing must be
//! identical (we reproduce NumPy's float32/float64 arithmetic and truncation); the only
//! difference left is the last-bit rounding of the cubic resize (~1e-13 on the 0..255 scale, see
//! tests/pipeline/preprocess_resize.rs), divided by the slice's range. Labels must be identical.

use crate::common::process;
use medsam::npy::{read_npy, NpyData};
use medsam::preprocess::components::{
    connected_components_2d, connected_components_3d, dust_2d, dust_3d,
};
use medsam::preprocess::nifti_io::{read_nifti, write_nifti_gz, NiftiError, PixelKind};
use medsam::preprocess::phantom::make_phantom;
use medsam::preprocess::{preprocess, Modality, PreprocessConfig, PreprocessSummary};
use process::{python_or_skip, python_script_succeeds};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fx(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess")
        .join(rel)
}

fn u8s(p: &Path) -> (Vec<usize>, Vec<u8>) {
    let a = read_npy(p).unwrap();
    match a.data {
        NpyData::U8(v) => (a.shape, v),
        other => panic!("{}: expected uint8, got {}", p.display(), other.descr()),
    }
}

// ------------------------------------------------------------------ components vs cc3d

fn vol() -> (Vec<usize>, Vec<u8>) {
    u8s(&fx("components/vol.npy"))
}

fn as_u32(p: &Path) -> Vec<u32> {
    match read_npy(p).unwrap().data {
        NpyData::U32(v) => v,
        _ => panic!("expected u32"),
    }
}

#[test]
fn connected_components_match_cc3d_numbering() {
    let (shape, v) = vol();
    let s = [shape[0], shape[1], shape[2]];
    for c in [6u32, 18, 26] {
        let (got, n) = connected_components_3d(&v, s, c);
        let want = as_u32(&fx(&format!("components/cc3d_{c}.npy")));
        assert_eq!(got, want, "3-D connectivity {c}");
        assert_eq!(n as u32, *want.iter().max().unwrap());
    }
    let plane = s[1] * s[2];
    for c in [4u32, 8] {
        let (got, _) = connected_components_2d(&v[3 * plane..4 * plane], [s[1], s[2]], c);
        assert_eq!(
            got,
            as_u32(&fx(&format!("components/cc2d_{c}.npy"))),
            "2-D {c}"
        );
    }
}

#[test]
fn dust_matches_cc3d() {
    let (shape, v) = vol();
    let s = [shape[0], shape[1], shape[2]];
    let mut d3 = v.clone();
    let removed = dust_3d(&mut d3, s, 5, 26);
    assert!(removed > 0, "fixture should contain dust");
    assert_eq!(d3, u8s(&fx("components/dust3d_26_t5.npy")).1);
    let mut d2 = v.clone();
    let plane = s[1] * s[2];
    for z in 0..s[0] {
        dust_2d(&mut d2[z * plane..(z + 1) * plane], [s[1], s[2]], 3, 8);
    }
    assert_eq!(d2, u8s(&fx("components/dust2d_8_t3.npy")).1);
}

// ------------------------------------------------------------------ NIfTI reading

#[test]
fn nifti_reader_matches_simpleitk_arrays() {
    // int16 + scl_slope/inter + flipped affine -> float32 (z, y, x), no reorientation
    let v = read_nifti(fx("nifti/ct/images/case03_0000.nii.gz")).unwrap();
    assert_eq!(v.kind, PixelKind::F32);
    let want = read_npy(fx("nifti/case03_img_sitk.npy")).unwrap();
    assert_eq!(want.shape, v.shape.to_vec());
    assert_eq!(v.data, want.to_f64());
    // float32 storage
    let m = read_nifti(fx("nifti/mr/images/mr01_0000.nii.gz")).unwrap();
    assert_eq!(m.kind, PixelKind::F32);
    assert_eq!(
        m.data,
        read_npy(fx("nifti/mr01_img_sitk.npy")).unwrap().to_f64()
    );
    // labels
    let l = read_nifti(fx("nifti/ct/labels/case03.nii.gz")).unwrap();
    assert_eq!(l.kind, PixelKind::U8);
    assert_eq!(l.to_u8_labels(), u8s(&fx("nifti/case03_lab_sitk.npy")).1);
    assert_eq!(l.spacing, [1.5f32 as f64, 1.2f32 as f64, 3.0]);
}

#[test]
fn nifti_truncated_and_garbage_files_are_named_errors() {
    let p = fx("nifti/ct/images/case05_0000.nii.gz");
    let e = read_nifti(&p).unwrap_err();
    assert!(matches!(e, NiftiError::Gzip { .. }), "{e}");
    assert!(e.to_string().contains("case05_0000.nii.gz"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    // uncompressed file cut inside the voxel data
    let full = {
        use std::io::Read;
        let mut d = flate2::read::GzDecoder::new(
            std::fs::File::open(fx("nifti/ct/labels/case01.nii.gz")).unwrap(),
        );
        let mut b = Vec::new();
        d.read_to_end(&mut b).unwrap();
        b
    };
    let t = dir.path().join("cut.nii");
    std::fs::write(&t, &full[..full.len() - 100]).unwrap();
    let e = read_nifti(&t).unwrap_err();
    assert!(matches!(e, NiftiError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("cut.nii"));
    let g = dir.path().join("junk.nii");
    std::fs::write(&g, vec![7u8; 400]).unwrap();
    let e = read_nifti(&g).unwrap_err();
    assert!(matches!(e, NiftiError::NotNifti { .. }), "{e}");
    assert!(e.to_string().contains("junk.nii"));
}

#[test]
fn nifti_write_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.nii.gz");
    let data: Vec<i16> = (0..4 * 5 * 6).map(|i| (i * 13 - 700) as i16).collect();
    write_nifti_gz(&p, [4, 5, 6], &data, [0.7, 0.8, 2.5]).unwrap();
    let v = read_nifti(&p).unwrap();
    assert_eq!(v.shape, [4, 5, 6]);
    assert_eq!(v.kind, PixelKind::I16);
    assert_eq!(v.data, data.iter().map(|&x| x as f64).collect::<Vec<_>>());
    assert!((v.spacing[2] - 2.5).abs() < 1e-6);
}

// ------------------------------------------------------------------ pipeline parity

fn cfg_for(run: &str, out: &Path) -> PreprocessConfig {
    let (sub, modality, anatomy, tumor) = match run {
        "ct" => ("ct", Modality::CT, "Abd", None),
        "ct_tumor" => ("ct", Modality::CT, "Abd", Some(5)),
        "mr" => ("mr", Modality::MR, "Pelvis", None),
        _ => unreachable!(),
    };
    PreprocessConfig {
        nii_path: fx(&format!("nifti/{sub}/images")),
        gt_path: fx(&format!("nifti/{sub}/labels")),
        npy_path: out.to_path_buf(),
        modality,
        anatomy: anatomy.into(),
        tumor_id: tumor,
        image_size: 32,
        voxel_num_thre2d: 10,
        voxel_num_thre3d: 50,
        num_workers: 2,
        ..PreprocessConfig::default()
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn reports() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fx("expected/reports.json")).unwrap()).unwrap()
}

fn check_run(run: &str, compare_images: bool) -> PreprocessSummary {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg_for(run, dir.path());
    let events = std::sync::Mutex::new(Vec::new());
    let summary = preprocess(&cfg, &|e| events.lock().unwrap().push(format!("{e:?}"))).unwrap();
    let exp = fx(&format!("expected/{run}"));

    // same cases done / skipped as the reference
    let rep = &reports()[run];
    let done: BTreeMap<String, usize> = summary
        .done
        .iter()
        .map(|c| (c.case.clone(), c.slices))
        .collect();
    let want_done: BTreeMap<String, usize> = rep["done"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize))
        .collect();
    assert_eq!(done, want_done, "{run}: processed cases");
    let skipped: Vec<&str> = summary.skipped.iter().map(|s| s.case.as_str()).collect();
    let want_skipped: Vec<&str> = rep["skipped"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(skipped, want_skipped, "{run}: skipped cases");
    assert_eq!(
        events.lock().unwrap().len(),
        1 + summary.done.len() + summary.skipped.len()
    );

    // identical file lists; labels identical; images within tolerance
    let gts = listing(&dir.path().join("gts"));
    assert_eq!(gts, listing(&exp.join("gts")), "{run}: gts file list");
    assert_eq!(
        listing(&dir.path().join("imgs")),
        gts,
        "{run}: imgs file list"
    );
    for f in &gts {
        let (gs, g) = u8s(&dir.path().join("gts").join(f));
        let (ws, w) = u8s(&exp.join("gts").join(f));
        assert_eq!(gs, ws, "{run}/{f}: label shape");
        assert_eq!(g, w, "{run}/{f}: labels differ");
        if compare_images {
            let a = read_npy(dir.path().join("imgs").join(f)).unwrap();
            let b = read_npy(exp.join("imgs").join(f)).unwrap();
            assert_eq!(a.shape, b.shape, "{run}/{f}: image shape");
            assert!(matches!(a.data, NpyData::F64(_)));
            let max = a
                .to_f64()
                .iter()
                .zip(b.to_f64())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(max <= 1e-9, "{run}/{f}: image max |diff| {max:e}");
        }
    }
    // no temporary files left anywhere
    for sub in ["imgs", "gts"] {
        assert!(listing(&dir.path().join(sub))
            .iter()
            .all(|f| !f.starts_with('.')));
    }
    summary
}

#[test]
fn ct_parity_with_reference() {
    let s = check_run("ct", true);
    assert_eq!(s.missing_images, vec!["case07.nii.gz".to_string()]);
    let reason = |c: &str| {
        s.skipped
            .iter()
            .find(|x| x.case == c)
            .map(|x| x.reason.clone())
            .unwrap()
    };
    assert!(reason("case04").contains("empty"), "{}", reason("case04"));
    assert!(
        reason("case05").contains("case05_0000.nii.gz"),
        "{}",
        reason("case05")
    );
    assert!(
        reason("case06").contains("shapes differ"),
        "{}",
        reason("case06")
    );
}

#[test]
fn ct_tumor_instances_parity_with_reference() {
    check_run("ct_tumor", false);
}

#[test]
fn mr_parity_with_reference() {
    check_run("mr", true);
}

// ------------------------------------------------------------------ phantom

fn read_all_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["images", "labels"] {
        for f in listing(&dir.join(sub)) {
            out.push((f.clone(), std::fs::read(dir.join(sub).join(&f)).unwrap()));
        }
    }
    out
}

#[test]
fn phantom_is_deterministic_and_seed_dependent() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    make_phantom(a.path(), 2, 7, (48, 40, 12)).unwrap();
    make_phantom(b.path(), 2, 7, (48, 40, 12)).unwrap();
    make_phantom(c.path(), 2, 8, (48, 40, 12)).unwrap();
    let (ra, rb, rc) = (
        read_all_bytes(a.path()),
        read_all_bytes(b.path()),
        read_all_bytes(c.path()),
    );
    assert_eq!(ra.len(), 4);
    assert_eq!(ra, rb, "same seed must give identical files");
    assert_ne!(ra, rc, "different seeds must differ");
    // cases differ from each other too
    let v1 = read_nifti(a.path().join("images/Phantom_0001_0000.nii.gz")).unwrap();
    let v2 = read_nifti(a.path().join("images/Phantom_0002_0000.nii.gz")).unwrap();
    assert_eq!(v1.shape, [12, 40, 48]);
    assert_ne!(v1.data, v2.data);
}

#[test]
fn phantom_content_and_preprocess_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cases = make_phantom(dir.path(), 2, 1, medsam::preprocess::phantom::DEFAULT_SIZE).unwrap();
    for c in &cases {
        for id in [1usize, 2, 3, 5, 12, 13, 14, 9] {
            assert!(
                c.label_voxels.get(id).copied().unwrap_or(0) > 0,
                "{}: label {id} missing",
                c.name
            );
        }
        let img = read_nifti(&c.image).unwrap();
        assert_eq!(img.kind, PixelKind::I16);
        let air = img.data[0];
        assert!(
            (-1060.0..-940.0).contains(&air),
            "corner should be air, got {air}"
        );
    }
    let out = tempfile::tempdir().unwrap();
    let cfg = PreprocessConfig {
        nii_path: dir.path().join("images"),
        gt_path: dir.path().join("labels"),
        npy_path: out.path().to_path_buf(),
        image_size: 64,
        num_workers: 2,
        ..PreprocessConfig::default()
    };
    let s = preprocess(&cfg, &|_| {}).unwrap();
    assert_eq!(s.done.len(), 2, "{:?}", s.skipped);
    let mut seen = [0usize; 256];
    for f in listing(&out.path().join("gts")) {
        for v in u8s(&out.path().join("gts").join(f)).1 {
            seen[v as usize] += 1;
        }
    }
    assert_eq!(seen[12], 0, "duodenum must be removed");
    assert_eq!(seen[9], 0, "tiny specks must be dusted away");
    for id in [1usize, 2, 3, 5, 13, 14] {
        assert!(seen[id] > 0, "label {id} lost in preprocessing");
    }
}

// ------------------------------------------------------------------ CLI + nibabel interop

#[derive(clap::Parser, Debug)]
struct PreCli {
    #[command(flatten)]
    a: medsam::preprocess::args::PreprocessArgs,
}

#[derive(clap::Parser, Debug)]
struct PhCli {
    #[command(flatten)]
    a: medsam::preprocess::args::PhantomArgs,
}

#[test]
fn cli_flags_map_to_config() {
    use clap::Parser;
    let c = PreCli::try_parse_from([
        "x",
        "--nii-path",
        "i",
        "--gt-path",
        "g",
        "--npy-path",
        "o",
        "--modality",
        "MR",
        "--anatomy",
        "Brain",
        "--img-name-suffix",
        "_0000.nii",
        "--gt-name-suffix",
        ".nii",
        "--remove-label-ids",
        "3,12",
        "--tumor-id",
        "2",
        "--window-level",
        "50",
        "--window-width",
        "350",
        "--image-size",
        "256",
        "--voxel-num-thre2d",
        "5",
        "--voxel-num-thre3d",
        "7",
        "--num-workers",
        "3",
    ])
    .unwrap();
    let cfg = c.a.to_config().unwrap();
    assert_eq!(cfg.modality, Modality::MR);
    assert_eq!(cfg.remove_label_ids, vec![3, 12]);
    assert_eq!(cfg.tumor_id, Some(2));
    assert_eq!((cfg.window_level, cfg.window_width), (50.0, 350.0));
    assert_eq!(
        (cfg.image_size, cfg.voxel_num_thre2d, cfg.voxel_num_thre3d),
        (256, 5, 7)
    );
    assert_eq!(cfg.num_workers, 3);
    assert_eq!(cfg.gt_name_suffix, ".nii");
    // defaults are the reference script's
    let d = PreCli::try_parse_from(["x"])
        .unwrap()
        .a
        .to_config()
        .unwrap();
    assert_eq!(d.remove_label_ids, vec![12]);
    assert_eq!(
        (d.image_size, d.voxel_num_thre2d, d.voxel_num_thre3d),
        (1024, 100, 1000)
    );
    assert!(PreCli::try_parse_from(["x", "--modality", "PET"]).is_err());
    assert!(PreCli::try_parse_from(["x", "--remove-label-ids", "300"])
        .unwrap()
        .a
        .to_config()
        .is_err());
    let p = PhCli::try_parse_from([
        "x", "--out", "o", "--cases", "2", "--seed", "9", "--size", "64x48x16",
    ])
    .unwrap();
    assert_eq!(p.a.size, (64, 48, 16));
    assert!(PhCli::try_parse_from(["x", "--size", "64x48"]).is_err());
}

/// nibabel must read our phantom NIfTI files with the same voxels (runs where the venv exists).
#[test]
fn nibabel_reads_phantom() {
    let Some(py) = python_or_skip("numpy, nibabel") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = &make_phantom(dir.path(), 1, 3, (40, 36, 10)).unwrap()[0];
    let img = read_nifti(&c.image).unwrap();
    let lab = read_nifti(&c.label).unwrap();
    let dump = dir.path().join("ours.npy");
    medsam::npy::write_npy_f64(&dump, &img.shape, &img.data).unwrap();
    let dump_l = dir.path().join("ours_l.npy");
    medsam::npy::write_npy_u8(&dump_l, &lab.shape, &lab.to_u8_labels()).unwrap();
    let script = format!(
        "import numpy as np, nibabel as nib\n\
         i=nib.load(r'{}'); l=nib.load(r'{}')\n\
         a=np.transpose(np.asanyarray(i.dataobj),(2,1,0)); b=np.transpose(np.asanyarray(l.dataobj),(2,1,0))\n\
         assert i.get_data_dtype()==np.int16 and l.get_data_dtype()==np.uint8, (i.get_data_dtype(), l.get_data_dtype())\n\
         assert np.array_equal(a, np.load(r'{}')) and np.array_equal(b, np.load(r'{}'))\n\
         assert np.allclose(i.header.get_zooms(), (350/40, 350/36, 16.0), atol=1e-4), i.header.get_zooms()\n",
        c.image.display(),
        c.label.display(),
        dump.display(),
        dump_l.display()
    );
    assert!(
        python_script_succeeds(&py, &script),
        "nibabel could not read the phantom correctly"
    );
}
