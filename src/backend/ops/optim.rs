//! Optimizer updates in place.

use crate::backend::*;
use crate::error::Result;

pub trait OptimOps {
    /// One AdamW update in place: `param`, `exp_avg`, `exp_avg_sq` are updated from `grad`.
    fn adamw(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<()>;
}
