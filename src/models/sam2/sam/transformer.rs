//! SAM 2's `TwoWayTransformer` (`sam2/modeling/sam/transformer.py`): SAM's
//! ([`crate::models::sam::transformer`]), except that the block MLP is SAM 2's `MLP`
//! (`mlp.layers.{0,1}`, ReLU).

use crate::models::common::Mlp;
use crate::models::sam::transformer;

pub use crate::models::sam::transformer::Attention;

pub type TwoWayAttentionBlock = transformer::TwoWayAttentionBlock<Mlp>;
pub type TwoWayTransformer = transformer::TwoWayTransformer<Mlp>;
