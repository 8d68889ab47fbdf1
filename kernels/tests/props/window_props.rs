//! Window gathers: the row gather with a fill row against its by-index oracle (small and large
//! enough to run in parallel, on 1 and 2 threads), and the partition / unpartition indices as
//! inverses of each other on the map's tokens.

use medsam_kernels::testing::{data, with_threads};
use medsam_kernels::window::{gather_rows_fill, reference, unwindow_index, window_index, FILL};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn gather_matches_reference(rows in 1usize..40, len in 1usize..70, picks in 0usize..3000, seed in any::<u64>()) {
        let src = data(rows * len, seed, 1.0);
        let fill = data(len, seed ^ 1, 1.0);
        let mut s = seed | 1;
        let index: Vec<usize> = (0..picks)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let r = (s % (rows as u64 + 1)) as usize;
                if r == rows { FILL } else { r }
            })
            .collect();
        let want = reference::gather_rows_fill(&src, len, &index, &fill);
        for threads in [1, 2] {
            let mut out = vec![f32::NAN; index.len() * len];
            with_threads(threads, || gather_rows_fill(&src, len, &index, &fill, &mut out));
            prop_assert_eq!(&out, &want);
        }
    }

    /// Partition into windows (padding filled), then per-head rows back: the map again.
    #[test]
    fn unwindow_inverts_window(b in 1usize..3, h in 1usize..20, w in 1usize..20, ws in 1usize..8, heads in 1usize..4, d in 1usize..5) {
        let c = heads * d;
        let x = data(b * h * w * c, (h * 31 + w) as u64, 1.0);
        let idx = window_index(b, (h, w), ws);
        let n = ws * ws;
        prop_assert_eq!(idx.len(), b * h.div_ceil(ws) * w.div_ceil(ws) * n);
        prop_assert_eq!(idx.iter().filter(|&&i| i != FILL).count(), b * h * w);
        let fill = vec![7.0; c];
        let mut win = vec![0.0; idx.len() * c];
        gather_rows_fill(&x, c, &idx, &fill, &mut win);
        // [windows, n, heads, d] → [windows, heads, n, d], as attention outputs are laid out.
        let windows = idx.len() / n;
        let mut per_head = vec![0.0; win.len()];
        for wi in 0..windows {
            for p in 0..n {
                for hd in 0..heads {
                    for j in 0..d {
                        per_head[((wi * heads + hd) * n + p) * d + j] = win[(wi * n + p) * c + hd * d + j];
                    }
                }
            }
        }
        let back = unwindow_index(b, (h, w), ws, heads);
        let mut y = vec![0.0; b * h * w * c];
        gather_rows_fill(&per_head, d, &back, &vec![0.0; d], &mut y);
        prop_assert_eq!(y, x);
    }
}
