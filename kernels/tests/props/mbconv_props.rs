//! The fused MBConv block (row bands, hidden tensors kept in cache) against the composition of
//! the reference ops, over sizes that exercise partial bands, partial tasks and tiny images.

use medsam_kernels::mbconv::{self, reference, MbConvDims, MbConvWeights};
use medsam_kernels::testing::data as vals;
use proptest::prelude::*;

fn compare(d: MbConvDims, seed: u64) {
    let MbConvDims { n, c, hid, h, w } = d;
    let x = vals(n * c * h * w, seed, 2.0);
    let (w1, b1) = (vals(hid * c, seed + 1, 0.5), vals(hid, seed + 2, 0.5));
    let (w2, b2) = (vals(hid * 9, seed + 3, 0.5), vals(hid, seed + 4, 0.5));
    let (w3, b3) = (vals(c * hid, seed + 5, 0.3), vals(c, seed + 6, 0.5));
    let wt = MbConvWeights {
        w1: &w1,
        b1: &b1,
        w2: &w2,
        b2: &b2,
        w3: &w3,
        b3: &b3,
    };
    let mut want = vec![f32::NAN; x.len()];
    reference::mbconv_forward(d, &x, wt, &mut want);
    let mut got = vec![f32::NAN; x.len()];
    mbconv::mbconv_forward(d, &x, wt, &mut got);
    for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - r).abs() <= 1e-4 + 1e-4 * r.abs(),
            "{d:?} y[{i}]: got {g}, want {r}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn fused_matches_reference(
        n in 1usize..3, c in 1usize..20, hid in 1usize..40, h in 1usize..40, w in 1usize..40,
        seed in 0u64..1000
    ) {
        compare(MbConvDims { n, c, hid, h, w }, seed);
    }
}

/// LiteMedSAM's channel counts (64 → 256 → 64) on a 40×36 image: several tasks, full and
/// partial bands, both image borders.
#[test]
fn lite_medsam_channels() {
    compare(
        MbConvDims {
            n: 1,
            c: 64,
            hid: 256,
            h: 40,
            w: 36,
        },
        11,
    );
}
