//! Optimizer updates in place.

use crate::backend::*;
use crate::error::Result;

/// What an AdamW update changes: a parameter and its two moment buffers.
pub struct AdamWSlots<'a> {
    pub param: &'a mut Storage,
    pub exp_avg: &'a mut Storage,
    pub exp_avg_sq: &'a mut Storage,
}

pub trait OptimOps {
    /// One AdamW update in place: the slots `s` are updated from `grad`.
    fn adamw(&self, p: AdamWStep, grad: &Storage, s: AdamWSlots) -> Result<()>;
}
