//! Depthwise conv planes: the row-at-a-time 3×3 path (stride 1, one column of padding) against
//! the tap-by-tap path (bit for bit: both add each output's taps in kernel order) and against
//! the reference, with and without GELU, over sizes down to 1×1 (no interior column, rows with
//! one, two or three valid kernel rows) and row paddings 0, 1, 2.

use medsam_kernels::activation::reference::gelu_forward;
use medsam_kernels::conv::Conv2dGeom;
use medsam_kernels::depthwise::{is_row3x3, plane_forward_row3x3, plane_forward_taps, reference};
use medsam_kernels::testing::{assert_close, data as vals};
use proptest::prelude::*;

fn compare(h: usize, w: usize, py: usize, gelu: bool, seed: u64) {
    let g = Conv2dGeom::new([1, 1, h, w], 1, (3, 3), (1, 1), (py, 1), 1);
    assert!(is_row3x3(&g));
    let (oh, ow) = g.out_hw();
    let x = vals(h * w, seed, 2.0);
    let wt = vals(9, seed + 1, 1.0);
    let bias = vals(1, seed + 2, 1.0)[0];
    let mut rows = vec![f32::NAN; oh * ow];
    let mut taps = vec![f32::NAN; oh * ow];
    plane_forward_row3x3(&g, &x, &wt, bias, gelu, &mut rows);
    plane_forward_taps(&g, &x, &wt, bias, gelu, &mut taps);
    for (i, (a, b)) in rows.iter().zip(&taps).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{h}×{w} pad {py} gelu {gelu}: y[{i}] {a} vs {b}"
        );
    }
    let mut pre = vec![0.0; oh * ow];
    reference::depthwise_forward(g, &x, &wt, Some(&[bias]), &mut pre);
    let want = if gelu {
        let mut y = vec![0.0; pre.len()];
        gelu_forward(&pre, &mut y);
        y
    } else {
        pre
    };
    assert_close(&format!("{h}×{w} pad {py}"), &rows, &want, 1e-5, 1e-5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn row3x3_matches_taps_and_reference(
        h in 1usize..12, w in 1usize..40, py in 0usize..3, gelu: bool, seed in 0u64..1000
    ) {
        prop_assume!(h + 2 * py >= 3);
        compare(h, w, py, gelu, seed);
    }
}

/// Rows long enough for several 16-lane vectors and a remainder (LiteMedSAM's planes are 256
/// wide).
#[test]
fn wide_rows() {
    for (h, w, py) in [(6, 256, 0), (5, 37, 1), (3, 17, 1), (2, 33, 1)] {
        compare(h, w, py, true, h as u64 * 31 + w as u64);
    }
}
