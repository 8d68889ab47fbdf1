//! Between checkpoint files and the model: build a [`Sam`] from a `.pth`/`.safetensors` (config
//! from a JSON file or inferred from shapes), and turn model/optimizer state into checkpoint values.

use crate::backend::HostBuf;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, TensorData, Tree, Value};
use crate::models::common::{load_state_dict, with_placeholder_init, Module};
use crate::models::lite::{LiteConfig, LiteMedSam};
use crate::models::{LoadReport, ModelType, Sam, SamConfig};
use crate::optim::{AdamW, AdamWConfig, ParamState};
use crate::tensor::Tensor;
use crate::Device;
use std::collections::BTreeMap;
use std::path::Path;

fn ckpt_err(e: checkpoint::CheckpointError) -> Error {
    Error::Weights(e.to_string())
}

/// Checks that `path` names a regular file (a checkpoint).
fn check_checkpoint_file(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::file(path, "checkpoint not found"));
    }
    if !path.is_file() {
        return Err(Error::file(
            path,
            "not a regular file (a checkpoint is a .pth or .safetensors file)",
        ));
    }
    Ok(())
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// The checkpoint's top-level value (`.pth`) — or a state dict built from a safetensors file.
pub fn read_checkpoint(path: &Path) -> Result<Value> {
    check_checkpoint_file(path)?;
    if is_safetensors(path) {
        let sd = checkpoint::load_safetensors(path).map_err(ckpt_err)?;
        return Ok(Value::from_state_dict(sd));
    }
    checkpoint::load_pth(path).map_err(ckpt_err)
}

/// Model weights by name (DDP's `module.` stripped, `{"model": ...}` unwrapped).
pub fn state_dict(path: &Path, value: &Value) -> Result<BTreeMap<String, Tensor>> {
    let sd = checkpoint::state_dict_refs(value, path).map_err(ckpt_err)?;
    sd.into_iter()
        .map(|(k, t)| {
            let data = t
                .to_f32()
                .map_err(|e| Error::file(path, format!("{k}: {e}")))?;
            let bad = data.iter().position(|x| !x.is_finite());
            weight(path, k, data.into(), bad, &t.shape)
        })
        .collect()
}

/// The model weights of the checkpoint `path` by name, as [`state_dict`] of
/// [`read_checkpoint`] gives them (the same checks and errors), read in one pass: each tensor
/// is used in place from the mapped file (a stored, aligned f32 tensor) or goes from the file
/// straight into its f32 buffer, checked for NaN/infinity on the way.
pub fn read_weights(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    check_checkpoint_file(path)?;
    let tree = if is_safetensors(path) {
        let sd = checkpoint::load_safetensors_f32(path).map_err(ckpt_err)?;
        Tree::from_state_dict(sd)
    } else {
        checkpoint::load_pth_f32(path).map_err(ckpt_err)?
    };
    let sd = checkpoint::into_state_dict(tree, path).map_err(ckpt_err)?;
    sd.into_iter()
        .map(|(k, t)| weight(path, k, t.data, t.first_non_finite, &t.shape))
        .collect()
}

/// The weight `k` of `path` as a tensor; an error when `bad` (its first NaN or infinite value)
/// is set: such weights only give meaningless masks.
fn weight(
    path: &Path,
    k: String,
    data: HostBuf,
    bad: Option<usize>,
    shape: &[usize],
) -> Result<(String, Tensor)> {
    if let Some(i) = bad {
        return Err(Error::file(
            path,
            format!(
                "tensor `{k}` holds NaN or infinity (element {i} is {}); such weights \
                 only give meaningless masks",
                data[i]
            ),
        ));
    }
    Ok((k, Tensor::from_host(data, shape)?))
}

/// The configuration for a checkpoint: the JSON file when given, else inferred from its shapes;
/// checked against `model_type` when that is given too.
pub fn resolve_config(
    weights: &BTreeMap<String, Tensor>,
    model_type: Option<ModelType>,
    config_json: Option<&Path>,
) -> Result<SamConfig> {
    resolve_config_named(weights, model_type, config_json, Path::new("<checkpoint>"))
}

/// The configuration of a non-preset checkpoint cannot be guessed whole: the decoder's head
/// count does not show in any shape.
fn heads_unknown(path: &Path, family: &str) -> Error {
    Error::file(
        path,
        format!(
            "its shapes match no {family} preset and the mask decoder's head count cannot be read \
             from a checkpoint; pass --model-config with the model's configuration \
             (mask_decoder.transformer_num_heads)"
        ),
    )
}

/// [`resolve_config`] with the checkpoint's name for errors. An inferred configuration is used
/// only when it equals a preset apart from the decoder's heads (which then take the preset's
/// value); any other must come from `config_json`. Either is validated before use.
pub fn resolve_config_named(
    weights: &BTreeMap<String, Tensor>,
    model_type: Option<ModelType>,
    config_json: Option<&Path>,
    path: &Path,
) -> Result<SamConfig> {
    let config = match config_json {
        Some(p) => SamConfig::from_json_file(p)?,
        None => {
            let shapes = shapes_of(weights);
            let inferred =
                SamConfig::infer(&shapes).map_err(|e| Error::file(path, e.to_string()))?;
            match inferred.model_type_ignoring_heads() {
                Some(t) => SamConfig::preset(t),
                None => {
                    inferred.validated(path)?;
                    return Err(heads_unknown(path, "SAM (vit_b/vit_l/vit_h)"));
                }
            }
        }
    };
    if let Some(t) = model_type {
        let preset = SamConfig::preset(t);
        if preset.image_encoder != config.image_encoder {
            return Err(Error::arg(
                "--model-type",
                format!(
                    "{t:?} does not match the checkpoint (embed_dim {}, depth {})",
                    config.image_encoder.embed_dim, config.image_encoder.depth
                ),
            ));
        }
    }
    Ok(config)
}

fn shapes_of(weights: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<usize>> {
    weights
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().to_vec()))
        .collect()
}

/// Loads `weights` into `model`; any missing, unexpected or wrongly shaped key is an error
/// naming the checkpoint `path`.
fn load_clean(
    model: &mut dyn Module,
    weights: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<LoadReport> {
    load_state_dict(model, weights)
        .and_then(LoadReport::into_result)
        .map_err(|e| Error::file(path, e.to_string()))
}

/// Loads a model from a checkpoint; every missing, unexpected or wrongly shaped key is an error
/// that names it.
pub fn load_model(
    path: &Path,
    model_type: Option<ModelType>,
    config_json: Option<&Path>,
    device: Device,
) -> Result<(Sam, LoadReport)> {
    let weights = read_weights(path)?;
    sam_from_weights(&weights, model_type, config_json, path, device)
}

/// A SAM/MedSAM with `weights` (from `path`) loaded, its configuration from `config_json`,
/// `model_type` or the weights' shapes.
fn sam_from_weights(
    weights: &BTreeMap<String, Tensor>,
    model_type: Option<ModelType>,
    config_json: Option<&Path>,
    path: &Path,
    device: Device,
) -> Result<(Sam, LoadReport)> {
    let config = resolve_config_named(weights, model_type, config_json, path)?;
    let mut sam = with_placeholder_init(|| Sam::new(&config, 0, device))?;
    let report = load_clean(&mut sam, weights, path)?;
    Ok((sam, report))
}

/// A model of either family, as recognised from a checkpoint's keys.
pub enum AnyModel {
    Sam(Box<Sam>),
    Lite(Box<LiteMedSam>),
}

/// Loads a SAM/MedSAM or a LiteMedSAM checkpoint, telling them apart by their image-encoder keys
/// (TinyViT's `patch_embed.seq.*`/`layers.*` vs ViT's `patch_embed.proj`/`blocks.*`). For
/// LiteMedSAM, `config_json` is a [`LiteConfig`] and `model_type` must be `None`.
pub fn load_any_model(
    path: &Path,
    model_type: Option<ModelType>,
    config_json: Option<&Path>,
    device: Device,
) -> Result<(AnyModel, LoadReport)> {
    let weights = read_weights(path)?;
    if crate::models::sam2::load::is_sam2_state_dict(weights.keys()) {
        return Err(Error::file(
            path,
            "holds a SAM 2 / MedSAM2 model (Hiera trunk): use `medsam infer --model-type medsam2`",
        ));
    }
    if !LiteConfig::is_lite_state_dict(weights.keys()) {
        let (sam, report) = sam_from_weights(&weights, model_type, config_json, path, device)?;
        return Ok((AnyModel::Sam(Box::new(sam)), report));
    }
    if let Some(t) = model_type {
        return Err(Error::arg(
            "--model-type",
            format!(
                "{t:?} does not match the checkpoint, which holds a LiteMedSAM (TinyViT) model"
            ),
        ));
    }
    let config = match config_json {
        Some(p) => LiteConfig::from_json_file(p)?,
        None => {
            let shapes = shapes_of(&weights);
            let inferred =
                LiteConfig::infer(&shapes).map_err(|e| Error::file(path, e.to_string()))?;
            // Shapes cannot show the input size nor the decoder's heads: LiteMedSAM's when it fits.
            let preset = LiteConfig::lite_medsam();
            let mut cmp = inferred.clone();
            cmp.mask_decoder.transformer_num_heads = preset.mask_decoder.transformer_num_heads;
            if cmp != preset {
                inferred.validated(path)?;
                return Err(heads_unknown(path, "LiteMedSAM"));
            }
            preset
        }
    };
    let mut lite = with_placeholder_init(|| LiteMedSam::new(&config, 0, device))?;
    let report = load_clean(&mut lite, &weights, path)?;
    Ok((AnyModel::Lite(Box::new(lite)), report))
}

/// Loads a LiteMedSAM checkpoint (an error naming the file when it holds another model).
pub fn load_lite_model(
    path: &Path,
    config_json: Option<&Path>,
    device: Device,
) -> Result<(LiteMedSam, LoadReport)> {
    match load_any_model(path, None, config_json, device)? {
        (AnyModel::Lite(m), r) => Ok((*m, r)),
        (AnyModel::Sam(_), _) => Err(Error::file(
            path,
            "holds a SAM/MedSAM (ViT) model, not LiteMedSAM",
        )),
    }
}

fn tensor_data(t: &Tensor) -> Result<TensorData> {
    Ok(TensorData::from_f32(t.shape().to_vec(), &t.to_vec()?))
}

/// The model's state dict as a checkpoint value (an ordered dict of tensors).
pub fn model_value(sam: &mut Sam) -> Result<Value> {
    state_dict_value(sam.state_dict())
}

/// A state dict (any model's) as a checkpoint value.
pub fn state_dict_value(sd: Vec<(String, Tensor)>) -> Result<Value> {
    let sd = sd
        .into_iter()
        .map(|(k, t)| Ok((k, tensor_data(&t)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Value::from_state_dict(sd))
}

/// `torch.optim.AdamW.state_dict()` as PyTorch writes it.
pub fn optimizer_value(opt: &AdamW) -> Result<Value> {
    let mut state = Vec::new();
    for (i, s) in opt.state.iter().enumerate() {
        let Some(s) = s else { continue };
        let step = Value::Tensor(TensorData::from_f32(vec![], &[s.step as f32]));
        state.push((
            Value::Int(i as i64),
            Value::str_dict([
                ("step", step),
                ("exp_avg", Value::Tensor(tensor_data(&s.exp_avg)?)),
                ("exp_avg_sq", Value::Tensor(tensor_data(&s.exp_avg_sq)?)),
            ]),
        ));
    }
    let c = opt.config;
    let group = Value::str_dict([
        ("lr", Value::Float(c.lr)),
        (
            "betas",
            Value::Tuple(vec![Value::Float(c.betas.0), Value::Float(c.betas.1)]),
        ),
        ("eps", Value::Float(c.eps)),
        ("weight_decay", Value::Float(c.weight_decay)),
        ("amsgrad", Value::Bool(false)),
        ("foreach", Value::None),
        ("maximize", Value::Bool(false)),
        ("capturable", Value::Bool(false)),
        ("differentiable", Value::Bool(false)),
        ("fused", Value::None),
        (
            "params",
            Value::List((0..opt.state.len() as i64).map(Value::Int).collect()),
        ),
    ]);
    Ok(Value::str_dict([
        ("state", Value::Dict(state)),
        ("param_groups", Value::List(vec![group])),
    ]))
}

/// Restores AdamW from a PyTorch optimizer state dict; `shapes` are the parameters' in order.
pub fn optimizer_from_value(path: &Path, v: &Value, shapes: &[Vec<usize>]) -> Result<AdamW> {
    let field = |f: &str, d: &str| Error::file(path, format!("optimizer.{f}: {d}"));
    let groups = v
        .get("param_groups")
        .and_then(|g| g.as_seq())
        .ok_or_else(|| field("param_groups", "missing"))?;
    let g = groups
        .first()
        .ok_or_else(|| field("param_groups", "empty"))?;
    let num = |k: &str| {
        g.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| field(&format!("param_groups[0].{k}"), "missing or not a number"))
    };
    let betas = g
        .get("betas")
        .and_then(|b| b.as_seq())
        .ok_or_else(|| field("param_groups[0].betas", "missing"))?;
    let beta = |i: usize| {
        betas
            .get(i)
            .and_then(|b| b.as_f64())
            .ok_or_else(|| field("param_groups[0].betas", "not two numbers"))
    };
    let config = AdamWConfig {
        lr: num("lr")?,
        betas: (beta(0)?, beta(1)?),
        eps: num("eps")?,
        weight_decay: num("weight_decay")?,
    };
    let mut opt = AdamW::new(config, shapes.len());
    let state = v
        .get("state")
        .and_then(|s| s.as_dict())
        .ok_or_else(|| field("state", "missing"))?;
    for (k, s) in state {
        let i = k
            .as_int()
            .filter(|&i| i >= 0 && (i as usize) < shapes.len())
            .ok_or_else(|| field("state", "index out of range"))? as usize;
        let tensor = |name: &str| -> Result<Tensor> {
            let t = s
                .get(name)
                .and_then(|t| t.as_tensor())
                .ok_or_else(|| field(&format!("state.{i}.{name}"), "missing"))?;
            if t.shape != shapes[i] {
                return Err(field(
                    &format!("state.{i}.{name}"),
                    &format!("shape {:?}, parameter is {:?}", t.shape, shapes[i]),
                ));
            }
            Tensor::from_vec(
                t.to_f32()
                    .map_err(|e| field(&format!("state.{i}.{name}"), &e.to_string()))?,
                &t.shape,
            )
        };
        let step = s
            .get("step")
            .ok_or_else(|| field(&format!("state.{i}.step"), "missing"))?;
        let step = match step {
            Value::Tensor(t) => t
                .to_f32()
                .map_err(|e| field("step", &e.to_string()))?
                .first()
                .copied()
                .unwrap_or(0.0) as u64,
            other => other
                .as_f64()
                .ok_or_else(|| field(&format!("state.{i}.step"), "not a number"))?
                as u64,
        };
        opt.state[i] = Some(ParamState {
            step,
            exp_avg: tensor("exp_avg")?,
            exp_avg_sq: tensor("exp_avg_sq")?,
        });
    }
    Ok(opt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::checkpoint::{save_pth, save_safetensors, DType};

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("medsam-load-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn tensors(nan_in: Option<&str>) -> Vec<(String, TensorData)> {
        let vals: Vec<f32> = (0..6000).map(|i| (i as f32 * 0.01).cos()).collect();
        let mut w = vals.clone();
        if nan_in == Some("module.a.weight") {
            w[4321] = f32::NAN;
        }
        let h: Vec<u8> = vals[..10]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let mut h = TensorData::new(DType::F16, vec![2, 5], h).unwrap();
        if nan_in == Some("module.b.bias") {
            h.bytes[6..8].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        }
        vec![
            (
                "module.a.weight".into(),
                TensorData::from_f32(vec![60, 100], &w),
            ),
            ("module.b.bias".into(), h),
            (
                "module.c".into(),
                TensorData::new(
                    DType::I64,
                    vec![3],
                    [5i64, -2, 9].map(i64::to_le_bytes).concat(),
                )
                .unwrap(),
            ),
        ]
    }

    fn same(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in a {
            let u = &b[k];
            assert_eq!(t.shape(), u.shape(), "{k}");
            let bits = |t: &Tensor| {
                t.to_vec()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(t), bits(u), "{k}");
        }
    }

    /// `read_weights` gives what `state_dict(read_checkpoint(..))` gives, bit for bit, and the
    /// same error for a non-finite weight, for .pth (bare and wrapped) and .safetensors files.
    #[test]
    fn read_weights_matches_state_dict_of_read_checkpoint() {
        let d = dir("weights");
        for nan_in in [None, Some("module.a.weight"), Some("module.b.bias")] {
            let sd = tensors(nan_in);
            let bare = d.join("bare.pth");
            save_pth(&bare, &Value::from_state_dict(sd.clone())).unwrap();
            let wrapped = d.join("wrapped.pth");
            let v = Value::str_dict([
                ("epoch", Value::Int(3)),
                ("model", Value::from_state_dict(sd.clone())),
            ]);
            save_pth(&wrapped, &v).unwrap();
            let st = d.join("w.safetensors");
            save_safetensors(&st, &sd).unwrap();
            for p in [&bare, &wrapped, &st] {
                let old = read_checkpoint(p).and_then(|v| state_dict(p, &v));
                let new = read_weights(p);
                match (old, new) {
                    (Ok(a), Ok(b)) => {
                        assert!(nan_in.is_none());
                        assert!(a.contains_key("a.weight"));
                        same(&a, &b)
                    }
                    (Err(a), Err(b)) => {
                        assert!(nan_in.is_some());
                        assert_eq!(a.to_string(), b.to_string());
                        assert!(a.to_string().contains("NaN or infinity"), "{a}");
                    }
                    (a, b) => panic!("{}: {:?} vs {:?}", p.display(), a.err(), b.err()),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
