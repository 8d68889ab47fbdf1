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

/// Channels-last depthwise conv (`depthwise_nhwc_forward`; its 3×3 stride-1 rows are summed
/// in registers per block of 16 channels) against the NCHW tap-by-tap planes, bit for bit (the
/// same taps in the same order), and the reference; channel counts below, at and above one
/// 16-lane block with a remainder, strides 1 and 2.
fn compare_nhwc(c: usize, (h, w): (usize, usize), stride: usize, gelu: bool, seed: u64) {
    use medsam_kernels::depthwise::depthwise_nhwc_forward;
    let g = Conv2dGeom::new([1, c, h, w], c, (3, 3), (stride, stride), (1, 1), c);
    let (oh, ow) = g.out_hw();
    let x = vals(c * h * w, seed, 2.0); // NCHW
    let wt = vals(c * 9, seed + 1, 1.0);
    let bias = vals(c, seed + 2, 1.0);
    let mut x_nhwc = vec![0.0; x.len()];
    for ch in 0..c {
        for p in 0..h * w {
            x_nhwc[p * c + ch] = x[ch * h * w + p];
        }
    }
    let mut y = vec![f32::NAN; oh * ow * c];
    depthwise_nhwc_forward(g, &x_nhwc, &wt, Some(&bias), gelu, &mut y);
    let plane = Conv2dGeom::new([1, 1, h, w], 1, (3, 3), (stride, stride), (1, 1), 1);
    for ch in 0..c {
        let mut taps = vec![f32::NAN; oh * ow];
        let (xc, wc) = (&x[ch * h * w..(ch + 1) * h * w], &wt[ch * 9..(ch + 1) * 9]);
        plane_forward_taps(&plane, xc, wc, bias[ch], gelu, &mut taps);
        for (p, t) in taps.iter().enumerate() {
            let got = y[p * c + ch];
            assert_eq!(
                got.to_bits(),
                t.to_bits(),
                "c {c} {h}×{w} stride {stride} gelu {gelu}: channel {ch} pixel {p}: {got} vs {t}"
            );
        }
        let mut pre = vec![0.0; oh * ow];
        reference::depthwise_forward(plane, xc, wc, Some(&bias[ch..ch + 1]), &mut pre);
        let want = if gelu {
            let mut g = vec![0.0; pre.len()];
            gelu_forward(&pre, &mut g);
            g
        } else {
            pre
        };
        assert_close(&format!("c {c} channel {ch}"), &taps, &want, 1e-5, 1e-5);
    }
}

/// Each implementation of the channels-last 3×3 row, forced, against the NCHW tap-by-tap
/// planes bit for bit (rows inside and at both image edges, with and without GELU).
fn compare_row_paths(c: usize, (h, w): (usize, usize), gelu: bool, seed: u64) {
    use medsam_kernels::depthwise::{nhwc_row3x3_on, RowIsa};
    let x = vals(c * h * w, seed, 2.0); // NCHW
    let wt = vals(c * 9, seed + 1, 1.0);
    let bias = vals(c, seed + 2, 1.0);
    let taps_major: Vec<f32> = (0..9 * c).map(|i| wt[(i % c) * 9 + i / c]).collect();
    let x_nhwc: Vec<f32> = (0..x.len()).map(|i| x[(i % c) * h * w + i / c]).collect();
    let plane = Conv2dGeom::new([1, 1, h, w], 1, (3, 3), (1, 1), (1, 1), 1);
    let want: Vec<Vec<f32>> = (0..c)
        .map(|ch| {
            let mut t = vec![f32::NAN; h * w];
            let (xc, wc) = (&x[ch * h * w..(ch + 1) * h * w], &wt[ch * 9..(ch + 1) * 9]);
            plane_forward_taps(&plane, xc, wc, bias[ch], gelu, &mut t);
            t
        })
        .collect();
    let avx512 = medsam_kernels::cpu::features().avx512f;
    if !avx512 {
        eprintln!("skipped the AVX-512 row path: this CPU has no AVX-512F");
    }
    for isa in [RowIsa::Portable, RowIsa::Avx512] {
        if isa == RowIsa::Avx512 && !avx512 {
            continue;
        }
        for oy in 0..h {
            let row =
                |iy: usize| (iy >= 1 && iy <= h).then(|| &x_nhwc[(iy - 1) * w * c..iy * w * c]);
            let mut y = vec![f32::NAN; w * c];
            let rows = [row(oy), row(oy + 1), row(oy + 2)];
            nhwc_row3x3_on(isa, rows, (w, c), &taps_major, (Some(&bias), gelu), &mut y);
            for (i, got) in y.iter().enumerate() {
                let t = want[i % c][oy * w + i / c];
                assert_eq!(
                    got.to_bits(),
                    t.to_bits(),
                    "{isa:?} c {c} row {oy} value {i}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn nhwc_rows_on_each_isa_match_planes(
        c in 1usize..40, h in 1usize..6, w in 1usize..12, gelu: bool, seed in 0u64..1000
    ) {
        compare_row_paths(c, (h, w), gelu, seed);
    }

    #[test]
    fn nhwc_matches_planes_and_reference(
        c in 1usize..40, h in 1usize..10, w in 1usize..12, stride in 1usize..3, gelu: bool,
        seed in 0u64..1000
    ) {
        compare_nhwc(c, (h, w), stride, gelu, seed);
    }
}
