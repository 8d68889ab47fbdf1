//! BatchNorm over the channels of `[n, c, hw]` (NCHW with the pixels flattened), as
//! `torch.nn.BatchNorm2d` computes it: per-channel statistics over `n·hw` values.
//!
//! Split in three so training and inference share code: [`stats`] (batch mean and biased
//! variance), [`apply`] (`y = (x - mean)·rstd·γ + β` with any statistics: the batch's in training,
//! the running ones in inference) and [`backward`] (through batch statistics or through fixed ones).

use rayon::prelude::*;

/// Per-channel mean and biased variance of x `[n, c, hw]` (two-pass, f64 accumulation).
pub fn stats(n: usize, c: usize, hw: usize, x: &[f32], mean: &mut [f32], var: &mut [f32]) {
    mean.par_iter_mut()
        .zip(var.par_iter_mut())
        .enumerate()
        .for_each(|(ch, (m, v))| {
            let count = (n * hw).max(1) as f64;
            let planes = || (0..n).map(move |b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
            let mu = planes()
                .flat_map(|p| p.iter())
                .map(|&a| a as f64)
                .sum::<f64>()
                / count;
            let var_ = planes()
                .flat_map(|p| p.iter())
                .map(|&a| (a as f64 - mu).powi(2))
                .sum::<f64>()
                / count;
            *m = mu as f32;
            *v = var_ as f32;
        });
}

/// `y = (x - mean[c])·rstd[c]·gamma[c] + beta[c]`.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    n: usize,
    c: usize,
    hw: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    rstd: &[f32],
    y: &mut [f32],
) {
    let _ = n;
    y.par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(p, (yp, xp))| {
            let ch = p % c;
            let (s, m, b) = (rstd[ch] * gamma[ch], mean[ch], beta[ch]);
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = (v - m) * s + b;
            }
        });
}

/// Gradients of [`apply`]. With `batch_stats` the mean and rstd are functions of x (training
/// mode) and dx carries their terms; otherwise they are constants (running statistics).
/// dx, dgamma, dbeta are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    n: usize,
    c: usize,
    hw: usize,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    batch_stats: bool,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let count = (n * hw).max(1) as f64;
    // Σ dy and Σ dy·x̂ per channel.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sd, mut sdx) = (0.0f64, 0.0f64);
            for b in 0..n {
                let o = (b * c + ch) * hw;
                for (&d, &v) in dy[o..o + hw].iter().zip(&x[o..o + hw]) {
                    sd += d as f64;
                    sdx += d as f64 * ((v - mean[ch]) * rstd[ch]) as f64;
                }
            }
            (sd, sdx)
        })
        .collect();
    for ch in 0..c {
        dbeta[ch] = sums[ch].0 as f32;
        dgamma[ch] = sums[ch].1 as f32;
    }
    dx.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(p, dxp)| {
            let ch = p % c;
            let o = p * hw;
            let k = gamma[ch] * rstd[ch];
            if batch_stats {
                let (md, mdx) = ((sums[ch].0 / count) as f32, (sums[ch].1 / count) as f32);
                for ((out, &d), &v) in dxp.iter_mut().zip(&dy[o..o + hw]).zip(&x[o..o + hw]) {
                    let xhat = (v - mean[ch]) * rstd[ch];
                    *out = k * (d - md - xhat * mdx);
                }
            } else {
                for (out, &d) in dxp.iter_mut().zip(&dy[o..o + hw]) {
                    *out = k * d;
                }
            }
        });
}

/// Plain per-element loops: the oracle for the functions above.
pub mod reference {
    /// x and y are `[n, c, hw]`; `running` is (mean, var) per channel, or None for batch stats.
    pub fn forward(
        [n, c, hw]: [usize; 3],
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        running: Option<(&[f32], &[f32])>,
        y: &mut [f32],
    ) {
        for ch in 0..c {
            let (mean, var) = match running {
                Some((m, v)) => (m[ch] as f64, v[ch] as f64),
                None => {
                    let mut vals = Vec::new();
                    for b in 0..n {
                        vals.extend_from_slice(&x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
                    }
                    let m = vals.iter().map(|&v| v as f64).sum::<f64>() / vals.len() as f64;
                    let v = vals.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>()
                        / vals.len() as f64;
                    (m, v)
                }
            };
            for b in 0..n {
                for i in 0..hw {
                    let j = (b * c + ch) * hw + i;
                    y[j] = ((x[j] as f64 - mean) / (var + eps as f64).sqrt() * gamma[ch] as f64
                        + beta[ch] as f64) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let unit = crate::testing::unit(len, seed);
        unit.into_iter().map(|u| lo + (hi - lo) * u).collect()
    }

    fn rstd_of(var: &[f32], eps: f32) -> Vec<f32> {
        var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
    }

    type Running<'a> = Option<(&'a [f32], &'a [f32])>;

    /// Loss `L = Σ y·r` for a fixed r: its gradient is the backward of dy = r.
    fn loss(
        shape: [usize; 3],
        x: &[f32],
        g: &[f32],
        b: &[f32],
        r: &[f32],
        running: Running,
    ) -> f64 {
        let mut y = vec![0.0; x.len()];
        reference::forward(shape, x, g, b, 1e-5, running, &mut y);
        y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn forward_matches_reference(n in 1usize..4, c in 1usize..5, hw in 1usize..20, seed in any::<u64>(), train in any::<bool>()) {
            let x = data(n * c * hw, seed, -3.0, 3.0);
            let (g, b) = (data(c, seed ^ 1, 0.5, 1.5), data(c, seed ^ 2, -1.0, 1.0));
            let (rm, rv) = (data(c, seed ^ 3, -0.5, 0.5), data(c, seed ^ 4, 0.5, 2.0));
            let running = (!train).then_some((&rm[..], &rv[..]));
            let mut want = vec![0.0; x.len()];
            reference::forward([n, c, hw], &x, &g, &b, 1e-5, running, &mut want);
            let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
            if train { stats(n, c, hw, &x, &mut mean, &mut var) } else { mean.copy_from_slice(&rm); var.copy_from_slice(&rv) }
            let mut got = vec![0.0; x.len()];
            apply(n, c, hw, &x, &g, &b, &mean, &rstd_of(&var, 1e-5), &mut got);
            for (a, w) in got.iter().zip(&want) {
                // A channel of near-identical values makes x̂ sensitive to rounding; absolute slack covers it.
                prop_assert!((a - w).abs() <= 2e-4 * (1.0 + w.abs()), "{} vs {}", a, w);
            }
        }

        #[test]
        fn backward_matches_finite_differences(n in 1usize..3, c in 1usize..4, hw in 2usize..7, seed in any::<u64>(), train in any::<bool>()) {
            let x = data(n * c * hw, seed, -2.0, 2.0);
            let (g, b) = (data(c, seed ^ 1, 0.5, 1.5), data(c, seed ^ 2, -1.0, 1.0));
            let (rm, rv) = (data(c, seed ^ 3, -0.5, 0.5), data(c, seed ^ 4, 0.5, 2.0));
            let r = data(x.len(), seed ^ 5, -1.0, 1.0);
            let running = (!train).then_some((&rm[..], &rv[..]));
            let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
            if train { stats(n, c, hw, &x, &mut mean, &mut var) } else { mean.copy_from_slice(&rm); var.copy_from_slice(&rv) }
            let rstd = rstd_of(&var, 1e-5);
            let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
            backward(n, c, hw, &x, &g, &mean, &rstd, &r, train, &mut dx, &mut dg, &mut db);
            // Skip degenerate channels (almost constant): the gradient is ill-conditioned there.
            prop_assume!(var.iter().all(|&v| v > 0.05) || !train);
            let h = 1e-2f32;
            let fd = |v: &mut Vec<f32>, i: usize, f: &dyn Fn(&[f32]) -> f64| {
                let orig = v[i];
                v[i] = orig + h;
                let up = f(v);
                v[i] = orig - h;
                let dn = f(v);
                v[i] = orig;
                ((up - dn) / (2.0 * h as f64)) as f32
            };
            let mut xv = x.clone();
            for (i, &d) in dx.iter().enumerate() {
                let want = fd(&mut xv, i, &|xx| loss([n, c, hw], xx, &g, &b, &r, running));
                prop_assert!((d - want).abs() <= 2e-2 * (1.0 + want.abs()), "dx[{}]: {} vs {}", i, d, want);
            }
            let mut gv = g.clone();
            for i in 0..c {
                let want = fd(&mut gv, i, &|gg| loss([n, c, hw], &x, gg, &b, &r, running));
                prop_assert!((dg[i] - want).abs() <= 2e-2 * (1.0 + want.abs()), "dgamma[{}]: {} vs {}", i, dg[i], want);
                let want_b: f32 = (0..n).flat_map(|bb| r[(bb * c + i) * hw..(bb * c + i + 1) * hw].iter()).sum();
                prop_assert!((db[i] - want_b).abs() <= 1e-4 * (1.0 + want_b.abs()));
            }
        }
    }
}
