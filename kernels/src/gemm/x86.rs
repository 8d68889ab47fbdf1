//! x86-64 SIMD micro-kernels. C is row-major, so each kernel keeps an `MR × NR` tile of C in
//! registers as MR rows of NR/lanes vectors: per k step it loads one row of the packed B panel
//! (NR floats, vector loads) and broadcasts MR values of the packed A panel (folded into the
//! FMA as a memory broadcast operand), issuing MR·NR/lanes independent FMAs — enough to cover the
//! FMA latency × throughput product of both FMA pipes.

use super::driver::{DirectAFn, MicroKernel, MicroKernelFn, SmallMFn, SmallMJob};
use super::pack::{PackFormat, PanelData};
use super::Blocking;
use std::arch::x86_64::*;

/// A micro-kernel of these kernels' common shape: k unit by unit (`k_align` 1), B panels shared
/// across the `nc`-wide block and swept `nl2` columns at a time.
fn x86_micro_kernel(
    (mr, nr): (usize, usize),
    format: PackFormat,
    a_row_major: bool,
    func: MicroKernelFn,
    (kc, mc): (usize, usize),
) -> MicroKernel {
    let blocking = Blocking {
        kc,
        mc,
        nc: 4096,
        nl2: 512,
        force_pack_a: false,
    };
    MicroKernel {
        mr,
        nr,
        format,
        a_row_major,
        k_align: 1,
        func,
        direct_a: None,
        small_m: None,
        blocking,
    }
}

pub(crate) fn avx2_micro_kernel(format: PackFormat) -> MicroKernel {
    x86_micro_kernel((6, 16), format, false, ukr_avx2, (256, 120))
}

/// 12 rows × 32 columns: 24 zmm accumulators + 2 for B, leaving room for the broadcasts.
const AVX512_MR: usize = 12;

pub(crate) fn avx512_micro_kernel(format: PackFormat) -> MicroKernel {
    let func = ukr_avx512::<AVX512_MR>;
    let mut ukr = x86_micro_kernel((AVX512_MR, 32), format, true, func, (384, 192));
    // Only plain f32 can skip packing A: `F32RoundBf16` rounds A while packing it.
    if format == PackFormat::F32 {
        ukr.direct_a = Some(ukr_avx512_lda::<AVX512_MR> as DirectAFn);
        ukr.small_m = Some(small_m_avx512 as SmallMFn);
    }
    ukr
}

/// [`SmallMFn`] on AVX-512: 16 columns of C at a time, B's 16 columns × 16 k values loaded as
/// rows and transposed in registers, one FMA chain per element in k order (the micro-kernel's).
///
/// # Safety
/// CPU has AVX-512F; `job.m ≤ SMALL_M`; rows `i < m` of A hold `kc` values at `a + i·lda`,
/// columns `j < n` of B `kc` values at `b + j·ldb`, and C is `m × n` with row stride `ldc`.
#[target_feature(enable = "avx512f")]
unsafe fn small_m_avx512(job: SmallMJob) {
    macro_rules! rows {
        ($($m:literal)*) => {
            match job.m {
                $($m => small_m_rows::<$m>(job),)*
                m => unreachable!("small-m GEMM with {m} rows"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// [`small_m_avx512`] for `M = job.m` rows (the accumulators stay in registers).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn small_m_rows<const M: usize>(job: SmallMJob) {
    let SmallMJob {
        kc,
        a,
        lda,
        b,
        ldb,
        n,
        c,
        ldc,
        accumulate,
        ..
    } = job;
    let mut j0 = 0;
    while j0 < n {
        let nj = (n - j0).min(16);
        let mut acc = [_mm512_setzero_ps(); M];
        let mut p0 = 0;
        while p0 < kc {
            let np = (kc - p0).min(16);
            let kmask = lanes(np);
            let mut t = [_mm512_setzero_ps(); 16];
            for (jj, tj) in t.iter_mut().enumerate().take(nj) {
                *tj = _mm512_maskz_loadu_ps(kmask, b.add((j0 + jj) * ldb + p0));
            }
            // t[pp] = B[p0 + pp, j0..j0 + 16]
            crate::attention::avx512::transpose16(&mut t);
            for (pp, tp) in t.iter().enumerate().take(np) {
                for (i, ai) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(i * lda + p0 + pp));
                    *ai = _mm512_fmadd_ps(av, *tp, *ai);
                }
            }
            p0 += 16;
        }
        let jmask = lanes(nj);
        for (i, ai) in acc.iter().enumerate() {
            let cp = c.add(i * ldc + j0);
            let v = if accumulate {
                _mm512_add_ps(*ai, _mm512_maskz_loadu_ps(jmask, cp))
            } else {
                *ai
            };
            _mm512_mask_storeu_ps(cp, jmask, v);
        }
        j0 += 16;
    }
}

pub(crate) fn avx512bf16_micro_kernel() -> MicroKernel {
    let func = ukr_avx512bf16::<AVX512_MR>;
    x86_micro_kernel(
        (AVX512_MR, 32),
        PackFormat::Bf16Pairs,
        true,
        func,
        (512, 192),
    )
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

/// Writes a micro-kernel `$imp` (a `#[target_feature]` function: its attributes are passed on)
/// and its [`MicroKernelFn`] entry point `$name` (a target-feature function cannot be stored as
/// that function pointer itself). The kernel takes the entry point's arguments
/// `(kp, a, b, c, ldc, accumulate)` under the names given, with the packed panels `a` and `b` as
/// pointers to `$elem` (f32 values or bf16 pairs).
macro_rules! micro_kernel {
    (
        $(#[$doc:meta])*
        $name:ident $(<const $mr:ident>)? => $(#[$imp_attr:meta])*
        fn $imp:ident($kp:ident, $a:ident, $b:ident: *const $elem:ty, $c:ident, $ldc:ident, $acc:ident)
        $body:block
    ) => {
        $(#[$doc])*
        unsafe fn $name$(<const $mr: usize>)?(
            kp: usize,
            a: *const u32,
            b: *const u32,
            c: *mut f32,
            ldc: usize,
            acc: bool,
        ) {
            $imp$(::<$mr>)?(kp, a.cast(), b.cast(), c, ldc, acc)
        }

        $(#[$imp_attr])*
        unsafe fn $imp$(<const $mr: usize>)?(
            $kp: usize,
            $a: *const $elem,
            $b: *const $elem,
            $c: *mut f32,
            $ldc: usize,
            $acc: bool,
        ) $body
    };
}

/// An f32 vector register type of the C tile.
trait F32x: Copy {
    const LANES: usize;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn store(self, p: *mut f32);
}

impl F32x for __m256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        _mm256_add_ps(self, o)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self)
    }
}

impl F32x for __m512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        _mm512_add_ps(self, o)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self)
    }
}

/// `_mm512_set1_ps(*p)` as one `vbroadcastss` that the compiler keeps in program order.
///
/// Why not the intrinsic: with A's row stride a run-time value other than the k count, LLVM
/// hoists the broadcasts of all four unrolled k steps ahead of their FMAs, runs out of the 32
/// zmm registers and spills ~60 of them to the stack every iteration (the f32 kernel ran at
/// ~2/3 speed). An `asm!` block without `pure` counts as a side effect, so the broadcasts stay
/// in order, each one feeding its two FMAs as written.
///
/// # Safety
/// CPU has AVX-512F; `p` is readable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn broadcast(p: *const f32) -> __m512 {
    let v: __m512;
    // SAFETY: reads the 4 bytes at `p` (readable by the caller's contract), writes only `v`.
    std::arch::asm!(
        "vbroadcastss {v}, dword ptr [{p}]",
        p = in(reg) p,
        v = out(zmm_reg) v,
        options(readonly, nostack, preserves_flags)
    );
    v
}

/// Stores (or, with `accumulate`, adds to C) an `MR × 2` tile of vector registers.
#[inline(always)]
unsafe fn store_tile<V: F32x, const MR: usize>(
    r: &[[V; 2]; MR],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for (i, ri) in r.iter().enumerate() {
        let crow = c.add(i * ldc);
        for (h, &v) in ri.iter().enumerate() {
            let p = crow.add(V::LANES * h);
            let v = if accumulate { v.add(V::load(p)) } else { v };
            v.store(p);
        }
    }
}

/// Runs `step(r, p)` for `p` in `0..kp`, unrolled by 4 so loop overhead and address updates
/// are amortised.
#[inline(always)]
unsafe fn unrolled_k_loop<R>(kp: usize, r: &mut R, step: impl Fn(&mut R, usize)) {
    let mut p = 0;
    while p + 4 <= kp {
        step(r, p);
        step(r, p + 1);
        step(r, p + 2);
        step(r, p + 3);
        p += 4;
    }
    while p < kp {
        step(r, p);
        p += 1;
    }
}

micro_kernel! {
    /// # Safety
    /// CPU has AVX2+FMA; `a` holds `kp*6` and `b` `kp*16` packed f32; `c` is a 6×16 tile.
    ukr_avx2 =>
    #[target_feature(enable = "avx2,fma")]
    fn ukr_avx2_impl(kp, a, b: *const f32, c, ldc, accumulate) {
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
        store_tile(&r, c, ldc, accumulate);
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
    accumulate: bool,
) {
    // A packed panel is MR rows of kp values: the in-place kernel with row stride kp, so both
    // paths run the very same code (and give bit-identical results).
    ukr_avx512_impl::<MR>(kp, kp, a.cast(), b.cast(), c, ldc, accumulate)
}

/// [`ukr_avx512`] reading A in place: row `i` of the MR×kp block of A at `a + i*lda`.
///
/// # Safety
/// CPU has AVX-512F; `a + i*lda + p` is readable for `i < MR`, `p < kp`; `b` holds `kp*32`
/// packed f32; `c` is an MR×32 tile.
unsafe fn ukr_avx512_lda<const MR: usize>(
    kp: usize,
    lda: usize,
    a: *const f32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    ukr_avx512_impl::<MR>(kp, lda, a, b.cast(), c, ldc, accumulate)
}

/// The AVX-512 f32 kernel: row `i` of A at `a + i*lda` (`lda = kp` for a packed panel). Both
/// entry points call this one function (a target-feature function is not inlined into them),
/// so the FMAs run in the same order whichever way A is read.
#[target_feature(enable = "avx512f")]
unsafe fn ukr_avx512_impl<const MR: usize>(
    kp: usize,
    lda: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const NR: usize = 32;
    prefetch_c(c, ldc, MR, NR * 4);
    let mut r = [[_mm512_setzero_ps(); 2]; MR];
    unrolled_k_loop(kp, &mut r, |r: &mut [[__m512; 2]; MR], p: usize| {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        for (i, ri) in r.iter_mut().enumerate() {
            let ai = broadcast(a.add(i * lda + p));
            ri[0] = _mm512_fmadd_ps(ai, b0, ri[0]);
            ri[1] = _mm512_fmadd_ps(ai, b1, ri[1]);
        }
    });
    store_tile(&r, c, ldc, accumulate);
}

micro_kernel! {
    /// # Safety
    /// CPU has AVX512-BF16; `a` holds `kp*MR` and `b` `kp*32` packed bf16 pairs; `c` is MR×32.
    ukr_avx512bf16<const MR> =>
    /// Same register tile as the f32 kernel, but each k unit is a pair of bf16 values:
    /// `vdpbf16ps` adds `a[2u]·b[2u] + a[2u+1]·b[2u+1]` into each f32 lane, doing twice the work
    /// of an f32 FMA per instruction.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn ukr_avx512bf16_impl(kp, a, b: *const u32, c, ldc, accumulate) {
        const NR: usize = 32;
        prefetch_c(c, ldc, MR, NR * 4);
        let mut r = [[_mm512_setzero_ps(); 2]; MR];
        unrolled_k_loop(kp, &mut r, |r: &mut [[__m512; 2]; MR], p: usize| {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            for (i, ri) in r.iter_mut().enumerate() {
                let ai: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(i * kp + p) as i32));
                ri[0] = _mm512_dpbf16_ps(ri[0], ai, b0);
                ri[1] = _mm512_dpbf16_ps(ri[1], ai, b1);
            }
        });
        store_tile(&r, c, ldc, accumulate);
    }
}

/// Rounds 16 f32 to bf16 (round-to-nearest-even, NaN kept quiet, exactly like
/// `half::bf16::from_f32`), returned as u32 lanes with the bf16 bits in the high half and zeros
/// below (i.e. the rounded value as f32 bits).
#[inline(always)]
unsafe fn round_bf16_hi(v: __m512) -> __m512i {
    let x = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    let r = _mm512_and_si512(r, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
    let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
    let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
    let quiet = _mm512_or_si512(
        _mm512_and_si512(x, _mm512_set1_epi32(0xFFFF_0000u32 as i32)),
        _mm512_set1_epi32(0x0040_0000),
    );
    _mm512_mask_blend_epi32(nan, r, quiet)
}

#[inline(always)]
fn lanes(cnt: usize) -> __mmask16 {
    if cnt >= 16 {
        0xFFFF
    } else {
        ((1u32 << cnt) - 1) as __mmask16
    }
}

/// AVX-512 packing for the two common layouts (see `pack::pack_panel` for the meaning of the
/// arguments): lines contiguous in both source and destination (row-major B, transposed A), or
/// k contiguous in the source (row-major A, `F.linear`-style transposed B). Returns false (and
/// does nothing) for other layouts or CPUs without AVX-512F. Writes only the data units:
/// lines `0..n` × units `0..units(kc)`.
pub(crate) fn pack_panel_avx512(
    data: PanelData,
    src: &[f32],
    base: usize,
    ls: usize,
    ks: usize,
    dst: &mut [u32],
) -> bool {
    let PanelData { fmt, n, kc, dl, du } = data;
    if !crate::cpu::features().avx512f || n == 0 || kc == 0 {
        return false;
    }
    let units = data.units();
    // Everything below reads/writes within these bounds (masked lanes are not accessed).
    assert!(base + (n - 1) * ls + (kc - 1) * ks < src.len());
    assert!((n - 1) * dl + (units - 1) * du < dst.len());
    // SAFETY: AVX-512F is present; indices are bounded by the asserts above.
    unsafe {
        if ls == 1 && dl == 1 {
            pack_lines_contiguous(
                fmt,
                src.as_ptr().add(base),
                ks,
                n,
                kc,
                units,
                dst.as_mut_ptr(),
                du,
            );
            true
        } else if ks == 1 {
            pack_k_contiguous(
                fmt,
                src.as_ptr().add(base),
                ls,
                n,
                kc,
                units,
                dst.as_mut_ptr(),
                dl,
                du,
            );
            true
        } else {
            false
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn pack_lines_contiguous(
    fmt: PackFormat,
    src: *const f32,
    ks: usize,
    n: usize,
    kc: usize,
    units: usize,
    dst: *mut u32,
    du: usize,
) {
    for u in 0..units {
        let d = dst.add(u * du);
        for l in (0..n).step_by(16) {
            let m = lanes(n - l);
            let out = match fmt {
                PackFormat::F32 => {
                    _mm512_castps_si512(_mm512_maskz_loadu_ps(m, src.add(u * ks + l)))
                }
                PackFormat::F32RoundBf16 => {
                    round_bf16_hi(_mm512_maskz_loadu_ps(m, src.add(u * ks + l)))
                }
                PackFormat::Bf16Pairs => {
                    let k0 = 2 * u;
                    let lo = round_bf16_hi(_mm512_maskz_loadu_ps(m, src.add(k0 * ks + l)));
                    let hi = if k0 + 1 < kc {
                        round_bf16_hi(_mm512_maskz_loadu_ps(m, src.add((k0 + 1) * ks + l)))
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_or_si512(_mm512_srli_epi32::<16>(lo), hi)
                }
            };
            _mm512_mask_storeu_epi32(d.add(l) as *mut i32, m, out);
        }
    }
}

/// Lines ahead of the one being packed whose next values are prefetched, when lines are packed
/// one after another (row-major A into bf16 pairs). Each line contributes only `kc` values
/// (2 KiB at `kc` = 512) before the next starts elsewhere, too short for the hardware stream
/// prefetcher to ramp up: without this, packing ViT-B's activations spent most of its time
/// waiting on those loads (bf16 GEMM at 4096×768×3072, AMD Zen 5, 2 threads: 660–680 →
/// 790–830 GFLOP/s; 2 lines ahead was 1–2 % better than 1, 4 no better than 2).
const PREFETCH_LINES: usize = 2;

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn pack_k_contiguous(
    fmt: PackFormat,
    src: *const f32,
    ls: usize,
    n: usize,
    kc: usize,
    units: usize,
    dst: *mut u32,
    dl: usize,
    du: usize,
) {
    if dl == 1 && du >= n {
        // Groups of up to 16 lines (B panels are 32 lines wide).
        for l0 in (0..n).step_by(16) {
            let lines = (n - l0).min(16);
            pack_transposed(fmt, src.add(l0 * ls), ls, lines, kc, units, dst.add(l0), du);
        }
        return;
    }
    let mut tmp = [0u32; 16];
    // Values per unit: the source offset of unit u is u·per_unit.
    let per_unit = if fmt == PackFormat::Bf16Pairs { 2 } else { 1 };
    for l in 0..n {
        let s = src.add(l * ls);
        // A hint only: may point past the source (prefetches never fault), so no `add`.
        let ahead = src.wrapping_add((l + PREFETCH_LINES) * ls) as *const i8;
        let d = dst.add(l * dl);
        for u0 in (0..units).step_by(16) {
            // The 64-byte lines this step reads (16 units: one line of f32, two of pairs).
            let at = ahead.wrapping_add(4 * per_unit * u0);
            _mm_prefetch::<_MM_HINT_T0>(at);
            if per_unit == 2 {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
            }
            let out = match fmt {
                PackFormat::F32 => {
                    _mm512_castps_si512(_mm512_maskz_loadu_ps(lanes(kc - u0), s.add(u0)))
                }
                PackFormat::F32RoundBf16 => {
                    round_bf16_hi(_mm512_maskz_loadu_ps(lanes(kc - u0), s.add(u0)))
                }
                PackFormat::Bf16Pairs => bf16_pairs16(s, 2 * u0, kc),
            };
            let cnt = (units - u0).min(16);
            if du == 1 {
                _mm512_mask_storeu_epi32(d.add(u0) as *mut i32, lanes(cnt), out);
            } else {
                _mm512_storeu_si512(tmp.as_mut_ptr() as *mut _, out);
                for (t, &x) in tmp[..cnt].iter().enumerate() {
                    *d.add((u0 + t) * du) = x;
                }
            }
        }
    }
}

/// Values `k0..k0 + 32` of one k-contiguous line (zero past `kc`) as 16 bf16 pair units:
/// unit t holds value `k0 + 2t` (rounded to nearest even) in its low half and `k0 + 2t + 1` in
/// its high half.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bf16_pairs16(s: *const f32, k0: usize, kc: usize) -> __m512i {
    let left = kc - k0;
    let v0 = _mm512_maskz_loadu_ps(lanes(left), s.add(k0));
    let v1 = if left > 16 {
        _mm512_maskz_loadu_ps(lanes(left - 16), s.add(k0 + 16))
    } else {
        _mm512_setzero_ps()
    };
    let w0 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(round_bf16_hi(v0)));
    let w1 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(round_bf16_hi(v1)));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1)
}

/// In-register transpose of a 16×16 f32 block: `r[i][j]` becomes `r[j][i]`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: &mut [__m512; 16]) {
    // 32-bit interleave of row pairs, then 64-bit interleave of pair pairs: afterwards vector
    // `4i + c` holds, in its 128-bit lane j, rows 4i..4i+4 of column 4j + c.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a, b, c, d) = (
            _mm512_castps_pd(t[4 * i]),
            _mm512_castps_pd(t[4 * i + 1]),
            _mm512_castps_pd(t[4 * i + 2]),
            _mm512_castps_pd(t[4 * i + 3]),
        );
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // Gather lane j of u[c], u[4+c], u[8+c], u[12+c] into column 4j + c.
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
        r[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        r[4 + c] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        r[8 + c] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        r[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
}

/// `pack_k_contiguous` for a panel of at most 16 lines stored line-contiguous (`dst[u·du + l]`:
/// the vector kernels' A panels, the bf16 kernels' B panels): each line's next 16 units (16
/// values, or 32 as bf16 pairs, [`bf16_pairs16`]) are loaded as one row of a 16×16 block, the
/// block is transposed in registers and each unit's lines are stored with one vector, instead
/// of one scalar store per unit.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn pack_transposed(
    fmt: PackFormat,
    src: *const f32,
    ls: usize,
    n: usize,
    kc: usize,
    units: usize,
    dst: *mut u32,
    du: usize,
) {
    let lines = lanes(n);
    // Rows n..16 are never loaded: whatever they hold lands in the masked-off lanes.
    let mut r = [_mm512_setzero_ps(); 16];
    for u0 in (0..units).step_by(16) {
        for (l, row) in r.iter_mut().enumerate().take(n) {
            let line = src.add(l * ls);
            *row = match fmt {
                PackFormat::Bf16Pairs => _mm512_castsi512_ps(bf16_pairs16(line, 2 * u0, kc)),
                _ => _mm512_maskz_loadu_ps(lanes(kc - u0), line.add(u0)),
            };
        }
        transpose16(&mut r);
        for (t, &col) in r.iter().enumerate().take((units - u0).min(16)) {
            let v = if fmt == PackFormat::F32RoundBf16 {
                round_bf16_hi(col)
            } else {
                _mm512_castps_si512(col)
            };
            _mm512_mask_storeu_epi32(dst.add((u0 + t) * du) as *mut i32, lines, v);
        }
    }
}

#[cfg(test)]
mod pack_tests {
    use super::*;

    /// Unit `u` of line `l` as the scalar code packs it: the value's bits, the value rounded to
    /// bf16 in the high half, or two consecutive values as a bf16 pair (zero past `kc`), all
    /// rounded by `half` (nearest even).
    fn scalar_unit(fmt: PackFormat, line: &[f32], kc: usize, u: usize) -> u32 {
        let bf16 = |x: f32| half::bf16::from_f32(x).to_bits() as u32;
        match fmt {
            PackFormat::F32 => line[u].to_bits(),
            PackFormat::F32RoundBf16 => bf16(line[u]) << 16,
            PackFormat::Bf16Pairs => {
                let hi = if 2 * u + 1 < kc {
                    bf16(line[2 * u + 1])
                } else {
                    0
                };
                bf16(line[2 * u]) | hi << 16
            }
        }
    }

    /// The register-transposing pack against unit-by-unit placement, for every format, partial
    /// line groups and blocks, odd `kc` included; lanes of lines past `n` are left untouched.
    #[test]
    fn transposed_pack_matches_scalar() {
        if !crate::cpu::features().avx512f {
            eprintln!("SKIPPED: no AVX-512F");
            return;
        }
        let formats = [
            PackFormat::F32,
            PackFormat::F32RoundBf16,
            PackFormat::Bf16Pairs,
        ];
        for fmt in formats {
            for n in [1, 5, 12, 16] {
                for kc in [1usize, 2, 7, 16, 17, 31, 32, 33, 40, 64, 95] {
                    let ls = kc + 3;
                    // Values whose low 16 bits matter for rounding, signs included.
                    let src: Vec<f32> = (0..n * ls)
                        .map(|i| (i as f32 * 0.377 - 9.0) * (1.0 + (i % 7) as f32 * 1e-3))
                        .collect();
                    let units = if fmt == PackFormat::Bf16Pairs {
                        kc.div_ceil(2)
                    } else {
                        kc
                    };
                    let du = n.max(12);
                    let mut got = vec![u32::MAX; units * du];
                    let dst = got.as_mut_ptr();
                    // SAFETY: AVX-512F checked; src holds n lines of ls ≥ kc, dst units·du ≥ n.
                    unsafe { pack_transposed(fmt, src.as_ptr(), ls, n, kc, units, dst, du) };
                    for u in 0..units {
                        for l in 0..du {
                            let want = if l < n {
                                scalar_unit(fmt, &src[l * ls..], kc, u)
                            } else {
                                u32::MAX
                            };
                            let got = got[u * du + l];
                            assert_eq!(got, want, "{fmt:?} n {n} kc {kc} unit {u} line {l}");
                        }
                    }
                }
            }
        }
    }
}
