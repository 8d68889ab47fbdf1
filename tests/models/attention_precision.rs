//! Which arithmetic `ops::nn::attention` runs: bf16 only for inference under bf16 autocast on a
//! CPU where bf16 attention pays (`medsam_kernels::attention::bf16_pays`); f32, bit for bit,
//! without autocast and whenever the call records gradients. `--precision int8` (int8 autocast)
//! runs attention as bf16 autocast does unless `MEDSAM_INT8_REST=f32`.

use medsam::autograd::no_grad;
use medsam::ops::linalg::autocast_bf16;
use medsam::ops::nn::{attention, RelPosArgs};
use medsam::ops::quant::autocast_int8;
use medsam::Tensor;
use medsam_kernels::attention::{self as kernel, AttnDims, RelPosBias};
use medsam_kernels::testing::Rng;

type ForwardFn =
    fn(AttnDims, &[f32], &[f32], &[f32], f32, Option<RelPosBias>, &mut [f32], &mut [f32]);

#[test]
fn attention_precision_follows_autocast_and_recording() {
    let (bh, nq, kh, kw, d) = (3, 50, 6, 7, 16);
    let nk = kh * kw;
    let mut r = Rng(9);
    let (q, k, v) = (
        r.vec(bh * nq * d, 2.0),
        r.vec(bh * nk * d, 2.0),
        r.vec(bh * nk * d, 1.0),
    );
    let (rh, rw) = (r.vec(bh * nq * kh, 1.0), r.vec(bh * nq * kw, 1.0));
    let scale = 0.25;
    let dims = AttnDims::new(bh, nq, nk, d, d);
    let kernel_out = |f: ForwardFn| {
        let (mut o, mut l) = (vec![0.0; bh * nq * d], vec![0.0; bh * nq]);
        let bias = RelPosBias {
            rel_h: &rh,
            rel_w: &rw,
            kh,
            kw,
        };
        f(dims, &q, &k, &v, scale, Some(bias), &mut o, &mut l);
        o
    };
    let (want32, want16) = (
        kernel_out(kernel::attention_forward),
        kernel_out(kernel::attention_forward_bf16),
    );
    assert_ne!(
        want32, want16,
        "bf16 and f32 kernels agree: the test would prove nothing"
    );
    let t = |x: &[f32], n: usize, w: usize| Tensor::from_vec(x.to_vec(), &[bh, n, w]).unwrap();
    let rel = RelPosArgs::new([t(&rh, nq, kh), t(&rw, nq, kw)], (kh, kw));
    let run = |bf16: bool, grad: bool| -> Vec<f32> {
        let qt = if grad {
            t(&q, nq, d).into_variable()
        } else {
            t(&q, nq, d)
        };
        let f = || {
            autocast_bf16(bf16, || {
                attention(&qt, &t(&k, nk, d), &t(&v, nk, d), scale, Some(&rel))
            })
        };
        let o = if grad { f() } else { no_grad(f) }.unwrap();
        o.to_vec().unwrap()
    };
    assert_eq!(run(false, false), want32, "f32 inference");
    assert_eq!(
        run(true, true),
        want32,
        "bf16 autocast while recording gradients stays f32"
    );
    let want = if kernel::bf16_pays() {
        &want16
    } else {
        &want32
    };
    assert_eq!(
        &run(true, false),
        want,
        "bf16 autocast inference (bf16_pays = {})",
        kernel::bf16_pays()
    );
    let int8_rest_f32 = std::env::var("MEDSAM_INT8_REST").as_deref() == Ok("f32");
    let want = if kernel::bf16_pays() && !int8_rest_f32 {
        &want16
    } else {
        &want32
    };
    let int8 = no_grad(|| {
        autocast_int8(true, || {
            attention(
                &t(&q, nq, d),
                &t(&k, nk, d),
                &t(&v, nk, d),
                scale,
                Some(&rel),
            )
        })
    })
    .unwrap()
    .to_vec()
    .unwrap();
    assert_eq!(
        &int8, want,
        "int8 autocast inference runs attention as bf16 does"
    );
}
