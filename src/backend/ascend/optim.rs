//! Ascend backend: optimizer updates in place.

use super::*;

impl OptimOps for AscendBackend {
    fn adamw(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<()> {
        // Fused `aclnnApplyAdamWV2` (in place) when the runtime has it and accepts the call;
        // otherwise the same update as a composition of elementwise ops.
        if self.adamw_fused(p, param, grad, exp_avg, exp_avg_sq)? {
            return Ok(());
        }
        self.adamw_elementwise(p, param, grad, exp_avg, exp_avg_sq)
    }
}
