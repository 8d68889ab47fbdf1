//! Attention fwd/bwd timing at SAM shapes: `cargo run --release -p medsam-kernels --example attn_bench -- [case] [reps]`.
//! Prints median wall ms per call and GFLOP/s (fwd 4·bh·nq·nk·d, bwd 2.5× that).
use medsam_kernels::attention::{self, AttnDims, RelPosBias};

use medsam_kernels::testing::{cpu_time, data_u32 as vecr, sorted_times};

/// (median wall s, mean CPU s) per call.
fn med<F: FnMut()>(reps: usize, mut f: F) -> (f64, f64) {
    f();
    let c0 = cpu_time();
    let t = sorted_times(reps, &mut f);
    let c = (cpu_time() - c0) / reps as f64;
    (t[reps / 2], c)
}

fn run(
    name: &str,
    bh: usize,
    nq: usize,
    nk: usize,
    d: usize,
    kside: Option<(usize, usize)>,
    reps: usize,
) {
    let dims = AttnDims::new(bh, nq, nk, d, d);
    let (q, k, v) = (
        vecr(bh * nq * d, 1),
        vecr(bh * nk * d, 2),
        vecr(bh * nk * d, 3),
    );
    let (kh, kw) = kside.unwrap_or((1, 1));
    let (rh, rw) = (vecr(bh * nq * kh, 4), vecr(bh * nq * kw, 5));
    let b = kside.map(|_| RelPosBias {
        rel_h: &rh,
        rel_w: &rw,
        kh,
        kw,
    });
    let mut out = vec![0.0; bh * nq * d];
    let mut lse = vec![0.0; bh * nq];
    let sc = (d as f32).powf(-0.5);
    let fl = 4.0 * (bh * nq * nk * d) as f64;
    let tf = med(reps, || {
        attention::attention_forward(dims, &q, &k, &v, sc, b, &mut out, &mut lse)
    });
    let dout = vecr(bh * nq * d, 6);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let (mut dh, mut dw) = (vec![0.0; rh.len()], vec![0.0; rw.len()]);
    let tb = med(reps, || {
        let drel = kside.map(|_| (&mut dh[..], &mut dw[..]));
        attention::attention_backward(
            dims, &q, &k, &v, sc, b, &out, &lse, &dout, &mut dq, &mut dk, &mut dv, drel,
        )
    });
    let ((tf, cf), (tb, cb)) = (tf, tb);
    println!(
        "{name:<10} fwd {:>8.2} ms {:>7.1} GF/s ({:>6.1} GF/cpu-s)   bwd {:>8.2} ms {:>7.1} GF/s ({:>6.1} GF/cpu-s)",
        tf * 1e3,
        fl / tf / 1e9,
        fl / cf / 1e9,
        tb * 1e3,
        2.5 * fl / tb / 1e9,
        2.5 * fl / cb / 1e9
    );
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let reps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let sel = |n: &str| which.is_empty() || n.starts_with(&which);
    if sel("global") {
        run("global", 12, 4096, 4096, 64, Some((64, 64)), reps);
    }
    if sel("window") {
        run("window", 300, 196, 196, 64, Some((14, 14)), reps);
    }
    if sel("xq") {
        run("xq", 8, 4096, 7, 16, None, reps.max(20));
    }
    if sel("xk") {
        run("xk", 8, 7, 4096, 16, None, reps.max(20));
    }
}
