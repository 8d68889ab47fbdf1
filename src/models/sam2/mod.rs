//! SAM 2.1 / MedSAM2 (`sam2/modeling/`): Hiera image encoder with FPN neck, SAM heads with
//! high-resolution features and object scores, memory encoder, RoPE memory attention, object
//! pointers, and the video predictor that carries a prompt through a stack of frames. Module
//! and field names mirror the reference and its state-dict keys
//! (`image_encoder.trunk.blocks.3.attn.qkv.weight`).

pub mod config;
pub mod frames;
pub mod hieradet;
pub mod image_encoder;
pub mod load;
pub mod memory_attention;
pub mod memory_encoder;
pub mod sam;
pub mod sam2_base;
pub mod sam2_utils;
pub mod sam2_video_predictor;
pub mod volume;

pub use config::{Sam2Config, Sam2Size};
pub use load::{licence_note, load_sam2};
pub use sam2_base::Sam2Base;
pub use sam2_video_predictor::{InferenceState, Prompt, VideoPredictor};
