//! The models. Each family has a folder whose files mirror the reference modules and keep their
//! state-dict names (`image_encoder.blocks.3.attn.rel_pos_h` is a field path here too):
//!
//! - [`sam`]: SAM / MedSAM (`segment_anything/modeling/`), whose prompt encoder and mask decoder
//!   the other families reuse;
//! - [`lite`]: LiteMedSAM (TinyViT encoder + SAM's prompt encoder and mask decoder);
//! - [`sam2`]: SAM 2.1 / MedSAM2 (`sam2/modeling/`): Hiera encoder, memory bank, video predictor.
//!
//! Beside them: [`common`] layers (Linear, LayerNorm, Conv2d, ...), [`config`] (model sizes),
//! [`seg_model`] (the train/eval interface every family implements) and [`load`] (checkpoint →
//! model, including optimizer state).

pub mod common;
pub mod config;
pub mod lite;
pub mod load;
pub mod sam;
pub mod sam2;
pub mod seg_model;

pub use common::LoadReport;
pub use common::Module;
pub use config::{ModelType, SamConfig};
pub use lite::{LiteConfig, LiteMedSam};
pub use load::{load_model, AnyModel};
pub use sam::Sam;
pub use seg_model::{SegModel, SegPredict};
