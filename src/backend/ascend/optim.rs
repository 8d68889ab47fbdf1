//! Ascend backend: optimizer updates in place.

use super::*;

impl OptimOps for AscendBackend {
    fn adamw(&self, p: AdamWStep, grad: &Storage, mut s: AdamWSlots) -> Result<()> {
        // Fused `aclnnApplyAdamWV2` (in place) when the runtime has it and accepts the call;
        // otherwise the same update as a composition of elementwise ops.
        if self.adamw_fused(p, grad, &mut s)? {
            return Ok(());
        }
        self.adamw_elementwise(p, grad, s)
    }
}
