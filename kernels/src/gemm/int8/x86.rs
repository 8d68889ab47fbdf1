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

/// # Safety
/// The CPU has AVX512-VNNI; see [`super::Int8MicroKernel`] for the buffers (MR = 12).
pub(super) unsafe fn ukr_avx512_vnni(kq: usize, a: *const u8, b: *const i8, out: *mut i32) {
    ukr_avx512_vnni_impl(kq, a, b, out)
}

#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn ukr_avx512_vnni_impl(kq: usize, a: *const u8, b: *const i8, out: *mut i32) {
    const MR: usize = AVX512_VNNI_MR;
    let mut r = [[_mm512_setzero_si512(); 2]; MR];
    let step = |r: &mut [[__m512i; 2]; MR], q: usize| {
        let b0 = _mm512_loadu_si512(b.add(q * 4 * NR) as *const _);
        let b1 = _mm512_loadu_si512(b.add(q * 4 * NR + 64) as *const _);
        for (i, ri) in r.iter_mut().enumerate() {
            let ai = _mm512_set1_epi32(bcast_a(a, MR, i, q));
            ri[0] = _mm512_dpbusd_epi32(ri[0], ai, b0);
            ri[1] = _mm512_dpbusd_epi32(ri[1], ai, b1);
        }
    };
    for q in 0..kq {
        step(&mut r, q);
    }
    for (i, ri) in r.iter().enumerate() {
        _mm512_storeu_si512(out.add(i * NR) as *mut _, ri[0]);
        _mm512_storeu_si512(out.add(i * NR + 16) as *mut _, ri[1]);
    }
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
    const MR: usize = AVX_VNNI_MR;
    let b = b.add(4 * half);
    let mut r = [[_mm256_setzero_si256(); 2]; MR];
    for q in 0..kq {
        let b0 = _mm256_loadu_si256(b.add(q * 4 * NR) as *const _);
        let b1 = _mm256_loadu_si256(b.add(q * 4 * NR + 32) as *const _);
        for (i, ri) in r.iter_mut().enumerate() {
            let ai = _mm256_set1_epi32(bcast_a(a, MR, i, q));
            ri[0] = _mm256_dpbusd_avx_epi32(ri[0], ai, b0);
            ri[1] = _mm256_dpbusd_avx_epi32(ri[1], ai, b1);
        }
    }
    for (i, ri) in r.iter().enumerate() {
        _mm256_storeu_si256(out.add(i * NR + half) as *mut _, ri[0]);
        _mm256_storeu_si256(out.add(i * NR + half + 8) as *mut _, ri[1]);
    }
}
