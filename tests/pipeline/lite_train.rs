//! LiteMedSAM training and evaluation (the generic `train`/`evaluate` over [`SegModel`]) with the
//! tiny TinyViT configuration of `tests/fixtures/lite/`, on phantom CT preprocessed to the npy
//! layout: the loss falls, resuming is bit-identical to uninterrupted training, the checkpoint
//! loads back as LiteMedSAM, evaluation reports metrics; and the same through the `medsam` binary.

use crate::common::lite_fixture;
use crate::common::process;
use crate::common::train_config;
use lite_fixture::{run_medsam, tiny_config};
use medsam::data::Batch;
use medsam::dist::SingleProcess;
use medsam::eval::{evaluate, EvalConfig};
use medsam::model::lite::{LiteConfig, LiteMedSam};
use medsam::seg_model::SegModel;
use medsam::train::{train, TrainConfig, TrainOutcome};
use medsam::weights::{load_any_model, AnyModel};
use medsam::{Device, Tensor};
use process::success_stdout;
use std::path::{Path, PathBuf};
use train_config::train_config_in;

fn tiny_model(seed: u64) -> LiteMedSam {
    let cfg = LiteConfig::from_json_file(&tiny_config()).unwrap();
    LiteMedSam::new(&cfg, seed, Device::Cpu).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-litetrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Phantom CT volumes preprocessed (CT window) to 128² npy slices; returns the npy directory.
fn phantom_npy(dir: &Path, cases: usize, seed: u64) -> PathBuf {
    let raw = dir.join("raw");
    medsam::preprocess::phantom::make_phantom(&raw, cases, seed, (64, 64, 8)).unwrap();
    let cfg = medsam::preprocess::PreprocessConfig {
        nii_path: raw.join("images"),
        gt_path: raw.join("labels"),
        npy_path: dir.join("npy"),
        image_size: 128,
        voxel_num_thre2d: 10,
        voxel_num_thre3d: 50,
        ..medsam::preprocess::PreprocessConfig::default()
    };
    medsam::preprocess::preprocess(&cfg, &|_| {}).unwrap();
    let n = medsam::data::list_pairs(&cfg.npy_path).unwrap().len();
    assert!(n >= 4, "phantom gave only {n} slices");
    cfg.npy_path
}

fn train_config(data: &Path, run: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        task_name: "lite".into(),
        num_epochs: epochs,
        batch_size: 2,
        num_workers: 1,
        bbox_shift: 4,
        ..train_config_in(data, run)
    }
}

/// Trains `model` with `cfg` in this one process.
fn train_single(cfg: &TrainConfig, model: &mut LiteMedSam) -> TrainOutcome {
    train(cfg, model, &SingleProcess, &mut |_| {}).unwrap()
}

fn all_state(m: &mut LiteMedSam) -> Vec<(String, Vec<f32>)> {
    m.state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.to_vec().unwrap()))
        .collect()
}

/// Largest elementwise difference of two state dicts with the same names (batch counters aside).
fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, _)| !x.0.ends_with("num_batches_tracked"))
        .flat_map(|(x, y)| {
            assert_eq!(x.0, y.0);
            x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0f32, f32::max)
}

#[test]
fn prepare_batch_follows_upstream_256_frame() {
    let m = tiny_model(0);
    let (h, w, s) = (128, 128, m.img_size());
    let mut img = vec![0.0f32; 3 * h * w];
    let mut mask = vec![0.0f32; h * w];
    for y in 40..80 {
        for x in 20..100 {
            mask[y * w + x] = 1.0;
            for c in 0..3 {
                img[c * h * w + y * w + x] = 200.0 / 255.0;
            }
        }
    }
    let batch = Batch {
        images: Tensor::from_vec(img, &[1, 3, h, w]).unwrap(),
        masks: Tensor::from_vec(mask, &[1, 1, h, w]).unwrap(),
        boxes: vec![[21.0, 39.0, 101.0, 83.0]],
        names: vec!["x".into()],
    };
    let p = m.prepare_batch(&batch).unwrap();
    assert_eq!(p.images.shape(), &[1, 3, s, s]);
    assert_eq!(p.masks.shape(), &[1, 1, s, s]);
    // Coordinates × 64/128, truncated (upstream's resize_box_to_256).
    assert_eq!(p.boxes, vec![[10.0, 19.0, 50.0, 41.0]]);
    let (im, mk) = (p.images.to_vec().unwrap(), p.masks.to_vec().unwrap());
    // Min-max to [0, 1]: background 0, the square 1; the mask by nearest neighbour (2× → 2·d).
    assert_eq!(im[30 * s + 30], 1.0);
    assert_eq!(im[5 * s + 5], 0.0);
    let on = |y: usize, x: usize| mk[y * s + x] > 0.5;
    assert!(on(20, 10) && on(39, 49) && !on(19, 10) && !on(40, 10) && !on(20, 9) && !on(20, 50));
}

#[test]
fn lite_trains_resumes_and_evaluates() {
    let d = tmp("lib");
    let data = phantom_npy(&d.join("train"), 1, 3);
    let test = phantom_npy(&d.join("test"), 1, 4);
    let ecfg = |w: &str| EvalConfig {
        data_path: test.clone(),
        work_dir: d.join(w),
        max_slices: Some(4),
        ..EvalConfig::default()
    };

    // Loss falls over a few epochs on a handful of slices.
    let mut model = tiny_model(1);
    let out = train_single(&train_config(&data, &d.join("run"), 6), &mut model);
    let l = &out.epoch_losses;
    assert!(l.iter().all(|x| x.is_finite()), "losses {l:?}");
    assert!(l[l.len() - 1] < 0.9 * l[0], "loss did not fall: {l:?}");

    // Resume: 3 epochs, then 3 more from the checkpoint ≡ 6 at once (BatchNorm buffers included).
    let mut first = tiny_model(1);
    let a = train_single(&train_config(&data, &d.join("run_a"), 3), &mut first);
    let mut resumed = tiny_model(99);
    let cfg = TrainConfig {
        resume: Some(a.latest_checkpoint.clone()),
        ..train_config(&data, &d.join("run_b"), 6)
    };
    let b = train_single(&cfg, &mut resumed);
    assert_eq!(b.epochs_completed, 3);
    // Bit for bit: every reduction in training (LayerNorm's dgamma/dbeta included) sums in a
    // fixed order, so a resumed run replays the uninterrupted one exactly.
    let full = all_state(&mut model);
    let (resumed_gap, start_gap) = (
        max_diff(&all_state(&mut resumed), &full),
        max_diff(&all_state(&mut first), &full),
    );
    let batches = |m: &mut LiteMedSam| {
        m.state_dict()
            .into_iter()
            .find(|(k, _)| k.ends_with("num_batches_tracked"))
            .map(|(_, t)| t.to_vec().unwrap())
    };
    assert_eq!(
        batches(&mut resumed),
        batches(&mut model),
        "BatchNorm state resumed"
    );
    assert!(start_gap > 0.0, "training epochs 4-6 changed nothing");
    assert_eq!(
        resumed_gap, 0.0,
        "resumed vs uninterrupted differ by {resumed_gap} (3-epoch checkpoint vs uninterrupted: {start_gap})"
    );

    // The training checkpoint loads back as LiteMedSAM (as `medsam infer` loads it).
    let (loaded, report) = load_any_model(
        &out.latest_checkpoint,
        None,
        Some(&tiny_config()),
        Device::Cpu,
    )
    .unwrap();
    assert!(report.is_clean());
    let AnyModel::Lite(mut loaded) = loaded else {
        panic!("training checkpoint taken for SAM")
    };
    assert_eq!(max_diff(&all_state(&mut loaded), &full), 0.0);

    // Evaluation reports metrics, and the trained model beats the untrained one.
    let untrained = evaluate(&tiny_model(1), &ecfg("e0"), &SingleProcess, &mut |_, _| {}).unwrap();
    let trained = evaluate(&*loaded, &ecfg("e1"), &SingleProcess, &mut |_, _| {}).unwrap();
    assert!(trained.summary.count > 0 && trained.csv.is_file() && trained.json.is_file());
    let (d0, d1) = (untrained.summary.dsc.unwrap(), trained.summary.dsc.unwrap());
    assert!(
        d1.is_finite() && d1 > d0,
        "DSC untrained {d0}, trained {d1}"
    );
}

/// The first entry `read_dir` lists in `dir`.
fn first_entry(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap_or_else(|| panic!("{} is empty", dir.display()))
        .unwrap()
        .path()
}

#[test]
fn cli_train_lite_resume_eval_infer() {
    let d = tmp("cli");
    let data = phantom_npy(&d.join("data"), 1, 5);
    let cfg = tiny_config();
    let common = ["--batch-size", "2", "--max-steps", "2", "--bbox-shift", "4"];
    fn train_args<'a>(common: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [&["train", "--task-name", "cli"][..], common, extra].concat()
    }
    // `medsam train` on the data with the tiny configuration, `extra` flags and `paths`,
    // into the work directory `work`.
    let train_cli = |extra: &[&str], paths: &[(&str, &Path)], work: &Path| {
        let mut all: Vec<(&str, &Path)> = vec![("--tr-npy-path", &data), ("--model-config", &cfg)];
        all.extend_from_slice(paths);
        all.push(("--work-dir", work));
        run_medsam(&train_args(&common, extra), &all)
    };
    let w1 = d.join("w1");
    success_stdout(&train_cli(
        &["--model-type", "lite", "--num-epochs", "1"],
        &[],
        &w1,
    ));
    let latest = first_entry(&w1).join("medsam_model_latest.pth");
    assert!(latest.is_file());

    // --resume alone tells the family from the checkpoint.
    let w2 = d.join("w2");
    success_stdout(&train_cli(
        &["--num-epochs", "2"],
        &[("--resume", &latest)],
        &w2,
    ));
    let log = std::fs::read_to_string(first_entry(&w2).join("train_log.jsonl")).unwrap();
    assert!(
        log.contains("\"epoch\": 1") && !log.contains("\"epoch\": 0"),
        "resumed run starts at epoch 1: {log}"
    );

    // A lite checkpoint with --model-type vit_b is refused, naming the flag.
    let o = train_cli(
        &["--model-type", "vit_b"],
        &[("--checkpoint", &latest)],
        &d.join("w3"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--model-type"), "{err}");

    let table = success_stdout(&run_medsam(
        &["eval", "--max-slices", "3"],
        &[
            ("--data-path", &data),
            ("-c", &latest),
            ("--model-config", &cfg),
            ("--work-dir", &d.join("eval")),
        ],
    ));
    assert!(table.contains("DSC") && table.contains("all"), "{table}");
    assert!(d.join("eval/metrics.json").is_file());

    // `medsam infer` takes the training checkpoint.
    let img = first_entry(&data.join("imgs"));
    success_stdout(&run_medsam(
        &["infer", "--box", "[30,30,90,90]"],
        &[
            ("-i", &img),
            ("-o", &d.join("infer")),
            ("-c", &latest),
            ("--model-config", &cfg),
        ],
    ));
}
