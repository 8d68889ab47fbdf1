//! Evaluation end to end on a small synthetic npy data set: files and their shapes, the box
//! baseline against values computed here by hand, and sharded evaluation (two in-process ranks
//! exchanging through a shared board) giving exactly the unsharded totals.

use crate::common::summary;
use medsam::dist::{Communicator, SingleProcess};
use medsam::eval::{evaluate, EvalConfig};
use medsam::model::{Sam, SamConfig};
use medsam::{Device, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use summary::assert_summary_fields;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Slice i: a filled disc of label 1 and, for odd i, a 5×7 rectangle of label 3.
fn synth(dir: &Path, n: usize, s: usize) {
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    std::fs::create_dir_all(dir.join("gts")).unwrap();
    for i in 0..n {
        let mut gt = vec![0u8; s * s];
        let (cx, cy, r) = (10 + i, 12 + 2 * i, 5 + i % 3);
        for y in 0..s {
            for x in 0..s {
                let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
                if dx * dx + dy * dy <= (r * r) as i64 {
                    gt[y * s + x] = 1;
                }
                if i % 2 == 1 && (20..27).contains(&x) && (3..8).contains(&y) {
                    gt[y * s + x] = 3;
                }
            }
        }
        let img: Vec<f64> = gt.iter().flat_map(|&g| [g as f64 / 3.0; 3]).collect();
        let name = format!("case_{i:02}.npy");
        medsam::npy::write_npy_f64(dir.join("imgs").join(&name), &[s, s, 3], &img).unwrap();
        medsam::npy::write_npy_u8(dir.join("gts").join(&name), &[s, s], &gt).unwrap();
    }
}

fn tiny_model() -> Sam {
    let cfg = SamConfig::from_json_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam/tiny_sam_config.json"),
    )
    .unwrap();
    Sam::new(&cfg, 3, Device::Cpu).unwrap()
}

#[test]
fn writes_csv_json_figure_and_exact_box_baseline() {
    let d = tmp("files");
    synth(&d.join("data"), 4, 64);
    let model = tiny_model();
    let cfg = EvalConfig {
        data_path: d.join("data"),
        work_dir: d.join("out"),
        ..EvalConfig::default()
    };
    let out = evaluate(&model, &cfg, &SingleProcess, &mut |_, _| {}).unwrap();
    let csv = std::fs::read_to_string(&out.csv).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 4 + 2,
        "header + one row per (slice, label):\n{csv}"
    );
    assert_eq!(out.summary.count, 6);
    assert_eq!(out.summary.per_label["1"].count, 4);
    assert_eq!(out.summary.per_label["3"].count, 2);
    // A rectangle fills its own bounding box: its baseline DSC is exactly 1. A disc of radius r
    // has area A (counted here) in a (2r+1)² box.
    let mut dsc = Vec::new();
    for i in 0..4usize {
        let r = 5 + i % 3;
        let area = (0..=2 * r)
            .flat_map(|y| (0..=2 * r).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let (dx, dy) = (x as i64 - r as i64, y as i64 - r as i64);
                dx * dx + dy * dy <= (r * r) as i64
            });
        let a = area.count() as f64;
        let b = ((2 * r + 1) * (2 * r + 1)) as f64;
        dsc.push(2.0 * a / (a + b));
    }
    dsc.extend([1.0, 1.0]);
    let want = dsc.iter().sum::<f64>() / dsc.len() as f64;
    let got = out.summary.box_baseline.dsc.unwrap();
    assert!(
        (got - want).abs() < 1e-9,
        "box baseline DSC {got} vs {want}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out.json).unwrap()).unwrap();
    assert_summary_fields("metrics.json", &json);
    let fig = image::open(out.figure.unwrap()).unwrap();
    assert!(
        fig.width() >= 3 * 64,
        "comparison figure has three panels per row"
    );
}

/// In-process ranks that exchange through a shared board guarded by a barrier.
struct Board {
    world: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

struct ThreadRank {
    rank: usize,
    board: Arc<Board>,
}

impl Communicator for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.board.world
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        unimplemented!("evaluation does not all-reduce")
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        unimplemented!("evaluation does not broadcast")
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.board.slots.lock().unwrap()[self.rank] = bytes.to_vec();
        self.board.barrier.wait();
        let all = self.board.slots.lock().unwrap().clone();
        self.board.barrier.wait();
        Ok(all)
    }
    fn barrier(&self) -> Result<()> {
        self.board.barrier.wait();
        Ok(())
    }
}

#[test]
fn sharded_evaluation_equals_unsharded() {
    let d = tmp("shard");
    synth(&d.join("data"), 5, 64);
    let model = Arc::new(tiny_model());
    let cfg = EvalConfig {
        data_path: d.join("data"),
        work_dir: d.join("single"),
        figure_slices: 0,
        ..EvalConfig::default()
    };
    let single = evaluate(&model, &cfg, &SingleProcess, &mut |_, _| {}).unwrap();
    let board = Arc::new(Board {
        world: 2,
        barrier: Barrier::new(2),
        slots: Mutex::new(vec![Vec::new(); 2]),
    });
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (board, model) = (board.clone(), model.clone());
            let cfg = EvalConfig {
                work_dir: d.join("sharded"),
                ..cfg.clone()
            };
            std::thread::spawn(move || {
                evaluate(&model, &cfg, &ThreadRank { rank, board }, &mut |_, _| {}).unwrap()
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (a, b) = (&single.summary, &outs[0].summary);
    // Means of the same values summed in another order: equal to rounding.
    let close = |x: Option<f64>, y: Option<f64>| (x.unwrap() - y.unwrap()).abs() < 1e-12;
    assert_eq!(a.count, b.count);
    assert!(
        close(a.dsc, b.dsc) && close(a.miou, b.miou) && close(a.nsd, b.nsd),
        "{a:?} vs {b:?}"
    );
    for (id, la) in &a.per_label {
        let lb = &b.per_label[id];
        assert_eq!(la.count, lb.count);
        assert!(
            close(la.dsc, lb.dsc) && close(la.miou, lb.miou) && close(la.nsd, lb.nsd),
            "label {id}"
        );
    }
    let (csv1, csv2) = (
        std::fs::read_to_string(&single.csv).unwrap(),
        std::fs::read_to_string(&outs[0].csv).unwrap(),
    );
    assert_eq!(csv1, csv2, "rank 0 writes the same rows");
}

#[test]
fn missing_data_dir_is_named() {
    let d = tmp("missing");
    let cfg = EvalConfig {
        data_path: d.join("absent"),
        work_dir: d.join("out"),
        ..EvalConfig::default()
    };
    let e = evaluate(&tiny_model(), &cfg, &SingleProcess, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent"), "{e}");
}

// ---- 3D volumes (`medsam::pipeline::eval3d`, `medsam eval` on .npz / NIfTI) ----

use crate::common::lite_fixture;
use medsam::npy::{encode_npy, NpyArray, NpyData};
use medsam::pipeline::eval3d::{self, evaluate_volumes, Eval3dConfig};

/// A `d × h × w` image and labels: an ellipsoid (label 1, bright) drifting with z and a cuboid
/// (label 3, mid grey) on a gradient.
fn synth_volume(d: usize, h: usize, w: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut img, mut gts) = (vec![0u8; d * h * w], vec![0u8; d * h * w]);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let i = (z * h + y) * w + x;
                let r = ((z as f64 - 3.0) / 2.6).powi(2)
                    + ((y as f64 - 10.0) / 6.0).powi(2)
                    + ((x as f64 - 8.0 - z as f64) / 5.0).powi(2);
                img[i] = (10 + (x + y) % 40) as u8;
                if r <= 1.0 {
                    gts[i] = 1;
                    img[i] = 220;
                } else if (1..4).contains(&z) && (2..6).contains(&y) && (17..22).contains(&x) {
                    gts[i] = 3;
                    img[i] = 120;
                }
            }
        }
    }
    (img, gts)
}

fn npz_member(name: &'static str, shape: &[usize], data: NpyData) -> (&'static str, Vec<u8>) {
    (
        name,
        encode_npy(&NpyArray::new(shape.to_vec(), data).unwrap()),
    )
}

/// Runs `medsam eval` and returns its stdout, or panics with its stderr.
fn medsam_eval(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_medsam"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn volume_eval_npz_and_nifti_write_model_and_box_rows() {
    let d = tmp("vol3d");
    let (dd, h, w) = (7, 20, 24);
    let (img, gts) = synth_volume(dd, h, w);
    let spacing_xyz = [0.8, 0.7, 2.5];
    std::fs::create_dir_all(d.join("npz")).unwrap();
    medsam::io::volume::write_npz_members(
        &d.join("npz/case_a.npz"),
        &[
            npz_member("imgs", &[dd, h, w], NpyData::U8(img.clone())),
            npz_member("gts", &[dd, h, w], NpyData::U8(gts.clone())),
            npz_member("spacing", &[3], NpyData::F64(spacing_xyz.to_vec())),
        ],
    )
    .unwrap();
    for sub in ["nii/imgs", "nii/labels"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let nii = medsam::io::nifti::write_nifti_gz;
    nii(
        d.join("nii/imgs/case_a_0000.nii.gz"),
        [dd, h, w],
        &img,
        spacing_xyz,
    )
    .unwrap();
    nii(
        d.join("nii/labels/case_a.nii.gz"),
        [dd, h, w],
        &gts,
        spacing_xyz,
    )
    .unwrap();
    let ckpt = lite_fixture::tiny_checkpoint(&d);
    let cfg =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite/tiny_lite_config.json");
    let common = |out: &str| -> Vec<std::ffi::OsString> {
        vec![
            "-c".into(),
            ckpt.clone().into(),
            "--model-config".into(),
            cfg.clone().into(),
            "--work-dir".into(),
            d.join(out).into(),
        ]
    };
    let mut csvs = Vec::new();
    for (out, extra) in [
        ("out_npz", vec![d.join("npz").into_os_string()]),
        (
            "out_nii",
            vec![
                d.join("nii/imgs").into_os_string(),
                "--label-path".into(),
                d.join("nii/labels").into_os_string(),
            ],
        ),
    ] {
        let mut args: Vec<std::ffi::OsString> = vec!["--data-path".into()];
        args.extend(extra);
        args.extend(common(out));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let o = medsam_eval(&refs);
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            stdout.contains("box DSC") && stdout.contains("1 volume(s), NSD at 2 mm"),
            "{stdout}"
        );
        let csv = std::fs::read_to_string(d.join(out).join("metrics3d.csv")).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(out).join("metrics3d.json")).unwrap())
                .unwrap();
        assert_eq!(json["model"], "lite");
        assert!(
            json["per_label"]["3"]["box_dsc"].as_f64().is_some(),
            "{json}"
        );
        csvs.push(csv);
    }
    // The same volume and spacing through .npz and NIfTI: the same rows.
    assert_eq!(csvs[0], csvs[1]);
    let lines: Vec<&str> = csvs[0].lines().collect();
    assert_eq!(lines[0], eval3d::CSV_HEADER_3D);
    let methods: Vec<(&str, &str)> = lines[1..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1], f[2])
        })
        .collect();
    assert_eq!(
        methods,
        [("1", "lite"), ("1", "box"), ("3", "lite"), ("3", "box")]
    );
    // Box rows: the library's metrics of the filled GT box, spacing along (z, y, x).
    for (row, label) in [(2, 1u8), (4, 3)] {
        let f: Vec<&str> = lines[row].split(',').collect();
        let b = eval3d::gt_boxes(&gts, (dd, h, w))
            .into_iter()
            .find(|g| g.label == label)
            .unwrap();
        let gt: Vec<bool> = gts.iter().map(|&l| l == label).collect();
        let bx = eval3d::box_volume(&b.bounds, (dd, h, w));
        let m =
            medsam::metrics::volume_metrics(&gt, &bx, [dd, h, w], [2.5, 0.7, 0.8], 2.0).unwrap();
        assert_eq!(f[3], format!("{:.6}", m.dsc), "{}", lines[row]);
        assert_eq!(f[4], format!("{:.6}", m.nsd), "{}", lines[row]);
        // the ellipsoid only partly fills its box; the cuboid fills it
        assert!(
            if label == 1 {
                m.dsc < 0.9
            } else {
                m.dsc == 1.0
            },
            "{m:?}"
        );
    }
    // Model rows: the library's evaluation with the same model gives the same CSV.
    let model = match medsam::weights::load_any_model(&ckpt, None, Some(&cfg), Device::Cpu).unwrap()
    {
        (medsam::weights::AnyModel::Lite(m), _) => m,
        _ => panic!("tiny checkpoint taken for SAM"),
    };
    let c = Eval3dConfig {
        data_path: d.join("npz"),
        work_dir: d.join("out_lib"),
        ..Eval3dConfig::default()
    };
    let mut seg = eval3d::lite_segmenter(&model, medsam::infer::InferPrecision::F32);
    let out = evaluate_volumes(&c, "lite", &mut seg, &SingleProcess, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read_to_string(&out.csv).unwrap(), csvs[0]);
    assert_eq!(out.rows.len(), 4);
    // `--precision bf16` (it was refused for volumes): the library's rows at bf16.
    let mut args: Vec<std::ffi::OsString> = vec!["--data-path".into(), d.join("npz").into()];
    args.extend(common("out_bf16"));
    args.extend(["--precision".into(), "bf16".into()]);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let o = medsam_eval(&refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c16 = Eval3dConfig {
        work_dir: d.join("out_lib_bf16"),
        ..c
    };
    let mut seg16 = eval3d::lite_segmenter(&model, medsam::infer::InferPrecision::Bf16);
    let out16 = evaluate_volumes(&c16, "lite", &mut seg16, &SingleProcess, &mut |_, _| {}).unwrap();
    let csv16 = std::fs::read_to_string(d.join("out_bf16").join("metrics3d.csv")).unwrap();
    assert_eq!(std::fs::read_to_string(&out16.csv).unwrap(), csv16);
}

#[test]
fn volume_eval_bad_inputs_are_named() {
    let d = tmp("vol3d-bad");
    let (img, gts) = synth_volume(5, 12, 26);
    let nii = medsam::io::nifti::write_nifti_gz;
    for sub in ["imgs", "labels", "empty", "short"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    nii(d.join("imgs/a.nii.gz"), [5, 12, 26], &img, [1.0, 1.0, 3.0]).unwrap();
    nii(
        d.join("labels/a.nii.gz"),
        [5, 12, 26],
        &gts,
        [1.0, 1.0, 3.0],
    )
    .unwrap();
    nii(
        d.join("empty/a.nii.gz"),
        [5, 12, 26],
        &vec![0u8; gts.len()],
        [1.0; 3],
    )
    .unwrap();
    nii(
        d.join("short/a.nii.gz"),
        [4, 12, 26],
        &gts[..4 * 12 * 26],
        [1.0; 3],
    )
    .unwrap();
    // A model that finds nothing: its rows score 0 (one surface empty), the box rows do not.
    let mut nothing = |v: &eval3d::LoadedVolume, _: &[eval3d::GtBox]| Ok(vec![0u8; v.labels.len()]);
    let run = |labels: &str, seg: &mut eval3d::Segmenter<'_>| {
        let c = Eval3dConfig {
            data_path: d.join("imgs"),
            label_path: Some(d.join(labels)),
            work_dir: d.join(format!("out_{labels}")),
            ..Eval3dConfig::default()
        };
        evaluate_volumes(&c, "none", seg, &SingleProcess, &mut |_, _| {})
    };
    let out = run("labels", &mut nothing).unwrap();
    for r in &out.rows {
        if r.method == "none" {
            assert_eq!((r.metrics.dsc, r.metrics.nsd, r.pred_voxels), (0.0, 0.0, 0));
        } else {
            assert!(r.metrics.nsd > 0.0, "{r:?}");
        }
    }
    let mut err = |labels: &str| run(labels, &mut nothing).expect_err(labels).to_string();
    let e = err("empty");
    assert!(
        e.contains("no foreground voxels") && e.contains("empty/a.nii.gz"),
        "{e}"
    );
    let e = err("short");
    assert!(e.contains("4×12×26") && e.contains("5×12×26"), "{e}");
    std::fs::rename(d.join("labels/a.nii.gz"), d.join("labels/b.nii.gz")).unwrap();
    let e = err("labels");
    assert!(
        e.contains("no label for image") && e.contains("a.nii.gz"),
        "{e}"
    );
    // The CLI: a NIfTI image without labels, and a SAM checkpoint on volumes.
    let o = medsam_eval(&[
        "--data-path".as_ref(),
        d.join("imgs/a.nii.gz").as_os_str(),
        "-c".as_ref(),
        d.join("none.pth").as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("--label-path"),
        "{stderr}"
    );
}

#[test]
fn volume_eval_dicom_series_with_nifti_label() {
    let d = tmp("vol3d-dicom");
    let series_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/ct_case01");
    let series = medsam::io::dicom::read_series(&series_dir, None).unwrap();
    let [dd, h, w] = series.volume.shape;
    let mut gts = vec![0u8; dd * h * w];
    for z in 1..dd.min(4) {
        for y in h / 4..h / 2 {
            for x in w / 4..w / 2 {
                gts[(z * h + y) * w + x] = 2;
            }
        }
    }
    let label = d.join("ct_case01.nii.gz");
    medsam::io::nifti::write_nifti_gz(&label, [dd, h, w], &gts, series.geometry.spacing).unwrap();
    let ckpt = lite_fixture::tiny_checkpoint(&d);
    let cfg =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite/tiny_lite_config.json");
    let o = medsam_eval(&[
        "--data-path".as_ref(),
        series_dir.as_os_str(),
        "--label-path".as_ref(),
        label.as_os_str(),
        "-c".as_ref(),
        ckpt.as_os_str(),
        "--model-config".as_ref(),
        cfg.as_os_str(),
        "--work-dir".as_ref(),
        d.join("out").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(d.join("out/metrics3d.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows[0].starts_with("ct_case01,2,lite,")
            && rows[1].starts_with("ct_case01,2,box,1.000000,1.000000"),
        "{csv}"
    );
}
