//! CPU backend: optimizer updates in place.

use super::*;

impl OptimOps for CpuBackend {
    fn adamw(&self, p: AdamWStep, grad: &Storage, s: AdamWSlots) -> Result<()> {
        let grad = host(grad)?;
        let param = host_mut(s.param)?;
        let m = host_mut(s.exp_avg)?;
        let v = host_mut(s.exp_avg_sq)?;
        medsam_kernels::adamw::adamw_update(p, param, grad, m, v);
        Ok(())
    }
}
