//! Shared helpers for the non-GEMM kernels: branch-free f32 `exp`/`erf` that the compiler can
//! vectorise, and a dispatch macro that compiles one `#[inline(always)]` body several times
//! (AVX-512, AVX2+FMA, portable) and picks a version at run time from [`crate::cpu::features`].

/// Defines `fn $name(args)` that runs `$body` compiled for the best instruction set available.
/// Every argument must be a plain `ident: Type` (no patterns, no generics).
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident ( $($a:ident : $t:ty),* $(,)? ) $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v512($($a: $t),*) { body($($a),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v256($($a: $t),*) { body($($a),*) }
            #[cfg(target_arch = "x86_64")]
            {
                let f = $crate::cpu::features();
                if f.avx512f {
                    // SAFETY: the CPU supports AVX-512F (run-time detected).
                    return unsafe { v512($($a),*) };
                }
                if f.avx2_fma {
                    // SAFETY: the CPU supports AVX2 and FMA (run-time detected).
                    return unsafe { v256($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use simd_dispatch;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4; // 355/512, exact in 9 bits so n*LN2_HI is exact
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` in f32, relative error ≲ 2 ulp for x in [-87, 88]; inputs are clamped to that range
/// (so `exp(-inf)` gives ~1e-38 rather than 0, which is harmless for softmax weights).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    // `t` holds round(x·log2 e) in its low mantissa bits; reading them back as an integer (instead
    // of `n as i32`, whose saturating conversion LLVM does not vectorise) keeps the loop in SIMD.
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor polynomial of degree 7 on |r| <= ln2/2: truncation error < 6e-9.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()); // n as a two's-complement u32
    let bits = ni.wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

/// Chebyshev-fitted `erfc` (Press et al., "erfcc"): fractional error < 1.2e-7 for all x >= 0.
/// Coefficients of `ln(erfc(z)/t) + z²` as a polynomial in `t = 1/(1 + z/2)`.
const ERFC_C: [f64; 10] = [
    -1.265_512_23,
    1.000_023_68,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_203_98,
    1.488_515_87,
    -0.822_152_23,
    0.170_872_77,
];

/// Numerator of the f32 erf: `erf(x) ≈ x·P(x²)/Q(x²)` on |x| ≤ [`ERF_CLAMP`], coefficients
/// fitted for this crate (Sanathanan–Koerner, then Lawson iterations toward minimax, on Chebyshev
/// nodes; fit script in `kernels/tools/fit_erf.py`). Ascending powers of x².
const ERF_P: [f32; 7] = [
    1.128_378_7,
    0.208_997_44,
    0.051_777_58,
    0.004_090_291,
    0.000_151_346_35,
    -1.991_574_7e-6,
    1.964_158e-8,
];
/// Denominator (ascending powers of x²; Q ≥ 1 on the whole range, so no pole).
const ERF_Q: [f32; 5] = [
    1.0,
    0.518_547_5,
    0.118_754_59,
    0.015_132_187,
    0.001_051_100_1,
];
/// |erf(x)| rounds to 1 in f32 beyond this.
const ERF_CLAMP: f32 = 3.95;

/// erf in f32 arithmetic (branch-free, vectorisable): one rational function, no `exp`;
/// absolute error ≲ 4.5e-7 (f32 rounding included).
///
/// The Horner steps are fused multiply-adds (`mul_add`, one rounding each, so every ISA path
/// gives the same bits): GELU epilogues are a tenth of LiteMedSAM's encoder time and the fused
/// steps make this loop ~20% faster than separate multiplies and adds. On a target without FMA
/// the portable fallback pays for a software `fmaf`.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-ERF_CLAMP, ERF_CLAMP);
    let t = x * x;
    let mut p = ERF_P[6];
    for &c in ERF_P[..6].iter().rev() {
        p = p.mul_add(t, c);
    }
    let mut q = ERF_Q[4];
    for &c in ERF_Q[..4].iter().rev() {
        q = q.mul_add(t, c);
    }
    // The fit overshoots 1 by an ulp or two near the clamp.
    (x * p / q).clamp(-1.0, 1.0)
}

/// erf in f64 (same fit, evaluated in f64 with the libm exp); absolute error < 1.2e-7.
pub(crate) fn erf_f64(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = ERFC_C[9];
    for c in ERFC_C[..9].iter().rev() {
        p = p * t + c;
    }
    let e = 1.0 - t * (p - z * z).exp();
    if x < 0.0 {
        -e
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
    }

    /// The rational fit over a dense sweep (beyond the clamp too), against the f64 oracle
    /// (itself within 1.2e-7): the fit's own error is ≲ 4.5e-7.
    #[test]
    fn erf_dense_sweep() {
        let mut worst = 0.0f64;
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            let err = (erf_f32(x) as f64 - erf_f64(x as f64)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 6e-7, "erf_f32 max abs error {worst:e}");
        assert_eq!(erf_f32(40.0), 1.0);
        assert_eq!(erf_f32(-40.0), -1.0);
    }

    #[test]
    fn erf_known_values() {
        // High-precision values of erf.
        let table = [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (1.5, 0.966_105_146_475_310_7),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (5.0, 0.999_999_999_998_462_5),
        ];
        for (x, want) in table {
            for s in [1.0, -1.0] {
                let e64 = erf_f64(s * x);
                assert!(
                    (e64 - s * want).abs() < 1.3e-7,
                    "erf_f64({}) = {e64}",
                    s * x
                );
                let e32 = erf_f32((s * x) as f32) as f64;
                assert!((e32 - s * want).abs() < 5e-7, "erf_f32({}) = {e32}", s * x);
            }
        }
    }
}

/// A raw pointer that may be shared between rayon tasks which write provably disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
// SAFETY: users only write disjoint index sets from different threads (documented at each use).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    pub(crate) fn new(s: &mut [f32]) -> Self {
        SyncPtr(s.as_mut_ptr())
    }
    /// # Safety
    /// `off..off+len` must be in bounds of the original slice and not accessed concurrently.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

impl SyncPtr {
    /// The pointer advanced by `off` elements.
    /// # Safety
    /// `off` must be within the original slice.
    #[inline(always)]
    pub(crate) unsafe fn add(&self, off: usize) -> SyncPtr {
        SyncPtr(self.0.add(off))
    }
}

/// Lanes of the split accumulators below: enough independent chains for the vectoriser (strict
/// IEEE order would otherwise force a scalar loop).
const LANES: usize = 16;

/// Σ x with 16 interleaved partial sums (vectorises; not bitwise equal to a sequential sum).
#[inline(always)]
pub(crate) fn sum_f32(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ch = x.chunks_exact(LANES);
    for c in &mut ch {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let mut s = ch.remainder().iter().sum::<f32>();
    for a in acc {
        s += a;
    }
    s
}

/// Σ of 16 lane partials as a balanced tree (depth 4) rather than a chain of 16 dependent adds:
/// in a row-sized reduction the chain's latency, not the arithmetic, sets the time.
#[inline(always)]
pub(crate) fn reduce16(mut a: [f32; 16]) -> f32 {
    let mut w = 8;
    while w > 0 {
        for l in 0..w {
            a[l] += a[l + w];
        }
        w /= 2;
    }
    a[0]
}

/// Σ a·b with 16 interleaved partial sums.
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut s: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for v in acc {
        s += v;
    }
    s
}

/// max x (−∞ for an empty slice), lane-split so it vectorises.
#[inline(always)]
pub(crate) fn max_f32(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut ch = x.chunks_exact(LANES);
    for c in &mut ch {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    let mut m = ch
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for a in acc {
        m = m.max(a);
    }
    m
}
