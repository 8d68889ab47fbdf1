//! Hostile inputs (issue 14): one regression test per class, and a bounded fuzz suite over the
//! readers. Classes: unvalidated model configurations; sizes trusted before they are checked;
//! silent wrong results from non-finite values or out-of-range data; data loss (outputs that
//! overwrite inputs or other runs); litter and misleading messages.
//!
//! The readers' limits are fixed small for this test binary ([`init`]) so that every "bomb"
//! must be refused by a size check, not by running out of memory; the fuzz test asserts the
//! process's peak resident memory stays bounded. Bombs are built here at test time; only small
//! hostile files are committed (tests/fixtures/hostile/).

use medsam::io::checkpoint::{self, load_pth, save_pth, DType, TensorData, Value};
use medsam::io::limits::Limits;
use medsam::models::{LiteConfig, Sam, SamConfig};
use medsam::optim::AdamWConfig;
use medsam::Device;
use proptest::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// Small limits for the whole binary (set before any file is read).
fn init() {
    Limits::set_for_process(Limits {
        max_tensor_bytes: 64 * MIB,
        max_voxels: 4 << 20,
        max_image_pixels: 4 << 20,
        max_file_bytes: 64 * MIB,
    });
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn medsam() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medsam"));
    c.env("MEDSAM_MAX_TENSOR_BYTES", "64M")
        .env("MEDSAM_MAX_VOXELS", "4M")
        .env("MEDSAM_MAX_IMAGE_PIXELS", "4M");
    c
}

/// Runs the CLI; asserts an ordinary failure (exit 1, not a panic) and returns stderr.
fn fails(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {err}");
    assert!(
        !err.contains("internal error") && !err.contains("panicked"),
        "{err}"
    );
    err
}

fn tiny_sam_config() -> SamConfig {
    SamConfig::from_json_file(&fixture("sam/tiny_sam_config.json")).unwrap()
}

/// A MedSAM-style checkpoint: the state dict under `"model"`.
fn save_medsam_pth(path: impl AsRef<Path>, sd: &[(String, TensorData)]) {
    let v = Value::str_dict([("model", Value::from_state_dict(sd.to_vec()))]);
    save_pth(path, &v).unwrap();
}

fn tiny_sam_state() -> Vec<(String, TensorData)> {
    let mut sam = Sam::new(&tiny_sam_config(), 0, Device::Cpu).unwrap();
    sam.state_dict()
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                TensorData::from_f32(t.shape().to_vec(), &t.to_vec().unwrap()),
            )
        })
        .collect()
}

/// `tests/fixtures/sam/tiny_sam_config.json` changed by `edit`, written to `path`.
fn write_edited_sam_config(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("sam/tiny_sam_config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// The error message of loading the checkpoint `path` (with an optional model configuration).
fn load_error(path: &Path, config: Option<&Path>) -> String {
    medsam::models::load::load_any_model(path, None, config, Device::Cpu)
        .err()
        .expect("the load should fail")
        .to_string()
}

/// A blank 8×8 grey PNG `img.png` in `dir`.
fn blank_png(dir: &Path) -> PathBuf {
    let png = dir.join("img.png");
    image::GrayImage::new(8, 8).save(&png).unwrap();
    png
}

/// `medsam infer --box [1,1,6,6] -i <image> -c <checkpoint>`.
fn infer_cmd(image: &Path, checkpoint: &Path) -> Command {
    let mut c = medsam();
    c.args(["infer", "--box", "[1,1,6,6]", "-i"])
        .arg(image)
        .arg("-c")
        .arg(checkpoint);
    c
}

/// `medsam convert` of the two checkpoints into `save`.
fn convert_cmd(sam: &Path, medsam_ck: &Path, save: &Path) -> Command {
    let mut c = medsam();
    c.arg("convert")
        .arg("--sam-ckpt-path")
        .arg(sam)
        .arg("--medsam-ckpt-path")
        .arg(medsam_ck)
        .arg("--save-path")
        .arg(save);
    c
}

/// A scratch directory ([`tmp`]) holding `medsam.pth` (MedSAM layout, the whole tiny state)
/// and `sam.pth` (a bare state dict of the tiny state from tensor `sam_from` on); returns the
/// directory, the state and the two checkpoints.
fn medsam_and_sam_checkpoints(
    name: &str,
    sam_from: usize,
) -> (PathBuf, Vec<(String, TensorData)>, PathBuf, PathBuf) {
    let dir = tmp(name);
    let sd = tiny_sam_state();
    let medsam_ck = dir.join("medsam.pth");
    save_medsam_pth(&medsam_ck, &sd);
    let sam_ck = dir.join("sam.pth");
    save_pth(&sam_ck, &Value::from_state_dict(sd[sam_from..].to_vec())).unwrap();
    (dir, sd, medsam_ck, sam_ck)
}

// ---------------------------------------------------------------------------------------------
// Hand-made pickles and zips (the writer cannot produce hostile views).

fn pk_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn pk_int(out: &mut Vec<u8>, i: u32) {
    out.push(b'J');
    out.extend_from_slice(&i.to_le_bytes());
}

/// `{name: _rebuild_tensor_v2(storage key "0" (float32), offset, size, stride)}`.
fn pickle_view(name: &str, size: &[u32], stride: &[u32]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    pk_str(&mut p, name);
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    pk_str(&mut p, "storage");
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    pk_str(&mut p, "0");
    pk_str(&mut p, "cpu");
    pk_int(&mut p, 1);
    p.extend_from_slice(b"tQ");
    pk_int(&mut p, 0);
    for dims in [size, stride] {
        p.push(b'(');
        dims.iter().for_each(|&d| pk_int(&mut p, d));
        p.push(b't');
    }
    p.push(0x89);
    p.extend_from_slice(b"ccollections\nOrderedDict\n)Rt");
    p.extend_from_slice(b"Ru.");
    p
}

/// A torch-style zip: `archive/data.pkl` and storages `archive/data/<key>`.
fn torch_zip(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pkl).unwrap();
    for (k, b) in storages {
        z.start_file(format!("archive/data/{k}"), o).unwrap();
        z.write_all(b).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// Sets the uncompressed size of member `name` in the central directory (a lying header).
fn patch_claimed_size(zip: &mut [u8], name: &str, size: u32) {
    let mut i = 0;
    while i + 46 <= zip.len() {
        if zip[i..i + 4] == *b"PK\x01\x02" {
            let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
            if &zip[i + 46..i + 46 + n] == name.as_bytes() {
                zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
                return;
            }
        }
        i += 1;
    }
    panic!("member {name} not found");
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A NIfTI-1 header for a `(x, y, z)` volume of `datatype` (no voxel data).
fn nifti_header(dims: [i16; 3], datatype: i16, bitpix: i16) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim = [3i16, dims[0], dims[1], dims[2], 1, 1, 1, 1];
    for (i, d) in dim.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&datatype.to_le_bytes());
    h[72..74].copy_from_slice(&bitpix.to_le_bytes());
    for i in 0..4 {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&1.0f32.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352.0f32.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

/// A PNG that declares `w`×`h` grey pixels (with an empty, invalid image stream).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |p: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        p.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        p.extend_from_slice(kind);
        p.extend_from_slice(data);
        p.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut p, b"IHDR", &ihdr);
    chunk(
        &mut p,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut p, b"IEND", &[]);
    p
}

// ---------------------------------------------------------------------------------------------
// Class 1: model configurations are validated before anything is built.

/// A configuration field and an edit that makes it invalid.
type BreakingEdit<C> = (&'static str, fn(&mut C));

#[test]
fn configurations_are_validated_before_building() {
    init();
    let base = tiny_sam_config();
    // (the field the error must name, the edit that breaks it)
    let cases: [BreakingEdit<SamConfig>; 12] = [
        ("num_heads", |c| c.image_encoder.num_heads = 0),
        ("patch_size", |c| c.image_encoder.patch_size = 0),
        ("img_size", |c| c.image_encoder.img_size = 1 << 40),
        ("embed_dim", |c| c.image_encoder.embed_dim = 1 << 30),
        ("mlp_ratio", |c| c.image_encoder.mlp_ratio = f64::NAN),
        ("window_size", |c| c.image_encoder.window_size = 0),
        ("global_attn_indexes", |c| {
            c.image_encoder.global_attn_indexes = vec![99]
        }),
        ("transformer_num_heads", |c| {
            c.mask_decoder.transformer_num_heads = 0
        }),
        ("transformer_num_heads", |c| {
            c.mask_decoder.transformer_num_heads = 3
        }),
        ("mask_in_chans", |c| c.prompt_encoder.mask_in_chans = 2),
        ("transformer_dim", |c| c.mask_decoder.transformer_dim = 24),
        ("depth", |c| c.image_encoder.depth = 100_000),
    ];
    for (i, (field, edit)) in cases.into_iter().enumerate() {
        let case = format!("case {i} ({field})");
        let mut c = base.clone();
        edit(&mut c);
        let e = c.validate().expect_err(&case);
        assert!(e.contains(field), "{case}: {e}");
        let e = Sam::new(&c, 0, Device::Cpu).err().expect(&case).to_string();
        assert!(e.contains(field), "{case}: {e}");
    }
    // LiteMedSAM's configuration too.
    let lite_cases: [BreakingEdit<LiteConfig>; 2] = [
        ("num_heads", |l| l.image_encoder.num_heads[2] = 0),
        ("transformer_mlp_dim", |l| {
            l.mask_decoder.transformer_mlp_dim = 0
        }),
    ];
    for (field, edit) in lite_cases {
        let mut l = LiteConfig::lite_medsam();
        edit(&mut l);
        assert!(
            medsam::models::config::validate_lite(&l).is_err(),
            "lite {field}"
        );
    }

    // A JSON file: the field is named with the file; a binary file is called binary.
    let d = tmp("config");
    let bad = d.join("heads0.json");
    write_edited_sam_config(&bad, |v| v["image_encoder"]["num_heads"] = 0.into());
    let e = SamConfig::from_json_file(&bad).unwrap_err().to_string();
    assert!(e.contains("heads0.json") && e.contains("num_heads"), "{e}");
    let bin = d.join("binary.json");
    std::fs::write(&bin, [0x80u8, 0xff, 0, 1, 2]).unwrap();
    let e = SamConfig::from_json_file(&bin).unwrap_err().to_string();
    assert!(e.contains("binary"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn decoder_heads_are_never_guessed_and_guesses_are_checked() {
    init();
    let d = tmp("heads");
    let sd = tiny_sam_state();
    let ck = d.join("tiny.pth");
    save_pth(&ck, &Value::from_state_dict(sd.clone())).unwrap();
    // Shapes match no preset: the decoder's heads cannot be known, so the load is refused.
    let e = load_error(&ck, None);
    assert!(
        e.contains("--model-config") && e.contains("tiny.pth"),
        "{e}"
    );
    let cfg = fixture("sam/tiny_sam_config.json");
    assert!(medsam::models::load::load_any_model(&ck, None, Some(&cfg), Device::Cpu).is_ok());
    // A 0-element or wrong-rank tensor where a size is read is an error, not a panic.
    for shape in [vec![1, 0, 0, 32], vec![32], vec![]] {
        let mut sd2 = sd.clone();
        for (k, t) in sd2.iter_mut() {
            if k == "image_encoder.pos_embed" {
                let n = shape.iter().product::<usize>();
                *t = TensorData::from_f32(shape.clone(), &vec![0.0; n]);
            }
        }
        let p = d.join("malformed.pth");
        save_pth(&p, &Value::from_state_dict(sd2)).unwrap();
        let e = load_error(&p, None);
        assert!(e.contains("pos_embed"), "{shape:?}: {e}");
    }
    // Through the CLI: a zero-head configuration is one clear line and exit status 1.
    let bad = d.join("bad.json");
    write_edited_sam_config(&bad, |v| {
        v["mask_decoder"]["transformer_num_heads"] = 0.into()
    });
    let png = blank_png(&d);
    let err = fails(
        infer_cmd(&png, &ck)
            .arg("--model-config")
            .arg(&bad)
            .arg("-o")
            .arg(d.join("out")),
    );
    assert!(err.contains("transformer_num_heads"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Class 2: sizes read from a file are bounded before memory is reserved.

#[test]
fn checkpoint_sizes_are_checked_before_allocating() {
    init();
    let d = tmp("ckpt-sizes");
    // A stride-0 view of one float claiming 10^12 elements.
    let p = d.join("stride0.pth");
    let pkl = pickle_view("w", &[1_000_000, 1_000_000], &[0, 0]);
    std::fs::write(&p, torch_zip(&pkl, &[("0", vec![0u8; 4])])).unwrap();
    let e = load_pth(&p).unwrap_err().to_string();
    assert!(e.contains("bytes"), "{e}");
    // A small legitimate view still loads.
    let pkl = pickle_view("w", &[2, 3], &[0, 0]);
    std::fs::write(&p, torch_zip(&pkl, &[("0", vec![0u8; 4])])).unwrap();
    assert!(load_pth(&p).is_ok());

    // A storage whose zip header claims 3 GiB.
    let pkl = pickle_view("w", &[1], &[1]);
    let mut z = torch_zip(&pkl, &[("0", vec![0u8; 4])]);
    patch_claimed_size(&mut z, "archive/data/0", 3 << 30);
    std::fs::write(&p, &z).unwrap();
    let e = load_pth(&p).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");

    // Shared sub-lists: one 1 MB string referenced 2000 times (2 GB once expanded).
    let mut pkl = vec![0x80, 2, b']', b'('];
    pk_str(&mut pkl, &"x".repeat(1 << 20));
    pkl.extend_from_slice(b"q\x00");
    for _ in 0..2000 {
        pkl.extend_from_slice(b"h\x00");
    }
    pkl.extend_from_slice(b"e.");
    std::fs::write(&p, torch_zip(&pkl, &[])).unwrap();
    let e = load_pth(&p).unwrap_err().to_string();
    assert!(e.contains("strings"), "{e}");
    // ... and doubling lists 40 levels deep (2^40 nodes once expanded).
    let mut pkl = vec![0x80, 2, b'N'];
    for _ in 0..40 {
        pkl.extend_from_slice(b"q\x00h\x00h\x00\x86");
    }
    pkl.push(b'.');
    std::fs::write(&p, torch_zip(&pkl, &[])).unwrap();
    assert!(load_pth(&p).is_err());

    // safetensors whose header claims 10^12 elements.
    let hdr = r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4]}}"#;
    let mut st = (hdr.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(hdr.as_bytes());
    st.extend_from_slice(&[0; 4]);
    let sp = d.join("claims.safetensors");
    std::fs::write(&sp, &st).unwrap();
    assert!(checkpoint::load_safetensors(&sp).is_err());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn array_volume_and_image_sizes_are_checked_before_allocating() {
    init();
    let d = tmp("sizes");
    // npy whose shape product overflows, and one within usize but over the limit.
    for shape in ["(4294967296, 4294967296, 16)", "(100000, 100000)"] {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        let p = d.join("big.npy");
        std::fs::write(&p, &b).unwrap();
        let e = medsam::io::npy::read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("shape"), "{shape}: {e}");
    }
    // A .nii.gz that declares 1024³ voxels (far over the test limit): refused from the header.
    let p = d.join("bomb.nii.gz");
    std::fs::write(&p, gz(&nifti_header([1024, 1024, 1024], 2, 8))).unwrap();
    let e = medsam::io::nifti::read_nifti(&p).unwrap_err().to_string();
    assert!(e.contains("MEDSAM_MAX_VOXELS"), "{e}");
    // ... and one that inflates (8 MiB of zeros in a small file) far past what it declares.
    let mut body = nifti_header([4, 4, 1], 2, 8);
    body.extend(std::iter::repeat_n(0u8, 8 << 20));
    let small = gz(&body);
    assert!(small.len() < 64 << 10);
    std::fs::write(&p, &small).unwrap();
    let v = medsam::io::nifti::read_nifti(&p).unwrap();
    assert_eq!(v.data.len(), 16);
    // A PNG declaring 10^10 pixels is refused before decoding.
    let png = d.join("bomb.png");
    std::fs::write(&png, png_header(100_000, 100_000)).unwrap();
    let e = medsam::pipeline::infer::sam::read_input_image(&png)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MEDSAM_MAX_IMAGE_PIXELS"), "{e}");
    // A device that never ends is not an image, a checkpoint nor an array.
    if Path::new("/dev/zero").exists() {
        let z = Path::new("/dev/zero");
        assert!(medsam::pipeline::infer::sam::read_input_image(z).is_err());
        assert!(medsam::models::load::read_checkpoint(z).is_err());
        assert!(medsam::io::nifti::read_nifti(z).is_err());
        let link = d.join("zero.npy");
        std::os::unix::fs::symlink(z, &link).unwrap();
        assert!(medsam::io::npy::read_npy(&link).is_err());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Class 3: non-finite values and out-of-range data are refused, never turned into a result.

#[test]
fn hyper_parameters_are_validated_as_torch_does() {
    let ok = AdamWConfig::default();
    assert!(ok.validate().is_ok());
    let bad = [
        AdamWConfig { lr: f64::NAN, ..ok },
        AdamWConfig {
            lr: f64::INFINITY,
            ..ok
        },
        AdamWConfig { lr: -1.0, ..ok },
        AdamWConfig {
            weight_decay: f64::NAN,
            ..ok
        },
        AdamWConfig {
            weight_decay: -0.1,
            ..ok
        },
        AdamWConfig { eps: -1e-8, ..ok },
        AdamWConfig {
            betas: (1.0, 0.999),
            ..ok
        },
        AdamWConfig {
            betas: (0.9, -0.1),
            ..ok
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
}

#[test]
fn non_finite_weights_are_refused_by_name() {
    init();
    let d = tmp("nanw");
    let mut sd = tiny_sam_state();
    let (name, t) = &mut sd[3];
    let mut v = t.to_f32().unwrap();
    v[0] = f32::NAN;
    *t = TensorData::from_f32(t.shape.clone(), &v);
    let name = name.clone();
    let p = d.join("nan.pth");
    save_pth(&p, &Value::from_state_dict(sd)).unwrap();
    let cfg = fixture("sam/tiny_sam_config.json");
    let e = load_error(&p, Some(&cfg));
    assert!(e.contains(&name) && e.contains("NaN"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn preprocess_cfg(root: &Path) -> medsam::pipeline::preprocess::PreprocessConfig {
    medsam::pipeline::preprocess::PreprocessConfig {
        nii_path: root.join("images"),
        gt_path: root.join("labels"),
        npy_path: root.join("npy"),
        img_name_suffix: "_0000.nii.gz".into(),
        gt_name_suffix: ".nii.gz".into(),
        image_size: 32,
        voxel_num_thre2d: 0,
        voxel_num_thre3d: 0,
        num_workers: 1,
        ..Default::default()
    }
}

#[test]
fn preprocess_refuses_out_of_range_labels_and_blank_images() {
    init();
    use medsam::io::nifti::write_nifti_gz;
    use medsam::pipeline::preprocess::preprocess;
    let d = tmp("prep");
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("labels")).unwrap();
    let shape = [2, 16, 16];
    let n = 2 * 16 * 16;
    let img: Vec<i16> = (0..n).map(|i| (i % 200) as i16).collect();
    let mut lab = vec![0i16; n];
    lab[20..60].iter_mut().for_each(|v| *v = 300);
    write_nifti_gz(d.join("labels/wrap.nii.gz"), shape, &lab, [1.0; 3]).unwrap();
    write_nifti_gz(d.join("images/wrap_0000.nii.gz"), shape, &img, [1.0; 3]).unwrap();
    let lab_ok: Vec<u8> = (0..n).map(|i| (i % 16 > 4 && i % 16 < 12) as u8).collect();
    write_nifti_gz(d.join("labels/nan.nii.gz"), shape, &lab_ok, [1.0; 3]).unwrap();
    write_nifti_gz(
        d.join("images/nan_0000.nii.gz"),
        shape,
        &vec![f32::NAN; n],
        [1.0; 3],
    )
    .unwrap();
    let s = preprocess(&preprocess_cfg(&d), &|_| {}).unwrap();
    assert!(s.done.is_empty(), "{:?}", s.done);
    let reason = |c: &str| {
        s.skipped
            .iter()
            .find(|x| x.case == c)
            .unwrap()
            .reason
            .clone()
    };
    assert!(reason("wrap").contains("0..=255"), "{}", reason("wrap"));
    assert!(reason("nan").contains("NaN"), "{}", reason("nan"));
    // A zero window is refused before anything is read.
    let mut cfg = preprocess_cfg(&d);
    cfg.window_width = 0.0;
    assert!(preprocess(&cfg, &|_| {}).is_err());
    // The CLI exits non-zero when every case failed, and when none was found.
    let args = |c: &mut Command, gt: &Path| {
        c.args([
            "preprocess",
            "--modality",
            "CT",
            "--anatomy",
            "Abd",
            "--nii-path",
        ])
        .arg(d.join("images"))
        .arg("--gt-path")
        .arg(gt)
        .arg("--npy-path")
        .arg(d.join("npy2"));
    };
    let mut c = medsam();
    args(&mut c, &d.join("labels"));
    let help = Command::new(env!("CARGO_BIN_EXE_medsam"))
        .args(["preprocess", "--help"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&help.stdout).contains("--nii-path") {
        fails(&mut c);
        std::fs::create_dir_all(d.join("empty")).unwrap();
        let mut c = medsam();
        args(&mut c, &d.join("empty"));
        fails(&mut c);
    } else {
        eprintln!("SKIPPED: preprocess CLI flags differ from --nii-path/--gt-path/--npy-path");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn convert_refuses_dropped_keys_and_mismatched_format_names() {
    init();
    let (d, sd, medsam_ck, sam_ck) = medsam_and_sam_checkpoints("convert", 1);
    let out = d.join("out.pth");
    let e = medsam::pipeline::convert::convert(
        &sam_ck,
        &medsam_ck,
        &out,
        medsam::pipeline::convert::OutputFormat::Pth,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&sd[0].0), "{e}");
    assert!(!out.exists());
    // --format safetensors with a .pth name.
    save_pth(&sam_ck, &Value::from_state_dict(sd.clone())).unwrap();
    let err = fails(convert_cmd(&sam_ck, &medsam_ck, &out).args(["--format", "safetensors"]));
    assert!(err.contains("--format"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Class 4: nothing is overwritten.

#[test]
fn outputs_never_replace_inputs() {
    init();
    let (d, _, medsam_ck, sam_ck) = medsam_and_sam_checkpoints("overwrite", 0);
    let before = std::fs::read(&medsam_ck).unwrap();
    // The same file under another spelling.
    std::fs::create_dir_all(d.join("sub")).unwrap();
    let alias = d.join("sub/../medsam.pth");
    let err = fails(&mut convert_cmd(&sam_ck, &medsam_ck, &alias));
    assert!(err.contains("--save-path"), "{err}");
    assert_eq!(std::fs::read(&medsam_ck).unwrap(), before);
    // infer --logits naming the input image.
    let png = blank_png(&d);
    let img_before = std::fs::read(&png).unwrap();
    let err = fails(infer_cmd(&png, &sam_ck).arg("--logits").arg(&png));
    assert!(err.contains("--logits"), "{err}");
    assert_eq!(std::fs::read(&png).unwrap(), img_before);
    std::fs::remove_dir_all(&d).unwrap();
}

/// `n` 64×64 slices with a square label; `nan` puts NaN in the images.
fn slices(dir: &Path, n: usize, nan: bool) {
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    std::fs::create_dir_all(dir.join("gts")).unwrap();
    let s = 64;
    for i in 0..n {
        let mut img = vec![0.2f64; s * s * 3];
        let mut gt = vec![0u8; s * s];
        for y in 20..40 {
            for x in 20 + i..40 + i {
                gt[y * s + x] = 1;
                img[(y * s + x) * 3..(y * s + x) * 3 + 3].fill(0.8);
            }
        }
        if nan {
            img[5] = f64::NAN;
        }
        let name = format!("S_{i:03}.npy");
        medsam::io::npy::write_npy_f64(dir.join("imgs").join(&name), &[s, s, 3], &img).unwrap();
        medsam::io::npy::write_npy_u8(dir.join("gts").join(&name), &[s, s], &gt).unwrap();
    }
}

fn train_cfg(data: &Path, work: &Path) -> medsam::pipeline::train::TrainConfig {
    medsam::pipeline::train::TrainConfig {
        tr_npy_path: data.to_path_buf(),
        task_name: "same".into(),
        work_dir: work.to_path_buf(),
        num_epochs: 1,
        batch_size: 2,
        num_workers: 0,
        max_steps: Some(1),
        ..Default::default()
    }
}

#[test]
fn runs_get_their_own_directory_and_failures_leave_none() {
    init();
    use medsam::dist::SingleProcess;
    use medsam::pipeline::train::train;
    let d = tmp("runs");
    slices(&d.join("data"), 2, false);
    let work = d.join("work");
    let cfg = train_cfg(&d.join("data"), &work);
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let mut m = Sam::new(&tiny_sam_config(), 0, Device::Cpu).unwrap();
        let o = train(&cfg, &mut m, &SingleProcess, &mut |_| {}).unwrap();
        assert!(o.latest_checkpoint.exists());
        dirs.push(o.run_dir);
    }
    assert_ne!(dirs[0], dirs[1], "two runs shared a directory");
    // Bad hyper-parameters, nothing to do, or NaN data: an error and no new directory.
    let count = || std::fs::read_dir(&work).unwrap().count();
    let before = count();
    let mut bad = cfg.clone();
    bad.adamw.lr = f64::NAN;
    let mut zero = cfg.clone();
    zero.num_epochs = 0;
    slices(&d.join("nan"), 2, true);
    let nan = train_cfg(&d.join("nan"), &work);
    for c in [bad, zero, nan] {
        let mut m = Sam::new(&tiny_sam_config(), 0, Device::Cpu).unwrap();
        assert!(train(&c, &mut m, &SingleProcess, &mut |_| {}).is_err());
        assert_eq!(count(), before, "a failed run left a directory");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn stale_temp_files_of_dead_writers_are_removed() {
    let d = tmp("stale");
    let dead = (2..32768u32)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    if !Path::new("/proc/self").exists() {
        eprintln!("SKIPPED: no /proc to tell dead writers from live ones");
        return;
    }
    let stale = d.join(format!(".medsam_model_latest.pth.tmp{dead}"));
    let live = d.join(format!(
        ".medsam_model_latest.pth.tmp{}",
        std::process::id()
    ));
    let other = d.join("notes.tmp123");
    for f in [&stale, &live, &other] {
        std::fs::write(f, b"x").unwrap();
    }
    assert_eq!(medsam::io::stale::clean_stale_temps(&d), 1);
    assert!(!stale.exists() && live.exists() && other.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Class 5: messages and exit status.

#[test]
fn cli_errors_are_one_line_with_status_1() {
    init();
    let d = tmp("cli");
    // A device that never ends as the image; a missing checkpoint; a directory as checkpoint.
    let err = fails(&mut infer_cmd(Path::new("/dev/zero"), &d.join("none.pth")));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let png = blank_png(&d);
    let err = fails(infer_cmd(&png, &d).arg("-o").arg(d.join("out")));
    assert!(err.contains("regular file"), "{err}");
    // A malformed limit is reported before anything is read.
    let err = fails(infer_cmd(&png, &d).env("MEDSAM_MAX_VOXELS", "lots"));
    assert!(err.contains("MEDSAM_MAX_VOXELS"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bounded fuzzing of the readers: mutated valid files and the committed hostile corpus.

/// Peak resident memory of this process in bytes (Linux), if known.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Every reader, chosen by extension; the result only has to be Ok or Err.
fn read_any(path: &Path) {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".pth") {
        let _ = load_pth(path);
        let _ = medsam::models::load::read_checkpoint(path);
    } else if name.ends_with(".safetensors") {
        let _ = checkpoint::load_safetensors(path);
    } else if name.ends_with(".npy") {
        let _ = medsam::io::npy::read_npy(path);
        let _ = medsam::pipeline::infer::sam::read_input_image(path);
    } else if name.ends_with(".npz") {
        let _ = medsam::io::volume::read_npz_volume(path);
        let _ = medsam::io::volume::read_challenge_npz(path, None);
    } else if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        let _ = medsam::io::nifti::read_nifti(path);
        let _ = medsam::io::volume::read_nifti_volume(path);
    } else if name.ends_with(".json") {
        let _ = SamConfig::from_json_file(path);
        let _ = LiteConfig::from_json_file(path);
    } else {
        let _ = medsam::pipeline::infer::sam::read_input_image(path);
    }
}

/// Small valid files of every format, the seeds of the mutations.
fn seeds(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut put = |name: &str| {
        let p = dir.join(name);
        out.push((name.to_string(), std::fs::read(&p).unwrap()));
    };
    let t = TensorData::new(DType::F32, vec![2, 3], vec![0u8; 24]).unwrap();
    let sd = vec![("a.weight".to_string(), t.clone()), ("b".to_string(), t)];
    save_medsam_pth(dir.join("s.pth"), &sd);
    put("s.pth");
    checkpoint::save_safetensors(dir.join("s.safetensors"), &sd).unwrap();
    put("s.safetensors");
    medsam::io::npy::write_npy_f32(dir.join("s.npy"), &[4, 5, 3], &[0.5; 60]).unwrap();
    put("s.npy");
    let vol: Vec<i16> = (0..3 * 4 * 5).map(|i| i as i16).collect();
    medsam::io::nifti::write_nifti_gz(dir.join("s.nii.gz"), [3, 4, 5], &vol, [1.0; 3]).unwrap();
    put("s.nii.gz");
    let mut nii = nifti_header([5, 4, 3], 2, 8);
    nii.extend((0..60).map(|i| i as u8));
    std::fs::write(dir.join("s.nii"), &nii).unwrap();
    put("s.nii");
    medsam::io::volume::write_npz_segs(&dir.join("s.npz"), (2, 3, 4), &[1u8; 24]).unwrap();
    put("s.npz");
    // a 2D challenge .npz: imgs (H, W, 3) uint8 and boxes (N, 4)
    let boxes =
        medsam::io::npy::NpyArray::new(vec![1, 4], medsam::io::npy::NpyData::I64(vec![1, 1, 4, 3]))
            .unwrap();
    medsam::io::volume::write_npz_members(
        &dir.join("s2d.npz"),
        &[
            (
                "imgs",
                medsam::io::npy::encode_npy_u8(&[4, 5, 3], &[7u8; 60]),
            ),
            ("boxes", medsam::io::npy::encode_npy(&boxes)),
        ],
    )
    .unwrap();
    put("s2d.npz");
    image::GrayImage::from_fn(6, 5, |x, y| image::Luma([(x * y) as u8]))
        .save(dir.join("s.png"))
        .unwrap();
    put("s.png");
    image::RgbImage::new(6, 5).save(dir.join("s.jpg")).unwrap();
    put("s.jpg");
    image::GrayImage::new(6, 5).save(dir.join("s.tif")).unwrap();
    put("s.tif");
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, [u8; 4]),
    Truncate(usize),
    Splice(usize, usize),
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match *m {
            Mutation::Flip(i, x) => b[i % n] ^= x,
            Mutation::Set(i, v) => {
                let i = i % n;
                let k = (n - i).min(4);
                b[i..i + k].copy_from_slice(&v[..k]);
            }
            Mutation::Truncate(i) => b.truncate(i % n),
            Mutation::Splice(i, j) => {
                let (i, j) = (i % n, j % n);
                let chunk: Vec<u8> = b[i.min(j)..i.max(j)].to_vec();
                b.splice(i..i, chunk);
            }
        }
    }
    b
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let big = prop_oneof![
        Just([0xff, 0xff, 0xff, 0x7f]),
        Just([0, 0, 0, 0]),
        Just([0xff, 0xff, 0xff, 0xff]),
        Just([0, 0, 0, 0x80]),
        any::<[u8; 4]>()
    ];
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), big).prop_map(|(i, v)| Mutation::Set(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Splice(i, j)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn readers_survive_mutated_files(ms in proptest::collection::vec(mutation(), 1..6)) {
        init();
        thread_local! {
            static SEEDS: (PathBuf, Vec<(String, Vec<u8>)>) = {
                let d = tmp(&format!("fuzz-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
                let s = seeds(&d);
                (d, s)
            };
        }
        SEEDS.with(|(dir, seeds)| {
            for (name, bytes) in seeds {
                let p = dir.join(format!("m_{name}"));
                std::fs::write(&p, mutate(bytes.clone(), &ms)).unwrap();
                read_any(&p);
            }
        });
    }
}

#[test]
fn committed_hostile_corpus_is_refused_or_read_without_panic() {
    init();
    let dir = fixture("hostile");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("SKIPPED: {} is missing", dir.display());
        return;
    };
    let mut n = 0;
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().ends_with(".md") {
            continue;
        }
        read_any(&e.path());
        n += 1;
    }
    assert!(n > 0);
    // Every test in this binary runs under 64 MiB limits: peaks of GiBs mean a size went
    // unchecked somewhere.
    if let Some(peak) = peak_rss() {
        assert!(peak < 1 << 30, "peak resident memory {peak} bytes");
    }
}
