//! The blocked, multi-threaded GEMM loop nest shared by every micro-kernel.

use super::pack::{self, PackFormat};
use super::{Blocking, Epilogue, GemmDims, Kernel, Layout, Precision};
use rayon::prelude::*;
use std::cell::Cell;

/// `C[0..MR, 0..NR] (+)= Apanel · Bpanel` on packed micro-panels of `kp` packed k units.
/// `c` is row-major with row stride `ldc`. With `accumulate=false` C is overwritten.
pub(crate) type MicroKernelFn =
    unsafe fn(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, accumulate: bool);

/// A [`MicroKernelFn`] that reads A in place instead of from a packed panel: row `i` of the
/// `MR × kp` block at `a + i*lda`. Same arithmetic in the same order as the packed entry, so
/// the two give bit-identical C.
pub(crate) type DirectAFn = unsafe fn(
    kp: usize,
    lda: usize,
    a: *const f32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
);

/// One k slice of a GEMM with at most [`SMALL_M`] rows and B's k contiguous (`x·Wᵀ`), read in
/// place: `C[i, j] (+)= Σ_{p<kc} a[i·lda + p] · b[j·ldb + p]` for `i < m`, `j < n`, C `m × n`
/// with row stride `ldc`. Each element is summed from zero in p order with FMAs and then added to
/// C (with `accumulate`), exactly as the micro-kernel sums it, so the result has the same bits as
/// the packed path.
#[derive(Clone, Copy)]
pub(crate) struct SmallMJob {
    pub m: usize,
    pub kc: usize,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub n: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub accumulate: bool,
}

/// A kernel for a [`SmallMJob`].
pub(crate) type SmallMFn = unsafe fn(SmallMJob);

/// Most rows for [`MicroKernel::small_m`]: a decoder's few tokens (SAM2's hypernetwork MLPs run
/// on one row, its two-way transformer's MLP on 9), where packing all of B for one or two row
/// panels cost more than the products (2–30 GFLOP/s).
pub(crate) const SMALL_M: usize = 16;

/// A micro-kernel and everything the driver must know to feed it.
#[derive(Clone, Copy)]
pub(crate) struct MicroKernel {
    pub mr: usize,
    pub nr: usize,
    pub format: PackFormat,
    /// AMX loads A tiles row by row (`[row][k]`); the vector kernels broadcast one column of A at
    /// a time and want `[k][row]`.
    pub a_row_major: bool,
    /// Packed k units (elements, or bf16 pairs) are padded with zeros to a multiple of this.
    pub k_align: usize,
    pub func: MicroKernelFn,
    /// Set if the kernel can also read f32 A rows in place (k contiguous, `[row][k]` with
    /// `k_align` 1 and no rounding: exactly what packing would copy). None for the others.
    pub direct_a: Option<DirectAFn>,
    /// Set if the kernel family has a [`SmallMFn`] with its arithmetic (plain f32 only).
    pub small_m: Option<SmallMFn>,
    pub blocking: Blocking,
}

impl MicroKernel {
    /// Packed k units for a slice of `kc` k values.
    fn k_units(&self, kc: usize) -> usize {
        let units = match self.format {
            PackFormat::Bf16Pairs => kc.div_ceil(2),
            PackFormat::F32 | PackFormat::F32RoundBf16 => kc,
        };
        units.div_ceil(self.k_align) * self.k_align
    }
}

/// Below this many flops (per call) a GEMM runs on the calling thread: rayon's fork/join costs a
/// few microseconds, which at ~100 GFLOP/s per core is worth ~0.5 MFLOP of work.
const PAR_MIN_FLOPS: usize = 1 << 21;

/// Resolves a kernel family and precision to a concrete micro-kernel. Panics if unavailable.
pub(crate) fn micro_kernel(kernel: Kernel, precision: Precision) -> MicroKernel {
    assert!(
        kernel.supports(precision),
        "GEMM kernel {kernel:?} does not implement {precision:?}"
    );
    assert!(
        kernel.is_available(),
        "GEMM kernel {kernel:?} is not available on this CPU"
    );
    let f32_format = match precision {
        Precision::F32 => PackFormat::F32,
        Precision::Bf16 => PackFormat::F32RoundBf16,
    };
    match kernel {
        Kernel::Scalar => super::scalar::micro_kernel(f32_format),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => super::x86::avx2_micro_kernel(f32_format),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => super::x86::avx512_micro_kernel(f32_format),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => super::x86::avx512bf16_micro_kernel(),
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => super::amx::micro_kernel(),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("is_available() is false off x86_64"),
    }
}

/// Panics unless every element of a `batch × rows × cols` matrix with layout `l` is inside `len`.
fn check_len(name: &str, len: usize, l: Layout, batch: usize, rows: usize, cols: usize) {
    let last = (batch - 1)
        .checked_mul(l.batch_stride)
        .and_then(|x| x.checked_add((rows - 1).checked_mul(l.row_stride)?))
        .and_then(|x| x.checked_add((cols - 1).checked_mul(l.col_stride)?));
    assert!(
        matches!(last, Some(last) if last < len),
        "gemm: slice {name} (len {len}) too short for {batch}×{rows}×{cols} with {l:?}"
    );
}

/// True if no two (batch, row, col) of C map to the same element, for the layouts where that
/// is cheap to prove; only then may threads write C concurrently.
fn c_is_disjoint(l: Layout, batch: usize, m: usize, n: usize) -> bool {
    let rows_ok = m == 1 || l.row_stride >= n;
    let span = (m - 1) * l.row_stride + n;
    let batches_ok = batch == 1
        || l.batch_stride >= span
        // Batches interleaved inside each row gap, e.g. heads of a `[tokens, heads, d]` tensor.
        || (l.batch_stride >= n && (batch - 1) * l.batch_stride + n <= l.row_stride);
    rows_ok && batches_ok
}

/// A raw pointer to C that may cross threads; tasks write disjoint tiles (see `c_is_disjoint`).
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: only used to write disjoint tiles from different threads.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    // Methods (rather than `.0`) make closures capture the whole Sync wrapper, not the raw field.
    fn at(self, off: usize) -> CPtr {
        CPtr(self.0.wrapping_add(off))
    }
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// What one driver call computes besides its operands: blocking, sizes, whether C accumulates,
/// the epilogue, and whether it may fork (false keeps every GEMM on the calling thread).
#[derive(Clone, Copy)]
pub(crate) struct Job<'e> {
    pub blocking: Blocking,
    pub dims: GemmDims,
    pub accumulate: bool,
    pub ep: Epilogue<'e>,
    pub may_thread: bool,
}

impl<'e> Job<'e> {
    /// `C (+)= A·B`, threaded.
    pub(crate) fn plain(blocking: Blocking, dims: GemmDims, accumulate: bool) -> Self {
        let (ep, may_thread) = (Epilogue::default(), true);
        Job {
            blocking,
            dims,
            accumulate,
            ep,
            may_thread,
        }
    }
    /// `C = ep(A·B)` (overwriting C), threaded unless `may_thread` is false.
    pub(crate) fn fused(
        blocking: Blocking,
        dims: GemmDims,
        ep: Epilogue<'e>,
        may_thread: bool,
    ) -> Self {
        Job {
            blocking,
            dims,
            accumulate: false,
            ep,
            may_thread,
        }
    }
}

/// Entry point: validates, then splits over batch and/or within each GEMM.
pub(crate) fn run_gemm(
    ukr: &MicroKernel,
    job: Job,
    (a, la): (&[f32], Layout),
    (b, lb): (&[f32], Layout),
    (c, lc): (&mut [f32], Layout),
) {
    let Job {
        blocking,
        dims,
        accumulate,
        ep,
        may_thread,
    } = job;
    let GemmDims { batch, m, n, k } = dims;
    assert_eq!(lc.col_stride, 1, "gemm: C must have col_stride 1");
    if batch == 0 || m == 0 || n == 0 {
        return;
    }
    check_len("c", c.len(), lc, batch, m, n);
    if k == 0 {
        for bi in 0..batch {
            for i in 0..m {
                let off = bi * lc.batch_stride + i * lc.row_stride;
                if !accumulate {
                    c[off..off + n].fill(0.0);
                }
                if !ep.is_identity() {
                    ep.apply(&mut c[off..off + n], i, 0);
                }
            }
        }
        return;
    }
    check_len("a", a.len(), la, batch, m, k);
    check_len("b", b.len(), lb, batch, k, n);
    let blk = sanitize(blocking, ukr);

    let threads = rayon::current_num_threads();
    let flops = 2 * m * n * k;
    let cptr = CPtr(c.as_mut_ptr());
    let one = |bi: usize, parallel: bool| {
        let p = Problem {
            a,
            a_off: bi * la.batch_stride,
            la,
            b,
            b_off: bi * lb.batch_stride,
            lb,
            c: cptr.at(bi * lc.batch_stride),
            ldc: lc.row_stride,
            m,
            n,
            k,
            accumulate,
            ep,
        };
        single(ukr, blk, &p, parallel);
    };
    let may_parallel = may_thread
        && threads > 1
        && flops * batch >= PAR_MIN_FLOPS
        && c_is_disjoint(lc, batch, m, n);
    if !may_parallel {
        (0..batch).for_each(|bi| one(bi, false));
    } else if batch >= threads
        && (batch % threads == 0 || batch >= 4 * threads || flops < PAR_MIN_FLOPS)
    {
        // Whole GEMMs per thread: no synchronisation and no shared packed B.
        (0..batch).into_par_iter().for_each(|bi| one(bi, false));
    } else {
        (0..batch).for_each(|bi| one(bi, flops >= PAR_MIN_FLOPS));
    }
}

/// Rounds the blocking to what the micro-kernel needs (multiples of MR/NR, even KC for pairs).
fn sanitize(b: Blocking, ukr: &MicroKernel) -> Blocking {
    let kmul = match ukr.format {
        PackFormat::Bf16Pairs => 2 * ukr.k_align,
        _ => ukr.k_align,
    };
    let round = |x: usize, q: usize| x.max(1).div_ceil(q) * q;
    let nc = round(b.nc, ukr.nr);
    Blocking {
        kc: round(b.kc, kmul),
        mc: round(b.mc, ukr.mr),
        nc,
        nl2: round(b.nl2, ukr.nr).min(nc),
        force_pack_a: b.force_pack_a,
    }
}

/// The in-place A kernel, if this problem may use it: the kernel has one, the caller did not
/// force packing, A's k is contiguous, and A's row stride spreads a panel's rows over the L1
/// sets. The last condition: L1 set = (address / 64) mod 64 (32–48 KiB, 8–12 ways), so rows
/// `s` bytes apart start in `4096 / gcd(s mod 4096, 4096)` distinct sets at most. A packed panel
/// is contiguous and fills the sets evenly; rows in place whose stride is a multiple of 2 KiB
/// (k = 512, 1024, 3072, …) would put 6–12 of the 12 rows' lines in the same set and evict one
/// another (and B) every k step, so those keep packing. gcd ≤ 1 KiB (16 lines: ≥ 4 distinct
/// starting sets, ≤ 3 rows each) is allowed.
fn direct_a(ukr: &MicroKernel, blk: Blocking, la: Layout) -> Option<DirectAFn> {
    const SET_PERIOD: usize = 64 * 64;
    let f = ukr
        .direct_a
        .filter(|_| !blk.force_pack_a && la.col_stride == 1)?;
    let s = (la.row_stride * 4) % SET_PERIOD;
    let g = gcd(s, SET_PERIOD);
    (g <= SET_PERIOD / 4).then_some(f)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One GEMM of the batch, with offsets into the operand slices.
struct Problem<'a> {
    a: &'a [f32],
    a_off: usize,
    la: Layout,
    b: &'a [f32],
    b_off: usize,
    lb: Layout,
    c: CPtr,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    ep: Epilogue<'a>,
}

/// 64-byte aligned storage for packed panels (one cache line / one zmm per chunk).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u32; 16]);

thread_local! {
    static A_BUF: Cell<Vec<Chunk>> = const { Cell::new(Vec::new()) };
    static B_BUF: Cell<Vec<Chunk>> = const { Cell::new(Vec::new()) };
}

/// Takes this thread's buffer out of `slot` (so re-entrant use through rayon work stealing just
/// allocates a fresh one) and grows it to at least `len` u32.
fn take_buf(slot: &'static std::thread::LocalKey<Cell<Vec<Chunk>>>, len: usize) -> Vec<Chunk> {
    let mut v = slot.with(|s| s.take());
    let chunks = len.div_ceil(16);
    if v.len() < chunks {
        v.resize(chunks, Chunk([0; 16]));
    }
    v
}

fn put_buf(slot: &'static std::thread::LocalKey<Cell<Vec<Chunk>>>, v: Vec<Chunk>) {
    slot.with(|s| s.set(v));
}

fn as_u32(v: &mut [Chunk], len: usize) -> &mut [u32] {
    // SAFETY: Chunk is repr(C) over [u32; 16] with no padding.
    let all = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u32, v.len() * 16) };
    &mut all[..len]
}

/// Upper bound for one packed B block (all k × NC columns): it is streamed from L3 once per
/// row block, and a cap keeps the per-thread buffer bounded.
const B_BLOCK_MAX_BYTES: usize = 16 << 20;

/// One KC-deep slice of k: its range and where its packed panels live in the B buffer.
#[derive(Clone, Copy)]
struct Slice {
    pc: usize,
    kcb: usize,
    kp: usize,
    b_off: usize,
}

/// The BLIS loop nest for one GEMM: jc (NC; pack all of B[:, jc..] as KC slices of NR-wide
/// micro-panels) → tasks over MC row blocks (× NL2 column sub-blocks if rows alone are too few)
/// → pc (KC; pack the A block slice) → NL2 sub-block → ir (MR) → jr (NR) → micro-kernel.
/// With a `direct_a` kernel (see [`direct_a`]) the full MR-row panels of A are read in place and
/// only a partial last panel is packed.
///
/// Packing B for every k slice up front means one parallel phase per NC block instead of one
/// per (NC, KC) pair: on a busy machine every phase boundary is a barrier where a descheduled
/// thread stalls the others.
fn single(ukr: &MicroKernel, blk: Blocking, p: &Problem, parallel: bool) {
    let (mr, nr) = (ukr.mr, ukr.nr);
    let direct = direct_a(ukr, blk, p.la);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let slices: Vec<(usize, usize, usize)> = (0..p.k)
        .step_by(blk.kc)
        .map(|pc| {
            let kcb = blk.kc.min(p.k - pc);
            (pc, kcb, ukr.k_units(kcb))
        })
        .collect();
    let small = ukr
        .small_m
        .filter(|_| p.m <= SMALL_M && p.la.col_stride == 1 && p.lb.row_stride == 1);
    if let Some(f) = small {
        return small_m(f, &slices, p);
    }
    let k_units: usize = slices.iter().map(|s| s.2).sum();
    // NC: as requested, capped by the B buffer size, then evened out over the n blocks.
    let nc_cap = (B_BLOCK_MAX_BYTES / (4 * k_units * nr)).max(1) * nr;
    let nblocks = p.n.div_ceil(blk.nc.min(nc_cap));
    let nc = p.n.div_ceil(nblocks).div_ceil(nr) * nr;
    // MC: whole MR panels, balanced so every thread gets the same number of row blocks.
    let panels = p.m.div_ceil(mr);
    let mut mblocks = panels.div_ceil((blk.mc / mr).max(1));
    mblocks = mblocks.div_ceil(threads) * threads;
    let mc = panels.div_ceil(mblocks) * mr;
    let mblocks = p.m.div_ceil(mc);

    for jc in (0..p.n).step_by(nc) {
        let ncb = nc.min(p.n - jc);
        let npanels = ncb.div_ceil(nr);
        let mut off = 0;
        let slices: Vec<Slice> = slices
            .iter()
            .map(|&(pc, kcb, kp)| {
                let s = Slice {
                    pc,
                    kcb,
                    kp,
                    b_off: off,
                };
                off += npanels * kp * nr;
                s
            })
            .collect();

        let mut bvec = take_buf(&B_BUF, off);
        let bpk = as_u32(&mut bvec, off);
        {
            // (slice, panel, destination) for every packed B micro-panel.
            let mut jobs = Vec::with_capacity(slices.len() * npanels);
            let mut rest: &mut [u32] = bpk;
            for sl in &slices {
                for jp in 0..npanels {
                    let (d, r) = std::mem::take(&mut rest).split_at_mut(sl.kp * nr);
                    jobs.push((sl, jp, d));
                    rest = r;
                }
            }
            let pack_b_panel = |(sl, jp, dst): (&Slice, usize, &mut [u32])| {
                let j0 = jp * nr;
                pack::pack_b(
                    ukr.format,
                    nr,
                    p.b,
                    p.b_off + sl.pc * p.lb.row_stride + (jc + j0) * p.lb.col_stride,
                    p.lb.row_stride,
                    p.lb.col_stride,
                    sl.kcb,
                    nr.min(ncb - j0),
                    sl.kp,
                    dst,
                );
            };
            if parallel {
                jobs.into_par_iter().for_each(pack_b_panel);
            } else {
                jobs.into_iter().for_each(pack_b_panel);
            }
        }
        let bpk: &[u32] = bpk;

        let nsub = ncb.div_ceil(blk.nl2);
        // Split n too only when row blocks alone would leave threads idle or unbalanced.
        let split_n = parallel && mblocks < 4 * threads && nsub > 1;
        let ntasks_n = if split_n { nsub } else { 1 };
        let task = |t: usize| {
            let ib = t / ntasks_n;
            let ic = ib * mc;
            let mcb = mc.min(p.m - ic);
            let (s0, s1) = if split_n {
                let s = t % ntasks_n;
                (s, s + 1)
            } else {
                (0, nsub)
            };
            let apanels = mcb.div_ceil(mr);
            // Panels read in place (direct A): the full ones. A partial last panel is packed
            // (zero rows below), so no row past the end of A is ever read.
            let full = if direct.is_some() { mcb / mr } else { 0 };
            let packed = apanels - full;
            let max_kp = slices.iter().map(|s| s.kp).max().unwrap_or(0);
            let mut avec = take_buf(&A_BUF, packed * max_kp * mr);
            for (si, sl) in slices.iter().enumerate() {
                let kp = sl.kp;
                let acc = p.accumulate || si > 0;
                let apk = as_u32(&mut avec, packed * kp * mr);
                if packed > 0 {
                    pack::pack_a(
                        ukr.format,
                        ukr.a_row_major,
                        mr,
                        p.a,
                        p.a_off + (ic + full * mr) * p.la.row_stride + sl.pc * p.la.col_stride,
                        p.la.row_stride,
                        p.la.col_stride,
                        mcb - full * mr,
                        sl.kcb,
                        kp,
                        apk,
                    );
                }
                let bsl = &bpk[sl.b_off..];
                let last = si + 1 == slices.len() && !p.ep.is_identity();
                for s in s0..s1 {
                    let j_lo = s * blk.nl2;
                    let j_hi = (j_lo + blk.nl2).min(ncb);
                    for ir in 0..apanels {
                        let mr_eff = mr.min(mcb - ir * mr);
                        let a = match direct {
                            Some(f) if ir < full => {
                                // k_align is 1 for a direct kernel: kp units are the kcb values.
                                debug_assert_eq!(kp, sl.kcb);
                                let row = p.a_off + (ic + ir * mr) * p.la.row_stride + sl.pc;
                                // In bounds: rows ic+ir·mr.. +mr ≤ m and columns pc..pc+kcb ≤ k
                                // of A, which check_len verified.
                                APanel::Direct(f, p.a[row..].as_ptr(), p.la.row_stride)
                            }
                            _ => APanel::Packed(apk[(ir - full) * kp * mr..].as_ptr()),
                        };
                        for jp in j_lo / nr..j_hi.div_ceil(nr) {
                            let nr_eff = nr.min(ncb - jp * nr);
                            let bp = bsl[jp * kp * nr..].as_ptr();
                            // SAFETY: the tile lies inside C (check_len) and inside this task's
                            // disjoint row/column range; packed panels hold kp units each, and
                            // a direct panel's MR rows × kp values lie inside A (see above).
                            unsafe {
                                let cp = p.c.get().add((ic + ir * mr) * p.ldc + jc + jp * nr);
                                tile(ukr, kp, a, bp, cp, p.ldc, acc, mr_eff, nr_eff);
                            }
                        }
                        if last {
                            // This strip of C is final and still in cache: bias + activation.
                            for i in ic + ir * mr..ic + ir * mr + mr_eff {
                                // SAFETY: inside C and inside this task's rows/columns, as above.
                                let row = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        p.c.get().add(i * p.ldc + jc + j_lo),
                                        j_hi - j_lo,
                                    )
                                };
                                p.ep.apply(row, i, jc + j_lo);
                            }
                        }
                    }
                }
            }
            put_buf(&A_BUF, avec);
        };
        let ntasks = mblocks * ntasks_n;
        if parallel && ntasks > 1 {
            (0..ntasks).into_par_iter().for_each(task);
        } else {
            (0..ntasks).for_each(task);
        }
        put_buf(&B_BUF, bvec);
    }
}

/// One GEMM of at most [`SMALL_M`] rows with A's and B's k contiguous, on the calling thread:
/// each k slice straight from A and B (no packing), then the epilogue row by row.
fn small_m(f: SmallMFn, slices: &[(usize, usize, usize)], p: &Problem) {
    for (si, &(pc, kcb, _)) in slices.iter().enumerate() {
        // SAFETY: check_len verified that rows 0..m × columns 0..k of A, k × n of B (column j
        // at b_off + j·col_stride, k contiguous) and m × n of C lie inside their slices; this
        // slice reads columns pc..pc+kcb of them.
        unsafe {
            f(SmallMJob {
                m: p.m,
                kc: kcb,
                a: p.a.as_ptr().add(p.a_off + pc),
                lda: p.la.row_stride,
                b: p.b.as_ptr().add(p.b_off + pc),
                ldb: p.lb.col_stride,
                n: p.n,
                c: p.c.get(),
                ldc: p.ldc,
                accumulate: p.accumulate || si > 0,
            })
        };
    }
    if !p.ep.is_identity() {
        for i in 0..p.m {
            // SAFETY: row i < m of C, n values (inside C, see above).
            let row = unsafe { std::slice::from_raw_parts_mut(p.c.get().add(i * p.ldc), p.n) };
            p.ep.apply(row, i, 0);
        }
    }
}

/// Where a tile's A comes from: a packed micro-panel, or A itself (row stride `lda`).
#[derive(Clone, Copy)]
enum APanel {
    Packed(*const u32),
    Direct(DirectAFn, *const f32, usize),
}

/// Runs the micro-kernel on one tile; partial edge tiles go through an on-stack full tile.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile(
    ukr: &MicroKernel,
    kp: usize,
    a: APanel,
    bp: *const u32,
    cp: *mut f32,
    ldc: usize,
    acc: bool,
    mr_eff: usize,
    nr_eff: usize,
) {
    let run = |c: *mut f32, ldc: usize, acc: bool| match a {
        APanel::Packed(ap) => (ukr.func)(kp, ap, bp, c, ldc, acc),
        APanel::Direct(f, ap, lda) => f(kp, lda, ap, bp, c, ldc, acc),
    };
    if mr_eff == ukr.mr && nr_eff == ukr.nr {
        run(cp, ldc, acc);
        return;
    }
    #[repr(C, align(64))]
    struct Tmp([f32; MAX_TILE]);
    let mut tmp = Tmp([0.0; MAX_TILE]);
    run(tmp.0.as_mut_ptr(), ukr.nr, false);
    for i in 0..mr_eff {
        let crow = cp.add(i * ldc);
        for j in 0..nr_eff {
            let v = tmp.0[i * ukr.nr + j];
            *crow.add(j) = if acc { *crow.add(j) + v } else { v };
        }
    }
}

/// Largest MR×NR of any micro-kernel (AMX: 32×32).
pub(crate) const MAX_TILE: usize = 32 * 32;

#[cfg(test)]
mod tests {
    use super::*;

    /// Which A row strides the in-place path takes (see `direct_a`).
    #[test]
    fn direct_a_rule() {
        if !Kernel::Avx512.is_available() {
            eprintln!("SKIPPED: no AVX-512F");
            return;
        }
        let f32k = micro_kernel(Kernel::Avx512, Precision::F32);
        let blk = f32k.blocking;
        let rm = |k| Layout::row_major(1, k);
        for k in [1, 3, 64, 128, 160, 256, 320, 384, 640, 768, 1280, 1000] {
            assert!(direct_a(&f32k, blk, rm(k)).is_some(), "k = {k}");
        }
        // Rows 2 KiB apart or a multiple of 4 KiB: few L1 sets.
        for k in [512, 1024, 1536, 2048, 3072, 4096] {
            assert!(direct_a(&f32k, blk, rm(k)).is_none(), "k = {k}");
        }
        let forced = Blocking {
            force_pack_a: true,
            ..blk
        };
        assert!(direct_a(&f32k, forced, rm(64)).is_none());
        assert!(direct_a(&f32k, blk, Layout::transposed(64, 64)).is_none());
        let bf16 = micro_kernel(Kernel::Avx512, Precision::Bf16);
        assert!(direct_a(&bf16, blk, rm(64)).is_none());
    }
}
