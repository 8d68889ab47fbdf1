//! MedSAM's training loss: MONAI `DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")` +
//! `BCEWithLogitsLoss(reduction="mean")`, fused into one op with an analytic backward.
//! Sums are accumulated in f64 on the host: the loss is a reduction over ~10⁶ values per image.

use crate::autograd::{record, BackwardOp};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// MONAI's default smoothing terms.
const SMOOTH: f64 = 1e-5;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Per-(batch, channel) sums for the Dice term.
struct DiceSums {
    inter: Vec<f64>,
    denom: Vec<f64>,
}

fn dice_sums(p: &[f64], g: &[f32], planes: usize, plane: usize) -> DiceSums {
    let mut s = DiceSums {
        inter: vec![0.0; planes],
        denom: vec![0.0; planes],
    };
    for i in 0..planes {
        let (pp, gg) = (
            &p[i * plane..(i + 1) * plane],
            &g[i * plane..(i + 1) * plane],
        );
        let (mut inter, mut sq) = (0.0, 0.0);
        for (&a, &b) in pp.iter().zip(gg) {
            let b = b as f64;
            inter += a * b;
            sq += a * a + b * b;
        }
        s.inter[i] = inter;
        s.denom[i] = sq + SMOOTH;
    }
    s
}

/// Dice + BCE of logits `[B, C, H, W]` against a binary target of the same shape; a scalar.
pub fn dice_bce_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    if logits.shape() != target.shape() || logits.rank() < 3 {
        return Err(Error::shape(
            "dice_bce_loss",
            format!(
                "logits {:?} vs target {:?} (need [B, C, ...] of equal shape)",
                logits.shape(),
                target.shape()
            ),
        ));
    }
    let planes = logits.dim(0) * logits.dim(1);
    let plane = logits.numel() / planes.max(1);
    let x = logits.to_vec()?;
    let g = target.to_vec()?;
    let p: Vec<f64> = x.iter().map(|&v| sigmoid(v as f64)).collect();
    let sums = dice_sums(&p, &g, planes, plane);
    let dice: f64 = (0..planes)
        .map(|i| 1.0 - (2.0 * sums.inter[i] + SMOOTH) / sums.denom[i])
        .sum::<f64>()
        / planes as f64;
    let bce: f64 = x
        .iter()
        .zip(&g)
        .map(|(&x, &y)| {
            let (x, y) = (x as f64, y as f64);
            x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
        })
        .sum::<f64>()
        / x.len() as f64;
    let out = Tensor::full(&[], (dice + bce) as f32, logits.device())?;
    Ok(record(out, &[logits], || {
        Box::new(LossBackward {
            shape: logits.shape().to_vec(),
            p,
            g,
            sums,
            planes,
            plane,
        })
    }))
}

struct LossBackward {
    shape: Vec<usize>,
    p: Vec<f64>,
    g: Vec<f32>,
    sums: DiceSums,
    planes: usize,
    plane: usize,
}

impl BackwardOp for LossBackward {
    fn backward(self: Box<Self>, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let up = grad.to_scalar()? as f64;
        let n = self.p.len() as f64;
        let mut dx = vec![0.0f32; self.p.len()];
        for i in 0..self.planes {
            let num = 2.0 * self.sums.inter[i] + SMOOTH;
            let den = self.sums.denom[i];
            let range = i * self.plane..(i + 1) * self.plane;
            for ((d, &p), &g) in dx[range.clone()]
                .iter_mut()
                .zip(&self.p[range.clone()])
                .zip(&self.g[range])
            {
                let g = g as f64;
                // d(1 - num/den)/dp, through p = sigmoid(x), averaged over planes.
                let d_dice = -(2.0 * g * den - num * 2.0 * p) / (den * den) / self.planes as f64;
                let d_bce = (p - g) / n;
                *d = (up * (d_dice * p * (1.0 - p) + d_bce)) as f32;
            }
        }
        Ok(vec![Some(Tensor::from_slice(
            &dx,
            &self.shape,
            grad.device(),
        )?)])
    }
}
