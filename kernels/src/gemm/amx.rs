//! AMX (`tdpbf16ps`) micro-kernel: a 32×32 C tile held in four 16×16 f32 tile registers.
//!
//! Tile registers: tmm0..3 = C quadrants, tmm4/5 = A rows 0..15 / 16..31 (16 rows × 16 bf16
//! pairs), tmm6/7 = B columns 0..15 / 16..31 (16 k-pairs × 16 columns × 2 bf16). The packed B
//! panel (`[k-pair][32 columns]`, 128 bytes per k-pair) is exactly two side-by-side B tiles with
//! a 128-byte stride; A is packed row-major (`[row][k-pair]`) so a tile is 16 rows of 64 bytes.
//! AMX intrinsics are not stable in Rust, hence inline assembly.
//!
//! Only selected when `cpu::features().amx_bf16` is true (CPUID + granted XTILEDATA permission).

use super::driver::MicroKernel;
use super::pack::PackFormat;
use super::Blocking;
use std::arch::asm;

const MR: usize = 32;
const NR: usize = 32;
/// k-pairs per tile row: 64 bytes.
const KU: usize = 16;

pub(crate) fn micro_kernel() -> MicroKernel {
    MicroKernel {
        mr: MR,
        nr: NR,
        format: PackFormat::Bf16Pairs,
        a_row_major: true,
        k_align: KU,
        func: ukr,
        direct_a: None,
        small_m: None,
        blocking: Blocking {
            kc: 1024,
            mc: 256,
            nc: 4096,
            nl2: 256,
            force_pack_a: false,
        },
    }
}

/// The 64-byte `ldtilecfg` operand: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = {
    let mut colsb = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut t = 0;
    while t < 8 {
        colsb[t] = 64;
        rows[t] = 16;
        t += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb,
        rows,
    }
};

/// # Safety
/// AMX-BF16 is usable (CPUID + OS permission); `a` holds `32*kp` and `b` `kp*32` bf16 pairs with
/// `kp` a multiple of 16; `c` is a 32×32 tile with row stride `ldc`.
unsafe fn ukr(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, accumulate: bool) {
    debug_assert_eq!(kp % KU, 0);
    let cstride = ldc * 4;
    let c01 = c.add(16);
    let c10 = c.add(16 * ldc);
    let c11 = c.add(16 * ldc + 16);
    asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    if accumulate {
        asm!(
            "tileloadd tmm0, [{c00} + {s}*1]",
            "tileloadd tmm1, [{c01} + {s}*1]",
            "tileloadd tmm2, [{c10} + {s}*1]",
            "tileloadd tmm3, [{c11} + {s}*1]",
            c00 = in(reg) c, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
            s = in(reg) cstride,
            options(nostack, readonly),
        );
    } else {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }
    let astride = kp * 4;
    let bstride = NR * 4;
    for u in (0..kp).step_by(KU) {
        let a0 = a.add(u);
        let a1 = a.add(16 * kp + u);
        let b0 = b.add(u * NR);
        let b1 = b.add(u * NR + 16);
        asm!(
            "tileloadd tmm4, [{a0} + {as_}*1]",
            "tileloadd tmm5, [{a1} + {as_}*1]",
            "tileloadd tmm6, [{b0} + {bs}*1]",
            "tileloadd tmm7, [{b1} + {bs}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
            as_ = in(reg) astride, bs = in(reg) bstride,
            options(nostack, readonly),
        );
    }
    asm!(
        "tilestored [{c00} + {s}*1], tmm0",
        "tilestored [{c01} + {s}*1], tmm1",
        "tilestored [{c10} + {s}*1], tmm2",
        "tilestored [{c11} + {s}*1], tmm3",
        "tilerelease",
        c00 = in(reg) c, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
        s = in(reg) cstride,
        options(nostack),
    );
}
