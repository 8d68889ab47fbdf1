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

/// `n` values in [-1, 1] from xorshift32 (13, 17, 5) seeded with `seed·2654435761`: the timing
/// examples' data.
pub fn data_u32(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Process CPU time (user + system) in seconds, from /proc/self/stat (100 Hz ticks); 0 where
/// that file cannot be read. Unlike wall time it is little disturbed by other load.
pub fn cpu_time() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// Wall seconds of `reps` calls of `f`, one a call, sorted ascending.
pub fn sorted_times(reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = std::time::Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t
}

/// `f()` run in a fresh rayon pool of `threads` threads: for the tests that results do not
/// depend on the thread count.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    pool.expect("thread pool").install(f)
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

/// Lengths of (x, w, y) for a conv2d (`transpose = false`) or conv_transpose2d geometry.
pub fn conv_sizes(g: &crate::conv::Conv2dGeom, transpose: bool) -> (usize, usize, usize) {
    let (oh, ow) = if transpose {
        g.transpose_out_hw()
    } else {
        g.out_hw()
    };
    let w_per_group = if transpose { g.c_out } else { g.c_in } / g.groups;
    let w_rows = if transpose { g.c_in } else { g.c_out };
    let x = g.n * g.c_in * g.h * g.w;
    (
        x,
        w_rows * w_per_group * g.kh * g.kw,
        g.n * g.c_out * oh * ow,
    )
}

/// `[y, dx, dw, db]` of conv2d or conv_transpose2d from the fast (`fast`) or the reference
/// implementation. The outputs start filled with 7.0, so a pass that fails to overwrite shows.
pub fn conv_passes(
    fast: bool,
    transpose: bool,
    g: crate::conv::Conv2dGeom,
    [x, w, b, dy]: [&[f32]; 4],
) -> [Vec<f32>; 4] {
    use crate::conv::{self, reference};
    let (nx, nw, ny) = conv_sizes(&g, transpose);
    let [mut y, mut dx, mut dw, mut db] = [ny, nx, nw, g.c_out].map(|n| vec![7.0f32; n]);
    // The three passes of one module's conv2d or conv_transpose2d.
    macro_rules! passes {
        ($m:ident: $fwd:ident, $bwd_x:ident, $bwd_w:ident) => {{
            $m::$fwd(g, x, w, Some(b), &mut y);
            $m::$bwd_x(g, w, dy, &mut dx);
            $m::$bwd_w(g, x, dy, &mut dw, Some(&mut db));
        }};
    }
    match (fast, transpose) {
        (true, false) => {
            passes! { conv: conv2d_forward, conv2d_backward_input, conv2d_backward_weight }
        }
        (false, false) => {
            passes! { reference: conv2d_forward, conv2d_backward_input, conv2d_backward_weight }
        }
        (true, true) => {
            passes! { conv: conv_transpose2d_forward, conv_transpose2d_backward_input, conv_transpose2d_backward_weight }
        }
        (false, true) => {
            passes! { reference: conv_transpose2d_forward, conv_transpose2d_backward_input, conv_transpose2d_backward_weight }
        }
    }
    [y, dx, dw, db]
}
