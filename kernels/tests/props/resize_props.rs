//! Bilinear resize (align_corners=False): fast vs reference, adjoint identity, FD gradient.

#![allow(clippy::needless_range_loop)]

use medsam_kernels::resize::{self, reference};
use proptest::prelude::*;

use medsam_kernels::testing::{assert_close, Rng};

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    // Tolerance: each output is a convex combination of 4 inputs in [-1, 1] (f32 rounding ~1e-7);
    // backward sums ≤ (oh/h+2)(ow/w+2) weighted terms, in a different order than the reference.
    #[test]
    fn bilinear_fast_matches_reference(planes in 1usize..4, h in 1usize..20, w in 1usize..20,
                                       oh in 1usize..40, ow in 1usize..40, seed in any::<u64>()) {
        let mut r = Rng(seed);
        let x = r.vec(planes * h * w, 1.0);
        let dy = r.vec(planes * oh * ow, 1.0);
        let (mut a, mut b) = (vec![0.0; planes * oh * ow], vec![0.0; planes * oh * ow]);
        resize::bilinear_forward(planes, h, w, oh, ow, &x, &mut a);
        reference::bilinear_forward(planes, h, w, oh, ow, &x, &mut b);
        assert_close("bilinear", &a, &b, 1e-6, 1e-6);
        let (mut a, mut b) = (vec![1.0; planes * h * w], vec![2.0; planes * h * w]);
        resize::bilinear_backward(planes, h, w, oh, ow, &dy, &mut a);
        reference::bilinear_backward(planes, h, w, oh, ow, &dy, &mut b);
        assert_close("bilinear'", &a, &b, 1e-5, 1e-5);
        // Adjoint identity <A x, dy> = <x, Aᵀ dy> (f64 dots of f32 values: ~1e-6 relative).
        let lhs = dot(&{ let mut y = vec![0.0; planes * oh * ow]; resize::bilinear_forward(planes, h, w, oh, ow, &x, &mut y); y }, &dy);
        let rhs = dot(&x, &a);
        prop_assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "adjoint: {lhs} vs {rhs}");
    }
}

/// PyTorch semantics spot-check on a hand-computed case: 2 → 4 upsampling of [0, 1] gives
/// sources (-0.25→0, 0.25, 0.75, 1.25→i0=1 clamped) = [0, 0.25, 0.75, 1].
#[test]
fn bilinear_edges_match_pytorch_rule() {
    let x = [0.0f32, 1.0];
    let mut y = [0.0f32; 4];
    resize::bilinear_forward(1, 1, 2, 1, 4, &x, &mut y);
    assert_eq!(y, [0.0, 0.25, 0.75, 1.0]);
    reference::bilinear_forward(1, 1, 2, 1, 4, &x, &mut y);
    assert_eq!(y, [0.0, 0.25, 0.75, 1.0]);
}

#[test]
fn bilinear_gradient_finite_difference() {
    // Linear op: central differences are exact up to f32 rounding (eps = 0.1 is fine).
    let (p, h, w, oh, ow) = (2, 3, 5, 7, 4);
    let mut r = Rng(5);
    let x = r.vec(p * h * w, 1.0);
    let g = r.vec(p * oh * ow, 1.0);
    let loss = |x: &[f32]| {
        let mut y = vec![0.0; p * oh * ow];
        resize::bilinear_forward(p, h, w, oh, ow, x, &mut y);
        dot(&y, &g)
    };
    let mut dx = vec![0.0; x.len()];
    resize::bilinear_backward(p, h, w, oh, ow, &g, &mut dx);
    let fd: Vec<f32> = (0..x.len())
        .map(|i| {
            let mut v = x.clone();
            v[i] += 0.1;
            let lp = loss(&v);
            v[i] -= 0.2;
            ((lp - loss(&v)) / 0.2) as f32
        })
        .collect();
    assert_close("bilinear fd", &dx, &fd, 1e-4, 1e-4);
}
