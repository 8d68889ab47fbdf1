//! AdamW as `torch.optim.AdamW` (non-foreach, non-amsgrad) computes it in f32, operation for
//! operation, so updates match PyTorch bit for bit where the arithmetic allows. `param`, `m`
//! (`exp_avg`) and `v` (`exp_avg_sq`) are updated in place from `grad`; all four have the same
//! length. The update is elementwise, so it does not depend on how the work is split.

use rayon::prelude::*;

/// Hyper-parameters of one AdamW update (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// The step number after this update (1 for the first).
    pub step: u64,
}

/// The f32 constants of one step. PyTorch computes them as Python floats (f64) and rounds them
/// once to f32.
struct Scalars {
    step_size: f32,
    bias2_sqrt: f32,
    decay: f32,
    w1: f32,
    beta2: f32,
    w2: f32,
    eps: f32,
}

fn scalars(p: AdamWStep) -> Scalars {
    let (lr, b1, b2) = (p.lr, p.beta1, p.beta2);
    Scalars {
        step_size: (lr / (1.0 - b1.powi(p.step as i32))) as f32,
        bias2_sqrt: (1.0 - b2.powi(p.step as i32)).sqrt() as f32,
        decay: (1.0 - lr * p.weight_decay) as f32,
        w1: (1.0 - b1) as f32,
        beta2: b2 as f32,
        w2: (1.0 - b2) as f32,
        eps: p.eps as f32,
    }
}

/// One AdamW update, in parallel over chunks of at least 4096 elements.
pub fn adamw_update(p: AdamWStep, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
    assert!(
        grad.len() == param.len() && m.len() == param.len() && v.len() == param.len(),
        "adamw_update: buffer lengths differ"
    );
    let s = scalars(p);
    param
        .par_iter_mut()
        .zip(grad.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .with_min_len(4096)
        .for_each(|((w, &g), (m, v))| {
            *w *= s.decay;
            *m += s.w1 * (g - *m);
            *v = *v * s.beta2 + s.w2 * g * g;
            let denom = v.sqrt() / s.bias2_sqrt + s.eps;
            *w += -s.step_size * (*m / denom);
        });
}

/// The oracle: `torch/optim/adamw.py` `_single_tensor_adamw`, one element at a time.
pub mod reference {
    use super::AdamWStep;

    pub fn adamw_update(
        p: AdamWStep,
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        let t = p.step as i32;
        // param.mul_(1 - lr * weight_decay)
        let decay = (1.0 - p.lr * p.weight_decay) as f32;
        // bias_correction2_sqrt = sqrt(1 - beta2 ** step); step_size = lr / (1 - beta1 ** step)
        let bias_correction2_sqrt = (1.0 - p.beta2.powi(t)).sqrt() as f32;
        let step_size = (p.lr / (1.0 - p.beta1.powi(t))) as f32;
        for i in 0..param.len() {
            let g = grad[i];
            param[i] *= decay;
            // exp_avg.lerp_(grad, 1 - beta1)
            m[i] += (1.0 - p.beta1) as f32 * (g - m[i]);
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            v[i] = v[i] * p.beta2 as f32 + (1.0 - p.beta2) as f32 * g * g;
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            let denom = v[i].sqrt() / bias_correction2_sqrt + p.eps as f32;
            // param.addcdiv_(exp_avg, denom, value=-step_size)
            param[i] += -step_size * (m[i] / denom);
        }
    }
}
