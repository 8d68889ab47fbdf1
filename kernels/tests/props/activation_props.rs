//! GELU and softmax: fast vs reference on random sizes, and finite-difference gradient checks.

#![allow(clippy::needless_range_loop)]

use medsam_kernels::activation::{self, reference};
use proptest::prelude::*;

use medsam_kernels::testing::{assert_close, Rng};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    // Tolerance: the fast erf/exp are f32 polynomial approximations (abs err ≲ 3e-7) against an
    // f64 reference; |x| ≤ 8 so |gelu| ≤ 8 and the error is ≲ 8·3e-7 plus f32 rounding.
    #[test]
    fn gelu_fast_matches_reference(n in 0usize..300, seed in any::<u64>()) {
        let mut r = Rng(seed);
        let x = r.vec(n, 8.0);
        let dy = r.vec(n, 1.0);
        let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
        activation::gelu_forward(&x, &mut a);
        reference::gelu_forward(&x, &mut b);
        assert_close("gelu", &a, &b, 3e-6, 1e-6);
        activation::gelu_backward(&x, &dy, &mut a);
        reference::gelu_backward(&x, &dy, &mut b);
        assert_close("gelu'", &a, &b, 3e-6, 1e-6);
    }

    // Tolerance: probabilities ≤ 1, f32 exp (rel err ~2e-7) and an f32 row sum over ≤ 200 terms.
    #[test]
    fn softmax_bias_matches_reference(
        bias_rows in 1usize..9,
        periods in 1usize..5,
        extra in 0usize..9,
        dim in 1usize..70,
        seed in any::<u64>(),
    ) {
        let mut r = Rng(seed);
        // Some row counts are not multiples of the bias period (the kernel must wrap anyway).
        let rows = bias_rows * periods + extra;
        let x = r.vec(rows * dim, 6.0);
        let bias = r.vec(bias_rows * dim, 3.0);
        let (mut a, mut b) = (vec![7.0; rows * dim], vec![0.0; rows * dim]);
        activation::softmax_bias_forward(rows, dim, &x, &bias, bias_rows, &mut a);
        reference::softmax_bias_forward(rows, dim, &x, (&bias, bias_rows), &mut b);
        assert_close("softmax_bias", &a, &b, 1e-6, 2e-6);
    }

    #[test]
    fn softmax_fast_matches_reference(rows in 1usize..6, dim in 1usize..200, seed in any::<u64>()) {
        let mut r = Rng(seed);
        let x = r.vec(rows * dim, 10.0);
        let dy = r.vec(rows * dim, 1.0);
        let (mut a, mut b) = (vec![0.0; rows * dim], vec![0.0; rows * dim]);
        activation::softmax_forward(rows, dim, &x, &mut a);
        reference::softmax_forward(rows, dim, &x, &mut b);
        assert_close("softmax", &a, &b, 1e-6, 2e-6);
        let y = b.clone();
        activation::softmax_backward(rows, dim, &y, &dy, &mut a);
        reference::softmax_backward(rows, dim, &y, &dy, &mut b);
        assert_close("softmax'", &a, &b, 2e-6, 1e-5);
    }
}

/// Central differences of `L(x) = Σ g·f(x)` (f64 sums over f32 forward outputs).
fn fd_grad(x: &[f32], g: &[f32], eps: f32, f: impl Fn(&[f32], &mut [f32])) -> Vec<f32> {
    let loss = |x: &[f32]| {
        let mut y = vec![0.0; g.len()];
        f(x, &mut y);
        y.iter()
            .zip(g)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
    };
    (0..x.len())
        .map(|i| {
            let mut p = x.to_vec();
            p[i] += eps;
            let lp = loss(&p);
            p[i] -= 2.0 * eps;
            let lm = loss(&p);
            ((lp - lm) / (2.0 * eps as f64)) as f32
        })
        .collect()
}

// FD tolerance: eps = 1e-2 gives O(eps²·f''') ≈ 1e-4 truncation plus f32 output rounding
// (1e-7·|L|/eps ≈ 1e-5); 1e-3 absolute is comfortably above both and far below real bugs.
#[test]
fn gelu_gradient_finite_difference() {
    let mut r = Rng(7);
    let x = r.vec(40, 4.0);
    let g = r.vec(40, 1.0);
    let fd = fd_grad(&x, &g, 1e-2, activation::gelu_forward);
    let mut dx = vec![0.0; 40];
    activation::gelu_backward(&x, &g, &mut dx);
    assert_close("gelu fd", &dx, &fd, 1e-3, 1e-3);
}

#[test]
fn softmax_gradient_finite_difference() {
    let (rows, dim) = (3, 7);
    let mut r = Rng(9);
    let x = r.vec(rows * dim, 3.0);
    let g = r.vec(rows * dim, 1.0);
    let fd = fd_grad(&x, &g, 1e-2, |x, y| {
        activation::softmax_forward(rows, dim, x, y)
    });
    let mut y = vec![0.0; rows * dim];
    activation::softmax_forward(rows, dim, &x, &mut y);
    let mut dx = vec![0.0; rows * dim];
    activation::softmax_backward(rows, dim, &y, &g, &mut dx);
    assert_close("softmax fd", &dx, &fd, 1e-3, 1e-3);
}

#[test]
fn gelu_known_values() {
    // torch.nn.functional.gelu in float64.
    let x = [-3.0f32, -1.0, -0.1, 0.0, 0.5, 2.0];
    let want = [
        -0.004_049_694f32,
        -0.158_655_25,
        -0.046_017_22,
        0.0,
        0.345_731_23,
        1.954_499_7,
    ];
    let mut y = [0.0f32; 6];
    activation::gelu_forward(&x, &mut y);
    assert_close("gelu table", &y, &want, 2e-7, 1e-6);
}
