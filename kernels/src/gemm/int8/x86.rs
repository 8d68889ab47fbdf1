//! `vpdpbusd` micro-kernels. Per k quad each kernel loads the panel's 32 columns × 4 i8 (two
//! zmm, or four ymm) and broadcasts 4 u8 of each A row as one i32 (folded into the instruction
//! as a memory broadcast), so every instruction does 16 (or 8) four-term dot products.

use super::NR;
use std::arch::x86_64::*;

/// 12 rows × 32 columns: 24 zmm accumulators, 2 for B, room for the broadcast.
pub(super) const AVX512_VNNI_MR: usize = 12;

/// 6 rows × 16 columns per pass (12 ymm accumulators, 2 for B, 1 broadcast of 16 registers);
/// a 32-column panel takes two passes over k.
pub(super) const AVX_VNNI_MR: usize = 6;

/// The 4 u8 of row `i` at k quad `q` of an `[kq][mr][4]` panel, as one i32.
#[inline(always)]
unsafe fn bcast_a(a: *const u8, mr: usize, i: usize, q: usize) -> i32 {
    (a.add((q * mr + i) * 4) as *const i32).read_unaligned()
}

/// An i32 vector register type with `vpdpbusd`.
trait I32x: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: i32) -> Self;
    unsafe fn load(p: *const i8) -> Self;
    unsafe fn store(self, p: *mut i32);
    /// `self + Σ_4 u8(a) · i8(b)` per i32 lane.
    unsafe fn dpbusd(self, a: Self, b: Self) -> Self;
}

/// `impl I32x` for one vector type, from its intrinsics.
macro_rules! impl_i32x {
    ($t:ty, $lanes:expr, $zero:ident, $splat:ident, $load:ident, $store:ident, $dpbusd:ident) => {
        impl I32x for $t {
            const LANES: usize = $lanes;
            #[inline(always)]
            unsafe fn zero() -> Self {
                $zero()
            }
            #[inline(always)]
            unsafe fn splat(x: i32) -> Self {
                $splat(x)
            }
            #[inline(always)]
            unsafe fn load(p: *const i8) -> Self {
                $load(p as *const _)
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut i32) {
                $store(p as *mut _, self)
            }
            #[inline(always)]
            unsafe fn dpbusd(self, a: Self, b: Self) -> Self {
                $dpbusd(self, a, b)
            }
        }
    };
}

impl_i32x!(
    __m512i,
    16,
    _mm512_setzero_si512,
    _mm512_set1_epi32,
    _mm512_loadu_si512,
    _mm512_storeu_si512,
    _mm512_dpbusd_epi32
);
impl_i32x!(
    __m256i,
    8,
    _mm256_setzero_si256,
    _mm256_set1_epi32,
    _mm256_loadu_si256,
    _mm256_storeu_si256,
    _mm256_dpbusd_avx_epi32
);

/// Columns `col0..col0 + 2·LANES` of the `MR × NR` i32 tile: per k quad, two vectors of B and one
/// broadcast of A per row.
#[inline(always)]
unsafe fn vnni_tile<V: I32x, const MR: usize>(
    kq: usize,
    a: *const u8,
    b: *const i8,
    out: *mut i32,
    col0: usize,
) {
    let b = b.add(4 * col0);
    let mut r = [[V::zero(); 2]; MR];
    for q in 0..kq {
        let b0 = V::load(b.add(q * 4 * NR));
        let b1 = V::load(b.add(q * 4 * NR + 4 * V::LANES));
        for (i, ri) in r.iter_mut().enumerate() {
            let ai = V::splat(bcast_a(a, MR, i, q));
            ri[0] = ri[0].dpbusd(ai, b0);
            ri[1] = ri[1].dpbusd(ai, b1);
        }
    }
    for (i, ri) in r.iter().enumerate() {
        ri[0].store(out.add(i * NR + col0));
        ri[1].store(out.add(i * NR + col0 + V::LANES));
    }
}

/// # Safety
/// The CPU has AVX512-VNNI; see [`super::Int8MicroKernel`] for the buffers (MR = 12).
pub(super) unsafe fn ukr_avx512_vnni(kq: usize, a: *const u8, b: *const i8, out: *mut i32) {
    ukr_avx512_vnni_impl(kq, a, b, out)
}

#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn ukr_avx512_vnni_impl(kq: usize, a: *const u8, b: *const i8, out: *mut i32) {
    vnni_tile::<__m512i, AVX512_VNNI_MR>(kq, a, b, out, 0)
}

/// # Safety
/// The CPU has AVX-VNNI; see [`super::Int8MicroKernel`] for the buffers (MR = 6).
pub(super) unsafe fn ukr_avx_vnni(kq: usize, a: *const u8, b: *const i8, out: *mut i32) {
    ukr_avx_vnni_impl(kq, a, b, out, 0);
    ukr_avx_vnni_impl(kq, a, b, out, 16);
}

/// Columns `half..half+16` of the panel.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn ukr_avx_vnni_impl(kq: usize, a: *const u8, b: *const i8, out: *mut i32, half: usize) {
    vnni_tile::<__m256i, AVX_VNNI_MR>(kq, a, b, out, half)
}
