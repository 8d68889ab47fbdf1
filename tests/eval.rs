//! Evaluation end to end on a small synthetic npy data set: files and their shapes, the box
//! baseline against values computed here by hand, and sharded evaluation (two in-process ranks
//! exchanging through a shared board) giving exactly the unsharded totals.

use medsam::dist::{Communicator, SingleProcess};
use medsam::eval::{evaluate, EvalConfig};
use medsam::model::{Sam, SamConfig};
use medsam::{Device, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};

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
    for k in [
        "dsc",
        "miou",
        "nsd",
        "count",
        "per_label",
        "box_baseline",
        "images_per_second",
    ] {
        assert!(json.get(k).is_some(), "metrics.json lacks {k}");
    }
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
