//! 2×2 max pooling: the strided-view kernel against its plain-loop oracle on padded views
//! (extra channels, rows and batch gaps, odd sizes), with NaNs, on 1 and 2 threads.

use medsam_kernels::pool::{max_pool2x2_nhwc, reference, NhwcView};
use medsam_kernels::testing::{data, with_threads};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn pool_matches_reference(
        n in 1usize..3, h in 1usize..40, w in 1usize..40, c in 1usize..70,
        pad_c in 0usize..9, pad_x in 0usize..2, offset in 0usize..5, nans in 0usize..4,
        seed in any::<u64>(),
    ) {
        // Channels first in a wider row (like q sliced out of qkv), optional spare columns.
        let sx = c + pad_c;
        let sy = (w + pad_x) * sx;
        let sb = h * sy + 3;
        let v = NhwcView { n, h, w, c, strides: [sb, sy, sx], offset };
        let mut src = data(offset + n * sb, seed, 4.0);
        for i in 0..nans {
            let at = (seed as usize).wrapping_add(i * 7919) % src.len();
            src[at] = f32::NAN;
        }
        let want = reference::max_pool2x2_nhwc(&src, &v);
        prop_assert_eq!(want.len(), v.pooled_len());
        for threads in [1, 2] {
            let mut out = vec![0.5; v.pooled_len()];
            with_threads(threads, || max_pool2x2_nhwc(&src, &v, &mut out));
            // Bit patterns, so NaN compares equal to NaN.
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&out), bits(&want));
        }
    }
}

/// Large enough to take the parallel path; a NaN in one window spoils only that output.
#[test]
fn nan_propagates_in_its_window_only() {
    let (h, w, c) = (128, 128, 8);
    let v = NhwcView {
        n: 1,
        h,
        w,
        c,
        strides: [h * w * c, w * c, c],
        offset: 0,
    };
    let mut src = data(h * w * c, 9, 1.0);
    src[(3 * w + 5) * c + 2] = f32::NAN; // row 3, column 5 → output (1, 2), channel 2
    let mut out = vec![0.0; v.pooled_len()];
    max_pool2x2_nhwc(&src, &v, &mut out);
    let nan: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_nan()).collect();
    assert_eq!(nan, [(w / 2 + 2) * c + 2]);
}
