//! Loading SAM 2.1 / MedSAM2 checkpoints: the official `{"model": state_dict}` `.pt` files through
//! the safe unpickler (or safetensors), with the configuration from a JSON file (Hydra keys) or
//! inferred from the state dict's shapes. Shapes do not show the input size, the heads nor the
//! global-attention blocks: those come from the SAM 2.1 size the trunk matches, and the input
//! size from the caller (512 for MedSAM2 files, 1024 for the official SAM 2.1 files).

use super::config::{Sam2Config, Sam2Size};
use super::sam2_base::Sam2Base;
use crate::error::{Error, Result};
use crate::models::LoadReport;
use crate::tensor::Tensor;
use crate::Device;
use std::collections::BTreeMap;
use std::path::Path;

/// Whether a state dict holds a SAM 2 model (Hiera trunk and memory attention).
pub fn is_sam2_state_dict<'a>(mut keys: impl Iterator<Item = &'a String>) -> bool {
    keys.any(|k| k == "image_encoder.trunk.pos_embed")
}

/// A licence line for recognised weight files (the CLI prints it; the library never does).
pub fn licence_note(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.starts_with("medsam2") || name.starts_with("eff_medsam2") {
        Some("MedSAM2 weights (wanglab/MedSAM2): CC-BY-SA-4.0, for research and education use only")
    } else if name.starts_with("sam2.1_hiera") || name.starts_with("sam2_hiera") {
        Some("SAM 2 weights (facebookresearch/sam2): Apache-2.0")
    } else {
        None
    }
}

/// The input size a checkpoint file was trained at, by its name (MedSAM2 files: 512).
pub fn default_image_size(path: &Path) -> usize {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.starts_with("sam2") {
        1024
    } else {
        512
    }
}

fn dim(shapes: &BTreeMap<String, Vec<usize>>, key: &str, axis: usize) -> Result<usize> {
    shapes
        .get(key)
        .and_then(|s| s.get(axis).copied())
        .ok_or_else(|| {
            Error::Weights(format!(
                "not a SAM 2 checkpoint: no `{key}` of rank > {axis}"
            ))
        })
}

/// The configuration of a SAM 2.1 state dict at `image_size`.
pub fn infer_config(
    shapes: &BTreeMap<String, Vec<usize>>,
    image_size: usize,
) -> Result<Sam2Config> {
    let embed = dim(shapes, "image_encoder.trunk.pos_embed", 1)?;
    let depth = (0..)
        .take_while(|i| {
            shapes.contains_key(&format!("image_encoder.trunk.blocks.{i}.norm1.weight"))
        })
        .count();
    // A block with `proj` starts a new stage.
    let mut stages = vec![0usize];
    for i in 0..depth {
        if i > 0 && shapes.contains_key(&format!("image_encoder.trunk.blocks.{i}.proj.weight")) {
            stages.push(0);
        }
        *stages.last_mut().expect("non-empty") += 1;
    }
    let size = [Sam2Size::Tiny, Sam2Size::Small, Sam2Size::BasePlus, Sam2Size::Large]
        .into_iter()
        .find(|&s| {
            let t = Sam2Config::sam21(s, image_size).image_encoder.trunk;
            t.embed_dim == embed && t.stages == stages
        })
        .ok_or_else(|| {
            Error::Weights(format!(
                "Hiera trunk with embed_dim {embed} and stages {stages:?} is none of the SAM 2.1 sizes (tiny, small, base_plus, large); give its config with --model-config"
            ))
        })?;
    let mut cfg = Sam2Config::sam21(size, image_size);
    cfg.image_encoder.trunk.window_pos_embed_bkg_spatial_size = [
        dim(shapes, "image_encoder.trunk.pos_embed", 2)?,
        dim(shapes, "image_encoder.trunk.pos_embed", 3)?,
    ];
    cfg.image_encoder.trunk.window_spec[0] =
        dim(shapes, "image_encoder.trunk.pos_embed_window", 2)?;
    cfg.num_maskmem = dim(shapes, "maskmem_tpos_enc", 0)?;
    cfg.memory_attention.num_layers = (0..)
        .take_while(|i| shapes.contains_key(&format!("memory_attention.layers.{i}.linear1.weight")))
        .count();
    cfg.memory_attention.layer.dim_feedforward =
        dim(shapes, "memory_attention.layers.0.linear1.weight", 0)?;
    cfg.memory_attention.layer.cross_attention.kv_in_dim = Some(dim(
        shapes,
        "memory_attention.layers.0.cross_attn_image.k_proj.weight",
        1,
    )?);
    if shapes.contains_key("memory_encoder.out_proj.weight") {
        cfg.memory_encoder.out_dim = dim(shapes, "memory_encoder.out_proj.weight", 0)?;
    }
    Ok(cfg)
}

/// Loads a SAM 2 checkpoint. `image_size` overrides the size the file name suggests; a config
/// file overrides everything inferred. Errors name the file and the keys that do not fit.
pub fn load_sam2(
    path: &Path,
    config_json: Option<&Path>,
    image_size: Option<usize>,
    device: Device,
) -> Result<(Sam2Base, LoadReport)> {
    let value = crate::models::load::read_checkpoint(path)?;
    let weights: BTreeMap<String, Tensor> = crate::models::load::state_dict(path, &value)?;
    if !is_sam2_state_dict(weights.keys()) {
        let family = if weights
            .keys()
            .any(|k| k.starts_with("image_encoder.layers."))
        {
            "LiteMedSAM (TinyViT)"
        } else if weights
            .keys()
            .any(|k| k.starts_with("image_encoder.blocks."))
        {
            "SAM/MedSAM (ViT)"
        } else {
            "an unknown family"
        };
        return Err(Error::file(
            path,
            format!(
                "holds a {family} model, not SAM 2 / MedSAM2 (no image_encoder.trunk.pos_embed)"
            ),
        ));
    }
    let mut config = match config_json {
        Some(p) => Sam2Config::from_json_file(p)?,
        None => {
            let shapes = weights
                .iter()
                .map(|(k, t)| (k.clone(), t.shape().to_vec()))
                .collect();
            infer_config(&shapes, default_image_size(path))
                .map_err(|e| Error::file(path, e.to_string()))?
        }
    };
    if let Some(s) = image_size {
        config.set_image_size(s);
    }
    config.validate().map_err(|e| Error::file(path, e))?;
    let mut model =
        crate::models::common::with_placeholder_init(|| Sam2Base::new(&config, 0, device))?;
    let report = model
        .load_state_dict(&weights)
        .map_err(|e| Error::file(path, e.to_string()))?
        .into_result()
        .map_err(|e| Error::file(path, e.to_string()))?;
    Ok((model, report))
}
