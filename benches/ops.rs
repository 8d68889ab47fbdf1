//! Criterion per-op throughput at MedSAM ViT-B shapes. Throughput is reported as "elements" =
//! floating-point operations, so criterion's `Gelem/s` reads as GFLOP/s; time per iteration
//! gives calls/s. Ops whose kernels are still `unimplemented!()` are skipped with a note.
//!
//! `cargo bench --bench ops -- <criterion filter>`, e.g. `-- mm_qkv`.
//!
//! With `--features ascend`, the group `medsam_vit_b_npu` times the same kind of ops through the
//! NPU `Backend` on `npu:0` (each iteration enqueues the op and synchronises the stream). It runs
//! only on real hardware: `MEDSAM_NPU_BENCH=1` must be set (so the test-only CPU stand-in runtime
//! is never mistaken for an NPU) and opening `npu:0` must succeed; otherwise it prints
//! `npu benchmarks skipped: ...` and times nothing.
//!
//!   source /usr/local/Ascend/ascend-toolkit/set_env.sh
//!   MEDSAM_NPU_BENCH=1 cargo bench --features ascend --bench ops -- medsam_vit_b_npu

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

fn bench_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("medsam_vit_b");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // Probe each op once, with panic messages silenced, so kernels that are still
    // `unimplemented!()` are skipped instead of aborting the whole run.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let runnable: Vec<_> = common::ops()
        .into_iter()
        .filter_map(|op| {
            let mut f = (op.make)();
            match catch_unwind(AssertUnwindSafe(&mut f)) {
                Ok(()) => Some((op, f)),
                Err(_) => {
                    eprintln!("skipping {}: kernel not implemented yet", op.name);
                    None
                }
            }
        })
        .collect();
    std::panic::set_hook(default_hook);
    for (op, mut f) in runnable {
        group.throughput(Throughput::Elements(op.flops as u64));
        group.bench_function(op.name, |b| b.iter(&mut f));
    }
    group.finish();
}

#[cfg(feature = "ascend")]
mod npu {
    use super::common::data;
    use criterion::{Criterion, Throughput};
    use medsam::backend::ascend::AscendBackend;
    use medsam::backend::{
        AdamWStep, AttentionOps, AttnArgs, Binary, ChannelDims, ConvOps, GemmOperand, LinalgOps,
        MemoryOps, NormOps, NormStats, OptimOps, PointwiseOps, Qkv, Storage, Unary, View,
    };
    use medsam_kernels::attention::AttnDims;
    use medsam_kernels::conv::Conv2dGeom;
    use medsam_kernels::gemm::{GemmDims, Layout, Precision};
    use std::sync::Arc;
    use std::time::Duration;

    type Run = Box<dyn FnMut(&AscendBackend)>;

    /// The NPU backend when benchmarking on hardware was asked for and is possible.
    fn backend() -> Result<Arc<AscendBackend>, String> {
        if std::env::var("MEDSAM_NPU_BENCH").as_deref() != Ok("1") {
            return Err("no NPU (set MEDSAM_NPU_BENCH=1 on an Ascend machine)".into());
        }
        AscendBackend::shared(0).map_err(|e| format!("no NPU: {e}"))
    }

    fn up(b: &AscendBackend, n: usize, seed: u64) -> Storage {
        b.upload(&data(n, seed)).expect("upload")
    }

    fn geom(
        c: usize,
        hw: usize,
        c_out: usize,
        k: usize,
        s: usize,
        p: usize,
        g: usize,
    ) -> Conv2dGeom {
        Conv2dGeom::new([1, c, hw, hw], c_out, (k, k), (s, s), (p, p), g)
    }

    /// `(name, flops per call, inputs + op)`; each op's result is dropped after the sync.
    fn ops(b: &AscendBackend) -> Vec<(&'static str, f64, Run)> {
        let mut v: Vec<(&'static str, f64, Run)> = Vec::new();
        for (name, p) in [
            ("linear_qkv_f32", Precision::F32),
            ("linear_qkv_bf16", Precision::Bf16),
        ] {
            let (m, k, n) = (4096, 768, 2304);
            let (a, w) = (up(b, m * k, 1), up(b, n * k, 2));
            v.push((
                name,
                2.0 * (m * n * k) as f64,
                Box::new(move |b| {
                    let dims = GemmDims { batch: 1, m, n, k };
                    let ga = GemmOperand {
                        storage: &a,
                        offset: 0,
                        layout: Layout::row_major(m, k),
                    };
                    let gw = GemmOperand {
                        storage: &w,
                        offset: 0,
                        layout: Layout::transposed(n, k),
                    };
                    let args = medsam::backend::GemmArgs {
                        dims,
                        a: ga,
                        b: gw,
                        precision: p,
                    };
                    b.gemm(args).unwrap();
                }),
            ));
        }
        for (name, bh, side) in [("attn_global", 12, 64), ("attn_window", 25 * 12, 14)] {
            let (nq, d) = (side * side, 64);
            let (q, k, vv) = (
                up(b, bh * nq * d, 1),
                up(b, bh * nq * d, 2),
                up(b, bh * nq * d, 3),
            );
            let (rh, rw) = (up(b, bh * nq * side, 4), up(b, bh * nq * side, 5));
            v.push((
                name,
                4.0 * (bh * nq * nq * d) as f64,
                Box::new(move |b| {
                    let dims = AttnDims::new(bh, nq, nq, d, d);
                    let rel = medsam::backend::RelPos {
                        rel_h: &rh,
                        rel_w: &rw,
                        kh: side,
                        kw: side,
                    };
                    let args = AttnArgs {
                        dims,
                        scale: 0.125,
                        rel: Some(rel),
                        precision: medsam_kernels::gemm::Precision::F32,
                    };
                    let qkv = Qkv {
                        q: &q,
                        k: &k,
                        v: &vv,
                    };
                    b.attention(args, qkv).unwrap();
                }),
            ));
        }
        // SAM's mask decoder cross-attention (tokens → image, 8 heads × 16 dims, 4096 keys):
        // no rel-pos, so aclnnFlashAttentionScore when the runtime has it.
        let (bh, nq, nk, d) = (8, 7, 4096, 16);
        let (q, k, vv) = (
            up(b, bh * nq * d, 1),
            up(b, bh * nk * d, 2),
            up(b, bh * nk * d, 3),
        );
        v.push((
            "attn_decoder_cross",
            4.0 * (bh * nq * nk * d) as f64,
            Box::new(move |b| {
                let dims = AttnDims::new(bh, nq, nk, d, d);
                let args = AttnArgs {
                    dims,
                    scale: 0.25,
                    rel: None,
                    precision: medsam_kernels::gemm::Precision::F32,
                };
                let qkv = Qkv {
                    q: &q,
                    k: &k,
                    v: &vv,
                };
                b.attention(args, qkv).unwrap();
            }),
        ));
        let (rows, dim) = (4096, 768);
        let n = rows * dim;
        let (x, g, bt) = (up(b, n, 1), up(b, dim, 2), up(b, dim, 3));
        v.push((
            "layernorm",
            8.0 * n as f64,
            Box::new(move |b| {
                let a = medsam::backend::NormIn {
                    x: &x,
                    gamma: &g,
                    beta: &bt,
                };
                b.layer_norm(rows, dim, a, 1e-6).unwrap();
            }),
        ));
        let x = up(b, n, 4);
        v.push((
            "softmax",
            5.0 * n as f64,
            Box::new(move |b| {
                b.softmax(medsam::backend::RowDims { rows, dim }, &x)
                    .unwrap();
            }),
        ));
        for (name, op) in [
            ("gelu", Unary::Gelu),
            ("relu", Unary::Relu),
            ("sigmoid", Unary::Sigmoid),
            ("exp", Unary::Exp),
        ] {
            let (x, x2, dy) = (up(b, n, 5), up(b, n, 5), up(b, n, 6));
            v.push((
                name,
                n as f64,
                Box::new(move |b| {
                    b.unary(op, &x).unwrap();
                }),
            ));
            let bwd: &'static str = Box::leak(format!("{name}_backward").into_boxed_str());
            v.push((
                bwd,
                n as f64,
                Box::new(move |b| {
                    b.unary_backward(op, &x2, &dy).unwrap();
                }),
            ));
        }
        let (x, y) = (up(b, n, 7), b.fill(n, 1.5).unwrap());
        let view = View {
            shape: vec![n],
            strides: vec![1],
            offset: 0,
        };
        v.push((
            "div",
            n as f64,
            Box::new(move |b| {
                b.binary(Binary::Div, (&x, &view), (&y, &view)).unwrap();
            }),
        ));
        for (name, g) in [
            ("neck_conv3x3", geom(256, 64, 256, 3, 1, 1, 1)),
            ("depthwise3x3_tinyvit", geom(128, 64, 128, 3, 1, 1, 128)),
        ] {
            let (oh, ow) = g.out_hw();
            let x = up(b, g.c_in * g.h * g.w, 1);
            let w = up(b, g.c_out * (g.c_in / g.groups) * 9, 2);
            let bias = up(b, g.c_out, 3);
            let flops = 2.0 * (g.c_out * oh * ow * (g.c_in / g.groups) * 9) as f64;
            v.push((
                name,
                flops,
                Box::new(move |b| {
                    let a = medsam::backend::ConvIn {
                        x: &x,
                        w: &w,
                        bias: Some(&bias),
                    };
                    if g.groups == 1 {
                        b.conv2d(g, a).unwrap();
                    } else {
                        b.depthwise_conv2d(g, a).unwrap();
                    }
                }),
            ));
        }
        // Mask upscaling: 3 masks 256² → 1024², and its backward.
        let (lo, hi) = (up(b, 3 * 256 * 256, 1), up(b, 3 * 1024 * 1024, 2));
        let r = medsam::backend::ResizeDims {
            planes: 3,
            hw: (256, 256),
            ohw: (1024, 1024),
        };
        v.push((
            "bilinear_256_to_1024",
            8.0 * (3 * 1024 * 1024) as f64,
            Box::new(move |b| {
                b.bilinear(r, &lo).unwrap();
            }),
        ));
        v.push((
            "bilinear_backward_1024_to_256",
            8.0 * (3 * 1024 * 1024) as f64,
            Box::new(move |b| {
                b.bilinear_backward(r, &hi).unwrap();
            }),
        ));
        let (c, hw) = (128, 64 * 64);
        let (x, g, bt) = (up(b, 8 * c * hw, 1), up(b, c, 2), up(b, c, 3));
        v.push((
            "batch_norm_train_fwd",
            10.0 * (8 * c * hw) as f64,
            Box::new(move |b| {
                let d = ChannelDims { n: 8, c, hw };
                let (m, var) = b.batch_norm_stats(d, &x).unwrap();
                let stats = NormStats {
                    mean: &m,
                    rstd: &var,
                };
                let a = medsam::backend::NormIn {
                    x: &x,
                    gamma: &g,
                    beta: &bt,
                };
                b.batch_norm_apply(d, a, stats).unwrap();
            }),
        ));
        // AdamW over 4M parameters (a ViT-B block is ~7M).
        let np = 4 << 20;
        let (mut w, gr, mut m, mut vv) = (
            up(b, np, 1),
            up(b, np, 2),
            b.zeros(np).unwrap(),
            b.zeros(np).unwrap(),
        );
        let mut step = 0;
        v.push((
            "adamw_4M",
            12.0 * np as f64,
            Box::new(move |b| {
                step += 1;
                let p = AdamWStep {
                    lr: 1e-4,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.01,
                    step,
                };
                let slots = medsam::backend::AdamWSlots {
                    param: &mut w,
                    exp_avg: &mut m,
                    exp_avg_sq: &mut vv,
                };
                b.adamw(p, &gr, slots).unwrap();
            }),
        ));
        v
    }

    pub fn bench(c: &mut Criterion) {
        let b = match backend() {
            Ok(b) => b,
            Err(why) => {
                eprintln!("npu benchmarks skipped: {why}");
                return;
            }
        };
        let mut group = c.benchmark_group("medsam_vit_b_npu");
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for (name, flops, mut f) in ops(&b) {
            group.throughput(Throughput::Elements(flops as u64));
            group.bench_function(name, |it| {
                it.iter(|| {
                    f(&b);
                    b.synchronize().expect("npu stream");
                })
            });
        }
        group.finish();
    }
}

#[cfg(feature = "ascend")]
fn bench_npu(c: &mut Criterion) {
    npu::bench(c);
}

#[cfg(not(feature = "ascend"))]
fn bench_npu(_: &mut Criterion) {
    eprintln!("npu benchmarks skipped: built without the `ascend` feature");
}

criterion_group!(benches, bench_ops, bench_npu);
criterion_main!(benches);
