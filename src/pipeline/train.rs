//! MedSAM training (`train_one_gpu.py` / `train_multi_gpus.py` semantics): image encoder and mask
//! decoder trained, prompt encoder frozen; loss = Dice + BCE on the low-res logits upsampled to
//! the image size; AdamW; gradient accumulation; bf16 autocast; checkpoints in MedSAM's format;
//! exact resume; data parallel across ranks through a [`Communicator`]. Generic over
//! [`SegModel`]: LiteMedSAM trains the same way in its 256 frame with upstream's loss.

use crate::dist::{shard, Communicator};
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Value};
use crate::io::clock::UtcDateTime;
use crate::models::load as weights;
use crate::models::seg_model::SegModel;
use crate::ops::linalg::autocast_bf16;
use crate::optim::{AdamW, AdamWConfig};
use crate::pipeline::data::{epoch_order, load_batches, Batch, NpyDataset};
use crate::tensor::Tensor;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub tr_npy_path: PathBuf,
    pub task_name: String,
    pub work_dir: PathBuf,
    pub num_epochs: usize,
    pub batch_size: usize,
    pub grad_acc_steps: usize,
    pub num_workers: usize,
    pub adamw: AdamWConfig,
    pub use_amp: bool,
    pub resume: Option<PathBuf>,
    pub seed: u64,
    pub bbox_shift: usize,
    /// Stop after this many optimizer steps (smoke runs).
    pub max_steps: Option<usize>,
    /// Write `medsam_model_latest_step.pth` every this many steps.
    pub save_every_steps: usize,
    /// Use this run directory instead of `WORK_DIR/TASK_NAME-YYYYmmdd-HHMMSS[-N]`.
    pub run_dir: Option<PathBuf>,
    /// DDP's gradient bucket size.
    pub bucket_cap_mb: usize,
    /// Cosine-decay the learning rate to 0 over this many optimizer steps. MedSAM trains at a
    /// constant rate (`None`, the default); the short CPU demo converges better with decay.
    pub cosine_decay_steps: Option<usize>,
}

/// The learning rate for optimizer step `step` (0-based).
pub fn lr_at(cfg: &TrainConfig, step: usize) -> f64 {
    match cfg.cosine_decay_steps {
        Some(total) if total > 0 => {
            let t = (step as f64 / total as f64).min(1.0);
            cfg.adamw.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        _ => cfg.adamw.lr,
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            tr_npy_path: PathBuf::from("data/npy/CT_Abd"),
            task_name: "MedSAM-ViT-B".into(),
            work_dir: PathBuf::from("./work_dir"),
            num_epochs: 1000,
            batch_size: 2,
            grad_acc_steps: 1,
            num_workers: 0,
            adamw: AdamWConfig::default(),
            use_amp: false,
            resume: None,
            seed: 2023,
            bbox_shift: 20,
            max_steps: None,
            save_every_steps: 100,
            run_dir: None,
            bucket_cap_mb: 25,
            cosine_decay_steps: None,
        }
    }
}

/// Progress reported to the caller (the library never prints).
#[derive(Clone, Debug)]
pub enum TrainEvent {
    Started {
        run_dir: PathBuf,
        samples: usize,
        batches_per_epoch: usize,
        start_epoch: usize,
    },
    Step {
        epoch: usize,
        step: usize,
        loss: f32,
        lr: f64,
        seconds: f64,
    },
    EpochEnd {
        epoch: usize,
        mean_loss: f32,
        improved: bool,
    },
    Saved {
        path: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub epochs_completed: usize,
    pub steps: usize,
    pub epoch_losses: Vec<f32>,
    pub step_losses: Vec<f32>,
    pub latest_checkpoint: PathBuf,
}

/// `YYYYmmdd-HHMMSS` in UTC.
fn timestamp() -> String {
    let t = UtcDateTime::now();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// One micro-batch (of the npy layout): forward, loss, backward of `loss / k`. Returns the
/// unscaled loss.
pub fn forward_backward<M: SegModel + ?Sized>(
    model: &M,
    batch: &Batch,
    k: usize,
    use_amp: bool,
) -> Result<f32> {
    // The batch is only copied when the model's frame differs from the data's (LiteMedSAM).
    let prepared;
    let batch = if batch.images.dim(2) == model.img_size() {
        batch
    } else {
        prepared = model.prepare_batch(batch)?;
        &prepared
    };
    // Batches are loaded on the host; the model may live on an NPU.
    let images = batch.images.to_device(model.device())?;
    let loss = autocast_bf16(use_amp, || -> Result<Tensor> { model.loss(&images, batch) })?;
    let value = loss.to_scalar()?;
    if !value.is_finite() {
        return Ok(value);
    }
    let scaled = if k > 1 {
        loss.scale(1.0 / k as f32)?
    } else {
        loss
    };
    scaled.backward()?;
    Ok(value)
}

/// Refuses to write a checkpoint holding a NaN or infinite value, naming the first tensor.
fn check_finite(value: &Value, path: &Path) -> Result<()> {
    let Some(model) = value.get("model").and_then(|m| m.as_dict()) else {
        return Ok(());
    };
    for (k, v) in model {
        let Some(t) = v.as_tensor() else { continue };
        if t.to_f32()
            .map_or(true, |d| d.iter().any(|x| !x.is_finite()))
        {
            return Err(Error::file(
                path,
                format!(
                    "not written: parameter {} holds NaN or infinity",
                    k.as_str().unwrap_or("?")
                ),
            ));
        }
    }
    Ok(())
}

fn save(path: &Path, value: &Value, on_event: &mut dyn FnMut(TrainEvent)) -> Result<()> {
    check_finite(value, path)?;
    checkpoint::save_pth(path, value)?;
    on_event(TrainEvent::Saved {
        path: path.to_path_buf(),
    });
    Ok(())
}

fn training_checkpoint<M: SegModel + ?Sized>(
    model: &mut M,
    opt: &AdamW,
    epoch: usize,
) -> Result<Value> {
    Ok(Value::str_dict([
        ("model", weights::state_dict_value(model.state_dict())?),
        ("optimizer", weights::optimizer_value(opt)?),
        ("epoch", Value::Int(epoch as i64)),
    ]))
}

/// Averages gradients across ranks (no-op on one process).
fn sync_gradients<M: SegModel + ?Sized>(
    model: &mut M,
    comm: &dyn Communicator,
    bucket_mb: usize,
) -> Result<()> {
    if comm.world_size() <= 1 {
        return Ok(());
    }
    let mut params = model.trainable_parameters();
    let mut grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| match p.grad() {
            Some(g) => Ok(g.clone()),
            None => Tensor::zeros(p.shape(), p.device()),
        })
        .collect::<Result<_>>()?;
    comm.average_gradients(&mut grads, bucket_mb << 20)?;
    for ((_, p), g) in params.iter_mut().zip(grads) {
        p.set_grad(Some(g));
    }
    Ok(())
}

/// Copies rank 0's parameters and buffers, frozen ones included, to every rank (DDP does this
/// at construction).
pub fn broadcast_weights<M: SegModel + ?Sized>(
    model: &mut M,
    comm: &dyn Communicator,
) -> Result<()> {
    if comm.world_size() <= 1 {
        return Ok(());
    }
    let mut weights = std::collections::BTreeMap::new();
    for (name, t) in model.state_dict() {
        let mut v = t.to_vec()?;
        comm.broadcast(&mut v, 0)?;
        weights.insert(name, Tensor::from_vec(v, t.shape())?);
    }
    model.load_state_dict(&weights)?.into_result()?;
    Ok(())
}

struct RunFiles {
    dir: PathBuf,
    log: std::fs::File,
    /// Set while a run directory this process created may still be removed on failure.
    created: bool,
}

impl Drop for RunFiles {
    /// A failed run leaves no empty directory behind: one holding only an empty log goes.
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let log = self.dir.join("train_log.jsonl");
        let only_empty_log = std::fs::read_dir(&self.dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.path() == log && e.metadata().is_ok_and(|m| m.len() == 0))
        });
        if only_empty_log {
            let _ = std::fs::remove_file(&log);
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// `work_dir/<task>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`, ... when that exists: created here
/// (atomically), so two runs started in the same second never share a directory.
fn new_run_dir(cfg: &TrainConfig) -> Result<PathBuf> {
    crate::io::paths::create_output_dir(&cfg.work_dir, "--work-dir")?;
    // Checkpoint temp files of runs killed while saving (1 GB each for ViT-B).
    crate::io::stale::clean_stale_temps_below(&cfg.work_dir);
    let base = format!("{}-{}", cfg.task_name, timestamp());
    for i in 1..=1000 {
        let name = if i == 1 {
            base.clone()
        } else {
            format!("{base}-{i}")
        };
        let dir = cfg.work_dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::file(
        &cfg.work_dir,
        format!("1000 run directories named {base}-N exist already"),
    ))
}

fn open_run(cfg: &TrainConfig, is_root: bool) -> Result<RunFiles> {
    let (dir, created) = match (&cfg.run_dir, is_root) {
        (Some(d), _) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            (d.clone(), false)
        }
        (None, true) => (new_run_dir(cfg)?, true),
        // Only rank 0 writes into the run directory.
        (None, false) => (std::env::temp_dir(), false),
    };
    let log_path = dir.join(if is_root {
        "train_log.jsonl".to_string()
    } else {
        format!(".rank_log_{}", std::process::id())
    });
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    if !is_root {
        let _ = std::fs::remove_file(&log_path);
    }
    Ok(RunFiles { dir, log, created })
}

/// `TASK_train_loss.png`: the loss of every optimizer step and its running mean.
fn write_loss_curve(dir: &Path, task: &str, step_losses: &[f32]) -> Result<()> {
    let raw: Vec<(f64, f64)> = step_losses
        .iter()
        .enumerate()
        .map(|(i, &l)| ((i + 1) as f64, l as f64))
        .collect();
    let window = (step_losses.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = (0..step_losses.len())
        .map(|i| {
            let lo = i.saturating_sub(window - 1);
            let w = &step_losses[lo..=i];
            (
                (i + 1) as f64,
                w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    let series = vec![("loss per step", raw), ("running mean", smooth)];
    crate::viz::loss_curve_png(
        &dir.join(format!("{task}_train_loss.png")),
        &series,
        &format!("{task}: training loss"),
    )
    .map_err(Error::from)
}

/// Trains `model` (already loaded from `--checkpoint` or freshly initialised).
pub fn train<M: SegModel + ?Sized>(
    cfg: &TrainConfig,
    model: &mut M,
    comm: &dyn Communicator,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainOutcome> {
    if cfg.batch_size == 0 || cfg.grad_acc_steps == 0 {
        return Err(Error::arg(
            "--batch-size/--grad-acc-steps",
            "must be at least 1",
        ));
    }
    cfg.adamw.validate()?;
    let ds = NpyDataset::open(&cfg.tr_npy_path, cfg.bbox_shift)?;
    model.enable_training();
    let n_params = model.trainable_parameters().len();
    let mut opt = AdamW::new(cfg.adamw, n_params);
    let mut start_epoch = 0;
    if let Some(path) = &cfg.resume {
        let value = weights::read_checkpoint(path)?;
        let w = weights::state_dict(path, &value)?;
        model
            .load_state_dict(&w)?
            .into_result()
            .map_err(|e| Error::file(path, e.to_string()))?;
        let shapes: Vec<Vec<usize>> = model
            .trainable_parameters()
            .iter()
            .map(|(_, p)| p.shape().to_vec())
            .collect();
        let ov = value
            .get("optimizer")
            .ok_or_else(|| Error::file(path, "no 'optimizer' entry (not a training checkpoint)"))?;
        opt = weights::optimizer_from_value(path, ov, &shapes)?;
        let epoch = value
            .get("epoch")
            .and_then(|e| e.as_int())
            .ok_or_else(|| Error::file(path, "no integer 'epoch' entry"))?;
        start_epoch = usize::try_from(epoch)
            .ok()
            .and_then(|e| e.checked_add(1))
            .ok_or_else(|| Error::file(path, format!("'epoch' is {epoch}, not an epoch number")))?;
    }
    if start_epoch >= cfg.num_epochs {
        return Err(Error::arg(
            "--num-epochs",
            format!(
                "nothing to train: {} epoch(s) requested and training starts at epoch {start_epoch}",
                cfg.num_epochs
            ),
        ));
    }
    broadcast_weights(model, comm)?;
    let is_root = comm.is_root();
    let mut run = open_run(cfg, is_root)?;
    let per_rank = shard(
        &epoch_order(ds.len(), cfg.seed, 0),
        comm.rank(),
        comm.world_size(),
    )
    .len();
    let batches_per_epoch = per_rank.div_ceil(cfg.batch_size);
    on_event(TrainEvent::Started {
        run_dir: run.dir.clone(),
        samples: ds.len(),
        batches_per_epoch,
        start_epoch,
    });

    let latest = run.dir.join("medsam_model_latest.pth");
    let (mut steps, mut best) = (0usize, f32::INFINITY);
    let (mut epoch_losses, mut step_losses) = (Vec::new(), Vec::new());
    let mut epochs_completed = 0;
    'epochs: for epoch in start_epoch..cfg.num_epochs {
        let order = shard(
            &epoch_order(ds.len(), cfg.seed, epoch),
            comm.rank(),
            comm.world_size(),
        );
        let (mut sum, mut count) = (0.0f64, 0usize);
        let k = cfg.grad_acc_steps;
        let mut micro = 0;
        let t0 = Instant::now();
        for batch in load_batches(&ds, order, cfg.batch_size, cfg.seed, epoch, cfg.num_workers) {
            let batch = batch?;
            let loss = forward_backward(model, &batch, k, cfg.use_amp)?;
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    what: "loss".into(),
                    step: steps,
                    detail: format!(
                        "epoch {epoch}, batch {}: loss is {loss}",
                        batch.names.join(", ")
                    ),
                });
            }
            micro += 1;
            sum += loss as f64;
            count += 1;
            if micro % k != 0 {
                continue;
            }
            sync_gradients(model, comm, cfg.bucket_cap_mb)?;
            let mut params = model.trainable_parameters();
            opt.config.lr = lr_at(cfg, steps);
            opt.step(&mut params)?;
            AdamW::zero_grad(&mut params);
            steps += 1;
            step_losses.push(loss);
            let seconds = t0.elapsed().as_secs_f64();
            on_event(TrainEvent::Step {
                epoch,
                step: steps,
                loss,
                lr: opt.config.lr,
                seconds,
            });
            if is_root {
                let line = format!("{{\"epoch\": {epoch}, \"step\": {steps}, \"loss\": {loss}, \"lr\": {}, \"seconds\": {seconds:.3}}}\n", opt.config.lr);
                run.log
                    .write_all(line.as_bytes())
                    .map_err(|e| Error::io(run.dir.join("train_log.jsonl"), e))?;
                if cfg.save_every_steps > 0 && steps % cfg.save_every_steps == 0 {
                    let ck = training_checkpoint(model, &opt, epoch)?;
                    save(&run.dir.join("medsam_model_latest_step.pth"), &ck, on_event)?;
                }
            }
            if cfg.max_steps.is_some_and(|m| steps >= m) {
                epoch_losses.push((sum / count as f64) as f32);
                epochs_completed += 1;
                if is_root {
                    save(&latest, &training_checkpoint(model, &opt, epoch)?, on_event)?;
                    write_loss_curve(&run.dir, &cfg.task_name, &step_losses)?;
                }
                break 'epochs;
            }
        }
        // Gradients of a trailing partial accumulation group are dropped, as in MedSAM's loop.
        AdamW::zero_grad(&mut model.trainable_parameters());
        let mean = if count > 0 {
            (sum / count as f64) as f32
        } else {
            f32::NAN
        };
        let improved = mean < best;
        epoch_losses.push(mean);
        epochs_completed += 1;
        if is_root {
            let ck = training_checkpoint(model, &opt, epoch)?;
            save(&latest, &ck, on_event)?;
            if improved {
                save(&run.dir.join("medsam_model_best.pth"), &ck, on_event)?;
            }
            write_loss_curve(&run.dir, &cfg.task_name, &step_losses)?;
        }
        if improved {
            best = mean;
        }
        on_event(TrainEvent::EpochEnd {
            epoch,
            mean_loss: mean,
            improved,
        });
        comm.barrier()?;
    }
    Ok(TrainOutcome {
        run_dir: {
            run.created = false;
            run.dir.clone()
        },
        epochs_completed,
        steps,
        epoch_losses,
        step_losses,
        latest_checkpoint: latest,
    })
}
