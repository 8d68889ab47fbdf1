//! Property tests of the int8 linear (`gemm::int8`): every kernel this CPU can run, forced via
//! `linear_with`, against `int8::reference::linear`.
//!
//! Exactness. The integer dot products are exact and the dequantization is the same f32
//! operations in the same order, so without GELU the result must equal the reference bit for
//! bit (any dropped k term, wrong zero point or swapped scale shows up). With GELU the vectorised
//! erf differs from the reference's f64 one by a few ulp, so those cases use a tolerance.
//!
//! Accuracy. Against the f32 product, each input is off by at most one quantization step
//! (sx for x, sw for W; half a step from rounding, up to a whole one where the zero point's
//! rounding makes the top value clamp), so `|err| ≤ sx·Σ|w| + sw·Σ|x| + k·sx·sw` per output.

use medsam_kernels::gemm::int8::{self, reference, Int8Kernel, Int8Weights};
use medsam_kernels::gemm::Epilogue;
use proptest::prelude::*;

/// Deterministic pseudo-random data in [-1, 1) (xorshift64*).
use medsam_kernels::testing::{data_star as fill, with_threads};

fn kernels() -> Vec<Int8Kernel> {
    Int8Kernel::ALL
        .iter()
        .copied()
        .filter(|k| k.is_available())
        .collect()
}

#[derive(Clone, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    /// Extra elements per row of x and of C.
    pads: (usize, usize),
    bias: bool,
    residual: bool,
    gelu: bool,
    /// Scales x rows differently (and shifts them) so zero points vary.
    skew: bool,
    seed: u64,
}

impl Case {
    /// `flags` = (bias, residual, gelu, skew).
    fn new(
        (m, n, k): (usize, usize, usize),
        pads: (usize, usize),
        flags: [bool; 4],
        seed: u64,
    ) -> Case {
        let [bias, residual, gelu, skew] = flags;
        Case {
            m,
            n,
            k,
            pads,
            bias,
            residual,
            gelu,
            skew,
            seed,
        }
    }
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    res: Vec<f32>,
}

fn data(c: &Case) -> Data {
    let mut x = fill(c.m * c.k, c.seed);
    if c.skew {
        for (i, row) in x.chunks_mut(c.k.max(1)).enumerate() {
            let (s, t) = (0.1 + (i % 7) as f32, (i % 5) as f32 * 0.3 - 0.4);
            row.iter_mut().for_each(|v| *v = *v * s + t);
        }
    }
    Data {
        x,
        w: fill(c.n * c.k, c.seed ^ 0xA),
        bias: fill(c.n, c.seed ^ 0xB),
        res: fill(c.m * c.n, c.seed ^ 0xC),
    }
}

fn epilogue<'a>(c: &Case, d: &'a Data, ld: usize) -> Epilogue<'a> {
    Epilogue {
        col_bias: c.bias.then_some(&d.bias[..]),
        row_bias: None,
        residual: c.residual.then_some((&d.res[..], ld)),
        gelu: c.gelu,
    }
}

/// Runs `kernel` on strided copies of the case's data; returns C densely, and checks that the
/// row padding of C was left alone.
fn run_fast(c: &Case, d: &Data, kernel: Int8Kernel) -> Result<Vec<f32>, String> {
    let (ldx, ldc) = (c.k + c.pads.0, c.n + c.pads.1);
    let mut xs = vec![f32::NAN; c.m * ldx];
    for i in 0..c.m {
        xs[i * ldx..i * ldx + c.k].copy_from_slice(&d.x[i * c.k..(i + 1) * c.k]);
    }
    let w = Int8Weights::quantize(&d.w, c.n, c.k);
    let sentinel = -12345.0;
    let mut cs = vec![sentinel; c.m * ldc];
    int8::linear_with(
        kernel,
        &xs,
        ldx,
        c.m,
        &w,
        &d.w,
        &mut cs,
        ldc,
        epilogue(c, d, c.n),
    );
    let mut out = vec![0.0; c.m * c.n];
    for i in 0..c.m {
        out[i * c.n..(i + 1) * c.n].copy_from_slice(&cs[i * ldc..i * ldc + c.n]);
        if cs[i * ldc + c.n..(i + 1) * ldc]
            .iter()
            .any(|&v| v != sentinel)
        {
            return Err(format!(
                "{kernel:?} {c:?}: wrote into the padding of C row {i}"
            ));
        }
    }
    Ok(out)
}

fn check(c: &Case, kernel: Int8Kernel) -> Result<(), String> {
    let d = data(c);
    let mut want = vec![0.0; c.m * c.n];
    reference::linear(&d.x, c.m, c.k, &d.w, c.n, &mut want, epilogue(c, &d, c.n));
    let got = run_fast(c, &d, kernel)?;
    for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let ok = if c.gelu {
            (g - w).abs() <= 1e-6 * (1.0 + w.abs())
        } else {
            g.to_bits() == w.to_bits()
        };
        if !ok {
            return Err(format!("{kernel:?} {c:?}: C[{idx}] = {g} want {w}"));
        }
    }
    Ok(())
}

fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![1..=4usize, 1..=max]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (size(40), size(80), size(70)),
        (0..3usize, 0..3usize),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        any::<u64>(),
    )
        .prop_map(|(mnk, pads, (bias, residual, gelu, skew), seed)| {
            Case::new(mnk, pads, [bias, residual, gelu, skew], seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn int8_matches_reference(c in case()) {
        for kernel in kernels() {
            check(&c, kernel).map_err(TestCaseError::fail)?;
        }
    }
}

/// Shapes that span several tasks, panels and MR blocks, run in parallel.
#[test]
fn large_and_parallel_shapes() {
    for (m, n, k) in [(197, 100, 131), (300, 260, 64), (13, 33, 768)] {
        let c = Case::new(
            (m, n, k),
            (1, 2),
            [true, true, false, true],
            (m * n + k) as u64,
        );
        for kernel in kernels() {
            check(&c, kernel).unwrap();
        }
    }
}

/// The result does not depend on the number of threads.
#[test]
fn thread_count_independent() {
    let c = Case::new((150, 300, 100), (0, 0), [true, false, true, true], 7);
    let d = data(&c);
    for kernel in kernels() {
        let many = run_fast(&c, &d, kernel).unwrap();
        let one = with_threads(1, || run_fast(&c, &d, kernel)).unwrap();
        assert!(
            many.iter()
                .zip(&one)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{kernel:?}"
        );
    }
}

/// Against the f32 product, within the quantization error bound.
#[test]
fn close_to_f32() {
    let (m, n, k) = (37, 45, 300);
    let c = Case::new((m, n, k), (0, 0), [false, false, false, true], 3);
    let d = data(&c);
    let (_, sw) = reference::quantize_weights(&d.w, n, k);
    let mu = reference::column_means(&d.x, m, k);
    let centred: Vec<f32> =
        d.x.chunks(k)
            .flat_map(|r| r.iter().zip(&mu).map(|(a, b)| a - b))
            .collect();
    let (_, sx, _) = reference::quantize_rows(&centred, m, k);
    let got = run_fast(&c, &d, Int8Kernel::best()).unwrap();
    for i in 0..m {
        for j in 0..n {
            let (xr, wr) = (&d.x[i * k..(i + 1) * k], &d.w[j * k..(j + 1) * k]);
            let exact: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
            let sum_abs = |v: &[f32]| v.iter().map(|x| x.abs()).sum::<f32>();
            // Only the centred rows are quantized; the mean's product is f32 (a few ulp of
            // Σ|μ·w|, covered by the slack).
            let yr = &centred[i * k..(i + 1) * k];
            let mean_abs: f32 = mu.iter().zip(wr).map(|(a, b)| (a * b).abs()).sum();
            let bound = sx[i] * sum_abs(wr)
                + sw[j] * sum_abs(yr)
                + k as f32 * sx[i] * sw[j]
                + 1e-5 * mean_abs;
            let err = (got[i * n + j] as f64 - exact).abs() as f32;
            assert!(err <= bound * 1.001, "C[{i},{j}] err {err} > {bound}");
        }
    }
}

/// Rows of zeros give exact zeros (plus bias) — here, as a NaN in x turns centring off, and
/// always when every row is zero; a row with a NaN or an infinity gives NaN, and the other rows
/// are unaffected.
#[test]
fn zero_and_non_finite_rows() {
    let (m, n, k) = (5, 40, 9);
    let mut x = fill(m * k, 1);
    x[..k].fill(0.0);
    x[2 * k + 3] = f32::NAN;
    x[3 * k + 1] = f32::INFINITY;
    let wv = fill(n * k, 2);
    let w = Int8Weights::quantize(&wv, n, k);
    for kernel in kernels() {
        let mut c = vec![0.0; m * n];
        int8::linear_with(kernel, &x, k, m, &w, &wv, &mut c, n, Epilogue::default());
        assert!(c[..n].iter().all(|&v| v == 0.0), "{kernel:?}");
        assert!(c[2 * n..4 * n].iter().all(|v| v.is_nan()), "{kernel:?}");
        assert!(c[n..2 * n].iter().chain(&c[4 * n..]).all(|v| v.is_finite()));
        let zeros = vec![0.0; m * k];
        int8::linear_with(
            kernel,
            &zeros,
            k,
            m,
            &w,
            &wv,
            &mut c,
            n,
            Epilogue::default(),
        );
        assert!(c.iter().all(|&v| v == 0.0), "{kernel:?}");
    }
}

/// The quantizer itself: scales, zero points and the range end points.
#[test]
fn quantizer() {
    let x = [-1.0f32, 0.0, 0.5, 3.0];
    let (q, s, z) = reference::quantize_rows(&x, 1, 4);
    assert_eq!(s[0], 4.0 / 255.0);
    assert_eq!(z[0], 64); // round(1 / (4/255)) = round(63.75)
    assert_eq!(q, vec![0, 64, 96, 255]);
    let (qw, sw) = reference::quantize_weights(&[0.75, -1.0, 0.25, 0.0, 0.0, 0.0], 2, 3);
    assert_eq!(sw, vec![1.0 / 127.0, 1.0]);
    assert_eq!(qw, vec![95, -127, 32, 0, 0, 0]);
}

/// The row quantizer's `(q, sx, zx)` from a plain scan, written independently of the library's
/// lane-split version (module doc's formulas; NaN scale for a row with a non-finite value).
fn plain_quantize_row(x: &[f32]) -> (Vec<u8>, f32, i32) {
    if x.iter().any(|v| !v.is_finite()) {
        return (vec![0; x.len()], f32::NAN, 0);
    }
    let lo = x.iter().fold(0.0f32, |a, &v| a.min(v));
    let hi = x.iter().fold(0.0f32, |a, &v| a.max(v));
    if hi - lo == 0.0 {
        return (vec![0; x.len()], 1.0, 0);
    }
    if !(hi - lo).is_finite() {
        return (vec![0; x.len()], f32::NAN, 0);
    }
    let s = (hi - lo) / 255.0;
    let z = (-lo / s).round_ties_even().clamp(0.0, 255.0);
    let q = x
        .iter()
        .map(|&v| ((v / s).round_ties_even() + z).clamp(0.0, 255.0) as u8)
        .collect();
    (q, s, z as i32)
}

/// A weight row's `(qw, sw)` from a plain scan (module doc: symmetric, per output channel).
fn plain_quantize_weight_row(w: &[f32]) -> (Vec<i8>, f32) {
    if w.iter().any(|v| !v.is_finite()) {
        return (vec![0; w.len()], f32::NAN);
    }
    let max = w.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    if max == 0.0 {
        return (vec![0; w.len()], 1.0);
    }
    let s = max / 127.0;
    let q = w
        .iter()
        .map(|&v| (v / s).round_ties_even().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Rows of any length (whole lanes and tails), with the extremes anywhere, signed zeros,
    /// huge values whose range overflows, and ±inf / NaN at any position.
    #[test]
    fn row_quantizers_match_a_plain_scan(
        k in 1usize..80,
        seed in any::<u64>(),
        special in prop::option::of((0usize..80, 0usize..6)),
    ) {
        let mut x = fill(k, seed);
        if let Some((at, kind)) = special {
            x[at % k] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, 3.0e38, -3.0e38][kind];
            if kind >= 4 {
                x[(at + 1) % k] = -x[at % k];
            }
        }
        let (q, s, z) = reference::quantize_rows(&x, 1, k);
        let (pq, ps, pz) = plain_quantize_row(&x);
        prop_assert_eq!(s[0].to_bits(), ps.to_bits(), "scale of {:?}", x);
        prop_assert_eq!(z[0], pz);
        prop_assert_eq!(q, pq);
        let (qw, sw) = reference::quantize_weights(&x, 1, k);
        let (pqw, psw) = plain_quantize_weight_row(&x);
        prop_assert_eq!(sw[0].to_bits(), psw.to_bits(), "weight scale of {:?}", x);
        prop_assert_eq!(qw, pqw);
    }
}

/// The kernel list covers the paths this CPU should run.
#[test]
fn kernel_selection() {
    let f = medsam_kernels::cpu::features();
    assert_eq!(Int8Kernel::AvxVnni.is_available(), f.avx_vnni);
    assert_eq!(Int8Kernel::Avx512Vnni.is_available(), f.avx512vnni);
    let best = Int8Kernel::best();
    assert!(best.is_available());
    if f.avx512vnni {
        assert_eq!(best, Int8Kernel::Avx512Vnni);
    }
    eprintln!("int8 kernels tested on this CPU: {:?}", kernels());
}

/// Identical rows (a single row too) centre to zero, so the result is the f32 product with the
/// unquantized weights: no quantization error at all.
#[test]
fn identical_rows_are_exact() {
    let (n, k) = (70, 300);
    let row = fill(k, 5);
    let wv = fill(n * k, 6);
    let w = Int8Weights::quantize(&wv, n, k);
    for m in [1, 3] {
        let x: Vec<f32> = row.iter().copied().cycle().take(m * k).collect();
        for kernel in kernels() {
            let mut c = vec![0.0; m * n];
            int8::linear_with(kernel, &x, k, m, &w, &wv, &mut c, n, Epilogue::default());
            for (idx, &g) in c.iter().enumerate() {
                let wr = &wv[(idx % n) * k..(idx % n + 1) * k];
                let exact: f64 = row.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let scale: f64 = row
                    .iter()
                    .zip(wr)
                    .map(|(&a, &b)| (a * b).abs() as f64)
                    .sum();
                assert!(
                    (g as f64 - exact).abs() <= 1e-6 * scale,
                    "{kernel:?} m={m} C[{idx}] = {g} want {exact}"
                );
            }
        }
    }
}
