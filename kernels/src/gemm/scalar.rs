//! Portable micro-kernel: plain Rust over a 4×16 register tile, which the compiler may
//! auto-vectorise with whatever baseline SIMD the target has.

use super::driver::MicroKernel;
use super::pack::PackFormat;
use super::Blocking;

const MR: usize = 4;
const NR: usize = 16;

pub(crate) fn micro_kernel(format: PackFormat) -> MicroKernel {
    MicroKernel {
        mr: MR,
        nr: NR,
        format,
        a_row_major: false,
        k_align: 1,
        func: ukr,
        direct_a: None,
        small_m: None,
        blocking: Blocking {
            kc: 256,
            mc: 128,
            nc: 4096,
            nl2: 1024,
            force_pack_a: false,
        },
    }
}

/// # Safety
/// `a` holds `kp*MR` and `b` `kp*NR` packed f32 units; `c` is an `MR×NR` tile with row stride `ldc`.
unsafe fn ukr(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, accumulate: bool) {
    let a = std::slice::from_raw_parts(a as *const f32, kp * MR);
    let b = std::slice::from_raw_parts(b as *const f32, kp * NR);
    let mut acc = [[0.0f32; NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for i in 0..MR {
            for j in 0..NR {
                // Not `mul_add`: without hardware FMA in the baseline target it becomes a libm call.
                acc[i][j] += ak[i] * bk[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let crow = std::slice::from_raw_parts_mut(c.add(i * ldc), NR);
        for (cv, &v) in crow.iter_mut().zip(row) {
            *cv = if accumulate { *cv + v } else { v };
        }
    }
}
