//! The fused MBConv block (row bands, hidden tensors kept in cache; NCHW and channels-last)
//! against the composition of the reference ops, over sizes that exercise partial bands, partial tasks and tiny images.

use medsam_kernels::mbconv::{self, reference, MbConvDims, MbConvWeights};
use medsam_kernels::testing::data as vals;
use proptest::prelude::*;

/// Random folded weights of one block (seeds `seed + 1 ..= seed + 6`).
struct Weights([Vec<f32>; 6]);

impl Weights {
    fn random(d: MbConvDims, seed: u64) -> Self {
        let MbConvDims { c, hid, .. } = d;
        Weights([
            vals(hid * c, seed + 1, 0.5),
            vals(hid, seed + 2, 0.5),
            vals(hid * 9, seed + 3, 0.5),
            vals(hid, seed + 4, 0.5),
            vals(c * hid, seed + 5, 0.3),
            vals(c, seed + 6, 0.5),
        ])
    }
    fn view(&self) -> MbConvWeights<'_> {
        let [w1, b1, w2, b2, w3, b3] = &self.0;
        MbConvWeights {
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
        }
    }
}

fn compare(d: MbConvDims, seed: u64) {
    let MbConvDims { n, c, h, w, .. } = d;
    let x = vals(n * c * h * w, seed, 2.0);
    let weights = Weights::random(d, seed);
    let wt = weights.view();
    let mut want = vec![f32::NAN; x.len()];
    reference::mbconv_forward(d, &x, wt, &mut want);
    let mut got = vec![f32::NAN; x.len()];
    mbconv::mbconv_forward(d, &x, wt, &mut got);
    assert_close(d, "nchw", &got, &want);
    // Channels-last: the same block on the transposed image, transposed back.
    let mut got_nhwc = vec![f32::NAN; x.len()];
    mbconv::mbconv_forward_nhwc(d, &to_nhwc(d, &x), wt, &mut got_nhwc);
    assert_close(d, "nhwc", &from_nhwc(d, &got_nhwc), &want);
}

fn assert_close(d: MbConvDims, layout: &str, got: &[f32], want: &[f32]) {
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - r).abs() <= 1e-4 + 1e-4 * r.abs(),
            "{d:?} {layout} y[{i}]: got {g}, want {r}"
        );
    }
}

/// `[n, c, h, w]` → `[n, h, w, c]`.
fn to_nhwc(d: MbConvDims, x: &[f32]) -> Vec<f32> {
    let (c, hw) = (d.c, d.h * d.w);
    let mut y = vec![0.0; x.len()];
    for (i, &v) in x.iter().enumerate() {
        let (b, ch, p) = (i / (c * hw), i / hw % c, i % hw);
        y[(b * hw + p) * c + ch] = v;
    }
    y
}

/// `[n, h, w, c]` → `[n, c, h, w]`.
fn from_nhwc(d: MbConvDims, y: &[f32]) -> Vec<f32> {
    let (c, hw) = (d.c, d.h * d.w);
    let mut x = vec![0.0; y.len()];
    for (i, &v) in y.iter().enumerate() {
        let (b, p, ch) = (i / (hw * c), i / c % hw, i % c);
        x[(b * c + ch) * hw + p] = v;
    }
    x
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

/// The task split depends on the thread count (about two tasks per thread); the result must not.
#[test]
fn same_bits_for_any_thread_count() {
    let d = MbConvDims {
        n: 1,
        c: 16,
        hid: 64,
        h: 70,
        w: 12,
    };
    let x = vals(d.n * d.c * d.h * d.w, 7, 2.0);
    let weights = Weights::random(d, 7);
    let wt = weights.view();
    let run = |threads: usize, nhwc: bool| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut y = vec![f32::NAN; x.len()];
        pool.install(|| {
            if nhwc {
                mbconv::mbconv_forward_nhwc(d, &x, wt, &mut y)
            } else {
                mbconv::mbconv_forward(d, &x, wt, &mut y)
            }
        });
        y
    };
    for nhwc in [false, true] {
        let one = run(1, nhwc);
        for threads in [2, 3, 5] {
            let many = run(threads, nhwc);
            assert!(
                one.iter()
                    .zip(&many)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "nhwc={nhwc}: {threads} threads differ from 1"
            );
        }
    }
}
