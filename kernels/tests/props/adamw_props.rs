//! AdamW: the parallel update against the one-element-at-a-time oracle (bit for bit: the same f32
//! operations in the same order), over many steps and with any thread count.

use medsam_kernels::adamw::{self, reference, AdamWStep};
use medsam_kernels::testing::{data, with_threads};
use proptest::prelude::*;

fn hyper(step: u64, weight_decay: f64) -> AdamWStep {
    AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        step,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn fast_matches_reference_bitwise(
        n in 1usize..20_000,
        steps in 1u64..6,
        wd in prop_oneof![Just(0.0), Just(0.01), Just(0.1)],
        seed in any::<u64>(),
    ) {
        let mut fast = (data(n, seed, 1.0), vec![0.0f32; n], vec![0.0f32; n]);
        let mut slow = fast.clone();
        for step in 1..=steps {
            let g = data(n, seed.wrapping_add(step), 0.5);
            let p = hyper(step, wd);
            adamw::adamw_update(p, &mut fast.0, &g, &mut fast.1, &mut fast.2);
            reference::adamw_update(p, &mut slow.0, &g, &mut slow.1, &mut slow.2);
        }
        prop_assert_eq!(bits(&fast.0), bits(&slow.0));
        prop_assert_eq!(bits(&fast.1), bits(&slow.1));
        prop_assert_eq!(bits(&fast.2), bits(&slow.2));
    }
}

#[test]
fn bit_identical_across_thread_counts() {
    let n = 100_003;
    let run = |threads: usize| {
        with_threads(threads, || {
            let (mut w, mut m, mut v) = (data(n, 1, 1.0), vec![0.0f32; n], vec![0.0f32; n]);
            for step in 1..=3 {
                let g = data(n, 10 + step, 0.5);
                adamw::adamw_update(hyper(step, 0.01), &mut w, &g, &mut m, &mut v);
            }
            bits(&w)
        })
    };
    assert_eq!(run(1), run(4));
}
