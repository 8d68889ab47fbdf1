//! Multi-head attention `softmax(q·kᵀ·scale + bias)·v`, computed in blocks with an online softmax so
//! the `nq × nk` score matrix of all heads is never materialised (each task holds one
//! `query block × key block` of scores). `bias` is SAM's decomposed relative position: for key
//! index `j = jh*kw + jw`, `bias[i, j] = rel_h[i, jh] + rel_w[i, jw]`. The forward saves only the
//! log-sum-exp; the backward recomputes the scores block by block from q, k and it.
//!
//! Following SAM, the scale is applied to q before the product and the bias is added unscaled:
//! `s = (q·scale)·kᵀ + rh + rw`.
//!
//! Implementations: `avx512` (register-tiled micro-kernels, vectorised exp) when the CPU has
//! AVX-512F, otherwise `portable`. Both are deterministic: the result does not depend on the
//! number of threads or their scheduling.
//!
//! Inference can also run in bf16 ([`attention_forward_bf16`]), with the arithmetic of PyTorch's
//! bf16 `scaled_dot_product_attention` on the CPU: `q·scale`, k and v rounded to bf16
//! ([`round_bf16`]), `q·kᵀ` accumulated in f32, bias and online softmax in f32, the
//! probabilities rounded to bf16 for `p·v`, accumulated in f32, f32 output. `avx512bf16` does
//! the products with `vdpbf16ps`; `portable` rounds the same values and multiplies them in f32
//! (bf16 × bf16 products are exact in f32, so only the order of the sums differs).
//! [`bf16_pays`] says whether the bf16 path is the faster one on this CPU.

#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
mod portable;
pub mod rel_pos;

pub use crate::window::RowAt;

/// `x` rounded to bf16 and back, the way `vcvtneps2bf16` rounds: to nearest, ties to even (as
/// the GEMM's bf16 packing); subnormal inputs (below 1.2e-38) become a zero of the same sign;
/// NaN stays NaN.
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let r = if b & 0x7F80_0000 == 0 {
        b & 0x8000_0000
    } else if x.is_nan() {
        (b | 0x0040_0000) & 0xFFFF_0000
    } else {
        b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000
    };
    f32::from_bits(r)
}

/// Whether bf16 attention ([`attention_forward_bf16`]) is faster than f32 on this CPU: where
/// the GEMM's bf16 plan runs `vdpbf16ps` ([`crate::gemm::bf16_plan`], e.g. AMD Zen 4/5, where
/// it does twice the multiply-adds of an f32 FMA). Not on Intel cores without AMX (there
/// `vdpbf16ps` is no faster than f32 FMA and the plan is f32), nor where the plan is AMX tiles
/// (this kernel does not use them).
pub fn bf16_pays() -> bool {
    let plan = crate::gemm::bf16_plan();
    plan.precision == crate::gemm::Precision::Bf16
        && plan.kernel == crate::gemm::Kernel::Avx512Bf16
        && crate::cpu::features().avx512bf16
}

/// Sizes: `bh` = batch × heads; q `[bh, nq, d]`, k `[bh, nk, d]`, v `[bh, nk, dv]`, out `[bh, nq, dv]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub bh: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub dv: usize,
}

impl AttnDims {
    /// The sizes in one line, in field order.
    pub fn new(bh: usize, nq: usize, nk: usize, d: usize, dv: usize) -> Self {
        AttnDims { bh, nq, nk, d, dv }
    }
}

/// Decomposed relative-position bias: `rel_h [bh, nq, kh]`, `rel_w [bh, nq, kw]`, `kh*kw == nk`.
#[derive(Clone, Copy, Debug)]
pub struct RelPosBias<'a> {
    pub rel_h: &'a [f32],
    pub rel_w: &'a [f32],
    pub kh: usize,
    pub kw: usize,
}

/// A learned bias per head for every (query, key) pair, shared by all batch entries (TinyViT's
/// window attention): `table [heads, nq, nk]`; batch·head `b` uses head `b % heads`.
#[derive(Clone, Copy, Debug)]
pub struct BiasTable<'a> {
    pub table: &'a [f32],
    pub heads: usize,
}

/// Where the rows of a `[bh, n, w]` attention operand live, when they are not one dense block:
/// row `i` of batch·head `b = bi·heads + h` starts at `bi·batch_stride + h·head_stride +
/// i·row_stride` and its `w` values are contiguous. This lets q, k and v be read straight out of
/// one interleaved qkv projection instead of being copied apart first. With a [`RowGather`] the
/// rows are picked through an index instead (windows of a token map, read in place).
#[derive(Clone, Copy, Debug)]
pub struct HeadRows<'a> {
    pub data: &'a [f32],
    pub heads: usize,
    pub batch_stride: usize,
    pub head_stride: usize,
    pub row_stride: usize,
    pub gather: Option<RowGather<'a>>,
}

/// Rows picked through an index (windowed attention on a projection's rows, in place): row `i`
/// of batch·head `b = bi·heads + h` is the row `index[bi·block + i]` of `data` (rows
/// `row_stride` apart; `batch_stride` unused) or, for [`RowAt::FILL`], the row `fill` (a zero
/// token's projection: the edge windows' padding); head `h`'s values start `h·head_stride` into
/// either. `block` is the operand's row count per batch entry (its `nq` or `nk`).
#[derive(Clone, Copy, Debug)]
pub struct RowGather<'a> {
    pub index: &'a [RowAt],
    pub block: usize,
    pub fill: &'a [f32],
}

impl<'a> HeadRows<'a> {
    /// A dense `[bh, n, w]` operand.
    pub fn dense(data: &'a [f32], n: usize, w: usize) -> Self {
        HeadRows {
            data,
            heads: 1,
            batch_stride: n * w,
            head_stride: 0,
            row_stride: w,
            gather: None,
        }
    }
    /// Offset of row 0 of batch·head `b` (of a strided, not gathered, operand).
    pub fn base(&self, b: usize) -> usize {
        (b / self.heads) * self.batch_stride + (b % self.heads) * self.head_stride
    }
    /// Row `i` of batch·head `b` (`w` values).
    #[inline]
    pub fn row(&self, b: usize, i: usize, w: usize) -> &'a [f32] {
        let h = (b % self.heads) * self.head_stride;
        match &self.gather {
            None => {
                let o = self.base(b) + i * self.row_stride;
                &self.data[o..o + w]
            }
            Some(g) => {
                let at = g.index[(b / self.heads) * g.block + i];
                if at.is_fill() {
                    &g.fill[h..h + w]
                } else {
                    let o = at.row * self.row_stride + h;
                    &self.data[o..o + w]
                }
            }
        }
    }
    /// Panics unless every row of a `[bh, n, w]` operand lies inside `data` (or `fill`).
    fn check(&self, name: &str, bh: usize, n: usize, w: usize) {
        assert!(
            self.heads > 0 && bh.is_multiple_of(self.heads),
            "{name}: heads"
        );
        if bh == 0 || n == 0 || w == 0 {
            return;
        }
        let head_end = (self.heads - 1) * self.head_stride + w;
        if let Some(g) = &self.gather {
            assert!(
                g.block == n,
                "{name}: {n} rows per window, index blocks of {}",
                g.block
            );
            let rows = &g.index[..(bh / self.heads) * n];
            let max = rows.iter().filter(|r| !r.is_fill()).map(|r| r.row).max();
            if let Some(max) = max {
                assert!(
                    rows.iter().all(|r| r.is_fill() || r.part == 0)
                        && max * self.row_stride + head_end <= self.data.len(),
                    "{name}: a row index ({max}) past the {} values of its rows",
                    self.data.len()
                );
            }
            assert!(
                rows.iter().all(|r| !r.is_fill()) || head_end <= g.fill.len(),
                "{name}: fill row of {} values for {} heads of {w}",
                g.fill.len(),
                self.heads
            );
            return;
        }
        let last = self.base(bh - 1).max(self.base(self.heads - 1)) + (n - 1) * self.row_stride + w;
        assert!(
            last <= self.data.len() && self.row_stride >= w,
            "{name}: {bh}×{n}×{w} rows with {self:?} overrun {} values",
            self.data.len()
        );
    }
    /// The operand as one dense `[bh, n, w]` block: borrowed when it already is one, else a copy.
    fn dense_view(&self, bh: usize, n: usize, w: usize) -> std::borrow::Cow<'a, [f32]> {
        let dense = self.heads == 1 && self.batch_stride == n * w && self.row_stride == w;
        if dense && self.gather.is_none() {
            std::borrow::Cow::Borrowed(&self.data[..bh * n * w])
        } else {
            std::borrow::Cow::Owned(self.to_dense(bh, n, w))
        }
    }
    /// The operand as a dense `[bh, n, w]` copy.
    pub fn to_dense(&self, bh: usize, n: usize, w: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(bh * n * w);
        for b in 0..bh {
            for i in 0..n {
                out.extend_from_slice(self.row(b, i, w));
            }
        }
        out
    }
}

fn check_table(dims: &AttnDims, t: &BiasTable) {
    assert!(
        t.heads > 0 && dims.bh.is_multiple_of(t.heads),
        "bias table: bh {} is not a multiple of {} heads",
        dims.bh,
        t.heads
    );
    assert_eq!(t.table.len(), t.heads * dims.nq * dims.nk, "bias table");
}

fn check(dims: &AttnDims, q: &[f32], k: &[f32], v: &[f32], bias: &Option<RelPosBias>) {
    let AttnDims { bh, nq, nk, d, dv } = *dims;
    assert!(nk > 0 && d > 0 && dv > 0, "attention needs nk, d, dv > 0");
    assert_eq!(q.len(), bh * nq * d, "q");
    assert_eq!(k.len(), bh * nk * d, "k");
    assert_eq!(v.len(), bh * nk * dv, "v");
    if let Some(b) = bias {
        assert_eq!(b.kh * b.kw, nk, "rel-pos bias: kh*kw must equal nk");
        assert_eq!(b.rel_h.len(), bh * nq * b.kh, "rel_h");
        assert_eq!(b.rel_w.len(), bh * nq * b.kw, "rel_w");
    }
}

/// One forward call whose operands its entry point has checked: q, k and v as rows, the scale
/// and at most one of the two bias forms.
#[derive(Clone, Copy)]
struct Forward<'a> {
    dims: AttnDims,
    /// q, k, v.
    rows: [HeadRows<'a>; 3],
    scale: f32,
    bias: Option<RelPosBias<'a>>,
    table: Option<BiasTable<'a>>,
    /// bf16 arithmetic (see the module documentation).
    bf16: bool,
}

impl<'a> Forward<'a> {
    fn new(
        dims: AttnDims,
        rows: [HeadRows<'a>; 3],
        scale: f32,
        bias: Option<RelPosBias<'a>>,
        table: Option<BiasTable<'a>>,
    ) -> Self {
        debug_assert!(bias.is_none() || table.is_none());
        Forward {
            dims,
            rows,
            scale,
            bias,
            table,
            bf16: false,
        }
    }

    /// Writes `out [bh, nq, dv]` and `lse [bh, nq]` (checked here), on the AVX-512 path if `fast`
    /// (AVX512-BF16 for a bf16 call), else on the portable one.
    fn run(self, out: &mut [f32], lse: &mut [f32], fast: bool) {
        let AttnDims { bh, nq, dv, .. } = self.dims;
        assert_eq!(out.len(), bh * nq * dv, "out");
        assert_eq!(lse.len(), bh * nq, "lse");
        if bh * nq == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if fast && self.bf16 {
            assert!(
                crate::cpu::features().avx512bf16,
                "AVX512-BF16 attention on a CPU without it"
            );
            return avx512bf16::attention_forward(self, out, lse);
        }
        #[cfg(target_arch = "x86_64")]
        if fast {
            return avx512::attention_forward(self, out, lse);
        }
        let _ = fast;
        portable::attention_forward(self, out, lse)
    }
}

/// The arguments of [`attention_backward`], gathered so that they are checked in one place
/// ([`Backward::check`]) before an implementation runs.
struct Backward<'a> {
    dims: AttnDims,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    scale: f32,
    bias: Option<RelPosBias<'a>>,
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
    drel: Option<(&'a mut [f32], &'a mut [f32])>,
}

impl Backward<'_> {
    /// Panics unless every operand matches `dims`. `None` when there is nothing to compute: no
    /// batch·heads, or no queries (then dK and dV are zero).
    fn check(self) -> Option<Self> {
        check(&self.dims, self.q, self.k, self.v, &self.bias);
        let AttnDims { bh, nq, dv, .. } = self.dims;
        assert_eq!(self.out.len(), bh * nq * dv, "out");
        assert_eq!(self.dout.len(), bh * nq * dv, "dout");
        assert_eq!(self.lse.len(), bh * nq, "lse");
        assert_eq!(self.dq.len(), self.q.len(), "dq");
        assert_eq!(self.dk.len(), self.k.len(), "dk");
        assert_eq!(self.dv.len(), self.v.len(), "dv");
        assert_eq!(
            self.bias.is_some(),
            self.drel.is_some(),
            "drel must be given iff bias is"
        );
        if let (Some(b), Some((h, w))) = (&self.bias, &self.drel) {
            assert_eq!(h.len(), bh * nq * b.kh, "drel_h");
            assert_eq!(w.len(), bh * nq * b.kw, "drel_w");
        }
        if bh == 0 {
            return None;
        }
        if nq == 0 {
            self.dk.fill(0.0);
            self.dv.fill(0.0);
            return None;
        }
        Some(self)
    }

    /// Writes the gradients (checked here), on the AVX-512 path if `fast`, else on the portable
    /// one.
    fn run(self, fast: bool) {
        let Some(args) = self.check() else {
            return;
        };
        #[cfg(target_arch = "x86_64")]
        if fast {
            return avx512::attention_backward(args);
        }
        let _ = fast;
        portable::attention_backward(args)
    }
}

/// Dense `[bh, n, w]` q, k and v as [`HeadRows`].
fn dense_rows<'a>(dims: AttnDims, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> [HeadRows<'a>; 3] {
    let AttnDims { nq, nk, d, dv, .. } = dims;
    [
        HeadRows::dense(q, nq, d),
        HeadRows::dense(k, nk, d),
        HeadRows::dense(v, nk, dv),
    ]
}

fn use_avx512() -> bool {
    cfg!(target_arch = "x86_64") && crate::cpu::features().avx512f
}

fn use_avx512bf16() -> bool {
    cfg!(target_arch = "x86_64") && crate::cpu::features().avx512bf16
}

/// Writes the public entry points that share an argument list: a forward on dense operands
/// with the rel-pos bias, in f32 or bf16 arithmetic, and the backward; `$fast` chooses the
/// AVX-512 path (AVX512-BF16 for a bf16 forward) over the portable one.
macro_rules! entry_point {
    (forward $(#[$doc:meta])* $name:ident, bf16: $bf16:expr, fast: $fast:expr) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            dims: AttnDims,
            q: &[f32],
            k: &[f32],
            v: &[f32],
            scale: f32,
            bias: Option<RelPosBias>,
            out: &mut [f32],
            lse: &mut [f32],
        ) {
            check(&dims, q, k, v, &bias);
            let rows = dense_rows(dims, q, k, v);
            let f = Forward::new(dims, rows, scale, bias, None);
            Forward { bf16: $bf16, ..f }.run(out, lse, $fast)
        }
    };
    (backward $(#[$doc:meta])* $name:ident, fast: $fast:expr) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            dims: AttnDims,
            q: &[f32],
            k: &[f32],
            v: &[f32],
            scale: f32,
            bias: Option<RelPosBias>,
            out: &[f32],
            lse: &[f32],
            dout: &[f32],
            dq: &mut [f32],
            dk: &mut [f32],
            dv: &mut [f32],
            drel: Option<(&mut [f32], &mut [f32])>,
        ) {
            let args = Backward {
                dims,
                q,
                k,
                v,
                scale,
                bias,
                out,
                lse,
                dout,
                dq,
                dk,
                dv,
                drel,
            };
            args.run($fast)
        }
    };
}

entry_point!(forward
    /// Writes `out` and the per-row log-sum-exp of the biased, scaled scores `lse [bh, nq]`.
    attention_forward, bf16: false, fast: use_avx512()
);

entry_point!(forward
    /// [`attention_forward`] in bf16 arithmetic (module documentation), for inference: on
    /// AVX512-BF16 when the CPU has it (whether or not it is faster there, see [`bf16_pays`]),
    /// else the portable path rounding the same values.
    attention_forward_bf16, bf16: true, fast: use_avx512bf16()
);

/// [`attention_forward`] with a whole bias table, `s = (q·scale)·kᵀ + table[b % heads]`
/// (inference: there is no backward for the table form).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_table(
    dims: AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    table: BiasTable,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let [q, k, v] = dense_rows(dims, q, k, v);
    attention_forward_table_rows(dims, q, k, v, scale, table, out, lse)
}

/// [`attention_forward_table`] on operands given by [`HeadRows`] (e.g. views into one qkv
/// projection); `out [bh, nq, dv]` and `lse [bh, nq]` are dense.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_table_rows(
    dims: AttnDims,
    q: HeadRows,
    k: HeadRows,
    v: HeadRows,
    scale: f32,
    table: BiasTable,
    out: &mut [f32],
    lse: &mut [f32],
) {
    check_rows(dims, [&q, &k, &v], &None);
    check_table(&dims, &table);
    let f = Forward::new(dims, [q, k, v], scale, None, Some(table));
    f.run(out, lse, use_avx512())
}

/// [`attention_forward`] (with or without the rel-pos bias) on operands given by [`HeadRows`]
/// (strided views into a projection, or windows gathered from its rows through a
/// [`RowGather`]), in f32 or, with `bf16`, in bf16 arithmetic (module documentation); `out [bh,
/// nq, dv]` and `lse [bh, nq]` are dense. Inference: there is no backward for this form.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_rows(
    dims: AttnDims,
    q: HeadRows,
    k: HeadRows,
    v: HeadRows,
    scale: f32,
    bias: Option<RelPosBias>,
    bf16: bool,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let fast = if bf16 { use_avx512bf16() } else { use_avx512() };
    forward_rows(dims, [q, k, v], (scale, bias, bf16), out, lse, fast)
}

/// [`attention_forward_rows`] on the AVX-512 path if `fast`, else on the portable one.
fn forward_rows(
    dims: AttnDims,
    rows: [HeadRows; 3],
    (scale, bias, bf16): (f32, Option<RelPosBias>, bool),
    out: &mut [f32],
    lse: &mut [f32],
    fast: bool,
) {
    let [q, k, v] = &rows;
    check_rows(dims, [q, k, v], &bias);
    let f = Forward::new(dims, rows, scale, bias, None);
    Forward { bf16, ..f }.run(out, lse, fast)
}

/// Panics unless q, k and v hold the rows `dims` asks for and the bias fits them.
fn check_rows(dims: AttnDims, [q, k, v]: [&HeadRows; 3], bias: &Option<RelPosBias>) {
    let AttnDims { bh, nq, nk, d, dv } = dims;
    assert!(nk > 0 && d > 0 && dv > 0, "attention needs nk, d, dv > 0");
    q.check("q", bh, nq, d);
    k.check("k", bh, nk, d);
    v.check("v", bh, nk, dv);
    if let Some(b) = bias {
        assert_eq!(b.kh * b.kw, nk, "rel-pos bias: kh*kw must equal nk");
        assert_eq!(b.rel_h.len(), bh * nq * b.kh, "rel_h");
        assert_eq!(b.rel_w.len(), bh * nq * b.kw, "rel_w");
    }
}

entry_point!(backward
    /// Gradients of attention (all overwritten). `drel_h`/`drel_w` are required iff `bias` is given.
    attention_backward, fast: use_avx512()
);

/// The portable implementation, forced (for tests on machines that would pick AVX-512).
#[doc(hidden)]
pub mod portable_impl {
    use super::{check, check_table, dense_rows, AttnDims, Backward, BiasTable};
    use super::{Forward, HeadRows, RelPosBias};

    entry_point!(forward
        /// [`super::attention_forward`] on the portable path.
        attention_forward, bf16: false, fast: false
    );

    entry_point!(forward
        /// [`super::attention_forward_bf16`] on the portable path.
        attention_forward_bf16, bf16: true, fast: false
    );

    /// [`super::attention_forward_table`] on the portable path.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_table(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        table: BiasTable,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        check(&dims, q, k, v, &None);
        check_table(&dims, &table);
        let rows = dense_rows(dims, q, k, v);
        Forward::new(dims, rows, scale, None, Some(table)).run(out, lse, false)
    }

    /// [`super::attention_forward_rows`] on the portable path.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_rows(
        dims: AttnDims,
        q: HeadRows,
        k: HeadRows,
        v: HeadRows,
        scale: f32,
        bias: Option<RelPosBias>,
        bf16: bool,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        super::forward_rows(dims, [q, k, v], (scale, bias, bf16), out, lse, false)
    }

    entry_point!(backward
        /// [`super::attention_backward`] on the portable path.
        attention_backward, fast: false
    );
}

/// Plain-loop oracles: the full score row is materialised per query, f64 accumulation.
pub mod reference {
    use super::{AttnDims, BiasTable, RelPosBias};

    #[derive(Clone, Copy)]
    enum Bias<'a> {
        Rel(RelPosBias<'a>),
        Table(BiasTable<'a>),
    }

    /// Biased, scaled scores of query `i` of head `b` (f64).
    #[allow(clippy::too_many_arguments)]
    fn scores(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        scale: f32,
        bias: &Option<Bias>,
        b: usize,
        i: usize,
    ) -> Vec<f64> {
        let AttnDims { nq, nk, d, .. } = dims;
        let qi = &q[(b * nq + i) * d..(b * nq + i + 1) * d];
        (0..nk)
            .map(|j| {
                let kj = &k[(b * nk + j) * d..(b * nk + j + 1) * d];
                let mut dot = 0.0f64;
                for c in 0..d {
                    dot += qi[c] as f64 * scale as f64 * kj[c] as f64;
                }
                match bias {
                    Some(Bias::Rel(r)) => {
                        dot += r.rel_h[(b * nq + i) * r.kh + j / r.kw] as f64;
                        dot += r.rel_w[(b * nq + i) * r.kw + j % r.kw] as f64;
                    }
                    Some(Bias::Table(t)) => {
                        dot += t.table[((b % t.heads) * nq + i) * nk + j] as f64;
                    }
                    None => {}
                }
                dot
            })
            .collect()
    }

    /// Probabilities of query `i` of head `b` (f64) and the log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn probs(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        scale: f32,
        bias: &Option<Bias>,
        b: usize,
        i: usize,
    ) -> (Vec<f64>, f64) {
        let mut s = scores(dims, q, k, scale, bias, b, i);
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for x in s.iter_mut() {
            *x = (*x - m).exp() / sum;
        }
        (s, m + sum.ln())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        bias: Option<RelPosBias>,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        forward(dims, q, k, v, scale, bias.map(Bias::Rel), out, lse)
    }

    /// The oracle of [`super::attention_forward_bf16`]: `q·scale`, k and v rounded to bf16, the
    /// scores and sums in f64, each probability `e^(s − m)` (m the row maximum) rounded to bf16
    /// before it multiplies v, the sum it is divided by not. (The fast paths round relative to
    /// the running maximum of the key blocks seen so far, so where a row spans several blocks
    /// their probabilities round differently, within a bf16 rounding.)
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_bf16(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        bias: Option<RelPosBias>,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        let round = |x: &[f32], s: f32| -> Vec<f32> {
            x.iter().map(|&x| super::round_bf16(x * s)).collect()
        };
        let (q, k, v) = (round(q, scale), round(k, 1.0), round(v, 1.0));
        let AttnDims { bh, nq, nk, dv, .. } = dims;
        let bias = bias.map(Bias::Rel);
        for b in 0..bh {
            for i in 0..nq {
                let s = scores(dims, &q, &k, 1.0, &bias, b, i);
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let l: f64 = e.iter().sum();
                lse[b * nq + i] = (m + l.ln()) as f32;
                let p: Vec<f64> = e
                    .iter()
                    .map(|&e| super::round_bf16(e as f32) as f64)
                    .collect();
                for c in 0..dv {
                    let acc: f64 = (0..nk)
                        .map(|j| p[j] * v[(b * nk + j) * dv + c] as f64)
                        .sum();
                    out[(b * nq + i) * dv + c] = (acc / l) as f32;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_table(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        table: BiasTable,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        forward(dims, q, k, v, scale, Some(Bias::Table(table)), out, lse)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        bias: Option<Bias>,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        let AttnDims { bh, nq, nk, dv, .. } = dims;
        for b in 0..bh {
            for i in 0..nq {
                let (p, l) = probs(dims, q, k, scale, &bias, b, i);
                lse[b * nq + i] = l as f32;
                for c in 0..dv {
                    let mut acc = 0.0f64;
                    for j in 0..nk {
                        acc += p[j] * v[(b * nk + j) * dv + c] as f64;
                    }
                    out[(b * nq + i) * dv + c] = acc as f32;
                }
            }
        }
    }

    /// Ignores `out` and `lse` (recomputes everything from q, k, v).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        dims: AttnDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        bias: Option<RelPosBias>,
        out: &[f32],
        lse: &[f32],
        dout: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        drel: Option<(&mut [f32], &mut [f32])>,
    ) {
        let _ = (out, lse);
        let AttnDims {
            bh,
            nq,
            nk,
            d,
            dv: dvd,
        } = dims;
        let mut gq = vec![0.0f64; dq.len()];
        let mut gk = vec![0.0f64; dk.len()];
        let mut gv = vec![0.0f64; dv.len()];
        let (kh, kw) = bias.map(|r| (r.kh, r.kw)).unwrap_or((0, 0));
        let mut gh = vec![0.0f64; bh * nq * kh];
        let mut gw = vec![0.0f64; bh * nq * kw];
        for b in 0..bh {
            for i in 0..nq {
                let (p, _) = probs(dims, q, k, scale, &bias.map(Bias::Rel), b, i);
                let doi = &dout[(b * nq + i) * dvd..(b * nq + i + 1) * dvd];
                let dp: Vec<f64> = (0..nk)
                    .map(|j| {
                        (0..dvd)
                            .map(|c| doi[c] as f64 * v[(b * nk + j) * dvd + c] as f64)
                            .sum()
                    })
                    .collect();
                let dsum: f64 = (0..nk).map(|j| p[j] * dp[j]).sum();
                for j in 0..nk {
                    let ds = p[j] * (dp[j] - dsum);
                    for c in 0..dvd {
                        gv[(b * nk + j) * dvd + c] += p[j] * doi[c] as f64;
                    }
                    for c in 0..d {
                        gq[(b * nq + i) * d + c] +=
                            scale as f64 * ds * k[(b * nk + j) * d + c] as f64;
                        gk[(b * nk + j) * d + c] +=
                            scale as f64 * ds * q[(b * nq + i) * d + c] as f64;
                    }
                    if bias.is_some() {
                        gh[(b * nq + i) * kh + j / kw] += ds;
                        gw[(b * nq + i) * kw + j % kw] += ds;
                    }
                }
            }
        }
        let put = |src: &[f64], dst: &mut [f32]| {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s as f32)
        };
        put(&gq, dq);
        put(&gk, dk);
        put(&gv, dv);
        if let Some((h, w)) = drel {
            put(&gh, h);
            put(&gw, w);
        }
    }
}
