//! conv2d / conv_transpose2d: fast (im2col + gemm) vs direct-loop reference on random geometries
//! (groups 1, 2 and depthwise), the adjoint identities that define the backward passes, and
//! SAM's shapes in miniature.

#![allow(clippy::needless_range_loop)]

use medsam_kernels::conv::Conv2dGeom;
use proptest::prelude::*;

use medsam_kernels::testing::{assert_close, conv_passes, conv_sizes, Rng};

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn check(g: Conv2dGeom, transpose: bool, seed: u64) {
    let (nx, nw, ny) = conv_sizes(&g, transpose);
    let mut r = Rng(seed);
    let x = r.vec(nx, 1.0);
    let w = r.vec(nw, 1.0);
    let b = r.vec(g.c_out, 1.0);
    let dy = r.vec(ny, 1.0);
    let fast = conv_passes(true, transpose, g, [&x, &w, &b, &dy]);
    let refr = conv_passes(false, transpose, g, [&x, &w, &b, &dy]);
    // Tolerance: f32 sums of ≤ ~600 products of values in [-1, 1] (f32 vs f64 accumulation):
    // error ≲ 600 · 6e-8 · √terms-ish; 1e-4 absolute leaves ample margin, any indexing bug is O(1).
    for (i, name) in ["y", "dx", "dw", "db"].iter().enumerate() {
        assert_close(
            &format!("{name} {g:?} transpose={transpose}"),
            &fast[i],
            &refr[i],
            1e-4,
            1e-4,
        );
    }
    // Adjoint identities (no bias): <y(x), dy> = <x, dx(dy)> = <w, dw(x, dy)>.
    let zero = vec![0.0; g.c_out];
    let y0 = conv_passes(true, transpose, g, [&x, &w, &zero, &dy])[0].clone();
    let l = dot(&y0, &dy);
    let lx = dot(&x, &fast[1]);
    let lw = dot(&w, &fast[2]);
    let tol = 1e-4 * (1.0 + l.abs() + ny as f64 * 1e-3);
    assert!((l - lx).abs() <= tol, "adjoint x: {l} vs {lx} ({g:?})");
    assert!((l - lw).abs() <= tol, "adjoint w: {l} vs {lw} ({g:?})");
}

fn geom_strategy(transpose: bool) -> impl Strategy<Value = Conv2dGeom> {
    (
        1usize..3,
        1usize..4,
        1usize..4,
        1usize..4,
        1usize..9,
        1usize..9,
        1usize..4,
        1usize..4,
        1usize..4,
        0usize..3,
        0usize..3,
        0usize..3,
    )
        .prop_filter_map(
            "valid geometry",
            move |(n, cig, cog, kh, h, w, kw, sh, sw, ph, pw, gsel)| {
                let groups = [1, 2, 3][gsel];
                let (c_in, c_out) = if gsel == 2 {
                    (groups, groups * cog)
                } else {
                    (cig * groups, cog * groups)
                };
                let g =
                    Conv2dGeom::new([n, c_in, h, w], c_out, (kh, kw), (sh, sw), (ph, pw), groups);
                if transpose {
                    let ok = ph < kh
                        && pw < kw
                        && (h - 1) * sh + kh > 2 * ph
                        && (w - 1) * sw + kw > 2 * pw;
                    ok.then_some(g)
                } else {
                    (h + 2 * ph >= kh && w + 2 * pw >= kw).then_some(g)
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conv2d_fast_matches_reference(g in geom_strategy(false), seed in any::<u64>()) {
        check(g, false, seed);
    }

    #[test]
    fn conv_transpose2d_fast_matches_reference(g in geom_strategy(true), seed in any::<u64>()) {
        check(g, true, seed);
    }
}

fn geom(c_in: usize, hw: usize, c_out: usize, k: usize, s: usize, p: usize) -> Conv2dGeom {
    Conv2dGeom::new([1, c_in, hw, hw], c_out, (k, k), (s, s), (p, p), 1)
}

#[test]
fn sam_shapes_in_miniature() {
    check(geom(3, 48, 8, 16, 16, 0), false, 1); // patch embedding 16×16/16
    check(geom(24, 16, 16, 1, 1, 0), false, 2); // neck 1×1
    check(geom(16, 16, 16, 3, 1, 1), false, 3); // neck 3×3 pad 1
    check(geom(4, 16, 8, 2, 2, 0), false, 4); // 2×2/2 downscaling
    check(geom(16, 8, 8, 2, 2, 0), true, 5); // mask upscaling 2×2/2 transpose
    let mut g = geom(5, 9, 5, 3, 1, 1); // depthwise 3×3
    g.groups = 5;
    g.n = 2;
    check(g, false, 6);
}

#[test]
fn conv_gradient_finite_difference() {
    // conv is bilinear in (x, w): central differences of L = Σ g·y are exact up to rounding.
    for transpose in [false, true] {
        let g = Conv2dGeom::new([2, 2, 4, 5], 3, (3, 2), (2, 1), (1, 1), 1);
        let (nx, nw, ny) = conv_sizes(&g, transpose);
        let mut r = Rng(21);
        let (x, w, b, gy) = (
            r.vec(nx, 1.0),
            r.vec(nw, 1.0),
            r.vec(g.c_out, 1.0),
            r.vec(ny, 1.0),
        );
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            dot(&conv_passes(true, transpose, g, [x, w, b, &gy])[0], &gy)
        };
        let [_, dx, dw, db] = conv_passes(true, transpose, g, [&x, &w, &b, &gy]);
        let eps = 0.05f32;
        let fd = |which: usize, i: usize| {
            let mut v = [x.clone(), w.clone(), b.clone()];
            v[which][i] += eps;
            let lp = loss(&v[0], &v[1], &v[2]);
            v[which][i] -= 2.0 * eps;
            ((lp - loss(&v[0], &v[1], &v[2])) / (2.0 * eps as f64)) as f32
        };
        let f: Vec<Vec<f32>> = (0..3)
            .map(|k| (0..[nx, nw, g.c_out][k]).map(|i| fd(k, i)).collect())
            .collect();
        assert_close("conv dx fd", &dx, &f[0], 1e-3, 1e-3);
        assert_close("conv dw fd", &dw, &f[1], 1e-3, 1e-3);
        assert_close("conv db fd", &db, &f[2], 1e-3, 1e-3);
    }
}

/// Stride-1 convolutions with ≥ 32 input channels take the per-tap GEMM path (no im2col):
/// SAM's neck 3×3, a batch of two, no padding, and uneven kernels and paddings.
#[test]
fn per_tap_gemm_path() {
    check(geom(32, 12, 16, 3, 1, 1), false, 7);
    let mut g = geom(40, 9, 7, 3, 1, 0);
    g.n = 2;
    check(g, false, 8);
    let mut g = geom(33, 10, 5, 2, 1, 0);
    g.kw = 3;
    g.w = 7;
    g.pad = (1, 2);
    check(g, false, 9);
    check(geom(48, 5, 6, 5, 1, 2), false, 10);
}
