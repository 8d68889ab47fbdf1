//! The device seam, one trait per op family; [`Backend`](super::Backend) is all of them. A file
//! per family here, and a file per family in each backend (`cpu/<family>.rs`,
//! `ascend/<family>.rs`). Buffers passed in are contiguous unless a [`View`](super::View) or a
//! [`GemmOperand`](super::GemmOperand) says otherwise; results are fresh contiguous buffers. No
//! method has a default that copies through the host: a device implements every op or says it
//! cannot (`Ok(None)` where the signature allows it).

pub mod attention;
pub mod conv;
pub mod linalg;
pub mod memory;
pub mod norm;
pub mod optim;
pub mod pointwise;

pub use attention::{
    AttentionOps, AttnArgs, AttnGradIn, AttnSaved, BiasTableArgs, HeadQkv, Qkv, RelPosIn,
    ViewAttnArgs,
};
pub use conv::{ConvGradIn, ConvIn, ConvOps};
pub use linalg::{Epilogue, GemmArgs, LinalgOps};
pub use memory::MemoryOps;
pub use norm::{ChannelDims, NormGradIn, NormIn, NormOps, NormStats};
pub use optim::{AdamWSlots, OptimOps};
pub use pointwise::{PointwiseOps, ResizeDims, RowDims};
