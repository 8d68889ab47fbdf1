//! Property tests: the fast GEMM (every micro-kernel this CPU can run, forced via `gemm_with`)
//! against `reference::gemm` on random shapes, layouts and blockings.
//!
//! Tolerance. The kernels sum the k products in a different order than the reference (blocked
//! over KC, FMA instead of mul+add, bf16 pairs), so results differ by rounding. For each output
//! the error of a recursive f32 sum is bounded by ~k·eps·Σ_p|a_ip·b_pj|, and for random-sign data
//! it grows like sqrt(k); we allow `4·(sqrt(k)+2)·eps·Σ|a||b|` (+ `2·eps·|C_in|` for the final
//! accumulate add) per element, for both implementations' errors combined. A real bug (a dropped
//! or duplicated k term, a wrong row/column, a stale C) changes an element by ~|a·b|, which is
//! orders of magnitude above this for k ≤ a few thousand.
//!
//! bf16: the kernels round A and B to bf16 (round-to-nearest-even) and accumulate in f32, so
//! the oracle is `reference::gemm` on bf16-rounded copies of A and B, with the same tolerance.

use half::bf16;
use medsam_kernels::gemm::{
    self, default_blocking, gemm_tuned, gemm_with, reference, Blocking, GemmDims, Kernel, Layout,
    Precision,
};
// Deterministic pseudo-random data in [-1, 1), so a failing case is reproducible from its seed.
use medsam_kernels::testing::data_star as fill;
use proptest::prelude::*;

const F32: Precision = Precision::F32;
const BF16: Precision = Precision::Bf16;

/// How an operand is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Mode {
    RowMajor,
    Transposed,
    /// Neither stride is 1 (exercises the general packing loops).
    Strided,
}

/// A layout for a `rows × cols` operand with `pad` extra elements per line and between batches.
fn layout(mode: Mode, rows: usize, cols: usize, pad: usize) -> Layout {
    let (row_stride, col_stride, span) = match mode {
        Mode::RowMajor => (cols + pad, 1, rows * (cols + pad)),
        Mode::Transposed => (1, rows + pad, cols * (rows + pad)),
        Mode::Strided => (2 * cols + pad, 2, rows * (2 * cols + pad)),
    };
    Layout {
        batch_stride: span + pad,
        row_stride,
        col_stride,
    }
}

fn buf_len(l: Layout, batch: usize, rows: usize, cols: usize) -> usize {
    (batch - 1) * l.batch_stride + (rows - 1) * l.row_stride + (cols - 1) * l.col_stride + 1
}

fn kernels(precision: Precision) -> Vec<Kernel> {
    Kernel::ALL
        .iter()
        .copied()
        .filter(|k| k.is_available() && k.supports(precision))
        .collect()
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

#[derive(Clone, Debug)]
struct Case {
    dims: GemmDims,
    modes: (Mode, Mode),
    pads: (usize, usize, usize),
    accumulate: bool,
    seed: u64,
    blocking: Option<Blocking>,
}

/// Runs one case on `kernel` and checks every element of C (including the padding, which must
/// be untouched) against the reference. Returns an error message instead of panicking so that
/// proptest can shrink.
fn check(case: &Case, kernel: Kernel, precision: Precision) -> Result<(), String> {
    let GemmDims { batch, m, n, k } = case.dims;
    let la = layout(case.modes.0, m, k.max(1), case.pads.0);
    let lb = layout(case.modes.1, k.max(1), n, case.pads.1);
    let lc = layout(Mode::RowMajor, m, n, case.pads.2);
    let a = fill(buf_len(la, batch, m, k.max(1)), case.seed);
    let b = fill(buf_len(lb, batch, k.max(1), n), case.seed ^ 0xB);
    let c0 = fill(buf_len(lc, batch, m, n), case.seed ^ 0xC);

    let (ar, br) = match precision {
        Precision::F32 => (a.clone(), b.clone()),
        Precision::Bf16 => (round_bf16(&a), round_bf16(&b)),
    };
    let mut want = c0.clone();
    reference::gemm(case.dims, &ar, la, &br, lb, &mut want, lc, case.accumulate);
    // Σ|a||b| per output element, for the tolerance.
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let mut mag = vec![0.0f32; c0.len()];
    reference::gemm(case.dims, &abs(&ar), la, &abs(&br), lb, &mut mag, lc, false);

    let mut got = c0.clone();
    let (d, acc, p) = (case.dims, case.accumulate, precision);
    match case.blocking {
        None => gemm_with(kernel, d, &a, la, &b, lb, &mut got, lc, acc, p),
        Some(blk) => gemm_tuned(kernel, blk, d, &a, la, &b, lb, &mut got, lc, acc, p),
    }
    let eps = f32::EPSILON;
    let ksq = (k as f32).sqrt() + 2.0;
    for idx in 0..got.len() {
        let tol = 4.0 * ksq * eps * mag[idx]
            + if case.accumulate {
                2.0 * eps * c0[idx].abs()
            } else {
                0.0
            };
        let err = (got[idx] - want[idx]).abs();
        // Written so that a NaN error also fails.
        if err.is_nan() || err > tol {
            return Err(format!(
                "{kernel:?} {precision:?} {case:?}: C[{idx}] = {} want {} (err {err:e} > tol {tol:e})",
                got[idx], want[idx]
            ));
        }
    }
    Ok(())
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        3 => Just(Mode::RowMajor),
        3 => Just(Mode::Transposed),
        1 => Just(Mode::Strided),
    ]
}

/// Sizes biased towards the interesting ones: 1, around SIMD widths and tile sizes, and odd.
fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(1usize),
        2 => prop::sample::select(vec![2usize, 5, 6, 7, 11, 12, 13, 15, 16, 17, 31, 32, 33]),
        3 => 1..=max,
    ]
}

fn case(tiny_blocking: bool) -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        size(40),
        size(70),
        prop_oneof![1 => Just(0usize), 8 => 1usize..=130],
        (mode(), mode()),
        (0usize..3, 0usize..3, 0usize..3),
        any::<bool>(),
        any::<u64>(),
        (1usize..=64, 1usize..=48, 1usize..=96, 1usize..=64),
    )
        .prop_map(
            move |(batch, m, n, k, modes, pads, accumulate, seed, (kc, mc, nc, nl2))| Case {
                dims: GemmDims { batch, m, n, k },
                modes,
                pads,
                accumulate,
                seed,
                // Small blocks so a small problem crosses many KC/MC/NC/NL2 boundaries.
                blocking: tiny_blocking.then_some(Blocking {
                    kc,
                    mc,
                    nc,
                    nl2,
                    force_pack_a: false,
                }),
            },
        )
}

fn run_all(case: &Case, precision: Precision) -> Result<(), TestCaseError> {
    for kernel in kernels(precision) {
        check(case, kernel, precision).map_err(TestCaseError::fail)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Each case at both precisions (bf16 against the reference on rounded inputs).
    #[test]
    fn matches_reference(case in case(false)) {
        run_all(&case, F32)?;
        run_all(&case, BF16)?;
    }

    #[test]
    fn small_blocking_matches_reference(case in case(true)) {
        run_all(&case, F32)?;
        run_all(&case, BF16)?;
    }
}

/// Problems big enough for the multi-threaded paths (shared packed B with tasks split over M and
/// N; parallel over batch) and the default blocking's block boundaries.
#[test]
fn large_and_parallel_shapes() {
    let shapes = [
        // (batch, m, n, k): inner-parallel, several KC slices, edge tiles everywhere.
        (1, 301, 277, 530),
        // batch not a multiple of the thread count: parallel inside each GEMM.
        (3, 97, 150, 130),
        // many batches: parallel over batch.
        (8, 64, 70, 64),
        // wide-n, short-m (split over N).
        (1, 20, 700, 200),
    ];
    for precision in [Precision::F32, Precision::Bf16] {
        for kernel in kernels(precision) {
            for &(batch, m, n, k) in &shapes {
                for (modes, accumulate) in [
                    ((Mode::RowMajor, Mode::Transposed), false),
                    ((Mode::Transposed, Mode::RowMajor), true),
                ] {
                    let case = Case {
                        dims: GemmDims { batch, m, n, k },
                        modes,
                        pads: (1, 0, 3),
                        accumulate,
                        seed: (m * 31 + n * 7 + k) as u64,
                        blocking: None,
                    };
                    check(&case, kernel, precision).unwrap();
                }
            }
        }
    }
}

/// C for several heads interleaved as `[tokens, heads, d]` (batch stride d, row stride heads·d):
/// the parallel-over-batch path must write each head's columns only.
#[test]
fn interleaved_heads_output() {
    let (heads, tokens, d, k) = (4, 150, 64, 80);
    let dims = GemmDims {
        batch: heads,
        m: tokens,
        n: d,
        k,
    };
    let la = Layout::row_major(tokens, k);
    let lb = Layout::row_major(k, d);
    let lc = Layout {
        batch_stride: d,
        row_stride: heads * d,
        col_stride: 1,
    };
    let a = fill(heads * tokens * k, 1);
    let b = fill(heads * k * d, 2);
    for precision in [Precision::F32, Precision::Bf16] {
        // `gemm` may carry out a bf16 request in f32 (see `bf16_plan`).
        let effective = match precision {
            Precision::Bf16 => gemm::bf16_plan().precision,
            p => p,
        };
        let (ar, br) = match effective {
            Precision::F32 => (a.clone(), b.clone()),
            Precision::Bf16 => (round_bf16(&a), round_bf16(&b)),
        };
        let mut want = vec![0.0; tokens * heads * d];
        reference::gemm(dims, &ar, la, &br, lb, &mut want, lc, false);
        let mut got = vec![f32::NAN; tokens * heads * d];
        gemm::gemm(dims, &a, la, &b, lb, &mut got, lc, false, precision);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }
}

/// k = 0: C is zeroed, or left unchanged when accumulating.
#[test]
fn k_zero() {
    for precision in [Precision::F32, Precision::Bf16] {
        for kernel in kernels(precision) {
            let dims = GemmDims {
                batch: 2,
                m: 3,
                n: 5,
                k: 0,
            };
            let lc = Layout::row_major(3, 5);
            let (la, lb) = (Layout::row_major(3, 0), Layout::row_major(0, 5));
            let mut c = vec![7.0f32; 30];
            gemm_with(kernel, dims, &[], la, &[], lb, &mut c, lc, true, precision);
            assert!(c.iter().all(|&x| x == 7.0));
            gemm_with(kernel, dims, &[], la, &[], lb, &mut c, lc, false, precision);
            assert!(c.iter().all(|&x| x == 0.0));
        }
    }
}

/// The default blockings are sane and the kernel list covers the paths this CPU should run.
#[test]
fn kernel_selection() {
    let f = medsam_kernels::cpu::features();
    assert_eq!(Kernel::Avx512.is_available(), f.avx512f);
    assert!(!Kernel::Avx512Bf16.supports(Precision::F32));
    for p in [Precision::F32, Precision::Bf16] {
        let best = Kernel::best(p);
        assert!(best.is_available() && best.supports(p));
        let blk = default_blocking(best, p);
        assert!(blk.kc > 0 && blk.mc > 0 && blk.nc > 0 && blk.nl2 > 0);
    }
    if f.avx512bf16 {
        assert!(matches!(
            Kernel::best(Precision::Bf16),
            Kernel::Avx512Bf16 | Kernel::Amx
        ));
    }
}

/// `Precision::Bf16` runs natively where bf16 is faster (AMX; AMD with AVX512-BF16) and as f32
/// elsewhere; the environment override works both ways.
#[test]
fn bf16_plan_table() {
    use medsam_kernels::cpu::CpuFeatures;
    let base = CpuFeatures {
        avx512f: true,
        avx512bf16: true,
        avx2_fma: true,
        amx_bf16: false,
        avx512vnni: true,
        amd: false,
        avx_vnni: false,
    };
    let amd = CpuFeatures { amd: true, ..base };
    let amx = CpuFeatures {
        amx_bf16: true,
        ..base
    };
    let pick = |f, ok, env| {
        let p = gemm::choose_bf16(f, ok, env);
        (p.kernel, p.precision)
    };
    assert_eq!(
        pick(amd, false, None),
        (Kernel::Avx512Bf16, Precision::Bf16)
    );
    assert_eq!(pick(base, false, None), (Kernel::Avx512, Precision::F32));
    assert_eq!(pick(amx, true, None), (Kernel::Amx, Precision::Bf16));
    // AMX present but its self-check failed: Intel without working AMX.
    assert_eq!(pick(amx, false, None), (Kernel::Avx512, Precision::F32));
    assert_eq!(
        pick(amd, false, Some("f32")),
        (Kernel::Avx512, Precision::F32)
    );
    assert_eq!(
        pick(base, false, Some("native")),
        (Kernel::Avx512Bf16, Precision::Bf16)
    );
    let avx2 = CpuFeatures {
        avx512f: false,
        avx512bf16: false,
        avx512vnni: false,
        ..base
    };
    assert_eq!(pick(avx2, false, None), (Kernel::Avx2, Precision::F32));
    let plan = gemm::bf16_plan();
    assert!(plan.kernel.is_available() && plan.kernel.supports(plan.precision));
    eprintln!("bf16 plan on this CPU: {plan:?}");
}

/// bf16 rounding while packing must be exactly `half`'s round-to-nearest-even, NaN and infinity
/// included: with k = 1 each output is a single product of two bf16 values, which is exact in
/// f32, so the comparison is bit-for-bit. Values are random bit patterns (ties included) in the
/// normal range, since `vdpbf16ps` flushes denormals.
#[test]
fn bf16_rounding_is_exact() {
    let (m, n) = (37, 41);
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut bits = |len: usize, specials: bool| -> Vec<f32> {
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mant = (s as u32) & 0x007F_FFFF;
                // Every 3rd value an exact tie (low 16 bits = 0x8000) to test ties-to-even.
                let mant = if i % 3 == 0 {
                    (mant & !0xFFFF) | 0x8000
                } else {
                    mant
                };
                let exp = 107 + ((s >> 32) % 40) as u32;
                let sign = ((s >> 40) & 1) as u32;
                match (specials, i % 17) {
                    (true, 5) => f32::NAN,
                    (true, 11) => f32::INFINITY,
                    (true, 13) => f32::from_bits(0x7F80_0001), // signalling NaN
                    _ => f32::from_bits(sign << 31 | exp << 23 | mant),
                }
            })
            .collect()
    };
    let a = bits(m, true);
    let b = bits(n, false);
    let dims = GemmDims {
        batch: 1,
        m,
        n,
        k: 1,
    };
    let lc = Layout::row_major(m, n);
    for kernel in kernels(Precision::Bf16) {
        for la in [Layout::row_major(m, 1), Layout::transposed(1, m)] {
            for lb in [Layout::row_major(1, n), Layout::transposed(n, 1)] {
                let mut c = vec![0.0f32; m * n];
                gemm_with(kernel, dims, &a, la, &b, lb, &mut c, lc, false, BF16);
                for i in 0..m {
                    for j in 0..n {
                        let want = bf16::from_f32(a[i]).to_f32() * bf16::from_f32(b[j]).to_f32();
                        let got = c[i * n + j];
                        assert!(
                            got == want || (got.is_nan() && want.is_nan()),
                            "{kernel:?} {la:?} {lb:?} a={:e} b={:e}: {got:e} != {want:e}",
                            a[i],
                            b[j]
                        );
                    }
                }
            }
        }
    }
}

/// `gemm_fused` (bias per column and/or row, optional GELU, applied in the driver per finished
/// strip) against `reference::gemm_fused`. Tolerance: the GEMM bound above on `Σ|a||b| + |bias|`,
/// times 1.2 for GELU's slope (≤ 1.13), plus 1e-6 relative for the f32 erf (|err| ≲ 2e-7).
fn check_fused_res(
    kernel: Kernel,
    dims: GemmDims,
    modes: (Mode, Mode),
    flags: (bool, bool, bool),
    with_residual: bool,
    seed: u64,
) -> Result<(), String> {
    let GemmDims { batch, m, n, k } = dims;
    let la = layout(modes.0, m, k.max(1), 1);
    let lb = layout(modes.1, k.max(1), n, 2);
    let lc = Layout::row_major(m, n);
    let a = fill(buf_len(la, batch, m, k.max(1)), seed);
    let b = fill(buf_len(lb, batch, k.max(1), n), seed ^ 0xB);
    let (cb, rb) = (fill(n, seed ^ 0xC), fill(m, seed ^ 0xD));
    let res = fill(m * (n + 3), seed ^ 0xE); // row stride n + 3
    let with_residual = with_residual && batch == 1;
    let ep = gemm::Epilogue {
        col_bias: flags.0.then_some(&cb[..]),
        row_bias: flags.1.then_some(&rb[..]),
        residual: with_residual.then_some((&res[..], n + 3)),
        gelu: flags.2,
    };
    let mut want = vec![0.0; batch * m * n];
    reference::gemm_fused(dims, &a, la, &b, lb, &mut want, lc, ep);
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let mut mag = vec![0.0f32; want.len()];
    reference::gemm(dims, &abs(&a), la, &abs(&b), lb, &mut mag, lc, false);
    let mut got = vec![f32::NAN; want.len()];
    gemm::gemm_fused_with(kernel, dims, &a, la, &b, lb, &mut got, lc, F32, ep);
    let eps = f32::EPSILON;
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let x = bi * m * n + i * n + j;
                let bias = if flags.0 { cb[j].abs() } else { 0.0 }
                    + if flags.1 { rb[i].abs() } else { 0.0 }
                    + if with_residual {
                        res[i * (n + 3) + j].abs()
                    } else {
                        0.0
                    };
                let tol = 1.2 * 4.0 * ((k as f32).sqrt() + 2.0) * eps * (mag[x] + bias)
                    + 1e-6 * (1.0 + want[x].abs());
                if (got[x] - want[x]).abs() > tol || got[x].is_nan() {
                    return Err(format!(
                        "{kernel:?} {dims:?} {modes:?} flags {flags:?}: C[{bi},{i},{j}] = {} want {} (tol {tol})",
                        got[x], want[x]
                    ));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fused_epilogue_matches_reference(
        batch in 1usize..=2,
        m in size(40),
        n in size(70),
        k in prop_oneof![1 => Just(0usize), 8 => 1usize..=130],
        modes in (mode(), mode()),
        flags in (any::<bool>(), any::<bool>(), any::<bool>()),
        residual in any::<bool>(),
        seed in any::<u64>(),
    ) {
        for kernel in kernels(Precision::F32) {
            check_fused_res(kernel, GemmDims { batch, m, n, k }, modes, flags, residual, seed)
                .map_err(TestCaseError::fail)?;
        }
    }
}

/// The fused epilogue on shapes that take the multi-threaded paths (tasks split over m and n).
#[test]
fn fused_epilogue_large_shapes() {
    for (m, n, k) in [(300, 200, 100), (64, 4100, 96), (2000, 40, 70)] {
        for kernel in kernels(Precision::F32) {
            let dims = GemmDims { batch: 1, m, n, k };
            let modes = (Mode::RowMajor, Mode::Transposed);
            check_fused_res(kernel, dims, modes, (true, true, true), true, 7).unwrap();
        }
    }
}

/// One case of the in-place A path against forced packing: A is an `m × k` column window (from
/// column `col0`) of a row-major matrix with row stride `lda ≥ col0 + k`.
#[derive(Clone, Debug)]
struct DirectCase {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    col0: usize,
    accumulate: bool,
    /// (column bias, row bias, residual, GELU); all false: a plain GEMM (with `accumulate`).
    ep: (bool, bool, bool, bool),
    seed: u64,
}

/// The AVX-512 f32 kernel reads row-major A in place (no packing); with `force_pack_a` it packs
/// A as before. Both run the same micro-kernel code in the same order, so C must be identical
/// bit for bit, and both must match the reference within the tolerances above (plain: `check`;
/// with an epilogue: `check_fused_res`). C has padding columns, which must stay untouched.
fn check_direct_a(case: &DirectCase) -> Result<(), String> {
    let DirectCase {
        m,
        n,
        k,
        lda,
        col0,
        accumulate,
        ep: (cbias, rbias, residual, gelu),
        seed,
    } = *case;
    let kernel = Kernel::Avx512;
    let dims = GemmDims { batch: 1, m, n, k };
    let la = Layout {
        batch_stride: m * lda,
        row_stride: lda,
        col_stride: 1,
    };
    let lb = Layout::transposed(n, k);
    let ldc = n + 3;
    let lc = Layout {
        batch_stride: m * ldc,
        row_stride: ldc,
        col_stride: 1,
    };
    let a_full = fill(m * lda, seed);
    let a = &a_full[col0..];
    let b = fill(k * n, seed ^ 0xB);
    let c0 = fill(m * ldc, seed ^ 0xC);
    let (cb, rb, res) = (
        fill(n, seed ^ 0xD),
        fill(m, seed ^ 0xE),
        fill(m * ldc, seed ^ 0xF),
    );
    let ep = gemm::Epilogue {
        col_bias: cbias.then_some(&cb[..]),
        row_bias: rbias.then_some(&rb[..]),
        residual: residual.then_some((&res[..], ldc)),
        gelu,
    };
    let fused = !ep.is_identity();

    let blk = default_blocking(kernel, F32);
    let run = |force_pack_a: bool| {
        let blk = Blocking {
            force_pack_a,
            ..blk
        };
        let mut c = c0.clone();
        if fused {
            gemm::gemm_fused_tuned(kernel, blk, dims, a, la, &b, lb, &mut c, lc, F32, ep);
        } else {
            gemm_tuned(
                kernel, blk, dims, a, la, &b, lb, &mut c, lc, accumulate, F32,
            );
        }
        c
    };
    let (direct, packed) = (run(false), run(true));
    if let Some(x) = (0..direct.len()).find(|&x| direct[x].to_bits() != packed[x].to_bits()) {
        return Err(format!(
            "{case:?}: direct C[{x}] = {:e} != packed {:e}",
            direct[x], packed[x]
        ));
    }

    let mut want = c0.clone();
    if fused {
        reference::gemm_fused(dims, a, la, &b, lb, &mut want, lc, ep);
    } else {
        reference::gemm(dims, a, la, &b, lb, &mut want, lc, accumulate);
    }
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let mut mag = vec![0.0f32; want.len()];
    reference::gemm(dims, &abs(a), la, &abs(&b), lb, &mut mag, lc, false);
    let eps = f32::EPSILON;
    let ksq = (k as f32).sqrt() + 2.0;
    for (x, &got) in direct.iter().enumerate() {
        let (i, j) = (x / ldc, x % ldc);
        let tol = if j >= n {
            0.0 // padding: untouched
        } else if fused {
            let bias = if cbias { cb[j].abs() } else { 0.0 }
                + if rbias { rb[i].abs() } else { 0.0 }
                + if residual { res[x].abs() } else { 0.0 };
            1.2 * 4.0 * ksq * eps * (mag[x] + bias) + 1e-6 * (1.0 + want[x].abs())
        } else {
            4.0 * ksq * eps * mag[x]
                + if accumulate {
                    2.0 * eps * c0[x].abs()
                } else {
                    0.0
                }
        };
        let err = (got - want[x]).abs();
        if err.is_nan() || err > tol {
            return Err(format!(
                "{case:?}: C[{i},{j}] = {got} want {} (err {err:e} > tol {tol:e})",
                want[x]
            ));
        }
    }
    Ok(())
}

fn direct_case() -> impl Strategy<Value = DirectCase> {
    (
        // m: whole 12-row panels, partial last panels, and more rows than one task block.
        prop_oneof![1 => 1usize..=24, 2 => 1usize..=260],
        size(80),
        // k: one KC slice (KC = 384), or several with a short last one.
        prop_oneof![1 => 1usize..=64, 1 => 1usize..=384, 2 => 385usize..=900],
        // Extra columns right of the window and the window's first column.
        (prop_oneof![1 => Just(0usize), 2 => 1usize..=40], 0usize..=7),
        any::<bool>(),
        prop_oneof![
            1 => Just((false, false, false, false)),
            1 => (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        ],
        any::<u64>(),
    )
        .prop_map(|(m, n, k, (pad, col0), accumulate, ep, seed)| DirectCase {
            m,
            n,
            k,
            lda: col0 + k + pad,
            col0,
            accumulate,
            ep,
            seed,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn direct_a_matches_packed(case in direct_case()) {
        if !Kernel::Avx512.is_available() {
            return Ok(());
        }
        check_direct_a(&case).map_err(TestCaseError::fail)?;
    }
}

/// Row strides the direct path declines (multiples of 2 KiB: k = 512, 1024, ...) still give
/// the packed result, and the shapes of the LiteMedSAM GEMMs where it runs match too.
#[test]
fn direct_a_strides() {
    if !Kernel::Avx512.is_available() {
        eprintln!("SKIPPED: no AVX-512F");
        return;
    }
    for (m, n, k) in [
        (100, 40, 512),
        (37, 33, 1024),
        (60, 70, 768),
        (130, 64, 640),
    ] {
        for ep in [(false, false, false, false), (true, false, true, true)] {
            let case = DirectCase {
                m,
                n,
                k,
                lda: k,
                col0: 0,
                accumulate: true,
                ep,
                seed: (m * 7 + k) as u64,
            };
            check_direct_a(&case).unwrap();
        }
    }
}

/// `x·Wᵀ` with at most 16 rows (a decoder's tokens) reads A and W in place instead of packing
/// (`SMALL_M` in the driver). Its rows must have the same bits as the same rows inside a taller
/// GEMM, which takes the packed path: same FMA chain per element, same k slices, same epilogue.
fn small_m_matches_packed_rows(m: usize, n: usize, k: usize, seed: u64, gelu: bool) {
    let tall = m + 20;
    let a = fill(tall * k, seed);
    let w = fill(n * k, seed + 1); // W [n, k]: B = Wᵀ with k contiguous
    let bias = fill(n, seed + 2);
    let res = fill(tall * n, seed + 3);
    let lb = Layout {
        batch_stride: 0,
        row_stride: 1,
        col_stride: k,
    };
    for kernel in kernels(F32) {
        let run = |rows: usize| {
            let mut c = vec![f32::NAN; rows * n];
            let ep = gemm::Epilogue {
                col_bias: Some(&bias),
                residual: Some((&res, n)),
                gelu,
                ..gemm::Epilogue::default()
            };
            let dims = GemmDims {
                batch: 1,
                m: rows,
                n,
                k,
            };
            let la = Layout::row_major(rows, k);
            let lc = Layout::row_major(rows, n);
            gemm::gemm_fused_with(
                kernel,
                dims,
                &a[..rows * k],
                la,
                &w,
                lb,
                &mut c,
                lc,
                F32,
                ep,
            );
            c
        };
        let (small, packed) = (run(m), run(tall));
        for (i, (s, p)) in small.iter().zip(&packed).enumerate() {
            assert_eq!(
                s.to_bits(),
                p.to_bits(),
                "{kernel:?} m={m} n={n} k={k}: C[{}, {}] = {s} small-m vs {p} packed",
                i / n,
                i % n
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn small_m_rows_equal_packed_rows(
        m in 1usize..=16, n in 1usize..80, k in 1usize..900, seed in 0u64..1000, gelu in any::<bool>()
    ) {
        small_m_matches_packed_rows(m, n, k, seed, gelu);
    }
}

/// The decoder shapes that motivated the path (MedSAM2: hypernetwork MLPs on one token, the
/// two-way transformer's 2048-wide MLP on 9).
#[test]
fn small_m_decoder_shapes() {
    small_m_matches_packed_rows(1, 256, 256, 5, false);
    small_m_matches_packed_rows(9, 2048, 256, 6, true);
    small_m_matches_packed_rows(9, 256, 2048, 7, false);
}
