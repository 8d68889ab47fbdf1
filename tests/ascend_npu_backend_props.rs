//! The NPU `Backend` against a REAL Ascend NPU (CANN + hardware): tensor ops on `npu:0` vs
//! the CPU backend, forward and backward, on random shapes.
//!
//! Opt-in: `MEDSAM_NPU_TESTS=1`. Without it every test prints
//! "SKIPPED: no NPU (set MEDSAM_NPU_TESTS=1 on an Ascend machine)" and returns without claiming
//! anything. With it, a backend that cannot be created is a failure.
//!
//!   source /usr/local/Ascend/ascend-toolkit/set_env.sh
//!   MEDSAM_NPU_TESTS=1 cargo test --release --features ascend --test ascend_npu_backend_props
//!
//! Status: written without hardware; never run on an NPU yet (see docs/ASCEND.md).
#![cfg(feature = "ascend")]

use medsam::backend::Device;
use medsam::ops::nn::{attention, RelPosArgs};
use medsam::Tensor;
use std::io::Write;

const NPU: Device = Device::Npu(0);

fn npu(test: &str) -> bool {
    if std::env::var("MEDSAM_NPU_TESTS").as_deref() != Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "{test}: SKIPPED: no NPU (set MEDSAM_NPU_TESTS=1 on an Ascend machine)"
        );
        return false;
    }
    medsam::backend::backend(NPU).unwrap_or_else(|e| panic!("MEDSAM_NPU_TESTS=1 but: {e}"));
    true
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() % 20001) as f32 / 10000.0 - 1.0)
            .collect()
    }
}

/// Output and input gradients of `f` on CPU and NPU, compared with a relative tolerance
/// (fp32 cube units accumulate in a different order than the CPU kernels).
fn parity(
    name: &str,
    rng: &mut Rng,
    shapes: &[Vec<usize>],
    tol: f32,
    f: impl Fn(&[Tensor]) -> medsam::Result<Tensor>,
) {
    let inputs: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(s.iter().product())).collect();
    let run = |dev: Device| {
        let ts: Vec<Tensor> = inputs
            .iter()
            .zip(shapes)
            .map(|(d, s)| Tensor::from_slice(d, s, dev).unwrap().into_variable())
            .collect();
        let y = f(&ts).unwrap_or_else(|e| panic!("{name} on {dev}: {e}"));
        y.sum_all().unwrap().backward().unwrap();
        let mut out = vec![y.to_vec().unwrap()];
        out.extend(ts.iter().map(|t| t.grad().unwrap().to_vec().unwrap()));
        out
    };
    let (c, n) = (run(Device::Cpu), run(NPU));
    for (k, (a, b)) in n.iter().zip(&c).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{name} {shapes:?} result {k}[{i}]: npu {x} vs cpu {y}"
            );
        }
    }
}

/// Stride 1 or 2 from the shape (deterministic, so the closure needs no RNG).
fn r_stride(h: usize) -> usize {
    1 + h % 2
}

#[test]
fn npu_backend_ops_match_cpu() {
    if !npu("npu_backend_ops_match_cpu") {
        return;
    }
    let mut r = Rng(7);
    for _ in 0..8 {
        let (b, m, k, n) = (
            r.range(1, 3),
            r.range(1, 40),
            r.range(1, 70),
            r.range(1, 40),
        );
        let sh = |v: &[usize]| v.to_vec();
        parity(
            "matmul",
            &mut r,
            &[sh(&[b, m, k]), sh(&[b, k, n])],
            1e-3,
            |t| t[0].matmul(&t[1]),
        );
        parity(
            "linear",
            &mut r,
            &[sh(&[b, m, k]), sh(&[n, k]), sh(&[n])],
            1e-3,
            |t| t[0].linear(&t[1], Some(&t[2])),
        );
        parity(
            "layer_norm",
            &mut r,
            &[sh(&[m, k]), sh(&[k]), sh(&[k])],
            1e-3,
            |t| t[0].layer_norm(&t[1], &t[2], 1e-6),
        );
        parity("softmax+gelu", &mut r, &[sh(&[m, k])], 1e-3, |t| {
            t[0].scale(3.0)?.softmax_last()?.gelu()
        });
        let (c, h, w) = (r.range(1, 8), r.range(3, 17), r.range(3, 17));
        parity(
            "conv2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[n.min(8), c, 3, 3]), sh(&[n.min(8)])],
            1e-3,
            |t| t[0].conv2d(&t[1], Some(&t[2]), 2, 1),
        );
        parity(
            "conv_transpose2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[c, 4, 2, 2]), sh(&[4])],
            1e-3,
            |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), 2),
        );
        parity(
            "layer_norm2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[c]), sh(&[c])],
            1e-3,
            |t| t[0].layer_norm2d(&t[1], &t[2], 1e-6),
        );
        // Former host fallbacks (now aclnn ops or compositions of them).
        parity(
            "relu/sigmoid/exp/sin/cos",
            &mut r,
            &[sh(&[m, k])],
            1e-3,
            |t| {
                let x = t[0].scale(2.0)?;
                x.relu()?
                    .add(&x.sigmoid()?)?
                    .add(&x.scale(0.5)?.exp()?)?
                    .add(&x.sin()?)?
                    .add(&x.cos()?)
            },
        );
        parity("div", &mut r, &[sh(&[m, k]), sh(&[k])], 1e-3, |t| {
            t[0].div(&t[1].scale(0.5)?.shift(2.0)?)
        });
        let (oh, ow) = (r.range(1, 40), r.range(1, 40));
        parity("bilinear", &mut r, &[sh(&[b, c, h, w])], 1e-3, |t| {
            t[0].upsample_bilinear(oh, ow)
        });
        parity(
            "depthwise_conv2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[c, 1, 3, 3]), sh(&[c])],
            1e-3,
            |t| t[0].depthwise_conv2d(&t[1], Some(&t[2]), r_stride(h), 1),
        );
        parity(
            "batch_norm train",
            &mut r,
            &[sh(&[b + 1, c, h, w]), sh(&[c]), sh(&[c])],
            1e-3,
            |t| Ok(t[0].batch_norm(&t[1].shift(1.5)?, &t[2], None, 1e-5)?.0),
        );
        // No rel-pos and d == dv: the aclnnFlashAttentionScore path (SAM's decoder attention).
        let (nq, nk, d) = (r.range(1, 64), r.range(2, 80), r.range(1, 64));
        parity(
            "flash attention",
            &mut r,
            &[sh(&[b, nq, d]), sh(&[b, nk, d]), sh(&[b, nk, d])],
            1e-3,
            |t| attention(&t[0], &t[1], &t[2], 0.25, None),
        );
        let (kh, kw, d) = (r.range(1, 6), r.range(1, 6), r.range(1, 32));
        let nq = kh * kw;
        parity(
            "attention rel-pos",
            &mut r,
            &[
                sh(&[b, nq, d]),
                sh(&[b, nq, d]),
                sh(&[b, nq, d]),
                sh(&[b, nq, kh]),
                sh(&[b, nq, kw]),
            ],
            1e-3,
            |t| {
                let rel = RelPosArgs {
                    rel_h: t[3].clone(),
                    rel_w: t[4].clone(),
                    kh,
                    kw,
                };
                attention(&t[0], &t[1], &t[2], 0.3, Some(&rel))
            },
        );
    }
}

#[test]
fn npu_adamw_matches_cpu() {
    use medsam::backend::{backend, AdamWStep};
    if !npu("npu_adamw_matches_cpu") {
        return;
    }
    let mut r = Rng(11);
    for _ in 0..4 {
        let n = r.range(1, 100_000);
        let (w0, grads): (Vec<f32>, Vec<Vec<f32>>) = (r.vec(n), (0..3).map(|_| r.vec(n)).collect());
        let run = |dev: Device| {
            let b = backend(dev).unwrap();
            let mut w = b.upload(&w0).unwrap();
            let (mut m, mut v) = (b.zeros(n).unwrap(), b.zeros(n).unwrap());
            for (i, g) in grads.iter().enumerate() {
                let g = b.upload(g).unwrap();
                let p = AdamWStep {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.05,
                    step: i as u64 + 1,
                };
                b.adamw(p, &mut w, &g, &mut m, &mut v).unwrap();
            }
            [w, m, v].map(|s| b.download(&s).unwrap())
        };
        let (c, npu_out) = (run(Device::Cpu), run(NPU));
        for (k, (a, b)) in npu_out.iter().zip(&c).enumerate() {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "adamw n={n} result {k}[{i}]: npu {x} vs cpu {y}"
                );
            }
        }
    }
}
