//! Window gathers: the row gather (several sources, a fill row, column groups in blocks)
//! against its by-index oracle (small and large enough to run in parallel, on 1 and 2
//! threads), and the partition / unpartition indices as inverses of each other on the map's
//! tokens, the per-head split as the transposition it stands for.

use medsam_kernels::testing::{data, with_threads};
use medsam_kernels::window::{
    gather_rows, reference, unwindow_index, window_index, RowAt, RowPick, FILL,
};
use proptest::prelude::*;

/// A xorshift stream of `n` picks among the rows of `parts` (and the fill row if `fill`).
fn random_index(parts: &[usize], fill: bool, n: usize, seed: u64) -> Vec<RowAt> {
    let total: usize = parts.iter().sum::<usize>() + fill as usize;
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let mut r = (s % total as u64) as usize;
            for (part, &rows) in parts.iter().enumerate() {
                if r < rows {
                    return RowAt { part, row: r };
                }
                r -= rows;
            }
            RowAt::FILL
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn gather_matches_reference(
        rows in proptest::collection::vec(1usize..30, 1..4), len in 1usize..70, groups in 1usize..4,
        col in 0usize..5, spare in 0usize..3, block in 1usize..9, blocks in 0usize..400,
        with_fill in any::<bool>(), seed in any::<u64>(),
    ) {
        let width = col + groups * len + spare;
        let srcs: Vec<Vec<f32>> =
            rows.iter().enumerate().map(|(i, &r)| data(r * width, seed ^ i as u64, 1.0)).collect();
        let parts: Vec<&[f32]> = srcs.iter().map(|s| &s[..]).collect();
        let fill = data(width, seed ^ 99, 1.0);
        let fill = with_fill.then_some(&fill[..]);
        let index = random_index(&rows, with_fill, blocks * block, seed);
        let pick = RowPick { width, col, len, groups, block };
        prop_assert_eq!(pick.mismatch(&rows, with_fill, &index), None);
        let want = reference::gather_rows(&parts, fill, &index, pick);
        prop_assert_eq!(want.len(), pick.out_len(index.len()));
        for threads in [1, 2] {
            let mut out = vec![f32::NAN; want.len()];
            with_threads(threads, || gather_rows(&parts, fill, &index, pick, &mut out));
            prop_assert_eq!(&out, &want);
        }
    }

    /// Partition into windows (padding filled), then per-head rows back: the map again; the
    /// per-head split in one grouped gather equals the windows transposed.
    #[test]
    fn unwindow_inverts_window(b in 1usize..3, h in 1usize..20, w in 1usize..20, ws in 1usize..8, heads in 1usize..4, d in 1usize..5) {
        let c = heads * d;
        let x = data(b * h * w * c, (h * 31 + w) as u64, 1.0);
        let idx: Vec<RowAt> = window_index(b, (h, w), ws).into_iter().map(RowAt::from).collect();
        let n = ws * ws;
        prop_assert_eq!(idx.len(), b * h.div_ceil(ws) * w.div_ceil(ws) * n);
        prop_assert_eq!(idx.iter().filter(|r| !r.is_fill()).count(), b * h * w);
        let fill = vec![7.0; c];
        let mut win = vec![0.0; idx.len() * c];
        gather_rows(&[&x], Some(&fill), &idx, RowPick::rows(c), &mut win);
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
        let split = RowPick { width: c, col: 0, len: d, groups: heads, block: n };
        let mut direct = vec![0.0; per_head.len()];
        gather_rows(&[&x], Some(&fill), &idx, split, &mut direct);
        prop_assert_eq!(&direct, &per_head);
        let back: Vec<RowAt> =
            unwindow_index(b, (h, w), ws, heads).into_iter().map(RowAt::from).collect();
        prop_assert!(back.iter().all(|&r| r != RowAt::from(FILL)));
        let mut y = vec![0.0; b * h * w * c];
        gather_rows(&[&per_head], None, &back, RowPick::rows(d), &mut y);
        prop_assert_eq!(y, x);
    }
}

/// Indices past a source, a fill index without a fill row and column groups past the row are
/// reported (not read out of bounds).
#[test]
fn mismatches_are_named() {
    let pick = RowPick::rows(4);
    assert_eq!(
        pick.mismatch(&[3, 2], false, &[RowAt { part: 1, row: 1 }]),
        None
    );
    assert!(pick
        .mismatch(&[3, 2], false, &[RowAt { part: 1, row: 2 }])
        .is_some());
    assert!(pick
        .mismatch(&[3, 2], false, &[RowAt { part: 2, row: 0 }])
        .is_some());
    assert!(pick.mismatch(&[3], false, &[RowAt::FILL]).is_some());
    assert_eq!(pick.mismatch(&[3], true, &[RowAt::FILL]), None);
    let wide = RowPick {
        width: 4,
        col: 1,
        len: 2,
        groups: 2,
        block: 1,
    };
    assert!(wide.mismatch(&[3], false, &[RowAt::row(0)]).is_some());
    let blocked = RowPick { block: 2, ..pick };
    assert!(blocked.mismatch(&[3], false, &[RowAt::row(0)]).is_some());
}
