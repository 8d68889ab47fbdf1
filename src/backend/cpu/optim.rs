//! CPU backend: optimizer updates in place.

use super::*;

impl OptimOps for CpuBackend {
    fn adamw(
        &self,
        p: AdamWStep,
        param: &mut Storage,
        grad: &Storage,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
    ) -> Result<()> {
        let grad = host(grad)?;
        let param = host_mut(param)?;
        let m = host_mut(exp_avg)?;
        let v = host_mut(exp_avg_sq)?;
        medsam_kernels::adamw::adamw_update(p, param, grad, m, v);
        Ok(())
    }
}
