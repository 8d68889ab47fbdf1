//! Helpers for tests and benchmarks (this crate's, `medsam`'s and the benches'), written once:
//! seeded data generators and a tolerance check. Not part of the API; the generators are kept
//! exactly as the tests were written with them, so every test sees the data it always saw.

/// SplitMix64's increment (2⁶⁴ divided by the golden ratio), also used to spread seeds.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One SplitMix64 step: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 stream of f32 values uniform in [-1, 1) (24-bit steps, exact in f32).
pub struct Rng(pub u64);

impl Rng {
    pub fn f(&mut self) -> f32 {
        (splitmix64(&mut self.0) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

/// `n` values uniform in [0, 1) from xorshift64 (13, 7, 17) seeded with `seed·γ | 1`.
pub fn unit(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(GOLDEN_GAMMA) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// `n` values uniform in [-scale, scale) from [`unit`].
pub fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    unit(n, seed)
        .into_iter()
        .map(|u| (u * 2.0 - 1.0) * scale)
        .collect()
}

/// `n` values uniform in [-1, 1) from xorshift64* (12, 25, 27) seeded with `seed·γ | 1`: the
/// GEMM tests' and the benchmarks' data.
pub fn data_star(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(GOLDEN_GAMMA) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Panics naming the first element where `|got − want| > atol + rtol·|want|`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}
