//! AdamW exactly as `torch.optim.AdamW` (single-tensor path, no amsgrad): decoupled weight decay,
//! bias-corrected moments, per-parameter step counts. State lines up with the parameter list by
//! index, as PyTorch's optimizer `state_dict` does.

use crate::backend::{AdamWSlots, AdamWStep};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// MedSAM's settings: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Moments of one parameter.
#[derive(Clone, Debug)]
pub struct ParamState {
    pub step: u64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

impl AdamWConfig {
    /// The checks `torch.optim.AdamW` makes (0 <= lr, 0 <= eps, 0 <= betas < 1,
    /// 0 <= weight_decay), with NaN and infinity refused too: a non-finite hyper-parameter
    /// only writes NaN weights.
    pub fn validate(&self) -> Result<()> {
        let check = |field: &str, v: f64, ok: bool, rule: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::arg(
                    field,
                    format!("{v} is invalid: it must be {rule}"),
                ))
            }
        };
        check("lr", self.lr, self.lr >= 0.0, "a finite number >= 0")?;
        check("eps", self.eps, self.eps >= 0.0, "a finite number >= 0")?;
        let (b1, b2) = self.betas;
        check("betas[0]", b1, (0.0..1.0).contains(&b1), "in [0, 1)")?;
        check("betas[1]", b2, (0.0..1.0).contains(&b2), "in [0, 1)")?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "a finite number >= 0",
        )
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// `None` until the parameter first receives a gradient (as in PyTorch).
    pub state: Vec<Option<ParamState>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, num_params: usize) -> Self {
        AdamW {
            config,
            state: vec![None; num_params],
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self, params: &mut [(String, &mut Tensor)]) -> Result<()> {
        if params.len() != self.state.len() {
            return Err(Error::arg(
                "optimizer",
                format!(
                    "{} parameters for a state of {}",
                    params.len(),
                    self.state.len()
                ),
            ));
        }
        for ((name, p), slot) in params.iter_mut().zip(self.state.iter_mut()) {
            let Some(grad) = p.grad() else { continue };
            if grad.shape() != p.shape() {
                return Err(Error::shape(
                    "adamw",
                    format!(
                        "{name}: grad {:?} for parameter {:?}",
                        grad.shape(),
                        p.shape()
                    ),
                ));
            }
            let st = match slot {
                Some(s) => s,
                None => slot.insert(ParamState {
                    step: 0,
                    exp_avg: Tensor::zeros(p.shape(), p.device())?,
                    exp_avg_sq: Tensor::zeros(p.shape(), p.device())?,
                }),
            };
            st.step += 1;
            let c = self.config;
            let hyper = AdamWStep {
                lr: c.lr,
                beta1: c.betas.0,
                beta2: c.betas.1,
                eps: c.eps,
                weight_decay: c.weight_decay,
                step: st.step,
            };
            let backend = p.backend()?;
            let grad = if grad.is_dense() { grad } else { grad.copy()? };
            let slots = AdamWSlots {
                param: p.storage_mut()?,
                exp_avg: st.exp_avg.storage_mut()?,
                exp_avg_sq: st.exp_avg_sq.storage_mut()?,
            };
            backend.adamw(hyper, grad.storage(), slots)?;
        }
        Ok(())
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(params: &mut [(String, &mut Tensor)]) {
        for (_, p) in params.iter_mut() {
            p.zero_grad();
        }
    }
}
