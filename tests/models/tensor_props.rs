//! Property tests of the tensor layer: ops on non-contiguous views (permuted, narrowed,
//! broadcast) give exactly what the same ops give on dense copies, and matmul on strided operands
//! matches a plain triple loop. Exact equality for data movement; 1e-5·√k relative for matmul
//! (f32 sums in a different order).

use medsam::Tensor;
use proptest::prelude::*;

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape).unwrap()
}

fn dense(t: &Tensor) -> Tensor {
    Tensor::from_vec(t.to_vec().unwrap(), t.shape()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn broadcast_ops_on_views_equal_ops_on_copies(a in 1usize..5, b in 1usize..6, c in 1usize..7, seed in 0u64..1000, perm in 0usize..6) {
        let perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let x = tensor(&[a, b, c], seed).permute(&perms[perm]).unwrap();
        let shape = x.shape().to_vec();
        let y = tensor(&[1, shape[1], 1], seed + 1);
        let z = tensor(&[shape[2]], seed + 2);
        for (got, want) in [
            (x.add(&y).unwrap(), dense(&x).add(&dense(&y)).unwrap()),
            (x.mul(&z).unwrap(), dense(&x).mul(&z).unwrap()),
            (y.sub(&x).unwrap(), dense(&y).sub(&dense(&x)).unwrap()),
        ] {
            prop_assert_eq!(got.shape(), want.shape());
            prop_assert_eq!(got.to_vec().unwrap(), want.to_vec().unwrap());
        }
    }

    #[test]
    fn narrow_permute_reshape_round_trip(a in 1usize..5, b in 2usize..6, c in 1usize..5, seed in 0u64..1000) {
        let x = tensor(&[a, b, c], seed);
        let v = x.narrow(1, 1, b - 1).unwrap().permute(&[2, 0, 1]).unwrap();
        let flat = v.reshape(&[c, a * (b - 1)]).unwrap().to_vec().unwrap();
        let xs = x.to_vec().unwrap();
        for k in 0..c { for i in 0..a { for j in 0..b - 1 {
            prop_assert_eq!(flat[k * a * (b - 1) + i * (b - 1) + j], xs[(i * b + j + 1) * c + k]);
        }}}
    }

    #[test]
    fn matmul_on_strided_operands(batch in 1usize..4, m in 1usize..9, k in 1usize..9, n in 1usize..9, ta in any::<bool>(), tb in any::<bool>(), seed in 0u64..1000) {
        let a = if ta { tensor(&[batch, k, m], seed).transpose(1, 2).unwrap() } else { tensor(&[batch, m, k], seed) };
        let b = if tb { tensor(&[batch, n, k], seed + 7).transpose(1, 2).unwrap() } else { tensor(&[batch, k, n], seed + 7) };
        let got = a.matmul(&b).unwrap().to_vec().unwrap();
        let (av, bv) = (a.to_vec().unwrap(), b.to_vec().unwrap());
        for bi in 0..batch { for i in 0..m { for j in 0..n {
            let want: f32 = (0..k).map(|p| av[(bi * m + i) * k + p] * bv[(bi * k + p) * n + j]).sum();
            let g = got[(bi * m + i) * n + j];
            prop_assert!((g - want).abs() <= 1e-5 * (k as f32).sqrt() * (1.0 + want.abs()), "{} vs {}", g, want);
        }}}
    }

    /// A 1×1 convolution and a LayerNorm2d of a channels-last view (NHWC seen as NCHW) run as
    /// row ops over the pixels and return a channels-last view; values match the NCHW kernels on
    /// a dense copy (GEMM / row sums in another order: 1e-5·√c relative), and so do the
    /// gradients of every input through the composed path.
    #[test]
    fn conv1x1_and_layer_norm2d_on_channels_last_views(b in 1usize..3, c in 1usize..20, h in 1usize..6, w in 1usize..6, co in 1usize..20, bias in any::<bool>(), seed in 0u64..1000) {
        let close = |got: &Tensor, want: &Tensor, what: &str| -> Result<(), TestCaseError> {
            prop_assert_eq!(got.shape(), want.shape());
            for (g, e) in got.to_vec().unwrap().iter().zip(want.to_vec().unwrap()) {
                prop_assert!((g - e).abs() <= 1e-5 * (c as f32).sqrt() * (1.0 + e.abs()), "{}: {} vs {}", what, g, e);
            }
            Ok(())
        };
        let var = |t: Tensor| t.into_variable();
        let nhwc = var(tensor(&[b, h, w, c], seed));
        let wt = var(tensor(&[co, c, 1, 1], seed + 1));
        let bs = bias.then(|| var(tensor(&[co], seed + 2)));
        let (gamma, beta) = (var(tensor(&[c], seed + 3)), var(tensor(&[c], seed + 4)));
        let forward = |x: &Tensor, wt: &Tensor, bs: Option<&Tensor>, gamma: &Tensor, beta: &Tensor| {
            let y = x.conv2d(wt, bs, 1, 0).unwrap();
            let n = x.layer_norm2d(gamma, beta, 1e-6).unwrap();
            (y, n)
        };
        let view = nhwc.permute(&[0, 3, 1, 2]).unwrap();
        let (y, n) = forward(&view, &wt, bs.as_ref(), &gamma, &beta);
        let copy = var(dense(&view));
        let (wt2, g2, b2) = (var(dense(&wt)), var(dense(&gamma)), var(dense(&beta)));
        let bs2 = bs.as_ref().map(|t| var(dense(t)));
        let (y2, n2) = forward(&copy, &wt2, bs2.as_ref(), &g2, &b2);
        close(&y, &y2, "conv")?;
        close(&n, &n2, "layer_norm2d")?;
        // The same weighting of both outputs, so every gradient is exercised.
        let (ry, rn) = (tensor(y.shape(), seed + 5), tensor(n.shape(), seed + 6));
        y.mul(&ry).unwrap().sum_all().unwrap().add(&n.mul(&rn).unwrap().sum_all().unwrap()).unwrap().backward().unwrap();
        y2.mul(&ry).unwrap().sum_all().unwrap().add(&n2.mul(&rn).unwrap().sum_all().unwrap()).unwrap().backward().unwrap();
        close(&nhwc.grad().unwrap().permute(&[0, 3, 1, 2]).unwrap(), &copy.grad().unwrap(), "dx")?;
        close(&wt.grad().unwrap(), &wt2.grad().unwrap(), "dw")?;
        close(&gamma.grad().unwrap(), &g2.grad().unwrap(), "dgamma")?;
        close(&beta.grad().unwrap(), &b2.grad().unwrap(), "dbeta")?;
        if let (Some(bs), Some(bs2)) = (&bs, &bs2) {
            close(&bs.grad().unwrap(), &bs2.grad().unwrap(), "dbias")?;
        }
    }

    /// Three parts along any axis, one of them a permuted (non-contiguous) view, against the
    /// value at each index: the backend's one-copy-per-part concatenation.
    #[test]
    fn cat_along_any_axis_places_each_value(shape in prop::collection::vec(1usize..5, 3), dim in 0usize..3, lens in prop::collection::vec(0usize..4, 3), seed in 0u64..1000) {
        let part_shape = |len: usize| {
            let mut s = shape.clone();
            s[dim] = len;
            s
        };
        let a = tensor(&part_shape(lens[0]), seed);
        // Built transposed and permuted back: same shape, strided view.
        let bs = part_shape(lens[1]);
        let b = tensor(&[bs[2], bs[1], bs[0]], seed + 1).permute(&[2, 1, 0]).unwrap();
        let c = tensor(&part_shape(lens[2]), seed + 2);
        let parts = [a, b, c];
        let cat = Tensor::cat(&parts, dim).unwrap();
        let total: usize = lens.iter().sum();
        prop_assert_eq!(cat.shape(), &part_shape(total)[..]);
        let got = cat.to_vec().unwrap();
        let dense: Vec<Vec<f32>> = parts.iter().map(|p| p.contiguous().unwrap().to_vec().unwrap()).collect();
        let out = part_shape(total);
        for (flat, &g) in got.iter().enumerate() {
            let idx = [flat / (out[1] * out[2]), flat / out[2] % out[1], flat % out[2]];
            let (mut part, mut at) = (0, idx[dim]);
            while at >= lens[part] {
                at -= lens[part];
                part += 1;
            }
            let ps = part_shape(lens[part]);
            let mut i = idx;
            i[dim] = at;
            let want = dense[part][(i[0] * ps[1] + i[1]) * ps[2] + i[2]];
            prop_assert_eq!(g.to_bits(), want.to_bits(), "at {:?}", idx);
        }
    }

    #[test]
    fn cat_then_narrow_gives_parts_back(a in 1usize..4, b1 in 1usize..5, b2 in 1usize..5, c in 1usize..4, seed in 0u64..1000) {
        let (x, y) = (tensor(&[a, b1, c], seed), tensor(&[a, b2, c], seed + 3));
        let cat = Tensor::cat(&[x.clone(), y.clone()], 1).unwrap();
        prop_assert_eq!(cat.narrow(1, 0, b1).unwrap().to_vec().unwrap(), x.to_vec().unwrap());
        prop_assert_eq!(cat.narrow(1, b1, b2).unwrap().to_vec().unwrap(), y.to_vec().unwrap());
    }
}

/// Max pooling reads views in place: a channel slice of wider rows and a permuted (channel
/// stride ≠ 1) view pool exactly as their dense copies; with a gradient to record it is a
/// clear error, not a silently detached result.
#[test]
fn max_pool_on_views_equals_pool_on_copies() {
    let x = tensor(&[2, 7, 9, 10], 5);
    let sliced = x.narrow(3, 3, 4).unwrap();
    let permuted = tensor(&[2, 6, 7, 5], 6).permute(&[0, 2, 3, 1]).unwrap();
    for v in [sliced, permuted] {
        let got = v.max_pool2x2_nhwc().unwrap();
        let want = dense(&v).max_pool2x2_nhwc().unwrap();
        let s = v.shape();
        assert_eq!(got.shape(), [s[0], s[1] / 2, s[2] / 2, s[3]]);
        assert_eq!(got.to_vec().unwrap(), want.to_vec().unwrap());
    }
    let d = x.to_vec().unwrap();
    let y = x.max_pool2x2_nhwc().unwrap().to_vec().unwrap();
    let at = |yy: usize, xx: usize, ch: usize| d[(yy * 9 + xx) * 10 + ch];
    assert_eq!(
        y[(4 + 3) * 10 + 2],
        at(2, 6, 2)
            .max(at(2, 7, 2))
            .max(at(3, 6, 2))
            .max(at(3, 7, 2))
    );
    let e = tensor(&[1, 4, 4, 2], 7)
        .into_variable()
        .max_pool2x2_nhwc()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_pool2x2_nhwc") && e.contains("no_grad"),
        "{e}"
    );
    assert!(tensor(&[4, 4, 2], 7).max_pool2x2_nhwc().is_err());
}

/// Row gathers from views (a column slice of wider rows, a narrowed table, a permuted one) pick
/// exactly what they pick from dense copies, whole rows and per-head column groups alike; the
/// output's values are the indexed rows' columns; bad indices and recording are clear errors.
#[test]
fn pick_rows_on_views_equals_pick_on_copies() {
    use medsam::backend::ops::memory::{RowAt, RowPick};
    let w = 6;
    let sliced = tensor(&[5, 9], 8).narrow(1, 2, w).unwrap();
    let narrowed = tensor(&[9, w], 9).narrow(0, 3, 4).unwrap();
    let permuted = tensor(&[w, 3], 10).permute(&[1, 0]).unwrap();
    let fill = tensor(&[w], 11);
    let at = |part, row| RowAt { part, row };
    let index = [
        at(0, 4),
        at(1, 3),
        RowAt::FILL,
        at(2, 0),
        at(0, 0),
        at(2, 2),
        at(1, 0),
        RowAt::FILL,
        at(0, 2),
        at(2, 1),
        at(1, 1),
        at(0, 1),
    ];
    let heads = RowPick {
        width: w,
        col: 1,
        len: 2,
        groups: 2,
        block: 3,
    };
    let parts = [&sliced, &narrowed, &permuted];
    let copies = parts.map(dense);
    for pick in [RowPick::rows(w), heads] {
        let got = Tensor::pick_rows(&parts, Some(&fill), &index, pick).unwrap();
        let want = Tensor::pick_rows(&copies.each_ref(), Some(&fill), &index, pick).unwrap();
        let shape = [index.len() / pick.block, pick.groups, pick.block, pick.len];
        assert_eq!(got.shape(), shape);
        let got = got.to_vec().unwrap();
        assert_eq!(got, want.to_vec().unwrap());
        // out[b, g, t] = columns col + g·len .. of row index[b·block + t].
        let tables = copies.each_ref().map(|t| t.to_vec().unwrap());
        let f = fill.to_vec().unwrap();
        let mut k = 0;
        for b in 0..index.len() / pick.block {
            for g in 0..pick.groups {
                for t in 0..pick.block {
                    let r = index[b * pick.block + t];
                    let c0 = pick.col + g * pick.len;
                    let row = match r.is_fill() {
                        true => &f[..],
                        false => &tables[r.part][r.row * w..(r.row + 1) * w],
                    };
                    assert_eq!(&got[k..k + pick.len], &row[c0..c0 + pick.len]);
                    k += pick.len;
                }
            }
        }
    }
    let pick = RowPick::rows(w);
    let past = Tensor::pick_rows(&parts, None, &[at(1, 4)], pick)
        .unwrap_err()
        .to_string();
    assert!(
        past.contains("pick_rows") && past.contains("past"),
        "{past}"
    );
    let no_fill = Tensor::pick_rows(&parts, None, &[RowAt::FILL], pick).unwrap_err();
    assert!(no_fill.to_string().contains("fill"), "{no_fill}");
    let ragged = Tensor::pick_rows(&[&tensor(&[7], 1)], None, &[], pick).unwrap_err();
    assert!(ragged.to_string().contains("[7]"), "{ragged}");
    let var = tensor(&[2, w], 12).into_variable();
    let e = Tensor::pick_rows(&[&var], None, &[at(0, 1)], pick)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pick_rows") && e.contains("no_grad"), "{e}");
}

#[test]
fn shape_errors_name_the_shapes() {
    let a = tensor(&[2, 3], 1);
    let b = tensor(&[4, 5], 2);
    let e = a.matmul(&b).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = a.add(&tensor(&[4], 3)).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    let e = a.reshape(&[7]).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[7]"), "{e}");
}

#[test]
fn rope_rotates_queries_and_repeated_keys_like_the_kernel() {
    use medsam::autograd::no_grad;
    use medsam::ops::rope::{apply_rotary, axial_rope_tables};
    use medsam_kernels::rope::{self, RopeDims};
    let (cos, sin) = axial_rope_tables(8, 3, 2, 10_000.0, medsam::Device::Cpu).unwrap();
    // Queries: one 3×2 grid; keys: the grid twice (SAM2's repeat_freqs_k).
    for n in [6, 12] {
        let x = tensor(&[2, 3, n, 8], n as u64);
        let got = no_grad(|| apply_rotary(&x, &cos, &sin)).unwrap();
        let d = RopeDims {
            rows: 6,
            n,
            dim: 8,
            table_len: 6,
        };
        let (c, s) = rope::axial_tables(8, 3, 2, 10_000.0);
        let mut want = vec![0.0; x.numel()];
        rope::reference::apply(d, &x.to_vec().unwrap(), &c, &s, &mut want);
        assert_eq!(got.shape(), x.shape());
        assert_eq!(got.to_vec().unwrap(), want);
    }
}

#[test]
fn rope_shape_errors_name_the_shapes() {
    use medsam::ops::rope::{apply_rotary, axial_rope_tables};
    let (cos, sin) = axial_rope_tables(8, 3, 2, 10_000.0, medsam::Device::Cpu).unwrap();
    let x = tensor(&[1, 7, 8], 1); // 7 positions: not a whole number of 6-position tables
    let e = apply_rotary(&x, &cos, &sin).unwrap_err().to_string();
    assert!(e.contains("rope") && e.contains("[1, 7, 8]"), "{e}");
    assert!(axial_rope_tables(6, 2, 2, 10_000.0, medsam::Device::Cpu).is_err());
}

/// SAM's decomposed rel-pos terms in one pass (`decomposed_rel_pos_fused`) against upstream's two
/// einsums composed from tensor ops (q permuted and multiplied batch by batch), on a q view that
/// is not dense (a narrowed head axis); with gradient recording the fused op declines.
#[test]
fn fused_rel_pos_matches_the_einsums() {
    use medsam::autograd::no_grad;
    use medsam::ops::nn::decomposed_rel_pos_fused;
    let (maps, h, w, c) = (3, 5, 7, 16);
    let q = tensor(&[maps, h * w, c + 3], 1).narrow(2, 2, c).unwrap();
    let (rh, rw) = (tensor(&[h, h, c], 2), tensor(&[w, w, c], 3));
    let got = no_grad(|| decomposed_rel_pos_fused(&q, &rh, &rw, (h, w))).unwrap();
    if !medsam_kernels::attention::rel_pos::fast_available() {
        assert!(got.is_none(), "without AVX-512 the backend composes");
        println!("SKIPPED: no AVX-512 on this CPU, the fused rel-pos kernel is not used");
        return;
    }
    let got = got.expect("the CPU backend has the kernel");
    // rel_h[m, y, x, k] = Σ_c q[m, y, x, c]·rh[y, k, c]: a batch over y.
    let rq = q.contiguous().unwrap().reshape(&[maps, h, w, c]).unwrap();
    let by_y = rq
        .permute(&[1, 0, 2, 3])
        .unwrap()
        .reshape(&[h, maps * w, c])
        .unwrap();
    let want_h = by_y.matmul(&rh.transpose(1, 2).unwrap()).unwrap();
    let want_h = want_h
        .reshape(&[h, maps, w, h])
        .unwrap()
        .permute(&[1, 0, 2, 3])
        .unwrap();
    // rel_w[m, y, x, k] = Σ_c q[m, y, x, c]·rw[x, k, c]: a batch over x.
    let by_x = rq
        .permute(&[2, 0, 1, 3])
        .unwrap()
        .reshape(&[w, maps * h, c])
        .unwrap();
    let want_w = by_x.matmul(&rw.transpose(1, 2).unwrap()).unwrap();
    let want_w = want_w
        .reshape(&[w, maps, h, w])
        .unwrap()
        .permute(&[1, 2, 0, 3])
        .unwrap();
    assert_eq!(got.rel_h.shape(), [maps, h * w, h]);
    assert_eq!(got.rel_w.shape(), [maps, h * w, w]);
    let close = |a: &Tensor, b: &Tensor| {
        let (a, b) = (a.to_vec().unwrap(), b.to_vec().unwrap());
        a.iter()
            .zip(&b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
    };
    assert!(close(&got.rel_h, &want_h) && close(&got.rel_w, &want_w));
    assert_eq!((got.kh, got.kw), (h, w));

    let recorded = rh.detach().into_variable();
    assert!(decomposed_rel_pos_fused(&q, &recorded, &rw, (h, w))
        .unwrap()
        .is_none());
    let e = decomposed_rel_pos_fused(&q, &rh, &rw, (w, h))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rel_pos") && e.contains("[5, 5, 16]"), "{e}");
}

/// Windowed attention read in place from a q/k/v projection's rows (`attention_picked`: the
/// index, fill rows for the padding, queries through their own index) gives bit for bit what
/// the same attention gives on the operands gathered first — in f32 and under bf16 autocast,
/// with and without SAM's rel-pos bias, from a contiguous table (read in place on the CPU) and
/// from a view (gathered) alike; bad indices and bias shapes are clear errors.
#[test]
fn attention_picked_equals_attention_on_gathered_operands() {
    use medsam::backend::ops::memory::{RowAt, RowPick};
    use medsam::ops::linalg::autocast_bf16;
    use medsam::ops::nn::{attention, attention_picked, PickedRows, RelPosArgs};
    fn picked<'a>(
        table: &'a Tensor,
        fill: Option<&'a Tensor>,
        index: &'a [RowAt],
        pick: RowPick,
    ) -> PickedRows<'a> {
        PickedRows {
            table,
            fill,
            index,
            pick,
            head_stride: pick.len,
        }
    }
    let (heads, hd, tokens) = (2, 16, 9);
    let width = 3 * heads * hd;
    let contiguous = tensor(&[tokens, width], 31);
    let view = tensor(&[tokens, width + 5], 32)
        .narrow(1, 5, width)
        .unwrap();
    let fill = tensor(&[width], 33);
    let at = RowAt::row;
    // Two windows of 5 keys (fill rows as padding), 3 queries each.
    let kv = [
        at(4),
        at(0),
        RowAt::FILL,
        at(8),
        at(2),
        at(1),
        at(7),
        at(3),
        RowAt::FILL,
        RowAt::FILL,
    ];
    let qi = [at(0), at(8), at(4), at(7), at(1), at(3)];
    let pick = |col, block| RowPick {
        width,
        col,
        len: hd,
        groups: heads,
        block,
    };
    for table in [&contiguous, &view] {
        let q = picked(table, None, &qi, pick(0, 3));
        let k = picked(table, Some(&fill), &kv, pick(heads * hd, 5));
        let v = picked(table, Some(&fill), &kv, pick(2 * heads * hd, 5));
        // SAM's decomposed rel-pos bias over the 5 keys as a 1 × 5 map, or none.
        let rel = RelPosArgs {
            rel_h: tensor(&[2 * heads, 3, 1], 34),
            rel_w: tensor(&[2 * heads, 3, 5], 35),
            kh: 1,
            kw: 5,
        };
        for (bf16, rel) in [
            (false, None),
            (true, None),
            (false, Some(&rel)),
            (true, Some(&rel)),
        ] {
            let (got, want) = autocast_bf16(bf16, || {
                let got = attention_picked(q, k, v, 0.25, rel).unwrap();
                let (qg, kg, vg) = (
                    q.gather().unwrap(),
                    k.gather().unwrap(),
                    v.gather().unwrap(),
                );
                let want = attention(&qg, &kg, &vg, 0.25, rel).unwrap();
                assert_eq!(got.shape(), [2 * heads, 3, hd]);
                (got.to_vec().unwrap(), want.to_vec().unwrap())
            });
            assert_eq!(got, want, "bf16 {bf16}, rel-pos {}", rel.is_some());
        }
        let wrong = RelPosArgs {
            rel_w: tensor(&[2 * heads, 3, 4], 36),
            ..rel
        };
        let e = attention_picked(q, k, v, 0.25, Some(&wrong))
            .unwrap_err()
            .to_string();
        assert!(e.contains("attention_picked") && e.contains("rel_w"), "{e}");
    }
    let past = [at(tokens)];
    let p = picked(&contiguous, None, &past, pick(0, 1));
    let e = attention_picked(p, p, p, 1.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention_picked") && e.contains("past"), "{e}");
    let fills = [RowAt::FILL];
    let p = picked(&contiguous, None, &fills, pick(0, 1));
    let e = attention_picked(p, p, p, 1.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fill"), "{e}");
}

/// TinyViT's window attention with its bias table on q, k and v read in place from rows whose
/// heads interleave their q, k and v (`[heads, 3, key_dim]`, `attention_bias_table_picked`):
/// bit for bit what the attention gives on the operands gathered first, from a contiguous table
/// (in place on the CPU) and from a view (gathered); the gathered operand holds, for every
/// window, head and token, the columns of that head's part of the picked row.
#[test]
fn attention_bias_table_picked_reads_interleaved_heads() {
    use medsam::backend::ops::memory::{RowAt, RowPick};
    use medsam::ops::nn::{attention_bias_table, attention_bias_table_picked, PickedRows};
    let (heads, kd, tokens, n) = (3, 8, 7, 4);
    let width = 3 * heads * kd;
    let contiguous = tensor(&[tokens, width], 41);
    let view = tensor(&[tokens, width + 3], 42)
        .narrow(1, 3, width)
        .unwrap();
    let fill = tensor(&[1, 1, width], 43);
    let at = RowAt::row;
    let kv = [
        at(6),
        at(0),
        RowAt::FILL,
        at(3),
        at(2),
        at(5),
        at(1),
        RowAt::FILL,
    ];
    let qi = [at(0), at(3), at(5), at(1)];
    let table = tensor(&[heads, 2, n], 44);
    for rows in [&contiguous, &view] {
        let part = |p: usize, index, block, fill| PickedRows {
            table: rows,
            fill,
            index,
            pick: RowPick {
                width,
                col: p * kd,
                len: kd,
                groups: heads,
                block,
            },
            head_stride: 3 * kd,
        };
        let (q, k, v) = (
            part(0, &qi[..], 2, None),
            part(1, &kv[..], n, Some(&fill)),
            part(2, &kv[..], n, Some(&fill)),
        );
        let got = attention_bias_table_picked(q, k, v, 0.3, &table).unwrap();
        assert_eq!(got.shape(), [2, heads, 2, kd]);
        let four = |x: &PickedRows| {
            x.gather()
                .unwrap()
                .reshape(&[2, heads, x.pick.block, kd])
                .unwrap()
        };
        let want = attention_bias_table(&four(&q), &four(&k), &four(&v), 0.3, &table).unwrap();
        assert_eq!(got.to_vec().unwrap(), want.to_vec().unwrap());
        // k gathered: window w, head h, token t = columns (h·3 + 1)·kd .. of its row.
        let (kg, src, f) = (
            k.gather().unwrap().to_vec().unwrap(),
            dense(rows).to_vec().unwrap(),
            fill.to_vec().unwrap(),
        );
        for w in 0..2 {
            for h in 0..heads {
                for t in 0..n {
                    let r = kv[w * n + t];
                    let row = if r.is_fill() {
                        &f[..]
                    } else {
                        &src[r.row * width..(r.row + 1) * width]
                    };
                    let c0 = (h * 3 + 1) * kd;
                    let o = ((w * heads + h) * n + t) * kd;
                    assert_eq!(&kg[o..o + kd], &row[c0..c0 + kd]);
                }
            }
        }
    }
    let bad = PickedRows {
        table: &contiguous,
        fill: None,
        index: &qi[..],
        pick: RowPick {
            width,
            col: 2 * kd,
            len: 2 * kd,
            groups: heads,
            block: 2,
        },
        head_stride: 3 * kd,
    };
    let e = attention_bias_table_picked(bad, bad, bad, 1.0, &table)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attention_bias_table_picked") && e.contains("every"),
        "{e}"
    );
}
