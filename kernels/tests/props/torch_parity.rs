//! Parity with PyTorch on fixed small cases written by `tests/fixtures/make_kernel_fixtures.py`
//! (forward outputs and autograd gradients). Both the reference and the fast implementation of
//! every operator are checked.
//!
//! Tolerance: PyTorch computes in f32 with its own summation order; inputs are O(1) and every
//! output is a sum of ≤ ~100 terms, so agreement to 1e-4 absolute + 1e-4 relative is expected and
//! any semantic difference (padding, bias layout, clamping, scaling) is far larger.

use medsam_kernels::testing::conv_passes;
use medsam_kernels::{activation, attention, conv, norm, resize};
use std::collections::HashMap;
use std::path::PathBuf;

const REGEN: &str = "regenerate with `$MEDSAM_PYTHON tests/fixtures/make_kernel_fixtures.py` \
                     (or any Python with torch) from the repository root";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kernels")
}

struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir().join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}; {REGEN}", path.display()));
    let mut at = 0usize;
    let u32_at = |b: &[u8], at: &mut usize| {
        let v = u32::from_le_bytes(b[*at..*at + 4].try_into().unwrap()) as usize;
        *at += 4;
        v
    };
    let mut out = HashMap::new();
    while at < bytes.len() {
        let nl = u32_at(&bytes, &mut at);
        let key = String::from_utf8(bytes[at..at + nl].to_vec()).unwrap();
        at += nl;
        let nd = u32_at(&bytes, &mut at);
        let shape: Vec<usize> = (0..nd).map(|_| u32_at(&bytes, &mut at)).collect();
        let len: usize = shape.iter().product();
        let data = bytes[at..at + 4 * len]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        at += 4 * len;
        out.insert(key, Tensor { shape, data });
    }
    out
}

struct Case(HashMap<String, Tensor>, String);

impl Case {
    fn t(&self, k: &str) -> &[f32] {
        &self
            .0
            .get(k)
            .unwrap_or_else(|| panic!("{}: missing tensor {k}", self.1))
            .data
    }
    fn p(&self, i: usize) -> usize {
        self.t("params")[i] as usize
    }
    fn pf(&self, i: usize) -> f32 {
        self.t("params")[i]
    }
    fn check(&self, what: &str, got: &[f32], key: &str) {
        let want = self.t(key);
        assert_eq!(
            got.len(),
            want.len(),
            "{} {what}: {key} length (shape {:?})",
            self.1,
            self.0[key].shape
        );
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
                "{} {what}: {key}[{i}] = {g}, torch says {w}",
                self.1
            );
        }
    }
}

fn conv_case(c: &Case, transpose: bool) {
    let p: Vec<usize> = (0..12).map(|i| c.p(i)).collect();
    let shape = [p[0], p[1], p[2], p[3]];
    let g = conv::Conv2dGeom::new(
        shape,
        p[4],
        (p[5], p[6]),
        (p[7], p[8]),
        (p[9], p[10]),
        p[11],
    );
    let (x, w, b, dy) = (c.t("x"), c.t("w"), c.t("b"), c.t("dy"));
    for fast in [false, true] {
        let what = if fast { "fast" } else { "reference" };
        let [y, dx, dw, db] = conv_passes(fast, transpose, g, [x, w, b, dy]);
        c.check(what, &y, "y");
        c.check(what, &dx, "dx");
        c.check(what, &dw, "dw");
        c.check(what, &db, "db");
    }
}

fn layer_norm_case(c: &Case, two_d: bool) {
    let (x, gm, bt, dy) = (c.t("x"), c.t("gamma"), c.t("beta"), c.t("dy"));
    for fast in [false, true] {
        let what = if fast { "fast" } else { "reference" };
        let mut y = vec![0.0; x.len()];
        let mut dx = vec![0.0; x.len()];
        let (mut dg, mut db) = (vec![0.0; gm.len()], vec![0.0; gm.len()]);
        if two_d {
            let (n, ch, hw, eps) = (c.p(0), c.p(1), c.p(2), c.pf(3));
            let (mut m, mut r) = (vec![0.0; n * hw], vec![0.0; n * hw]);
            if fast {
                norm::layer_norm2d_forward(n, ch, hw, x, gm, bt, eps, &mut y, &mut m, &mut r);
                norm::layer_norm2d_backward(
                    n, ch, hw, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db,
                );
            } else {
                norm::reference::layer_norm2d_forward(
                    n, ch, hw, x, gm, bt, eps, &mut y, &mut m, &mut r,
                );
                norm::reference::layer_norm2d_backward(
                    n, ch, hw, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db,
                );
            }
        } else {
            let (rows, dim, eps) = (c.p(0), c.p(1), c.pf(2));
            let (mut m, mut r) = (vec![0.0; rows], vec![0.0; rows]);
            if fast {
                norm::layer_norm_forward(rows, dim, x, gm, bt, eps, &mut y, &mut m, &mut r);
                norm::layer_norm_backward(rows, dim, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db);
            } else {
                norm::reference::layer_norm_forward(
                    rows, dim, x, gm, bt, eps, &mut y, &mut m, &mut r,
                );
                norm::reference::layer_norm_backward(
                    rows, dim, x, gm, &m, &r, dy, &mut dx, &mut dg, &mut db,
                );
            }
        }
        c.check(what, &y, "y");
        c.check(what, &dx, "dx");
        c.check(what, &dg, "dgamma");
        c.check(what, &db, "dbeta");
    }
}

fn attention_case(c: &Case) {
    let dims = attention::AttnDims::new(c.p(0), c.p(1), c.p(2), c.p(3), c.p(4));
    let (kh, kw, scale) = (c.p(5), c.p(6), c.pf(7));
    let biased = kh > 0;
    let bias = biased.then(|| attention::RelPosBias {
        rel_h: c.t("rel_h"),
        rel_w: c.t("rel_w"),
        kh,
        kw,
    });
    let (q, k, v, dout) = (c.t("q"), c.t("k"), c.t("v"), c.t("dout"));
    for fast in [false, true] {
        let what = if fast { "fast" } else { "reference" };
        let mut out = vec![0.0; dout.len()];
        let mut lse = vec![0.0; dims.bh * dims.nq];
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let (mut dh, mut dw) = (
            vec![0.0; dims.bh * dims.nq * kh],
            vec![0.0; dims.bh * dims.nq * kw],
        );
        let drel = biased.then_some((&mut dh[..], &mut dw[..]));
        if fast {
            attention::attention_forward(dims, q, k, v, scale, bias, &mut out, &mut lse);
            attention::attention_backward(
                dims, q, k, v, scale, bias, &out, &lse, dout, &mut dq, &mut dk, &mut dv, drel,
            );
        } else {
            attention::reference::attention_forward(dims, q, k, v, scale, bias, &mut out, &mut lse);
            attention::reference::attention_backward(
                dims, q, k, v, scale, bias, &out, &lse, dout, &mut dq, &mut dk, &mut dv, drel,
            );
        }
        c.check(what, &out, "out");
        c.check(what, &lse, "lse");
        c.check(what, &dq, "dq");
        c.check(what, &dk, "dk");
        c.check(what, &dv, "dv");
        if biased {
            c.check(what, &dh, "drel_h");
            c.check(what, &dw, "drel_w");
        }
    }
}

fn pointwise_case(c: &Case, op: &str) {
    let (x, dy) = (c.t("x"), c.t("dy"));
    for fast in [false, true] {
        let what = if fast { "fast" } else { "reference" };
        let mut y = vec![0.0; x.len()];
        let mut dx = vec![0.0; x.len()];
        match (op, fast) {
            ("gelu", true) => {
                activation::gelu_forward(x, &mut y);
                activation::gelu_backward(x, dy, &mut dx);
            }
            ("gelu", false) => {
                activation::reference::gelu_forward(x, &mut y);
                activation::reference::gelu_backward(x, dy, &mut dx);
            }
            (_, true) => {
                activation::softmax_forward(c.p(0), c.p(1), x, &mut y);
                activation::softmax_backward(c.p(0), c.p(1), &y, dy, &mut dx);
            }
            (_, false) => {
                activation::reference::softmax_forward(c.p(0), c.p(1), x, &mut y);
                activation::reference::softmax_backward(c.p(0), c.p(1), &y, dy, &mut dx);
            }
        }
        c.check(what, &y, "y");
        c.check(what, &dx, "dx");
    }
}

fn bilinear_case(c: &Case) {
    let (p, h, w, oh, ow) = (c.p(0), c.p(1), c.p(2), c.p(3), c.p(4));
    let (x, dy) = (c.t("x"), c.t("dy"));
    for fast in [false, true] {
        let what = if fast { "fast" } else { "reference" };
        let mut y = vec![0.0; p * oh * ow];
        let mut dx = vec![0.0; x.len()];
        if fast {
            resize::bilinear_forward(p, h, w, oh, ow, x, &mut y);
            resize::bilinear_backward(p, h, w, oh, ow, dy, &mut dx);
        } else {
            resize::reference::bilinear_forward(p, h, w, oh, ow, x, &mut y);
            resize::reference::bilinear_backward(p, h, w, oh, ow, dy, &mut dx);
        }
        c.check(what, &y, "y");
        c.check(what, &dx, "dx");
    }
}

#[test]
fn torch_parity() {
    let dir = fixture_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).unwrap_or_else(|e| {
        panic!(
            "kernel fixtures missing at {} ({e}); {REGEN}",
            dir.display()
        )
    });
    let names: Vec<&str> = manifest.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for name in &names {
        let c = Case(load(name), name.to_string());
        let op = name.trim_end_matches(".bin").split('_').next().unwrap();
        match op {
            "conv2d" => conv_case(&c, false),
            "convt" => conv_case(&c, true),
            "layer" if name.starts_with("layer_norm2d") => layer_norm_case(&c, true),
            "layer" => layer_norm_case(&c, false),
            "attention" => attention_case(&c),
            "gelu" | "softmax" => pointwise_case(&c, op),
            "bilinear" => bilinear_case(&c),
            _ => panic!("unknown fixture {name}"),
        }
        seen.insert(if name.starts_with("layer_norm2d") {
            "layer_norm2d"
        } else {
            op
        });
    }
    // Every operator family must be covered, so a truncated manifest cannot pass silently.
    for op in [
        "conv2d",
        "convt",
        "layer",
        "layer_norm2d",
        "attention",
        "gelu",
        "softmax",
        "bilinear",
    ] {
        assert!(seen.contains(op), "no fixture for {op}; {REGEN}");
    }
}
