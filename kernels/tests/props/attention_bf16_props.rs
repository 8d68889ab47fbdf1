//! bf16 attention (inference): each path (AVX512-BF16 where the CPU has it, and the portable
//! one, forced) against the bf16 reference on random shapes, against hand-computed answers that
//! only bf16 rounding gives, and against f32 within a bf16 tolerance.

use medsam_kernels::attention::{self, reference, round_bf16, AttnDims, RelPosBias};
use medsam_kernels::testing::{assert_close, with_threads, Rng};
use proptest::prelude::*;

type ForwardFn =
    fn(AttnDims, &[f32], &[f32], &[f32], f32, Option<RelPosBias>, &mut [f32], &mut [f32]);

/// The bf16 paths: the fastest available (AVX512-BF16 `vdpbf16ps` if this CPU has it) and the
/// portable one.
const PATHS: [(&str, ForwardFn); 2] = [
    ("fast", attention::attention_forward_bf16),
    ("portable", attention::portable_impl::attention_forward_bf16),
];

struct Case {
    dims: AttnDims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rh: Vec<f32>,
    rw: Vec<f32>,
    kh: usize,
    kw: usize,
    biased: bool,
    scale: f32,
}

impl Case {
    fn new(dims: AttnDims, (kh, kw): (usize, usize), biased: bool, seed: u64) -> Case {
        let AttnDims { bh, nq, nk, d, dv } = dims;
        let mut r = Rng(seed);
        Case {
            dims,
            q: r.vec(bh * nq * d, 2.0),
            k: r.vec(bh * nk * d, 2.0),
            v: r.vec(bh * nk * dv, 1.0),
            rh: r.vec(bh * nq * kh, 1.0),
            rw: r.vec(bh * nq * kw, 1.0),
            kh,
            kw,
            biased,
            scale: 1.0 / (d as f32).sqrt(),
        }
    }

    /// `[out, lse]` of `f`; outputs start at 9.0 so one that is not written shows.
    fn run(&self, f: ForwardFn) -> [Vec<f32>; 2] {
        let AttnDims { bh, nq, dv, .. } = self.dims;
        let (mut out, mut lse) = (vec![9.0; bh * nq * dv], vec![9.0; bh * nq]);
        let bias = self.biased.then_some(RelPosBias {
            rel_h: &self.rh,
            rel_w: &self.rw,
            kh: self.kh,
            kw: self.kw,
        });
        f(
            self.dims, &self.q, &self.k, &self.v, self.scale, bias, &mut out, &mut lse,
        );
        [out, lse]
    }
}

/// Every bf16 path against the bf16 reference, and the reference against f32.
///
/// Tolerances: the log-sum-exp depends on the rounding of q and k (f32 and bf16 differ by ~1e-3
/// here) but not on that of the probabilities, so it must match the bf16 reference to f32
/// rounding (5e-6). The outputs may differ by bf16 roundings of probabilities: the fast paths
/// round `e^(s − m)` relative to the running maximum of the key blocks seen so far, the
/// reference relative to the row's maximum, and a probability whose f32 value lies near a
/// rounding boundary may round either way (each ≤ 2⁻⁸ relative; seen up to 3e-4 on these
/// sizes), so 2e-3.
fn compare(c: &Case) {
    let [want, want_lse] = c.run(reference::attention_forward_bf16);
    let what = format!("{:?} bias={}", c.dims, c.biased);
    for (name, f) in PATHS {
        let [out, lse] = c.run(f);
        assert_close(&format!("{name} lse {what}"), &lse, &want_lse, 5e-6, 5e-7);
        assert_close(&format!("{name} out {what}"), &out, &want, 2e-3, 0.0);
    }
    // bf16 against f32: scores of O(5) carry errors of ~2⁻⁸ relative per product.
    let [f32_out, f32_lse] = c.run(reference::attention_forward);
    assert_close(
        &format!("bf16 vs f32 out {what}"),
        &want,
        &f32_out,
        2e-2,
        0.0,
    );
    assert_close(
        &format!("bf16 vs f32 lse {what}"),
        &want_lse,
        &f32_lse,
        2e-2,
        0.0,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn bf16_matches_reference_with_bias(bh in 1usize..3, nq in 1usize..140, kh in 1usize..12,
                                        kw in 1usize..12, d in 1usize..40, dv in 1usize..40,
                                        seed in any::<u64>()) {
        let dims = AttnDims { bh, nq, nk: kh * kw, d, dv };
        compare(&Case::new(dims, (kh, kw), true, seed));
    }

    #[test]
    fn bf16_matches_reference_no_bias(bh in 1usize..4, nq in 1usize..20, nk in 1usize..700,
                                      d in 1usize..40, seed in any::<u64>()) {
        let dims = AttnDims { bh, nq, nk, d, dv: d };
        compare(&Case::new(dims, (1, nk), false, seed));
    }
}

#[test]
fn bf16_sam_window_shape() {
    // Windowed attention of ViT-B: 14×14 tokens, d = 64, rel-pos over 14×14 (one key block).
    let dims = AttnDims::new(2, 196, 196, 64, 64);
    compare(&Case::new(dims, (14, 14), true, 21));
}

#[test]
fn bf16_sam_global_shape() {
    // Global attention of ViT-B: 64×64 keys over several key blocks, d = 64 (a slice of the
    // 4096 queries, to keep the reference quick).
    let dims = AttnDims::new(1, 40, 4096, 64, 64);
    compare(&Case::new(dims, (64, 64), true, 22));
}

/// One query, `q = 0`, so the scores are exactly the bias `rel_w` (kh = 1): hand-computed
/// answers that only bf16 rounding of the probabilities and of v gives.
fn one_row(v: &[f32], s: &[f32], f: ForwardFn) -> (f32, f32) {
    let nk = s.len();
    let dims = AttnDims::new(1, 1, nk, 2, 1);
    let (q, k) = (vec![0.0; 2], vec![0.5; 2 * nk]);
    let rh = [0.0];
    let bias = RelPosBias {
        rel_h: &rh,
        rel_w: s,
        kh: 1,
        kw: nk,
    };
    let (mut o, mut l) = ([9.0], [9.0]);
    f(dims, &q, &k, v, 1.0, Some(bias), &mut o, &mut l);
    (o[0], l[0])
}

#[test]
fn bf16_rounds_probabilities_and_v_to_nearest_even() {
    let all = [
        ("reference", reference::attention_forward_bf16 as ForwardFn),
        PATHS[0],
        PATHS[1],
    ];
    for (name, f) in all {
        // p = (1, 0.3): 0.3 rounds to 0.30078125 for p·v, the sum keeps 0.3.
        let (o, l) = one_row(&[0.0, 1.0], &[0.0, 0.3f32.ln()], f);
        let want = 0.30078125 / (1.0 + 0.3f64);
        assert!(
            (o as f64 - want).abs() < 2e-7,
            "{name}: p rounding {o} vs {want}"
        );
        assert!((l as f64 - 1.3f64.ln()).abs() < 2e-7, "{name}: lse {l}");
        // Equal p: the mean of v rounded to nearest, ties to even: 1 + 2⁻⁸ (a tie) → 1,
        // 1 + 2⁻⁸ + 2⁻¹⁰ → 1 + 2⁻⁷.
        let v = [1.0 + 2f32.powi(-8), 1.0 + 2f32.powi(-8) + 2f32.powi(-10)];
        let (o, _) = one_row(&v, &[0.25, 0.25], f);
        assert_eq!(o, 1.0 + 2f32.powi(-8), "{name}: v rounding");
    }
}

#[test]
fn bf16_rounds_scaled_q_and_k() {
    // q·scale = 1 + 2⁻⁸ + 2⁻¹⁰ → 1 + 2⁻⁷; k₀ = 1 + 2⁻⁸ (a tie) → 1; k₁ = 0. v = (1, 0), so
    // out = σ(s₀) with s₀ = (1 + 2⁻⁷)·1 (p₀ = 1 is exact; the sum is not rounded).
    let dims = AttnDims::new(1, 1, 2, 2, 1);
    let q = [2.0 + 2f32.powi(-7) + 2f32.powi(-9), 0.0];
    let k = [1.0 + 2f32.powi(-8), 0.0, 0.0, 0.0];
    let v = [1.0, 0.0];
    let s0 = 1.0 + 2f64.powi(-7);
    let want = 1.0 / (1.0 + (-s0).exp());
    let all = [
        ("reference", reference::attention_forward_bf16 as ForwardFn),
        PATHS[0],
        PATHS[1],
    ];
    for (name, f) in all {
        let (mut o, mut l) = ([9.0], [9.0]);
        f(dims, &q, &k, &v, 0.5, None, &mut o, &mut l);
        assert!(
            (o[0] as f64 - want).abs() < 2e-7,
            "{name}: {} vs {want}",
            o[0]
        );
    }
}

#[test]
fn round_bf16_is_nearest_even() {
    let cases = [
        (1.0 + 2f32.powi(-8), 1.0),
        (1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f32.powi(-6)),
        (
            -(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            -(1.0 + 2f32.powi(-7)),
        ),
        (f32::MAX, f32::INFINITY),
        (1e-39, 0.0),
        (-1e-39, -0.0),
        (f32::INFINITY, f32::INFINITY),
    ];
    for (x, want) in cases {
        let got = round_bf16(x);
        assert_eq!(got.to_bits(), want.to_bits(), "round_bf16({x:e}) = {got:e}");
    }
    assert!(round_bf16(f32::NAN).is_nan());
    // Agrees with `half` (the GEMM's packing) on normal numbers.
    let mut r = Rng(4);
    for x in r.vec(10_000, 100.0) {
        assert_eq!(round_bf16(x), half::bf16::from_f32(x).to_f32(), "{x:e}");
    }
}

#[test]
fn bf16_bit_identical_across_thread_counts() {
    let dims = AttnDims::new(3, 400, 400, 32, 32);
    let c = Case::new(dims, (20, 20), true, 3);
    for (name, f) in PATHS {
        let runs: Vec<[Vec<f32>; 2]> = [1, 2, 3]
            .iter()
            .map(|&t| with_threads(t, || c.run(f)))
            .collect();
        for r in &runs[1..] {
            for i in 0..2 {
                let same = r[i]
                    .iter()
                    .zip(&runs[0][i])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name}: output {i} differs between thread counts");
            }
        }
    }
}
