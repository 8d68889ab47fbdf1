//! Ad-hoc timings of the non-GEMM kernels at ViT-B / SAM shapes: `cargo run --release -p medsam-kernels --example kern_timing`.
use medsam_kernels::{activation, attention, conv, norm, resize};
use std::time::Instant;

use medsam_kernels::testing::{cpu_time, data_u32 as vecr};

/// Prints wall time and CPU time per call; returns CPU seconds (robust on a shared machine).
fn time<F: FnMut()>(name: &str, reps: usize, mut f: F) -> f64 {
    f();
    let c0 = cpu_time();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    let c = (cpu_time() - c0) / reps as f64;
    println!(
        "{name:<58} wall {:>9.1} ms   cpu {:>9.1} ms",
        s * 1e3,
        c * 1e3
    );
    c
}

fn attn(name: &str, bh: usize, n: usize, d: usize, kside: usize, bias: bool, refheads: usize) {
    let dims = attention::AttnDims::new(bh, n, n, d, d);
    let (q, k, v) = (
        vecr(bh * n * d, 1),
        vecr(bh * n * d, 2),
        vecr(bh * n * d, 3),
    );
    let (rh, rw) = (vecr(bh * n * kside, 4), vecr(bh * n * kside, 5));
    let b = bias.then_some(attention::RelPosBias {
        rel_h: &rh,
        rel_w: &rw,
        kh: kside,
        kw: kside,
    });
    let mut out = vec![0.0; bh * n * d];
    let mut lse = vec![0.0; bh * n];
    let sc = 0.125;
    time(&format!("attention fwd fast  {name}"), 2, || {
        attention::attention_forward(dims, &q, &k, &v, sc, b, &mut out, &mut lse)
    });
    let dout = vecr(bh * n * d, 6);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
    let (mut dh, mut dw) = (vec![0.0; rh.len()], vec![0.0; rw.len()]);
    time(&format!("attention bwd fast  {name}"), 1, || {
        let drel = bias.then_some((&mut dh[..], &mut dw[..]));
        attention::attention_backward(
            dims, &q, &k, &v, sc, b, &out, &lse, &dout, &mut dq, &mut dk, &mut dv, drel,
        )
    });
    if refheads > 0 {
        let rd = attention::AttnDims {
            bh: refheads,
            ..dims
        };
        let s = time(
            &format!("attention fwd ref   {name} ({refheads} of {bh} bh)"),
            1,
            || {
                attention::reference::attention_forward(
                    rd,
                    &q[..refheads * n * d],
                    &k[..refheads * n * d],
                    &v[..refheads * n * d],
                    sc,
                    b.map(|b| attention::RelPosBias {
                        rel_h: &b.rel_h[..refheads * n * kside],
                        rel_w: &b.rel_w[..refheads * n * kside],
                        ..b
                    }),
                    &mut out[..refheads * n * d],
                    &mut lse[..refheads * n],
                )
            },
        );
        println!(
            "{:<55} {:>9.2} ms",
            "  -> ref extrapolated to all bh",
            s * 1e3 * bh as f64 / refheads as f64
        );
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    if which.is_empty() || which == "attn" {
        attn("global 12x4096x64 relpos", 12, 4096, 64, 64, true, 1);
        attn("window 300x196x64 relpos", 300, 196, 64, 14, true, 30);
        attn("cross 8x4096x16 (nq=nk)", 8, 4096, 16, 64, false, 0);
    }
    if which.is_empty() || which == "misc" {
        let n = 4096 * 768;
        let x = vecr(n, 1);
        let g = vecr(768, 2);
        let b = vecr(768, 3);
        let mut y = vec![0.0; n];
        let (mut m, mut r) = (vec![0.0; 4096], vec![0.0; 4096]);
        time("layer_norm fwd fast 4096x768", 5, || {
            norm::layer_norm_forward(4096, 768, &x, &g, &b, 1e-6, &mut y, &mut m, &mut r)
        });
        time("layer_norm fwd ref  4096x768", 2, || {
            norm::reference::layer_norm_forward(4096, 768, &x, &g, &b, 1e-6, &mut y, &mut m, &mut r)
        });
        let (mut dx, mut dg, mut db) = (vec![0.0; n], vec![0.0; 768], vec![0.0; 768]);
        time("layer_norm bwd fast 4096x768", 5, || {
            norm::layer_norm_backward(4096, 768, &x, &g, &m, &r, &x, &mut dx, &mut dg, &mut db)
        });
        time("layer_norm bwd ref  4096x768", 2, || {
            norm::reference::layer_norm_backward(
                4096, 768, &x, &g, &m, &r, &x, &mut dx, &mut dg, &mut db,
            )
        });
        let x2 = vecr(256 * 4096, 4);
        let mut y2 = vec![0.0; 256 * 4096];
        let (g2, b2) = (&g[..256], &b[..256]);
        time("layer_norm2d fwd fast 256x64x64", 5, || {
            norm::layer_norm2d_forward(1, 256, 4096, &x2, g2, b2, 1e-6, &mut y2, &mut m, &mut r)
        });
        time("layer_norm2d fwd ref  256x64x64", 2, || {
            norm::reference::layer_norm2d_forward(
                1, 256, 4096, &x2, g2, b2, 1e-6, &mut y2, &mut m, &mut r,
            )
        });
        let xg = vecr(4096 * 3072, 7);
        let mut yg = vec![0.0; xg.len()];
        time("gelu fwd fast 4096x3072", 3, || {
            activation::gelu_forward(&xg, &mut yg)
        });
        time("gelu fwd ref  4096x3072", 1, || {
            activation::reference::gelu_forward(&xg, &mut yg)
        });
        let dyg = vecr(xg.len(), 8);
        let mut dxg = vec![0.0; xg.len()];
        time("gelu bwd fast 4096x3072", 3, || {
            activation::gelu_backward(&xg, &dyg, &mut dxg)
        });
        time("gelu bwd ref  4096x3072", 1, || {
            activation::reference::gelu_backward(&xg, &dyg, &mut dxg)
        });
        time("softmax fwd fast 3072x4096", 3, || {
            activation::softmax_forward(3072, 4096, &xg, &mut yg)
        });
        time("softmax fwd ref  3072x4096", 1, || {
            activation::reference::softmax_forward(3072, 4096, &xg, &mut yg)
        });
        let xm = vecr(3 * 256 * 256, 9);
        let mut ym = vec![0.0; 3 * 1024 * 1024];
        time("bilinear fwd fast 3x256² -> 1024²", 3, || {
            resize::bilinear_forward(3, 256, 256, 1024, 1024, &xm, &mut ym)
        });
        time("bilinear fwd ref  3x256² -> 1024²", 1, || {
            resize::reference::bilinear_forward(3, 256, 256, 1024, 1024, &xm, &mut ym)
        });
        let mut dxm = vec![0.0; xm.len()];
        time("bilinear bwd fast 3x256² <- 1024²", 3, || {
            resize::bilinear_backward(3, 256, 256, 1024, 1024, &ym, &mut dxm)
        });
        time("bilinear bwd ref  3x256² <- 1024²", 1, || {
            resize::reference::bilinear_backward(3, 256, 256, 1024, 1024, &ym, &mut dxm)
        });
    }
    if which.is_empty() || which == "conv" {
        // Patch embedding: the GEMM (768×4096×768) dominates and is the other engineer's; this
        // measures the whole conv with whatever gemm is currently in the tree.
        let g = conv::Conv2dGeom::new([1, 3, 1024, 1024], 768, (16, 16), (16, 16), (0, 0), 1);
        let x = vecr(3 * 1024 * 1024, 1);
        let w = vecr(768 * 768, 2);
        let mut y = vec![0.0; 768 * 4096];
        time(
            "conv2d fwd fast patch-embed 3x1024² -> 768x64²",
            1,
            || conv::conv2d_forward(g, &x, &w, None, &mut y),
        );
        let g = conv::Conv2dGeom::new([1, 256, 64, 64], 64, (2, 2), (2, 2), (0, 0), 1);
        let x = vecr(256 * 64 * 64, 3);
        let w = vecr(256 * 64 * 4, 4);
        let mut y = vec![0.0; 64 * 128 * 128];
        time("conv_transpose2d fwd fast 256x64² -> 64x128²", 1, || {
            conv::conv_transpose2d_forward(g, &x, &w, None, &mut y)
        });
    }
}
