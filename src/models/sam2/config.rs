//! SAM 2 configuration. Field names mirror the `model:` section of SAM2's Hydra configs
//! (`sam2/configs/sam2.1/*.yaml`, MedSAM2's `sam2.1_hiera_t512.yaml`), so a config file written
//! as JSON with those keys deserialises directly; absent keys take the SAM2.1 values.
//! Constants that SAM2Base hard-codes (decoder depth 2, 8 heads, MLP 2048, 3 multimask outputs,
//! mask_in_chans 16, backbone stride 16) are not configurable here either.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrunkConfig {
    pub embed_dim: usize,
    pub num_heads: usize,
    pub stages: Vec<usize>,
    pub global_att_blocks: Vec<usize>,
    pub window_pos_embed_bkg_spatial_size: [usize; 2],
    pub window_spec: Vec<usize>,
    pub q_pool: usize,
    pub q_stride: [usize; 2],
    pub dim_mul: f64,
    pub head_mul: f64,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            embed_dim: 96,
            num_heads: 1,
            stages: vec![1, 2, 7, 2],
            global_att_blocks: vec![5, 7, 9],
            window_pos_embed_bkg_spatial_size: [7, 7],
            window_spec: vec![8, 4, 14, 7],
            q_pool: 3,
            q_stride: [2, 2],
            dim_mul: 2.0,
            head_mul: 2.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NeckConfig {
    pub d_model: usize,
    pub backbone_channel_list: Vec<usize>,
    pub fpn_top_down_levels: Vec<usize>,
    pub fpn_interp_model: String,
}

impl Default for NeckConfig {
    fn default() -> Self {
        NeckConfig {
            d_model: 256,
            backbone_channel_list: vec![768, 384, 192, 96],
            fpn_top_down_levels: vec![2, 3],
            fpn_interp_model: "nearest".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageEncoderConfig {
    pub scalp: usize,
    pub trunk: TrunkConfig,
    pub neck: NeckConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RopeAttentionConfig {
    pub rope_theta: f64,
    pub feat_sizes: [usize; 2],
    pub rope_k_repeat: bool,
    pub num_heads: usize,
    pub downsample_rate: usize,
    pub kv_in_dim: Option<usize>,
}

impl Default for RopeAttentionConfig {
    fn default() -> Self {
        RopeAttentionConfig {
            rope_theta: 10000.0,
            feat_sizes: [32, 32],
            rope_k_repeat: false,
            num_heads: 1,
            downsample_rate: 1,
            kv_in_dim: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryAttentionLayerConfig {
    pub dim_feedforward: usize,
    pub pos_enc_at_attn: bool,
    pub pos_enc_at_cross_attn_keys: bool,
    pub pos_enc_at_cross_attn_queries: bool,
    pub self_attention: RopeAttentionConfig,
    pub cross_attention: RopeAttentionConfig,
}

impl Default for MemoryAttentionLayerConfig {
    fn default() -> Self {
        MemoryAttentionLayerConfig {
            dim_feedforward: 2048,
            pos_enc_at_attn: false,
            pos_enc_at_cross_attn_keys: true,
            pos_enc_at_cross_attn_queries: false,
            self_attention: RopeAttentionConfig::default(),
            cross_attention: RopeAttentionConfig {
                rope_k_repeat: true,
                kv_in_dim: Some(64),
                ..Default::default()
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryAttentionConfig {
    pub d_model: usize,
    pub pos_enc_at_input: bool,
    pub num_layers: usize,
    pub layer: MemoryAttentionLayerConfig,
}

impl Default for MemoryAttentionConfig {
    fn default() -> Self {
        MemoryAttentionConfig {
            d_model: 256,
            pos_enc_at_input: true,
            num_layers: 4,
            layer: MemoryAttentionLayerConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskDownSamplerConfig {
    pub kernel_size: usize,
    pub stride: usize,
    pub padding: usize,
    pub total_stride: usize,
    pub embed_dim: usize,
}

impl Default for MaskDownSamplerConfig {
    fn default() -> Self {
        MaskDownSamplerConfig {
            kernel_size: 3,
            stride: 2,
            padding: 1,
            total_stride: 16,
            embed_dim: 256,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CxBlockConfig {
    pub dim: usize,
    pub kernel_size: usize,
    pub padding: usize,
    pub layer_scale_init_value: f64,
}

impl Default for CxBlockConfig {
    fn default() -> Self {
        CxBlockConfig {
            dim: 256,
            kernel_size: 7,
            padding: 3,
            layer_scale_init_value: 1e-6,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FuserConfig {
    pub num_layers: usize,
    pub layer: CxBlockConfig,
}

impl Default for FuserConfig {
    fn default() -> Self {
        FuserConfig {
            num_layers: 2,
            layer: CxBlockConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryEncoderConfig {
    pub out_dim: usize,
    pub in_dim: usize,
    pub mask_downsampler: MaskDownSamplerConfig,
    pub fuser: FuserConfig,
}

impl Default for MemoryEncoderConfig {
    fn default() -> Self {
        MemoryEncoderConfig {
            out_dim: 64,
            in_dim: 256,
            mask_downsampler: MaskDownSamplerConfig::default(),
            fuser: FuserConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskDecoderExtraArgs {
    pub dynamic_multimask_via_stability: bool,
    pub dynamic_multimask_stability_delta: f32,
    pub dynamic_multimask_stability_thresh: f32,
}

impl Default for MaskDecoderExtraArgs {
    /// As `build_sam2_video_predictor(apply_postprocessing=True)` sets them.
    fn default() -> Self {
        MaskDecoderExtraArgs {
            dynamic_multimask_via_stability: true,
            dynamic_multimask_stability_delta: 0.05,
            dynamic_multimask_stability_thresh: 0.98,
        }
    }
}

/// The whole model (`SAM2Base` arguments). Defaults: MedSAM2's t512 with the video predictor's
/// post-processing overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sam2Config {
    pub image_encoder: ImageEncoderConfig,
    pub memory_attention: MemoryAttentionConfig,
    pub memory_encoder: MemoryEncoderConfig,
    pub num_maskmem: usize,
    pub image_size: usize,
    pub sigmoid_scale_for_mem_enc: f32,
    pub sigmoid_bias_for_mem_enc: f32,
    pub binarize_mask_from_pts_for_mem_enc: bool,
    pub use_mask_input_as_output_without_sam: bool,
    pub max_cond_frames_in_attn: i64,
    pub directly_add_no_mem_embed: bool,
    pub use_high_res_features_in_sam: bool,
    pub multimask_output_in_sam: bool,
    pub multimask_min_pt_num: usize,
    pub multimask_max_pt_num: usize,
    pub multimask_output_for_tracking: bool,
    pub use_multimask_token_for_obj_ptr: bool,
    pub iou_prediction_use_sigmoid: bool,
    pub memory_temporal_stride_for_eval: usize,
    pub use_obj_ptrs_in_encoder: bool,
    pub max_obj_ptrs_in_encoder: usize,
    pub add_tpos_enc_to_obj_ptrs: bool,
    pub proj_tpos_enc_in_obj_ptrs: bool,
    pub use_signed_tpos_enc_to_obj_ptrs: bool,
    pub only_obj_ptrs_in_the_past_for_eval: bool,
    pub pred_obj_scores: bool,
    pub pred_obj_scores_mlp: bool,
    pub fixed_no_obj_ptr: bool,
    pub soft_no_obj_ptr: bool,
    pub use_mlp_for_obj_ptr_proj: bool,
    pub no_obj_embed_spatial: bool,
    pub sam_mask_decoder_extra_args: MaskDecoderExtraArgs,
}

impl Default for Sam2Config {
    fn default() -> Self {
        Sam2Config {
            image_encoder: ImageEncoderConfig {
                scalp: 1,
                ..Default::default()
            },
            memory_attention: MemoryAttentionConfig::default(),
            memory_encoder: MemoryEncoderConfig::default(),
            num_maskmem: 7,
            image_size: 512,
            sigmoid_scale_for_mem_enc: 20.0,
            sigmoid_bias_for_mem_enc: -10.0,
            binarize_mask_from_pts_for_mem_enc: true,
            use_mask_input_as_output_without_sam: true,
            max_cond_frames_in_attn: -1,
            directly_add_no_mem_embed: true,
            use_high_res_features_in_sam: true,
            multimask_output_in_sam: true,
            multimask_min_pt_num: 0,
            multimask_max_pt_num: 1,
            multimask_output_for_tracking: true,
            use_multimask_token_for_obj_ptr: true,
            iou_prediction_use_sigmoid: true,
            memory_temporal_stride_for_eval: 1,
            use_obj_ptrs_in_encoder: true,
            max_obj_ptrs_in_encoder: 16,
            add_tpos_enc_to_obj_ptrs: true,
            proj_tpos_enc_in_obj_ptrs: true,
            use_signed_tpos_enc_to_obj_ptrs: true,
            only_obj_ptrs_in_the_past_for_eval: true,
            pred_obj_scores: true,
            pred_obj_scores_mlp: true,
            fixed_no_obj_ptr: true,
            soft_no_obj_ptr: false,
            use_mlp_for_obj_ptr_proj: true,
            no_obj_embed_spatial: true,
            sam_mask_decoder_extra_args: MaskDecoderExtraArgs::default(),
        }
    }
}

/// The SAM 2.1 sizes (`sam2.1_hiera_{t,s,b+,l}.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sam2Size {
    Tiny,
    Small,
    BasePlus,
    Large,
}

impl Sam2Config {
    /// A SAM 2.1 size at `image_size` (1024 for the official checkpoints, 512 for MedSAM2); the
    /// RoPE feature size follows the image size (stride 16).
    pub fn sam21(size: Sam2Size, image_size: usize) -> Sam2Config {
        let mut c = Sam2Config::default();
        let t = &mut c.image_encoder.trunk;
        match size {
            Sam2Size::Tiny => {}
            Sam2Size::Small => {
                t.stages = vec![1, 2, 11, 2];
                t.global_att_blocks = vec![7, 10, 13];
            }
            Sam2Size::BasePlus => {
                t.embed_dim = 112;
                t.num_heads = 2;
                t.stages = vec![2, 3, 16, 3];
                t.global_att_blocks = vec![12, 16, 20];
                t.window_pos_embed_bkg_spatial_size = [14, 14];
            }
            Sam2Size::Large => {
                t.embed_dim = 144;
                t.num_heads = 2;
                t.stages = vec![2, 6, 36, 4];
                t.global_att_blocks = vec![23, 33, 43];
                t.window_spec = vec![8, 4, 16, 8];
            }
        }
        let e = t.embed_dim;
        c.image_encoder.neck.backbone_channel_list = vec![8 * e, 4 * e, 2 * e, e];
        c.set_image_size(image_size);
        c
    }

    /// MedSAM2's model: SAM 2.1 tiny at 512².
    pub fn medsam2_t512() -> Sam2Config {
        Sam2Config::sam21(Sam2Size::Tiny, 512)
    }

    /// Sets the input size and the RoPE feature sizes that follow from it.
    pub fn set_image_size(&mut self, image_size: usize) {
        self.image_size = image_size;
        let f = image_size / 16;
        self.memory_attention.layer.self_attention.feat_sizes = [f, f];
        self.memory_attention.layer.cross_attention.feat_sizes = [f, f];
    }

    /// Reads a JSON file whose keys mirror the Hydra config; a top-level `model` object is
    /// accepted too (a YAML config converted to JSON).
    pub fn from_json_file(path: &Path) -> Result<Sam2Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Other(format!("{}: cannot read config: {e}", path.display())))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Other(format!("{}: invalid JSON: {e}", path.display())))?;
        let value = match value.get("model") {
            Some(m) => m.clone(),
            None => value,
        };
        let cfg: Sam2Config = serde_json::from_value(value)
            .map_err(|e| Error::Other(format!("{}: invalid SAM2 config: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Checks the relations the modules rely on, naming the field that breaks one.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.image_encoder.trunk;
        if t.stages.len() != t.window_spec.len() || t.stages.is_empty() {
            return Err(format!(
                "image_encoder.trunk.stages ({}) and window_spec ({}) must have the same non-zero length",
                t.stages.len(),
                t.window_spec.len()
            ));
        }
        if t.q_pool >= t.stages.len() {
            return Err(format!(
                "image_encoder.trunk.q_pool {} must be below the number of stages {}",
                t.q_pool,
                t.stages.len()
            ));
        }
        let n = &self.image_encoder.neck;
        if n.backbone_channel_list.len() != t.stages.len() {
            return Err(
                "image_encoder.neck.backbone_channel_list must list one width per stage".into(),
            );
        }
        if !["nearest", "bilinear"].contains(&n.fpn_interp_model.as_str()) {
            return Err(format!(
                "image_encoder.neck.fpn_interp_model {:?} is not nearest or bilinear",
                n.fpn_interp_model
            ));
        }
        if self.image_size == 0 || !self.image_size.is_multiple_of(64) {
            return Err(format!(
                "image_size {} must be a positive multiple of 64",
                self.image_size
            ));
        }
        if self.memory_attention.d_model != n.d_model {
            return Err("memory_attention.d_model must equal image_encoder.neck.d_model".into());
        }
        Ok(())
    }

    /// Hidden width of the SAM heads (`image_encoder.neck.d_model`).
    pub fn hidden_dim(&self) -> usize {
        self.image_encoder.neck.d_model
    }
    /// Side of the stride-16 feature map.
    pub fn embedding_size(&self) -> usize {
        self.image_size / 16
    }
}
