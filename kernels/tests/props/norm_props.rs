//! LayerNorm / LayerNorm2d: fast vs reference on random shapes, finite-difference gradients.

#![allow(clippy::needless_range_loop)]

use medsam_kernels::norm::{self, reference};
use proptest::prelude::*;

use medsam_kernels::testing::{assert_close, with_threads, Rng};

/// Runs LayerNorm2d (`hw > 0`) or row LayerNorm (`hw == 0`, rows = n, dim = c) with `fast` or the
/// reference, returning (y, mean, rstd, dx, dgamma, dbeta). dgamma/dbeta start at 0.5 to check
/// that they are accumulated.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn run(
    fast: bool,
    n: usize,
    c: usize,
    hw: usize,
    x: &[f32],
    gm: &[f32],
    bt: &[f32],
    dy: &[f32],
) -> [Vec<f32>; 6] {
    let p = hw.max(1);
    let mut y = vec![0.0; n * c * p];
    let (mut m, mut r) = (vec![0.0; n * p], vec![0.0; n * p]);
    let mut dx = vec![0.0; n * c * p];
    let (mut dg, mut db) = (vec![0.5; c], vec![0.5; c]);
    let eps = 1e-6;
    match (fast, hw > 0) {
        (true, true) => {
            norm::layer_norm2d_forward(n, c, hw, x, gm, bt, eps, &mut y, &mut m, &mut r);
            norm::layer_norm2d_backward(n, c, hw, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db);
        }
        (false, true) => {
            reference::layer_norm2d_forward(n, c, hw, x, gm, bt, eps, &mut y, &mut m, &mut r);
            reference::layer_norm2d_backward(
                n, c, hw, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db,
            );
        }
        (true, false) => {
            norm::layer_norm_forward(n, c, x, gm, bt, eps, &mut y, &mut m, &mut r);
            norm::layer_norm_backward(n, c, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db);
        }
        (false, false) => {
            reference::layer_norm_forward(n, c, x, gm, bt, eps, &mut y, &mut m, &mut r);
            reference::layer_norm_backward(n, c, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db);
        }
    }
    [y, m, r, dx, dg, db]
}

fn compare(n: usize, c: usize, hw: usize, seed: u64) {
    let p = hw.max(1);
    let mut rng = Rng(seed);
    // A per-row offset makes the mean non-trivial (tests the two-pass variance).
    let x: Vec<f32> = rng.vec(n * c * p, 2.0).iter().map(|v| v + 3.0).collect();
    let gm = rng.vec(c, 1.5);
    let bt = rng.vec(c, 1.0);
    let dy = rng.vec(n * c * p, 1.0);
    let a = run(true, n, c, hw, &x, &gm, &bt, &dy);
    let b = run(false, n, c, hw, &x, &gm, &bt, &dy);
    // Tolerances: f32 sums over ≤ 300 channels vs f64; normalised values are O(1) and rstd ~ 1.
    // dgamma/dbeta sum up to n·hw ≈ 1000 products, so they get a larger tolerance. The f32 error
    // of (x − mean) is amplified by rstd (and the variance's relative error by rstd²), which gets
    // large when few channels happen to be nearly equal (c = 2), so everything scales by 1 + rstd².
    let smax = b[2].iter().fold(0.0f32, |m, &v| m.max(v));
    let f = 1.0 + smax * smax;
    let names = ["y", "mean", "rstd", "dx", "dgamma", "dbeta"];
    let tols = [
        (2e-5, 1e-5),
        (1e-5, 1e-5),
        (1e-5, 1e-5),
        (5e-5, 1e-4),
        (2e-4, 1e-4),
        (2e-4, 1e-4),
    ];
    for i in 0..6 {
        assert_close(names[i], &a[i], &b[i], tols[i].0 * f, tols[i].1 * f);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn layer_norm_fast_matches_reference(rows in 1usize..20, dim in 1usize..300, seed in any::<u64>()) {
        compare(rows, dim, 0, seed);
    }

    #[test]
    fn layer_norm2d_fast_matches_reference(n in 1usize..3, c in 1usize..40, hw in 1usize..600, seed in any::<u64>()) {
        compare(n, c, hw, seed);
    }
}

#[test]
fn sam_neck_shape() {
    // 256 channels at 64×64 (hw spans several 256-pixel blocks).
    compare(1, 256, 64 * 64, 3);
}

/// FD check of dx, dgamma, dbeta for L = Σ g·y, both variants, using the fast kernels.
fn fd_check(n: usize, c: usize, hw: usize) {
    let p = hw.max(1);
    let mut rng = Rng(11 + hw as u64);
    let x = rng.vec(n * c * p, 2.0);
    let gm = rng.vec(c, 1.5);
    let bt = rng.vec(c, 1.0);
    let g = rng.vec(n * c * p, 1.0);
    let loss = |x: &[f32], gm: &[f32], bt: &[f32]| {
        let y = &run(true, n, c, hw, x, gm, bt, &g)[0];
        y.iter()
            .zip(&g)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
    };
    let [_, _, _, dx, dg, db] = run(true, n, c, hw, &x, &gm, &bt, &g);
    let eps = 1e-2f32;
    let fd = |which: usize, i: usize| {
        let mut v = [x.clone(), gm.clone(), bt.clone()];
        v[which][i] += eps;
        let lp = loss(&v[0], &v[1], &v[2]);
        v[which][i] -= 2.0 * eps;
        let lm = loss(&v[0], &v[1], &v[2]);
        ((lp - lm) / (2.0 * eps as f64)) as f32
    };
    // Tolerance: O(eps²) truncation with eps = 1e-2 and f32 rounding of y (≈1e-7·|L|/eps);
    // dgamma/dbeta were accumulated onto 0.5.
    let fdx: Vec<f32> = (0..x.len()).map(|i| fd(0, i)).collect();
    let fdg: Vec<f32> = (0..c).map(|i| fd(1, i) + 0.5).collect();
    let fdb: Vec<f32> = (0..c).map(|i| fd(2, i) + 0.5).collect();
    assert_close("dx fd", &dx, &fdx, 3e-3, 3e-3);
    assert_close("dgamma fd", &dg, &fdg, 3e-3, 3e-3);
    assert_close("dbeta fd", &db, &fdb, 3e-3, 3e-3);
}

#[test]
fn layer_norm_gradient_finite_difference() {
    fd_check(3, 7, 0);
}

#[test]
fn layer_norm2d_gradient_finite_difference() {
    fd_check(2, 5, 6);
}

/// dgamma/dbeta are sums over all rows computed in parallel: they must not depend on the
/// number of threads or on how the work was split (training replays bit for bit, e.g. resume).
#[test]
fn parameter_gradients_do_not_depend_on_threads() {
    let (rows, dim) = (4096, 160);
    let mut rng = Rng(3);
    let (x, dy, gamma) = (
        rng.vec(rows * dim, 1.0),
        rng.vec(rows * dim, 1.0),
        rng.vec(dim, 1.0),
    );
    let (mut mean, mut rstd, mut y) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * dim]);
    norm::layer_norm_forward(
        rows,
        dim,
        &x,
        &gamma,
        &vec![0.0; dim],
        1e-6,
        &mut y,
        &mut mean,
        &mut rstd,
    );
    let run = |threads: usize| {
        with_threads(threads, || {
            let (mut dx, mut dg, mut db) = (vec![0.0; rows * dim], vec![0.0; dim], vec![0.0; dim]);
            norm::layer_norm_backward(
                rows, dim, &x, &gamma, &mean, &rstd, &dy, &mut dx, &mut dg, &mut db,
            );
            (dg, db)
        })
    };
    let one = run(1);
    for t in [2, 3, 5] {
        assert!(
            run(t) == one,
            "dgamma/dbeta with {t} threads differ from 1 thread"
        );
    }
}
