//! `medsam_rs.train(config, progress=None)`: MedSAM's training loop (single process) from a dict
//! of the CLI's options; `progress(event: dict)` receives the library's progress events.

use crate::functions::Callback;
use crate::{to_py, value_err};
use medsam::models::AnyModel;
use medsam::models::{LiteConfig, LiteMedSam};
use medsam::models::{ModelType, Sam, SamConfig};
use medsam::optim::AdamWConfig;
use medsam::pipeline::train::{TrainConfig, TrainEvent};
use medsam::Device;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::path::PathBuf;

const KEYS: &[&str] = &[
    "tr_npy_path",
    "task_name",
    "work_dir",
    "run_dir",
    "num_epochs",
    "batch_size",
    "grad_acc_steps",
    "lr",
    "weight_decay",
    "use_amp",
    "resume",
    "seed",
    "bbox_shift",
    "max_steps",
    "save_every_steps",
    "cosine_decay_steps",
    "checkpoint",
    "model_type",
    "model_config",
    "device",
];

fn get<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => v
            .extract()
            .map(Some)
            .map_err(|e| value_err(format!("config[{key:?}]: {e}"))),
    }
}

struct ModelSpec {
    checkpoint: Option<PathBuf>,
    model_type: Option<String>,
    model_config: Option<PathBuf>,
    device: Device,
    seed: u64,
}

/// As `medsam train`: from a checkpoint (either family), else fresh for `model_type`.
fn build_model(s: &ModelSpec) -> medsam::Result<AnyModel> {
    let config = s.model_config.as_deref();
    if let Some(path) = &s.checkpoint {
        return Ok(medsam::models::load::load_any_model(path, None, config, s.device)?.0);
    }
    if s.model_type.as_deref() == Some("lite") {
        let cfg = match config {
            Some(p) => LiteConfig::from_json_file(p)?,
            None => LiteConfig::lite_medsam(),
        };
        return Ok(AnyModel::Lite(Box::new(LiteMedSam::new(
            &cfg, s.seed, s.device,
        )?)));
    }
    let cfg = match config {
        Some(p) => SamConfig::from_json_file(p)?,
        None => SamConfig::preset(match s.model_type.as_deref() {
            None | Some("vit_b") => ModelType::VitB,
            Some("vit_l") => ModelType::VitL,
            Some("vit_h") => ModelType::VitH,
            Some(o) => {
                return Err(medsam::Error::arg(
                    "model_type",
                    format!("unknown `{o}` (expected vit_b, vit_l, vit_h or lite)"),
                ))
            }
        }),
    };
    Ok(AnyModel::Sam(Box::new(Sam::new(&cfg, s.seed, s.device)?)))
}

fn event_dict<'py>(py: Python<'py>, e: &TrainEvent) -> PyResult<Bound<'py, PyTuple>> {
    event_args!(py, e,
        TrainEvent::Started "started" { run_dir, samples, batches_per_epoch, start_epoch },
        TrainEvent::Step "step" { epoch, step, loss, lr, seconds },
        TrainEvent::EpochEnd "epoch_end" { epoch, mean_loss, improved },
        TrainEvent::Saved "saved" { path },
    )
}

/// Trains SAM/MedSAM or LiteMedSAM on `tr_npy_path` (imgs/ + gts/ as pre_CT_MR.py writes).
/// Keys: tr_npy_path (required), task_name, work_dir, run_dir, num_epochs, batch_size,
/// grad_acc_steps, lr, weight_decay, use_amp, resume, seed, bbox_shift, max_steps,
/// save_every_steps, cosine_decay_steps, checkpoint, model_type, model_config, device.
/// Returns a dict: run_dir, epochs_completed, steps, epoch_losses, step_losses,
/// latest_checkpoint.
#[pyfunction]
#[pyo3(signature = (config, progress=None))]
fn train<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyDict>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    for k in config.keys() {
        let k: String = k.extract()?;
        if !KEYS.contains(&k.as_str()) {
            return Err(value_err(format!(
                "config: unknown key {k:?} (known: {})",
                KEYS.join(", ")
            )));
        }
    }
    let d = TrainConfig::default();
    let tr_npy_path: PathBuf = get(config, "tr_npy_path")?
        .ok_or_else(|| value_err("config: `tr_npy_path` is required"))?;
    crate::require_dir("tr_npy_path", &tr_npy_path)?;
    let cfg = TrainConfig {
        tr_npy_path,
        task_name: get(config, "task_name")?.unwrap_or(d.task_name),
        work_dir: get(config, "work_dir")?.unwrap_or(d.work_dir),
        run_dir: get(config, "run_dir")?,
        num_epochs: get(config, "num_epochs")?.unwrap_or(d.num_epochs),
        batch_size: get(config, "batch_size")?.unwrap_or(d.batch_size),
        grad_acc_steps: get(config, "grad_acc_steps")?.unwrap_or(d.grad_acc_steps),
        adamw: AdamWConfig {
            lr: get(config, "lr")?.unwrap_or(d.adamw.lr),
            weight_decay: get(config, "weight_decay")?.unwrap_or(d.adamw.weight_decay),
            ..d.adamw
        },
        use_amp: get(config, "use_amp")?.unwrap_or(d.use_amp),
        resume: get(config, "resume")?,
        seed: get(config, "seed")?.unwrap_or(d.seed),
        bbox_shift: get(config, "bbox_shift")?.unwrap_or(d.bbox_shift),
        max_steps: get(config, "max_steps")?,
        save_every_steps: get(config, "save_every_steps")?.unwrap_or(d.save_every_steps),
        cosine_decay_steps: get(config, "cosine_decay_steps")?,
        ..d
    };
    let device: String = get(config, "device")?.unwrap_or_else(|| "cpu".into());
    let spec = ModelSpec {
        checkpoint: get(config, "checkpoint")?,
        model_type: get(config, "model_type")?,
        model_config: get(config, "model_config")?,
        device: device.parse().map_err(to_py)?,
        seed: cfg.seed,
    };
    let cb = Callback::new(progress);
    let outcome = py
        .allow_threads(|| {
            let comm = medsam::dist::SingleProcess;
            let mut on_event = |e: TrainEvent| cb.call(|py| event_dict(py, &e));
            match build_model(&spec)? {
                AnyModel::Sam(mut m) => {
                    medsam::pipeline::train::train(&cfg, &mut *m, &comm, &mut on_event)
                }
                AnyModel::Lite(mut m) => {
                    medsam::pipeline::train::train(&cfg, &mut *m, &comm, &mut on_event)
                }
            }
        })
        .map_err(to_py)?;
    cb.finish()?;
    let out = PyDict::new(py);
    out.set_item("run_dir", outcome.run_dir)?;
    out.set_item("epochs_completed", outcome.epochs_completed)?;
    out.set_item("steps", outcome.steps)?;
    out.set_item("epoch_losses", outcome.epoch_losses)?;
    out.set_item("step_losses", outcome.step_losses)?;
    out.set_item("latest_checkpoint", outcome.latest_checkpoint)?;
    Ok(out)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train, m)?)?;
    Ok(())
}
