//! x86-64 SIMD micro-kernels. C is row-major, so each kernel keeps an `MR × NR` tile of C in
//! registers as MR rows of NR/lanes vectors: per k step it loads one row of the packed B panel
//! (NR floats, vector loads) and broadcasts MR values of the packed A panel (folded into the
//! FMA as a memory broadcast operand), issuing MR·NR/lanes independent FMAs — enough to cover the
//! FMA latency × throughput product of both FMA pipes.

use super::driver::MicroKernel;
use super::pack::PackFormat;
use super::Blocking;
use std::arch::x86_64::*;

pub(crate) fn avx2_micro_kernel(format: PackFormat) -> MicroKernel {
    MicroKernel {
        mr: 6,
        nr: 16,
        format,
        a_row_major: false,
        k_align: 1,
        func: ukr_avx2,
        blocking: Blocking {
            kc: 256,
            mc: 120,
            nc: 4096,
            nl2: 512,
        },
    }
}

/// 12 rows × 32 columns: 24 zmm accumulators + 2 for B, leaving room for the broadcasts.
const AVX512_MR: usize = 12;

pub(crate) fn avx512_micro_kernel(format: PackFormat) -> MicroKernel {
    MicroKernel {
        mr: AVX512_MR,
        nr: 32,
        format,
        a_row_major: false,
        k_align: 1,
        func: ukr_avx512::<AVX512_MR>,
        blocking: Blocking {
            kc: 256,
            mc: 192,
            nc: 4096,
            nl2: 512,
        },
    }
}

pub(crate) fn avx512bf16_micro_kernel() -> MicroKernel {
    MicroKernel {
        mr: AVX512_MR,
        nr: 32,
        format: PackFormat::Bf16Pairs,
        a_row_major: false,
        k_align: 1,
        func: ukr_avx512bf16::<AVX512_MR>,
        blocking: Blocking {
            kc: 512,
            mc: 192,
            nc: 4096,
            nl2: 512,
        },
    }
}

/// Prefetches the C tile so its load after the k loop does not stall.
#[inline(always)]
unsafe fn prefetch_c(c: *mut f32, ldc: usize, rows: usize, bytes: usize) {
    for i in 0..rows {
        let row = c.add(i * ldc) as *const i8;
        for off in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(row.add(off));
        }
    }
}

/// # Safety
/// CPU has AVX2+FMA; `a` holds `kp*6` and `b` `kp*16` packed f32; `c` is a 6×16 tile.
unsafe fn ukr_avx2(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, acc: bool) {
    ukr_avx2_impl(kp, a as *const f32, b as *const f32, c, ldc, acc)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn ukr_avx2_impl(
    kp: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 6;
    const NR: usize = 16;
    prefetch_c(c, ldc, MR, NR * 4);
    let mut r = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..kp {
        let b0 = _mm256_loadu_ps(b.add(p * NR));
        let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
        for (i, ri) in r.iter_mut().enumerate() {
            let ai = _mm256_broadcast_ss(&*a.add(p * MR + i));
            ri[0] = _mm256_fmadd_ps(ai, b0, ri[0]);
            ri[1] = _mm256_fmadd_ps(ai, b1, ri[1]);
        }
    }
    for (i, ri) in r.iter().enumerate() {
        let crow = c.add(i * ldc);
        for (h, &v) in ri.iter().enumerate() {
            let p = crow.add(8 * h);
            let v = if accumulate {
                _mm256_add_ps(v, _mm256_loadu_ps(p))
            } else {
                v
            };
            _mm256_storeu_ps(p, v);
        }
    }
}

/// # Safety
/// CPU has AVX-512F; `a` holds `kp*MR` and `b` `kp*32` packed f32; `c` is an MR×32 tile.
unsafe fn ukr_avx512<const MR: usize>(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    ukr_avx512_impl::<MR>(kp, a as *const f32, b as *const f32, c, ldc, acc)
}

#[target_feature(enable = "avx512f")]
unsafe fn ukr_avx512_impl<const MR: usize>(
    kp: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const NR: usize = 32;
    prefetch_c(c, ldc, MR, NR * 4);
    let mut r = [[_mm512_setzero_ps(); 2]; MR];
    let step = |r: &mut [[__m512; 2]; MR], p: usize| {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        for (i, ri) in r.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*a.add(p * MR + i));
            ri[0] = _mm512_fmadd_ps(ai, b0, ri[0]);
            ri[1] = _mm512_fmadd_ps(ai, b1, ri[1]);
        }
    };
    // Unrolled by 4 so loop overhead and address updates are amortised.
    let mut p = 0;
    while p + 4 <= kp {
        step(&mut r, p);
        step(&mut r, p + 1);
        step(&mut r, p + 2);
        step(&mut r, p + 3);
        p += 4;
    }
    while p < kp {
        step(&mut r, p);
        p += 1;
    }
    store_tile_512(&r, c, ldc, accumulate);
}

#[inline(always)]
unsafe fn store_tile_512<const MR: usize>(
    r: &[[__m512; 2]; MR],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for (i, ri) in r.iter().enumerate() {
        let crow = c.add(i * ldc);
        for (h, &v) in ri.iter().enumerate() {
            let p = crow.add(16 * h);
            let v = if accumulate {
                _mm512_add_ps(v, _mm512_loadu_ps(p))
            } else {
                v
            };
            _mm512_storeu_ps(p, v);
        }
    }
}

/// # Safety
/// CPU has AVX512-BF16; `a` holds `kp*MR` and `b` `kp*32` packed bf16 pairs; `c` is MR×32.
unsafe fn ukr_avx512bf16<const MR: usize>(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    ukr_avx512bf16_impl::<MR>(kp, a, b, c, ldc, acc)
}

/// Same register tile as the f32 kernel, but each k unit is a pair of bf16 values:
/// `vdpbf16ps` adds `a[2u]·b[2u] + a[2u+1]·b[2u+1]` into each f32 lane, doing twice the work
/// of an f32 FMA per instruction.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn ukr_avx512bf16_impl<const MR: usize>(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const NR: usize = 32;
    prefetch_c(c, ldc, MR, NR * 4);
    let mut r = [[_mm512_setzero_ps(); 2]; MR];
    let step = |r: &mut [[__m512; 2]; MR], p: usize| {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        for (i, ri) in r.iter_mut().enumerate() {
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
            ri[0] = _mm512_dpbf16_ps(ri[0], ai, b0);
            ri[1] = _mm512_dpbf16_ps(ri[1], ai, b1);
        }
    };
    let mut p = 0;
    while p + 4 <= kp {
        step(&mut r, p);
        step(&mut r, p + 1);
        step(&mut r, p + 2);
        step(&mut r, p + 3);
        p += 4;
    }
    while p < kp {
        step(&mut r, p);
        p += 1;
    }
    store_tile_512(&r, c, ldc, accumulate);
}
