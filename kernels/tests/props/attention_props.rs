//! Attention with SAM's decomposed rel-pos bias: tiled fast path vs materialising reference,
//! forward and backward, and finite-difference gradients of the reference.

#![allow(clippy::needless_range_loop)]

use medsam_kernels::attention::{self, reference, AttnDims, BiasTable, RelPosBias};
use proptest::prelude::*;

use medsam_kernels::testing::{assert_close, with_threads, Rng};

struct Case {
    dims: AttnDims,
    kh: usize,
    kw: usize,
    biased: bool,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rh: Vec<f32>,
    rw: Vec<f32>,
    dout: Vec<f32>,
    scale: f32,
}

impl Case {
    fn new(dims: AttnDims, kh: usize, kw: usize, biased: bool, seed: u64) -> Case {
        let AttnDims { bh, nq, nk, d, dv } = dims;
        let mut r = Rng(seed);
        Case {
            dims,
            kh,
            kw,
            biased,
            q: r.vec(bh * nq * d, 2.0),
            k: r.vec(bh * nk * d, 2.0),
            v: r.vec(bh * nk * dv, 1.0),
            rh: r.vec(bh * nq * kh, 1.0),
            rw: r.vec(bh * nq * kw, 1.0),
            dout: r.vec(bh * nq * dv, 1.0),
            scale: 1.0 / (d as f32).sqrt(),
        }
    }
    fn bias(&self) -> Option<RelPosBias<'_>> {
        self.biased.then_some(RelPosBias {
            rel_h: &self.rh,
            rel_w: &self.rw,
            kh: self.kh,
            kw: self.kw,
        })
    }
    /// [out, lse] of `fwd`.
    fn forward(&self, fwd: ForwardFn) -> [Vec<f32>; 2] {
        let mut out = vec![9.0; self.dout.len()];
        let mut lse = vec![9.0; self.dims.bh * self.dims.nq];
        let (q, k, v) = (&self.q[..], &self.k[..], &self.v[..]);
        fwd(
            self.dims,
            q,
            k,
            v,
            self.scale,
            self.bias(),
            &mut out,
            &mut lse,
        );
        [out, lse]
    }
    /// [out, lse, dq, dk, dv, drel_h, drel_w] of one implementation; every output starts at
    /// 9.0, so one that is not overwritten shows.
    fn run(&self, (fwd, bwd): Imp) -> [Vec<f32>; 7] {
        let [out, lse] = self.forward(fwd);
        let [mut dq, mut dk, mut dv] = [&self.q, &self.k, &self.v].map(|t| vec![9.0; t.len()]);
        let (mut dh, mut dw) = (vec![9.0; self.rh.len()], vec![9.0; self.rw.len()]);
        let drel = self.biased.then_some((&mut dh[..], &mut dw[..]));
        bwd(
            self.dims,
            &self.q,
            &self.k,
            &self.v,
            self.scale,
            self.bias(),
            &out,
            &lse,
            &self.dout,
            &mut dq,
            &mut dk,
            &mut dv,
            drel,
        );
        if !self.biased {
            dh.clear();
            dw.clear();
        }
        [out, lse, dq, dk, dv, dh, dw]
    }
}

type ForwardFn =
    fn(AttnDims, &[f32], &[f32], &[f32], f32, Option<RelPosBias>, &mut [f32], &mut [f32]);
type DRel<'a> = Option<(&'a mut [f32], &'a mut [f32])>;
#[rustfmt::skip]
type BackwardFn = fn(AttnDims, &[f32], &[f32], &[f32], f32, Option<RelPosBias>, &[f32], &[f32],
                     &[f32], &mut [f32], &mut [f32], &mut [f32], DRel);
/// One implementation's forward and backward.
type Imp = (ForwardFn, BackwardFn);
const FAST: Imp = (attention::attention_forward, attention::attention_backward);
const REFERENCE: Imp = (reference::attention_forward, reference::attention_backward);
const PORTABLE: Imp = (
    attention::portable_impl::attention_forward,
    attention::portable_impl::attention_backward,
);

fn compare(c: &Case) {
    let a = c.run(FAST);
    let b = c.run(REFERENCE);
    // Tolerance: scores are O(10) (|q|,|k| ≤ 2, d ≤ 40, plus bias ≤ 2); the fast path works in f32
    // with a polynomial exp (rel ~2e-7) and an online softmax, the reference in f64. Errors in
    // p are ~1e-6 relative; outputs/gradients sum ≤ ~300 such terms, so 2e-4 abs + 2e-4 rel.
    let names = ["out", "lse", "dq", "dk", "dv", "drel_h", "drel_w"];
    for i in 0..7 {
        assert_close(
            &format!("{} {:?} bias={}", names[i], c.dims, c.biased),
            &a[i],
            &b[i],
            2e-4,
            2e-4,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn attention_fast_matches_reference_with_bias(bh in 1usize..3, nq in 1usize..140, kh in 1usize..12, kw in 1usize..12,
                                                  d in 1usize..40, dv in 1usize..40, seed in any::<u64>()) {
        let dims = AttnDims { bh, nq, nk: kh * kw, d, dv };
        compare(&Case::new(dims, kh, kw, true, seed));
    }

    #[test]
    fn attention_fast_matches_reference_no_bias(bh in 1usize..4, nq in 1usize..20, nk in 1usize..200,
                                                d in 1usize..40, seed in any::<u64>()) {
        let dims = AttnDims { bh, nq, nk, d, dv: d };
        compare(&Case::new(dims, 1, nk, false, seed));
    }
}

#[test]
fn sam_window_shape() {
    // One windowed-attention head: 14×14 tokens, d = 64, rel-pos over 14×14 (nk = 196 → 4 tiles).
    let dims = AttnDims::new(2, 196, 196, 64, 64);
    compare(&Case::new(dims, 14, 14, true, 77));
}

#[test]
fn decoder_cross_attention_shape() {
    // Token→image cross-attention: nq = 7, nk = 16×16, d = 16, no bias.
    let dims = AttnDims::new(8, 7, 256, 16, 16);
    compare(&Case::new(dims, 1, 256, false, 78));
}

#[test]
fn attention_gradient_finite_difference() {
    let dims = AttnDims::new(2, 5, 6, 3, 4);
    let base = Case::new(dims, 2, 3, true, 99);
    let [_, _, dq, dk, dv, dh, dw] = base.run(FAST);
    let loss = |c: &Case| {
        let [out, _] = c.forward(attention::attention_forward);
        out.iter()
            .zip(&c.dout)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
    };
    let eps = 1e-2f32;
    let mut c = Case::new(dims, 2, 3, true, 99);
    // (which tensor, analytic gradient)
    let grads: [(&str, &[f32]); 5] = [
        ("q", &dq),
        ("k", &dk),
        ("v", &dv),
        ("rel_h", &dh),
        ("rel_w", &dw),
    ];
    for (t, (name, an)) in grads.iter().enumerate() {
        let n = an.len();
        let mut fd = vec![0.0f32; n];
        for i in 0..n {
            let field = |c: &mut Case| -> *mut f32 {
                let v = match t {
                    0 => &mut c.q,
                    1 => &mut c.k,
                    2 => &mut c.v,
                    3 => &mut c.rh,
                    _ => &mut c.rw,
                };
                &mut v[i]
            };
            let p = field(&mut c);
            // SAFETY: p points into c, which is alive and not otherwise borrowed here.
            let orig = unsafe { *p };
            unsafe { *p = orig + eps };
            let lp = loss(&c);
            unsafe { *p = orig - eps };
            let lm = loss(&c);
            unsafe { *p = orig };
            fd[i] = ((lp - lm) / (2.0 * eps as f64)) as f32;
        }
        // Tolerance: O(eps²) truncation of a smooth function with O(1) derivatives, plus f32
        // rounding of the loss (~1e-7·|L|/eps); 2e-3 is far below the size of a wrong term.
        assert_close(&format!("fd d{name}"), an, &fd, 2e-3, 2e-3);
    }
}

#[test]
fn multi_block_shapes() {
    // Several query blocks, several key blocks (forward and backward), several dK/dV groups per
    // head, a partial last block of each, and d/dv that are not multiples of the vector width.
    for (dims, kh, kw, biased) in [
        (AttnDims::new(1, 300, 600, 24, 40), 20, 30, true),
        // Bias rows longer than 32 (looked up by gather) and rows of whole 16-key chunks.
        (AttnDims::new(1, 40, 3 * 40, 16, 8), 3, 40, true),
        (AttnDims::new(1, 33, 35 * 2, 8, 8), 35, 2, true),
        (AttnDims::new(2, 50, 40 * 16, 16, 16), 40, 16, true),
        (AttnDims::new(3, 270, 530, 17, 17), 1, 530, false),
        (AttnDims::new(2, 129, 7, 16, 16), 1, 7, false),
    ] {
        compare(&Case::new(dims, kh, kw, biased, 5));
    }
}

#[test]
fn portable_path_matches_reference() {
    let dims = AttnDims::new(2, 70, 90, 20, 12);
    let c = Case::new(dims, 9, 10, true, 11);
    let want = c.run(REFERENCE);
    let got = c.run(PORTABLE);
    for i in 0..7 {
        assert_close(&format!("portable {i}"), &got[i], &want[i], 2e-4, 2e-4);
    }
}

#[test]
fn bit_identical_across_thread_counts() {
    // Training resume relies on run-to-run determinism: the fast path must not depend on the
    // number of threads or on how rayon schedules the tasks.
    let dims = AttnDims::new(3, 400, 400, 32, 32);
    let c = Case::new(dims, 20, 20, true, 3);
    let runs: Vec<[Vec<f32>; 7]> = [1, 2, 3, 2]
        .iter()
        .map(|&t| with_threads(t, || c.run(FAST)))
        .collect();
    for r in &runs[1..] {
        for i in 0..7 {
            let same = r[i]
                .iter()
                .zip(&runs[0][i])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "output {i} differs between thread counts");
        }
    }
}

/// Long key rows (SAM's token→image attention: 7 tokens × 4096 image keys, head dim 16) keep
/// f32 rounding near one short sum's: `P·V` is summed in 64-key chunks. With one 4096-term chain
/// per output (before) the error here was 1.1e-6 for both implementations; now ~3.5e-7.
#[test]
fn long_key_rows_stay_accurate() {
    let (bh, nq, nk, d) = (8, 7, 4096, 16);
    let mut rng = Rng(7);
    let (q, k, v) = (
        rng.vec(bh * nq * d, 3.0),
        rng.vec(bh * nk * d, 3.0),
        rng.vec(bh * nk * d, 1.0),
    );
    let dims = AttnDims::new(bh, nq, nk, d, d);
    let run = |f: ForwardFn| {
        let (mut o, mut l) = (vec![0.0; bh * nq * d], vec![0.0; bh * nq]);
        f(dims, &q, &k, &v, 0.25, None, &mut o, &mut l);
        o
    };
    let want = run(reference::attention_forward);
    assert_close("fast", &run(attention::attention_forward), &want, 6e-7, 0.0);
    assert_close(
        "portable",
        &run(attention::portable_impl::attention_forward),
        &want,
        6e-7,
        0.0,
    );
}

/// TinyViT's window attention: a `[heads, n, n]` bias table shared by every window.
fn table_case(windows: usize, heads: usize, n: usize, d: usize, seed: u64) -> [Vec<f32>; 6] {
    let bh = windows * heads;
    let mut r = Rng(seed);
    let (q, k, v) = (
        r.vec(bh * n * d, 2.0),
        r.vec(bh * n * d, 2.0),
        r.vec(bh * n * d, 1.0),
    );
    let table = r.vec(heads * n * n, 3.0);
    [q, k, v, table, vec![9.0; bh * n * d], vec![9.0; bh * n]]
}

type TableFn = fn(AttnDims, &[f32], &[f32], &[f32], f32, BiasTable, &mut [f32], &mut [f32]);

fn run_table(
    f: TableFn,
    windows: usize,
    heads: usize,
    n: usize,
    d: usize,
    seed: u64,
) -> [Vec<f32>; 2] {
    let [q, k, v, table, mut out, mut lse] = table_case(windows, heads, n, d, seed);
    let dims = AttnDims::new(windows * heads, n, n, d, d);
    let (t, scale) = (
        BiasTable {
            table: &table,
            heads,
        },
        1.0 / (d as f32).sqrt(),
    );
    f(dims, &q, &k, &v, scale, t, &mut out, &mut lse);
    [out, lse]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn bias_table_fast_matches_reference(
        windows in 1usize..4, heads in 1usize..4, n in 1usize..70, d in 1usize..40, seed in 0u64..1000
    ) {
        let [want, wl] = run_table(reference::attention_forward_table, windows, heads, n, d, seed);
        for f in [attention::attention_forward_table as TableFn, attention::portable_impl::attention_forward_table] {
            let [got, gl] = run_table(f, windows, heads, n, d, seed);
            assert_close("out", &got, &want, 2e-5, 1e-4);
            assert_close("lse", &gl, &wl, 2e-5, 1e-5);
        }
    }
}

/// LiteMedSAM's shapes: 7×7 windows (stages 1, 3) and 14×14 windows (stage 2), key dim 32.
#[test]
fn bias_table_tiny_vit_shapes() {
    for (windows, heads, n) in [(3, 4, 49), (2, 5, 196), (2, 10, 49)] {
        let [want, _] = run_table(reference::attention_forward_table, windows, heads, n, 32, 7);
        let [got, _] = run_table(attention::attention_forward_table, windows, heads, n, 32, 7);
        // Several windows and heads: a table indexed by batch·head instead of head fails here.
        assert_close("out", &got, &want, 2e-5, 1e-4);
    }
}

/// q, k, v read in place from one interleaved `[windows, n, heads, 3, d]` projection (TinyViT's
/// qkv layout) give exactly what the dense copies give.
#[test]
fn bias_table_reads_interleaved_qkv() {
    let (windows, heads, n, d) = (3, 5, 49, 32);
    let bh = windows * heads;
    let mut r = Rng(5);
    let qkv = r.vec(windows * n * heads * 3 * d, 2.0);
    let table = r.vec(heads * n * n, 3.0);
    let rows = |part: usize| attention::HeadRows {
        data: &qkv[part * d..],
        heads,
        batch_stride: n * heads * 3 * d,
        head_stride: 3 * d,
        row_stride: heads * 3 * d,
        gather: None,
    };
    let dims = AttnDims::new(bh, n, n, d, d);
    let t = BiasTable {
        table: &table,
        heads,
    };
    let scale = 1.0 / (d as f32).sqrt();
    let (mut got, mut gl) = (vec![9.0; bh * n * d], vec![9.0; bh * n]);
    attention::attention_forward_table_rows(
        dims,
        rows(0),
        rows(1),
        rows(2),
        scale,
        t,
        &mut got,
        &mut gl,
    );
    let dense = |part: usize| rows(part).to_dense(bh, n, d);
    let (q, k, v) = (dense(0), dense(1), dense(2));
    let (mut want, mut wl) = (vec![9.0; bh * n * d], vec![9.0; bh * n]);
    attention::attention_forward_table(dims, &q, &k, &v, scale, t, &mut want, &mut wl);
    assert_eq!(got, want);
    assert_eq!(gl, wl);
    let (mut refo, mut refl) = (vec![9.0; bh * n * d], vec![9.0; bh * n]);
    reference::attention_forward_table(dims, &q, &k, &v, scale, t, &mut refo, &mut refl);
    assert_close("out", &got, &refo, 2e-5, 1e-4);
}

/// `heads` heads of `d` values at the start of the rows (`3·heads·d` wide) of `data` / `fill`,
/// the rows picked through `index`, `n` per window.
fn gathered_rows<'a>(
    data: &'a [f32],
    fill: &'a [f32],
    (heads, d): (usize, usize),
    index: &'a [attention::RowAt],
    n: usize,
) -> attention::HeadRows<'a> {
    attention::HeadRows {
        data,
        heads,
        batch_stride: 0,
        head_stride: d,
        row_stride: 3 * heads * d,
        gather: Some(attention::RowGather {
            index,
            block: n,
            fill,
        }),
    }
}

type RowsFn = fn(
    AttnDims,
    attention::HeadRows,
    attention::HeadRows,
    attention::HeadRows,
    f32,
    Option<RelPosBias>,
    bool,
    &mut [f32],
    &mut [f32],
);

/// Windows of a `[tokens, 3·heads·d]` q/k/v projection read in place through a row index with
/// fill rows (Hiera's windowed attention in inference), queries through their own index (pooled
/// or inside-the-map queries), with or without SAM's rel-pos bias: every path, f32 and bf16,
/// gives bit for bit what it gives on dense copies gathered here by hand; both also match the
/// references.
fn check_gathered_windows(
    windows: usize,
    heads: usize,
    (nq, (kh, kw)): (usize, (usize, usize)),
    d: usize,
    biased: bool,
    seed: u64,
) {
    let nk = kh * kw;
    use attention::{HeadRows, RowAt};
    let mut r = Rng(seed);
    let (tokens, width) = (windows * nk + 3, 3 * heads * d);
    let qkv = r.vec(tokens * width, 2.0);
    let fill = r.vec(width, 2.0);
    // Key rows: a shuffled pick of the tokens, about one in five the fill row.
    let pick = |r: &mut Rng, n: usize, fills: bool| -> Vec<RowAt> {
        (0..windows * n)
            .map(|_| {
                let u = r.vec(1, 1.0)[0].abs();
                if fills && u < 0.2 {
                    RowAt::FILL
                } else {
                    RowAt::row(((u * 7919.0) as usize) % tokens)
                }
            })
            .collect()
    };
    let (kv_index, q_index) = (pick(&mut r, nk, true), pick(&mut r, nq, false));
    let (kv_index, q_index) = (&kv_index[..], &q_index[..]);
    let gathered = |part: usize, index, n| {
        gathered_rows(
            &qkv[part * heads * d..],
            &fill[part * heads * d..],
            (heads, d),
            index,
            n,
        )
    };
    // By hand: batch·head b = window·heads + h, row i → its token's (or the fill's) values.
    let dense = |part: usize, index: &[RowAt], n: usize| -> Vec<f32> {
        let mut out = Vec::new();
        for wdw in 0..windows {
            for h in 0..heads {
                for i in 0..n {
                    let at = index[wdw * n + i];
                    let row = if at.is_fill() {
                        &fill[..]
                    } else {
                        &qkv[at.row * width..(at.row + 1) * width]
                    };
                    let c0 = part * heads * d + h * d;
                    out.extend_from_slice(&row[c0..c0 + d]);
                }
            }
        }
        out
    };
    let (q, k, v) = (
        dense(0, q_index, nq),
        dense(1, kv_index, nk),
        dense(2, kv_index, nk),
    );
    let bh = windows * heads;
    let dims = AttnDims::new(bh, nq, nk, d, d);
    let scale = 1.0 / (d as f32).sqrt();
    let (rel_h, rel_w) = (r.vec(bh * nq * kh, 1.0), r.vec(bh * nq * kw, 1.0));
    let bias = biased.then_some(RelPosBias {
        rel_h: &rel_h,
        rel_w: &rel_w,
        kh,
        kw,
    });
    let run = |f: RowsFn, rows: [HeadRows; 3], bf16: bool| {
        let (mut out, mut lse) = (vec![9.0; bh * nq * d], vec![9.0; bh * nq]);
        let [qr, kr, vr] = rows;
        f(dims, qr, kr, vr, scale, bias, bf16, &mut out, &mut lse);
        [out, lse]
    };
    let in_place = [
        gathered(0, q_index, nq),
        gathered(1, kv_index, nk),
        gathered(2, kv_index, nk),
    ];
    let copies = [
        HeadRows::dense(&q, nq, d),
        HeadRows::dense(&k, nk, d),
        HeadRows::dense(&v, nk, d),
    ];
    let fast = attention::attention_forward_rows as RowsFn;
    let portable = attention::portable_impl::attention_forward_rows as RowsFn;
    for (f, bf16) in [
        (fast, false),
        (portable, false),
        (fast, true),
        (portable, true),
    ] {
        let want = run(f, copies, bf16);
        assert_eq!(
            run(f, in_place, bf16),
            want,
            "bf16 {bf16}: gathered rows differ from copies"
        );
    }
    // Against the references, with the tolerances of the dense tests (attention_bf16_props).
    let reference = |bf16: bool| {
        let (mut out, mut lse) = (vec![9.0; bh * nq * d], vec![9.0; bh * nq]);
        let f = if bf16 {
            reference::attention_forward_bf16
        } else {
            reference::attention_forward
        };
        f(dims, &q, &k, &v, scale, bias, &mut out, &mut lse);
        [out, lse]
    };
    let ([got, gl], [want, wl]) = (run(fast, in_place, false), reference(false));
    assert_close("out", &got, &want, 2e-5, 1e-4);
    assert_close("lse", &gl, &wl, 2e-5, 1e-5);
    let ([got, gl], [want, wl]) = (run(fast, in_place, true), reference(true));
    assert_close("bf16 out", &got, &want, 2e-3, 0.0);
    assert_close("bf16 lse", &gl, &wl, 5e-6, 5e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn gathered_windows_match_dense_copies(
        windows in 1usize..5, heads in 1usize..4, nq in 1usize..40, kh in 1usize..9,
        kw in 1usize..9, d in 1usize..40, biased in any::<bool>(), seed in 0u64..1000
    ) {
        check_gathered_windows(windows, heads, (nq, (kh, kw)), d, biased, seed);
    }
}

/// MedSAM2's Hiera t512 window shapes: stage 1 (8×8 windows, one head of 96), a pooled stage
/// transition (16 queries per 64 keys, two heads), stage 3's 14×14 windows (four heads); and
/// SAM ViT-B's, with its rel-pos bias.
#[test]
fn gathered_windows_hiera_shapes() {
    for (windows, heads, n) in [
        (4, 1, (64, (8, 8))),
        (3, 2, (16, (8, 8))),
        (2, 4, (196, (14, 14))),
    ] {
        check_gathered_windows(windows, heads, n, 96, false, 11);
    }
    // SAM ViT-B's windowed blocks: 14 × 14 windows with the decomposed rel-pos bias, 64-wide heads.
    check_gathered_windows(2, 3, (196, (14, 14)), 64, true, 12);
}
