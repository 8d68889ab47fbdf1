//! The one-command demo: a synthetic abdominal-CT phantom → preprocessing → training a small
//! MedSAM on CPU → conversion to SAM format → evaluation against the untrained model and the
//! fill-the-box baseline → comparison figure and loss curve. Everything it needs is generated.

use medsam::dist::SingleProcess;
use medsam::models::{Sam, SamConfig};
use medsam::pipeline::convert::{self, OutputFormat};
use medsam::pipeline::eval::{evaluate, EvalConfig};
use medsam::pipeline::metrics::MetricsSummary;
use medsam::pipeline::preprocess::{self, phantom};
use medsam::pipeline::train::{train, TrainConfig, TrainEvent};
use medsam::Device;
use medsam::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub out_dir: PathBuf,
    pub train_cases: usize,
    pub test_cases: usize,
    /// Phantom volume size (x, y, z).
    pub volume: (usize, usize, usize),
    /// Model input side (slices are resized to it).
    pub image_size: usize,
    pub max_steps: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            out_dir: PathBuf::from("demo-out"),
            train_cases: 30,
            test_cases: 2,
            volume: (128, 128, 24),
            image_size: 128,
            max_steps: 3000,
            batch_size: 4,
            seed: 2023,
        }
    }
}

/// What the caller hears about as the demo runs.
pub enum DemoEvent<'a> {
    Stage(&'a str),
    Train(TrainEvent),
}

pub struct DemoReport {
    pub untrained: MetricsSummary,
    pub trained: MetricsSummary,
    pub converted_checkpoint: PathBuf,
    pub run_dir: PathBuf,
    pub figure: Option<PathBuf>,
    pub metrics_json: PathBuf,
    pub loss_curve: PathBuf,
    pub train_slices: usize,
    pub test_slices: usize,
}

fn make_split(
    cfg: &DemoConfig,
    name: &str,
    cases: usize,
    seed: u64,
    on: &mut dyn FnMut(DemoEvent),
) -> Result<(PathBuf, usize)> {
    let raw = cfg.out_dir.join("phantom").join(name);
    on(DemoEvent::Stage(&format!(
        "phantom: {cases} {name} volumes → {}",
        raw.display()
    )));
    phantom::make_phantom(&raw, cases, seed, cfg.volume)?;
    let npy = cfg.out_dir.join("npy").join(name);
    on(DemoEvent::Stage(&format!(
        "preprocess (CT, window 40/400) → {}",
        npy.display()
    )));
    let pcfg = preprocess::PreprocessConfig {
        nii_path: raw.join("images"),
        gt_path: raw.join("labels"),
        npy_path: npy.clone(),
        image_size: cfg.image_size,
        ..preprocess::PreprocessConfig::default()
    };
    let summary = preprocess::preprocess(&pcfg, &|_| {})?;
    let dir = pcfg.npy_path.clone();
    let slices = medsam::pipeline::data::list_pairs(&dir)?.len();
    let _ = summary;
    Ok((dir, slices))
}

fn eval_into(
    model: &Sam,
    data: &Path,
    work_dir: PathBuf,
) -> Result<medsam::pipeline::eval::EvalOutcome> {
    let cfg = EvalConfig {
        data_path: data.to_path_buf(),
        work_dir,
        ..EvalConfig::default()
    };
    evaluate(model, &cfg, &SingleProcess, &mut |_, _| {})
}

/// Runs the whole workflow.
pub fn run(cfg: &DemoConfig, on: &mut dyn FnMut(DemoEvent)) -> Result<DemoReport> {
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
    let (train_dir, train_slices) = make_split(cfg, "train", cfg.train_cases, cfg.seed, on)?;
    let (test_dir, test_slices) = make_split(cfg, "test", cfg.test_cases, cfg.seed + 1000, on)?;

    // The "SAM checkpoint" the demo starts from: a seeded random initialisation, saved like the
    // official one (a bare state dict) so conversion has the key list SAM users have.
    let config = SamConfig::demo(cfg.image_size);
    let mut model = Sam::new(&config, cfg.seed, Device::Cpu)?;
    let sam_init = cfg.out_dir.join("sam_demo_init.pth");
    medsam::io::checkpoint::save_pth(&sam_init, &medsam::models::load::model_value(&mut model)?)?;
    let config_json = cfg.out_dir.join("model_config.json");
    let text = serde_json::to_string_pretty(&config).map_err(Error::wrap)?;
    medsam::io::atomic::write_bytes_atomic(&config_json, text.as_bytes())
        .map_err(|e| Error::io(&config_json, e))?;

    on(DemoEvent::Stage("evaluate the untrained model"));
    let untrained = eval_into(&model, &test_dir, cfg.out_dir.join("eval_untrained"))?.summary;

    on(DemoEvent::Stage("train"));
    let tcfg = TrainConfig {
        tr_npy_path: train_dir,
        task_name: "MedSAM-demo".into(),
        work_dir: cfg.out_dir.join("work_dir"),
        num_epochs: 1000,
        batch_size: cfg.batch_size,
        num_workers: 2,
        adamw: medsam::optim::AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        cosine_decay_steps: Some(cfg.max_steps),
        seed: cfg.seed,
        // MedSAM's 0–20 px jitter at 1024², scaled to the demo's input size.
        bbox_shift: (20 * cfg.image_size / 1024).max(2),
        max_steps: Some(cfg.max_steps),
        run_dir: Some(cfg.out_dir.join("work_dir").join("MedSAM-demo")),
        ..TrainConfig::default()
    };
    let outcome = train(&tcfg, &mut model, &SingleProcess, &mut |e| {
        on(DemoEvent::Train(e))
    })?;

    on(DemoEvent::Stage(
        "convert the training checkpoint to SAM format",
    ));
    let converted = cfg.out_dir.join("medsam_demo.pth");
    convert::convert(
        &sam_init,
        &outcome.latest_checkpoint,
        &converted,
        OutputFormat::Pth,
    )?;

    on(DemoEvent::Stage("evaluate the converted checkpoint"));
    let json = cfg.out_dir.join("model_config.json");
    let (trained_model, _) =
        medsam::models::load_model(&converted, None, Some(&json), Device::Cpu)?;
    let out = eval_into(&trained_model, &test_dir, cfg.out_dir.join("eval"))?;
    Ok(DemoReport {
        untrained,
        trained: out.summary,
        converted_checkpoint: converted,
        loss_curve: outcome.run_dir.join("MedSAM-demo_train_loss.png"),
        run_dir: outcome.run_dir,
        figure: out.figure,
        metrics_json: out.json,
        train_slices,
        test_slices,
    })
}
