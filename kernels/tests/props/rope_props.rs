//! Rotary position embedding: the parallel application against the one-element oracle (bit for
//! bit), the f32 angle tables against the f64 formula, and rotation preserving each pair's length.

use medsam_kernels::rope::{self, reference, RopeDims};
use medsam_kernels::testing::{assert_close, data};
use proptest::prelude::*;

fn dims() -> impl Strategy<Value = (RopeDims, usize, usize)> {
    // Up to ~7,000 positions: several of the kernel's 256-position tasks, split mid-row.
    (1usize..5, 1usize..24, 1usize..24, 1usize..5, 1usize..4).prop_map(|(rows, ex, ey, q, rep)| {
        let (table_len, dim) = (ex * ey, 4 * q);
        let d = RopeDims {
            rows,
            n: table_len * rep,
            dim,
            table_len,
        };
        (d, ex, ey)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn fast_matches_reference_bitwise((d, ex, ey) in dims(), seed in any::<u64>()) {
        let (cos, sin) = rope::axial_tables(d.dim, ex, ey, 10_000.0);
        let x = data(d.rows * d.n * d.dim, seed, 2.0);
        let (mut fast, mut slow) = (vec![f32::NAN; x.len()], vec![0.0; x.len()]);
        rope::apply(d, &x, &cos, &sin, &mut fast);
        reference::apply(d, &x, &cos, &sin, &mut slow);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&fast), bits(&slow));
    }

    #[test]
    fn tables_match_the_formula(q in 1usize..9, ex in 1usize..33, ey in 1usize..33) {
        let dim = 4 * q;
        let (cos, sin) = rope::axial_tables(dim, ex, ey, 10_000.0);
        let angles = reference::axial_angles(dim, ex, ey, 10_000.0);
        let want_cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
        let want_sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
        // Angles up to 32 rad rounded to f32 (as torch computes them): ~4e-6 rad.
        assert_close("cos", &cos, &want_cos, 2e-5, 0.0);
        assert_close("sin", &sin, &want_sin, 2e-5, 0.0);
    }

    #[test]
    fn rotation_keeps_pair_lengths((d, ex, ey) in dims(), seed in any::<u64>()) {
        let (cos, sin) = rope::axial_tables(d.dim, ex, ey, 10_000.0);
        let x = data(d.rows * d.n * d.dim, seed, 2.0);
        let mut y = vec![0.0; x.len()];
        rope::apply(d, &x, &cos, &sin, &mut y);
        let len = |v: &[f32]| -> Vec<f32> { v.chunks(2).map(|p| (p[0] * p[0] + p[1] * p[1]).sqrt()).collect() };
        assert_close("pair length", &len(&y), &len(&x), 1e-5, 1e-5);
    }
}

#[test]
fn origin_is_the_identity_and_repeats_follow_the_table() {
    // Position 0 has angle 0 on both axes; with the table repeated, position table_len is
    // rotated exactly as position 0.
    let d = RopeDims {
        rows: 1,
        n: 8,
        dim: 8,
        table_len: 4,
    };
    let (cos, sin) = rope::axial_tables(8, 2, 2, 10_000.0);
    let x = data(d.n * d.dim, 3, 1.0);
    let mut y = vec![0.0; x.len()];
    rope::apply(d, &x, &cos, &sin, &mut y);
    assert_eq!(&y[..8], &x[..8]);
    assert_eq!(&y[32..40], &x[32..40]);
}
