//! SAM 2's prompt encoder, mask decoder and two-way transformer (`sam2/modeling/sam/`).

pub mod mask_decoder;
pub mod prompt_encoder;
pub mod transformer;
