//! Strided copies: gather, scatter-add and broadcast zips against the by-index oracles, on random
//! views (permuted, sliced, broadcast, transposed last axes), small and large enough to run in
//! parallel.

use medsam_kernels::strided::{self, reference, StridedView};
use medsam_kernels::testing::data;
use proptest::prelude::*;

/// A random view of a dense `base` shape: its axes permuted, some narrowed with an offset, and
/// (for `broadcast`) some given stride 0.
fn view_of(
    base: &[usize],
    perm_seed: u64,
    narrow: &[bool],
    zero: &[bool],
) -> (Vec<usize>, Vec<usize>, usize) {
    let nd = base.len();
    let mut strides = vec![1; nd];
    for d in (0..nd.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * base[d + 1];
    }
    let mut axes: Vec<usize> = (0..nd).collect();
    let mut s = perm_seed | 1;
    for i in (1..nd).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        axes.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let (mut shape, mut st, mut offset) = (Vec::new(), Vec::new(), 0);
    for (k, &a) in axes.iter().enumerate() {
        let (mut len, mut stride) = (base[a], strides[a]);
        if narrow[k] && len > 2 {
            offset += stride;
            len -= 2;
        }
        if zero[k] {
            stride = 0;
        }
        shape.push(len);
        st.push(stride);
    }
    (shape, st, offset)
}

fn dims() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..9, 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn gather_matches_reference(base in dims(), p in any::<u64>(), nar in prop::collection::vec(any::<bool>(), 5), big in any::<bool>()) {
        let mut base = base;
        if big {
            base.push(1 << 12); // enough elements to take the parallel path
        }
        let src = data(base.iter().product(), p, 1.0);
        let (shape, strides, offset) = view_of(&base, p, &nar, &[false; 5]);
        let v = StridedView { shape: &shape, strides: &strides, offset };
        let n: usize = shape.iter().product();
        let (mut fast, mut slow) = (vec![f32::NAN; n], vec![0.0; n]);
        strided::gather(&src, v, &mut fast);
        reference::gather(&src, v, &mut slow);
        prop_assert_eq!(fast, slow);
    }

    #[test]
    fn scatter_add_matches_reference(base in dims(), p in any::<u64>(), nar in prop::collection::vec(any::<bool>(), 5), zero in prop::collection::vec(any::<bool>(), 5)) {
        let len: usize = base.iter().product();
        let (shape, strides, offset) = view_of(&base, p, &nar, &zero);
        let v = StridedView { shape: &shape, strides: &strides, offset };
        let src = data(shape.iter().product(), p ^ 1, 1.0);
        let (mut fast, mut slow) = (vec![0.0; len], vec![0.0; len]);
        strided::scatter_add(&src, v, &mut fast);
        reference::scatter_add(&src, v, &mut slow);
        prop_assert_eq!(fast, slow);
    }

    #[test]
    fn zip_broadcast_matches_reference(base in dims(), p in any::<u64>(), za in prop::collection::vec(any::<bool>(), 5), zb in prop::collection::vec(any::<bool>(), 5), big in any::<bool>()) {
        let mut base = base;
        if big {
            base.push(1 << 12);
        }
        let len: usize = base.iter().product();
        let (a, b) = (data(len, p, 1.0), data(len, p ^ 7, 1.0));
        let no = [false; 5];
        let (sa, ta, oa) = view_of(&base, p, &no, &za);
        let (sb, tb, ob) = view_of(&base, p, &no, &zb);
        let va = StridedView { shape: &sa, strides: &ta, offset: oa };
        let vb = StridedView { shape: &sb, strides: &tb, offset: ob };
        let n: usize = sa.iter().product();
        let f = |x: f32, y: f32| x * y - 0.5 * x;
        let (mut fast, mut slow) = (vec![f32::NAN; n], vec![0.0; n]);
        strided::zip_broadcast(&a, va, &b, vb, f, &mut fast);
        reference::zip_broadcast(&a, va, &b, vb, f, &mut slow);
        prop_assert_eq!(fast, slow);
    }

    /// The transposing tile copy (a view whose last two axes are swapped, as NCHW seen as NHWC),
    /// each implementation forced: whole 16-row tiles of consecutive source values, ragged
    /// tiles where a row run is not a multiple of 16, leftover columns, an offset, and batches.
    #[test]
    fn transposed_gather_paths_match_reference(b in 1usize..3, c in 1usize..40, h in 1usize..5, w in 1usize..40, p in any::<u64>(), off in 0usize..3) {
        use medsam_kernels::strided::{gather_on, TileIsa};
        // A dense [b, c, h, w] buffer after `off` leading values, read as [b, h, w, c].
        let src = data(off + b * c * h * w, p, 1.0);
        let (shape, strides) = ([b, h, w, c], [c * h * w, w, 1, h * w]);
        let v = StridedView { shape: &shape, strides: &strides, offset: off };
        let mut want = vec![0.0; b * h * w * c];
        reference::gather(&src, v, &mut want);
        for isa in [TileIsa::Portable, TileIsa::Avx512] {
            if isa == TileIsa::Avx512 && TileIsa::best() != TileIsa::Avx512 {
                eprintln!("skipped the AVX-512 tile path: this CPU has no AVX-512F");
                continue;
            }
            let mut got = vec![f32::NAN; want.len()];
            gather_on(isa, &src, v, &mut got);
            prop_assert_eq!(&got, &want, "{:?}", isa);
        }
    }
}
