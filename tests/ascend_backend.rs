//! The NPU `Backend` end to end, written once for two targets: by default the TEST-ONLY CPU
//! stand-in runtime (`tests/ascend_standin/`, the same build/loader mechanism as
//! `tests/ascend_standin.rs`), and with `MEDSAM_NPU_TESTS=1` the installed CANN and a real NPU
//! (after sourcing CANN's `set_env.sh`). Every tensor op on `Device::Npu(0)` against
//! `Device::Cpu`, forward and backward, a tiny SAM forward, a training step with AdamW, the HCCL
//! communicator between two devices, and random-shape `prop_*` checks. The one check of the
//! stand-in's own counters prints `SKIPPED ... stand-in only` on an NPU.
//!
//! What this proves: the backend's marshalling (views, strides, broadcasts, batch strides),
//! op composition (attention, layer_norm2d, conv_transpose2d through conv backward, sum_axes
//! through matmul, batch norm and AdamW as elementwise compositions), stream ordering and the
//! remaining host fallbacks — against the stand-in's plain-loop
//! kernels. It does NOT prove real CANN numerics (tests/ascend_standin.rs with MEDSAM_NPU_TESTS=1, needs an NPU).
#![cfg(feature = "ascend")]

#[path = "common/npu_parity.rs"]
mod npu_parity;
#[path = "common/standin.rs"]
mod standin;
use medsam::backend::Device;
use medsam::model::{Sam, SamConfig};
use medsam::ops::nn::{attention, RelPosArgs};
use medsam::Tensor;
use npu_parity::Inputs;
use standin::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const NPU: Device = Device::Npu(0);

/// Points `MEDSAM_ASCEND_LIB_DIR` at the stand-in (once, before any backend is created) and
/// returns that directory; with `MEDSAM_NPU_TESTS=1` leaves the loader to find the installed
/// CANN and checks that the NPU backend opens.
fn setup() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if on_npu() {
            medsam::backend::backend(NPU).unwrap_or_else(|e| panic!("MEDSAM_NPU_TESTS=1 but: {e}"));
            return PathBuf::new();
        }
        let dir = link_standin("medsam-npu-backend");
        // Set while every other test thread waits on this OnceLock.
        std::env::set_var("MEDSAM_ASCEND_LIB_DIR", &dir);
        dir
    })
}

/// Whether a test of the stand-in's own model should run (not on an NPU).
fn standin_only(test: &str) -> bool {
    standin::standin_only(test, "reads the stand-in's counters")
}

/// [`npu_parity::parity`] after [`setup`].
fn parity(name: &str, inputs: Inputs, tol: f32, f: impl Fn(&[Tensor]) -> medsam::Result<Tensor>) {
    setup();
    npu_parity::parity(name, inputs, tol, f)
}

const TOL: f32 = 1e-4;

/// [`parity`] at [`TOL`] for each case `name: [(shape, seed), ...] => op;`.
macro_rules! parity_cases {
    ($($name:literal: [$(($shape:expr, $seed:expr)),* $(,)?] => $f:expr;)*) => {
        $(parity($name, &[$((&$shape, $seed)),*], TOL, $f);)*
    };
}

#[test]
fn tensors_live_on_the_npu() {
    setup();
    let t = Tensor::from_slice(&[1.0, 2.0, 3.0], &[3], NPU).unwrap();
    assert_eq!(t.device(), NPU);
    assert_eq!(t.to_vec().unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(t.backend().unwrap().device(), NPU);
    assert_eq!(
        Tensor::zeros(&[4], NPU).unwrap().to_vec().unwrap(),
        [0.0; 4]
    );
    assert_eq!(
        Tensor::full(&[2, 2], -1.5, NPU).unwrap().to_vec().unwrap(),
        [-1.5; 4]
    );
    let back = t.to_device(Device::Cpu).unwrap();
    assert_eq!(back.device(), Device::Cpu);
    assert_eq!(back.to_vec().unwrap(), [1.0, 2.0, 3.0]);
    // The same id gives the same cached backend.
    let (a, b) = (t.backend().unwrap(), t.backend().unwrap());
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

/// The axial RoPE of MedSAM2's memory attention (a host fallback on the NPU: download, the CPU
/// kernel, upload) gives the CPU's values bit for bit, for keys that repeat the grid twice.
#[test]
fn axial_rope_matches_cpu() {
    use medsam::ops::rope::{apply_rotary, axial_rope_tables};
    setup();
    let x: Vec<f32> = (0..2 * 12 * 8)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let run = |dev: Device| {
        let (cos, sin) = axial_rope_tables(8, 3, 2, 10_000.0, dev).unwrap();
        let t = Tensor::from_slice(&x, &[2, 12, 8], dev).unwrap();
        let y = medsam::autograd::no_grad(|| apply_rotary(&t, &cos, &sin)).unwrap();
        assert_eq!(y.device(), dev);
        y.to_vec().unwrap()
    };
    let (cpu, npu) = (run(Device::Cpu), run(NPU));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&npu), bits(&cpu));
}

/// Windowed attention on operands picked from a projection's rows (`attention_picked`, with and
/// without SAM's rel-pos bias; `attention_bias_table_picked` on TinyViT's interleaved rows): the
/// NPU backend has no in-place kernel for them, so the operands are gathered on the device and
/// attended there. The CPU's values within the attention tolerance, the result on the NPU.
#[test]
fn picked_window_attention_matches_cpu() {
    use medsam::backend::ops::memory::{RowAt, RowPick};
    use medsam::ops::nn::{attention_bias_table_picked, attention_picked, PickedRows};
    setup();
    let (heads, hd, tokens, n) = (2, 4, 7, 4);
    let width = 3 * heads * hd;
    let (vt, vf, vh, vw, vb) = (
        data(tokens * width, 51),
        data(width, 52),
        data(2 * heads * 2 * 2, 53),
        data(2 * heads * 2 * 2, 54),
        data(heads * 2 * n, 55),
    );
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
    let run = |dev: Device, which: usize| {
        let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, dev).unwrap();
        let (table, fill) = (t(&vt, &[tokens, width]), t(&vf, &[width]));
        // Side-by-side heads (SAM, Hiera) for attention_picked, interleaved (TinyViT) for the
        // bias-table form.
        let interleaved = which == 2;
        let part = |p: usize, index, block, fill| PickedRows {
            table: &table,
            fill,
            index,
            pick: RowPick {
                width,
                col: if interleaved { p * hd } else { p * heads * hd },
                len: hd,
                groups: heads,
                block,
            },
            head_stride: if interleaved { 3 * hd } else { hd },
        };
        let (q, k, v) = (
            part(0, &qi[..], 2, None),
            part(1, &kv[..], n, Some(&fill)),
            part(2, &kv[..], n, Some(&fill)),
        );
        let y = match which {
            0 => attention_picked(q, k, v, 0.5, None),
            1 => {
                // Keys on a 2 × 2 grid.
                let rel = RelPosArgs::new(
                    [t(&vh, &[2 * heads, 2, 2]), t(&vw, &[2 * heads, 2, 2])],
                    (2, 2),
                );
                attention_picked(q, k, v, 0.5, Some(&rel))
            }
            _ => attention_bias_table_picked(q, k, v, 0.5, &t(&vb, &[heads, 2, n])),
        }
        .unwrap();
        assert_eq!(y.device(), dev);
        y.to_vec().unwrap()
    };
    for which in 0..3 {
        let (cpu, npu) = (run(Device::Cpu, which), run(NPU, which));
        assert_eq!(cpu.len(), npu.len());
        let worst = cpu
            .iter()
            .zip(&npu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= TOL,
            "case {which}: NPU differs from the CPU by {worst}"
        );
    }
}

#[test]
fn missing_device_is_a_clear_error() {
    setup();
    // The stand-in has 2 devices.
    let e = Tensor::zeros(&[2], Device::Npu(7)).unwrap_err().to_string();
    assert!(e.contains("npu:7") && e.contains("2 device"), "{e}");
}

#[test]
fn matmul_plain_transposed_batched_broadcast() {
    parity_cases! {
        "matmul 2d": [([5, 7], 1), ([7, 3], 2)] => |t| t[0].matmul(&t[1]);
        "matmul aᵀ·bᵀ": [([7, 5], 1), ([3, 7], 2)]
            => |t| t[0].transpose(0, 1)?.matmul(&t[1].transpose(0, 1)?);
        "matmul batched": [([2, 4, 6], 3), ([2, 6, 5], 4)] => |t| t[0].matmul(&t[1]);
        "matmul batched, transposed rhs": [([3, 4, 6], 3), ([3, 5, 6], 4)]
            => |t| t[0].matmul(&t[1].transpose(1, 2)?);
        "matmul broadcast rhs": [([2, 3, 4, 6], 5), ([6, 2], 6)] => |t| t[0].matmul(&t[1]);
        "linear": [([2, 5, 8], 7), ([6, 8], 8), ([6], 9)] => |t| t[0].linear(&t[1], Some(&t[2]));
    }
}

#[test]
fn elementwise_broadcast_and_reductions() {
    parity_cases! {
        "add broadcast": [([2, 3, 4], 1), ([3, 1], 2)] => |t| t[0].add(&t[1]);
        "sub broadcast": [([2, 3, 4], 1), ([4], 2)] => |t| t[0].sub(&t[1]);
        "mul broadcast": [([2, 1, 4], 1), ([3, 1], 2)] => |t| t[0].mul(&t[1]);
        "div": [([2, 3], 1), ([2, 3], 2)] => |t| t[0].div(&t[1].scale(0.25)?.shift(2.0)?);
        "mul of permuted view": [([2, 3, 4], 1), ([4, 3, 2], 2)]
            => |t| t[0].permute(&[2, 1, 0])?.mul(&t[1]);
        "narrow + cat": [([4, 6], 1)] => |t| {
            Tensor::cat(
                &[
                    t[0].narrow(1, 1, 3)?,
                    t[0].narrow(0, 2, 2)?.narrow(1, 0, 3)?,
                ],
                0,
            )
        };
        "sum_keepdim middle": [([2, 3, 4, 5], 3)] => |t| t[0].sum_keepdim(&[1, 2]);
        "sum_keepdim outer+inner": [([2, 3, 4], 3)] => |t| t[0].sum_keepdim(&[0, 2]);
        "unary chain": [([3, 5], 4)] => |t| {
            t[0].neg()?
                .scale(3.0)?
                .shift(-0.5)?
                .relu()?
                .add(&t[0].sigmoid()?.exp()?)
        };
    }
}

#[test]
fn gelu_softmax_layer_norms() {
    parity_cases! {
        "gelu": [([4, 9], 1)] => |t| t[0].scale(3.0)?.gelu();
        "softmax": [([3, 4, 7], 2)] => |t| t[0].scale(4.0)?.softmax_last();
        "layer_norm": [([2, 3, 8], 3), ([8], 4), ([8], 5)]
            => |t| t[0].layer_norm(&t[1], &t[2], 1e-6);
        "layer_norm2d": [([2, 6, 3, 4], 3), ([6], 4), ([6], 5)]
            => |t| t[0].layer_norm2d(&t[1], &t[2], 1e-6);
    }
}

#[test]
fn convolutions_and_depthwise() {
    parity_cases! {
        "conv2d stride 2 pad 1 bias": [([2, 3, 7, 6], 1), ([4, 3, 3, 3], 2), ([4], 3)]
            => |t| t[0].conv2d(&t[1], Some(&t[2]), 2, 1);
        "conv2d 1x1 no bias": [([1, 4, 5, 5], 1), ([2, 4, 1, 1], 2)]
            => |t| t[0].conv2d(&t[1], None, 1, 0);
        "conv_transpose2d k2 s2 bias": [([2, 4, 3, 5], 1), ([4, 3, 2, 2], 2), ([3], 3)]
            => |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), 2);
        "upsample_bilinear": [([1, 2, 3, 4], 1)] => |t| t[0].upsample_bilinear(7, 5);
        "depthwise 3x3 s1 p1 bias": [([2, 4, 6, 5], 1), ([4, 1, 3, 3], 2), ([4], 3)]
            => |t| t[0].depthwise_conv2d(&t[1], Some(&t[2]), 1, 1);
        "depthwise 3x3 s2 p1 no bias": [([1, 3, 7, 7], 4), ([3, 1, 3, 3], 5)]
            => |t| t[0].depthwise_conv2d(&t[1], None, 2, 1);
    }
}

#[test]
fn attention_plain_and_rel_pos() {
    parity_cases! {
        "attention": [([3, 5, 4], 1), ([3, 6, 4], 2), ([3, 6, 3], 3)]
            => |t| attention(&t[0], &t[1], &t[2], 0.5, None);
        // keys on a 2×3 grid
        "attention rel-pos":
            [([2, 6, 4], 1), ([2, 6, 4], 2), ([2, 6, 4], 3), ([2, 6, 2], 4), ([2, 6, 3], 5)]
            => |t| {
            let rel = RelPosArgs::new([t[3].clone(), t[4].clone()], (2, 3));
            attention(&t[0], &t[1], &t[2], 0.5, Some(&rel))
        };
    }
}

/// Hiera's 2×2 max pool (inference only, so no gradient to compare) of a view whose channels are
/// a slice of wider rows, odd height and width (floor mode), NaNs included: the same bits on the
/// NPU as on the CPU, and (stand-in) without a copy through the host.
#[test]
fn max_pool_of_a_strided_view_matches_cpu() {
    setup();
    let (n, h, w, c) = (2, 7, 9, 10);
    let mut v = data(n * h * w * c, 11);
    for at in [3, 254, 1005] {
        v[at] = f32::NAN;
    }
    let pool = |dev: Device| {
        let x = Tensor::from_slice(&v, &[n, h, w, c], dev).unwrap();
        let before = (dev == NPU && !on_npu()).then(host_copies);
        let y = x.narrow(3, 2, 5).unwrap().max_pool2x2_nhwc().unwrap();
        if let Some(before) = before {
            assert_eq!(host_copies(), before, "max pool copied through the host");
        }
        assert_eq!((y.device(), y.shape()), (dev, &[n, 3, 4, 5][..]));
        y.to_vec().unwrap()
    };
    let (want, got) = (pool(Device::Cpu), pool(NPU));
    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(want.iter().any(|x| x.is_nan()), "a NaN reaches the output");
    assert_eq!(bits(&got), bits(&want));
}

/// Row gathers (how the windowed attention blocks cut windows out of a token map, split q/k/v
/// per head and put windows back): rows from two tables, one a strided view, with fill rows;
/// whole rows, and column groups in per-head blocks. The same bits on the NPU as on the CPU,
/// and (stand-in) nothing through the host but the index.
#[test]
fn pick_rows_matches_cpu() {
    use medsam::backend::ops::memory::{RowAt, RowPick};
    setup();
    let (rows_a, rows_b, w) = (7, 5, 12);
    let (va, vb, vf) = (data(rows_a * 16, 21), data(rows_b * w, 22), data(w, 23));
    let at = |part, row| RowAt { part, row };
    let index = [
        at(0, 6),
        at(1, 0),
        RowAt::FILL,
        at(0, 0),
        at(1, 4),
        at(0, 3),
        RowAt::FILL,
        at(1, 2),
        at(0, 6),
        at(0, 1),
        at(1, 1),
        RowAt::FILL,
    ];
    let heads = RowPick {
        width: w,
        col: 2,
        len: 3,
        groups: 3,
        block: 4,
    };
    for pick in [RowPick::rows(w), heads] {
        let gather = |dev: Device| {
            // Table a: rows of 12 inside rows of 16 (a view, not contiguous).
            let a = Tensor::from_slice(&va, &[rows_a, 16], dev).unwrap();
            let a = a.narrow(1, 3, w).unwrap();
            let b = Tensor::from_slice(&vb, &[rows_b, w], dev).unwrap();
            let f = Tensor::from_slice(&vf, &[w], dev).unwrap();
            let before = (dev == NPU && !on_npu()).then(host_copies);
            let y = Tensor::pick_rows(&[&a, &b], Some(&f), &index, pick).unwrap();
            if let Some(before) = before {
                assert_eq!(
                    host_copies(),
                    before + 1,
                    "a copy through the host beyond the index"
                );
            }
            let shape = [index.len() / pick.block, pick.groups, pick.block, pick.len];
            assert_eq!((y.device(), y.shape()), (dev, &shape[..]));
            y.to_vec().unwrap()
        };
        let (want, got) = (gather(Device::Cpu), gather(NPU));
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{pick:?}");
        // Spot check against the tables: output row 2 is the fill row's picked columns.
        let row2: Vec<f32> = match pick.groups {
            1 => vf.clone(),
            _ => vf[2..5].to_vec(),
        };
        let off = match pick.groups {
            1 => 2 * w,
            _ => 2 * pick.len,
        };
        assert_eq!(&want[off..off + row2.len()], &row2[..]);
    }
}

// ------------------------------------------------------------------ tiny SAM

/// The tiny SAM fixture: its tensors (weights `w.*`, inputs `in.*`, outputs `out.*`) and config.
type Fixture = (BTreeMap<String, Tensor>, SamConfig);

fn fixture() -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam");
    let bytes = std::fs::read(dir.join("tiny_sam.safetensors")).expect("tiny SAM fixture");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(name.to_string(), Tensor::from_vec(d, view.shape()).unwrap());
    }
    let config = SamConfig::from_json_file(&dir.join("tiny_sam_config.json")).unwrap();
    (tensors, config)
}

fn sam_on(dev: Device, fx: &Fixture) -> Sam {
    let mut sam = Sam::new(&fx.1, 0, dev).unwrap();
    let w: BTreeMap<String, Tensor> =
        fx.0.iter()
            .filter_map(|(k, v)| k.strip_prefix("w.").map(|k| (k.to_string(), v.clone())))
            .collect();
    let report = sam.load_state_dict(&w).unwrap();
    assert!(report.is_clean(), "{report:?}");
    sam
}

/// The tiny SAM fixture and its boxes (after [`setup`]).
fn tiny_sam_inputs() -> (Fixture, Vec<[f32; 4]>) {
    setup();
    let fx = fixture();
    let b = fx.0["in.boxes"].to_vec().unwrap();
    let boxes = b.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    (fx, boxes)
}

#[test]
fn tiny_sam_forward_matches_cpu() {
    let (fx, bx) = tiny_sam_inputs();
    let images = &fx.0["in.images"];
    let cpu = sam_on(Device::Cpu, &fx).forward(images, &bx).unwrap();
    let npu_model = sam_on(NPU, &fx);
    let out = npu_model
        .forward(&images.to_device(NPU).unwrap(), &bx)
        .unwrap();
    assert_eq!(out.device(), NPU);
    assert_eq!(out.shape(), cpu.shape());
    let (g, w) = (out.to_vec().unwrap(), cpu.to_vec().unwrap());
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "tiny SAM npu vs cpu: max abs error {worst}");
    // And the CPU result is the PyTorch reference (so the comparison is not vacuous).
    let want = fx.0["out.paired.masks"].to_vec().unwrap();
    close("cpu vs pytorch", &w, &want, 1e-4);
}

#[test]
fn tiny_sam_training_step_matches_cpu() {
    use medsam::optim::{AdamW, AdamWConfig};
    let (fx, bx) = tiny_sam_inputs();
    let images = &fx.0["in.images"];
    // (name, grad — None for parameters the forward does not reach (the IoU head), params after)
    let step = |dev: Device| -> Vec<(String, Option<Vec<f32>>, Vec<f32>)> {
        let mut sam = sam_on(dev, &fx);
        sam.enable_training();
        let out = sam.forward(&images.to_device(dev).unwrap(), &bx).unwrap();
        let r = Tensor::from_slice(&data(out.numel(), 5), out.shape(), dev).unwrap();
        out.mul(&r).unwrap().mean_all().unwrap().backward().unwrap();
        let grads: Vec<Option<Vec<f32>>> = sam
            .trainable_parameters()
            .iter()
            .map(|(_, t)| t.grad().map(|g| g.to_vec().unwrap()))
            .collect();
        let mut params = sam.trainable_parameters();
        let mut opt = AdamW::new(
            AdamWConfig {
                lr: 1e-3,
                ..Default::default()
            },
            params.len(),
        );
        opt.step(&mut params).unwrap();
        params
            .iter()
            .zip(grads)
            .map(|((n, t), g)| {
                assert_eq!(t.device(), dev, "{n}");
                (n.clone(), g, t.to_vec().unwrap())
            })
            .collect()
    };
    let cpu = step(Device::Cpu);
    let npu = step(NPU);
    assert_eq!(cpu.len(), npu.len());
    let mut with_grad = 0;
    for ((n, gc, pc), (_, gn, pn)) in cpu.iter().zip(&npu) {
        match (gc, gn) {
            (Some(gc), Some(gn)) => {
                close(&format!("grad {n}"), gn, gc, 1e-4);
                with_grad += 1;
            }
            (None, None) => {}
            _ => panic!("{n}: gradient on one device only"),
        }
        close(&format!("param after AdamW {n}"), pn, pc, 1e-4);
    }
    assert!(
        with_grad > cpu.len() / 2,
        "{with_grad} of {} params have grads",
        cpu.len()
    );
}

// ------------------------------------------------------------------ HCCL communicator

mod hccl {
    use super::*;
    use medsam::backend::ascend::AscendBackend;
    use medsam::dist::hccl::HcclCommunicator;
    use medsam::dist::Communicator;
    use std::sync::{Arc, Barrier, Mutex};

    /// In-process bootstrap: ranks are threads exchanging bytes through shared slots.
    struct Threads {
        rank: usize,
        world: usize,
        slots: Arc<Mutex<Vec<Vec<u8>>>>,
        barrier: Arc<Barrier>,
    }

    impl Threads {
        /// The bootstraps of `world` ranks sharing one rendezvous.
        fn group(world: usize) -> Vec<Threads> {
            let slots = Arc::new(Mutex::new(vec![Vec::new(); world]));
            let barrier = Arc::new(Barrier::new(world));
            (0..world)
                .map(|rank| Threads {
                    rank,
                    world,
                    slots: slots.clone(),
                    barrier: barrier.clone(),
                })
                .collect()
        }
    }

    /// Runs `f(bootstrap)` on one thread per rank of a `world`-rank [`Threads`] group; the
    /// results in rank order.
    fn on_ranks<R: Send>(world: usize, f: impl Fn(Threads) -> R + Sync) -> Vec<R> {
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = Threads::group(world)
                .into_iter()
                .map(|boot| s.spawn(move || f(boot)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rank thread panicked"))
                .collect()
        })
    }

    impl Communicator for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn local_rank(&self) -> usize {
            self.rank
        }
        fn all_reduce_sum(&self, _: &mut [f32]) -> medsam::Result<()> {
            unimplemented!("bootstrap only")
        }
        fn broadcast(&self, _: &mut [f32], _: usize) -> medsam::Result<()> {
            unimplemented!("bootstrap only")
        }
        fn all_gather_bytes(&self, bytes: &[u8]) -> medsam::Result<Vec<Vec<u8>>> {
            self.slots.lock().unwrap()[self.rank] = bytes.to_vec();
            self.barrier.wait();
            let all = self.slots.lock().unwrap().clone();
            self.barrier.wait();
            Ok(all)
        }
        fn barrier(&self) -> medsam::Result<()> {
            self.barrier.wait();
            Ok(())
        }
    }

    /// Data-parallel training over HCCL: two ranks (threads) on npu:0 and npu:1 with batch 1
    /// each, gradients all-reduced through `with_device_collective` (what `medsam train` uses),
    /// against one CPU process on the combined batch of 2. Both ranks must end bit-identical;
    /// against the CPU, Adam's ±lr normalisation of ~0 gradients allows 5% of lr per step.
    #[test]
    fn hccl_data_parallel_training_matches_one_cpu_process() {
        setup();
        let dir = std::env::temp_dir().join(format!("medsam-hccl-dp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        super::write_slices(&dir.join("data"));
        let sam_cfg = SamConfig::from_json_file(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/sam/tiny_sam_config.json"),
        )
        .unwrap();
        let (lr, steps) = (0.01, 2);
        let train_cfg = |run: &str, batch_size: usize| medsam::train::TrainConfig {
            tr_npy_path: dir.join("data"),
            task_name: "hccl-dp".into(),
            work_dir: dir.clone(),
            run_dir: Some(dir.join(run)),
            num_epochs: 10,
            max_steps: Some(steps),
            batch_size,
            grad_acc_steps: 1,
            num_workers: 1,
            seed: 5,
            bbox_shift: 0,
            save_every_steps: 0,
            adamw: medsam::optim::AdamWConfig {
                lr,
                ..Default::default()
            },
            ..Default::default()
        };
        let params = |m: &mut Sam| -> Vec<f32> {
            m.trainable_parameters()
                .iter()
                .flat_map(|(_, p)| p.to_vec().unwrap())
                .collect()
        };
        let mut cpu = Sam::new(&sam_cfg, 3, Device::Cpu).unwrap();
        let init = params(&mut cpu);
        medsam::train::train(
            &train_cfg("cpu", 2),
            &mut cpu,
            &medsam::dist::SingleProcess,
            &mut |_| {},
        )
        .unwrap();
        let want = params(&mut cpu);

        let world = 2;
        let cfg = train_cfg("npu", 1);
        let ranks = on_ranks(world, |boot| {
            let dev = Device::Npu(boot.rank as u32);
            let mut m = Sam::new(&sam_cfg, 3, dev).unwrap();
            medsam::dist::with_device_collective(&boot, dev, |c| {
                assert_eq!(c.world_size(), world);
                medsam::train::train(&cfg, &mut m, c, &mut |_| {})
            })
            .unwrap();
            params(&mut m)
        });
        assert!(
            ranks[0] == ranks[1],
            "the two ranks ended with different weights"
        );
        let tol = 0.05 * lr as f32 * steps as f32;
        let (mut worst, mut moved) = (0.0f32, 0usize);
        for ((g, w), i) in ranks[0].iter().zip(&want).zip(&init) {
            worst = worst.max((g - w).abs());
            moved += ((w - i).abs() > 5.0 * tol) as usize;
        }
        eprintln!("HCCL 2-rank vs 1 CPU process: max |Δw| {worst:.2e} (tolerance {tol:.0e}); {moved} weights moved by > {:.0e}", 5.0 * tol);
        assert!(
            worst <= tol,
            "2 NPU ranks differ from the CPU run by {worst}"
        );
        assert!(moved > 1000, "training moved only {moved} weights");
    }

    /// `average_gradients` over HCCL reduces NPU gradients on the device: mean of the two ranks'
    /// values, in buckets smaller than one tensor and larger than several, with no host↔device
    /// copy while it runs.
    #[test]
    fn hccl_averages_device_gradients_without_host_copies() {
        setup();
        let world = 2;
        on_ranks(world, |boot| {
            let rank = boot.rank;
            let dev = Device::Npu(rank as u32);
            let c = HcclCommunicator::init(&boot, rank as u32).unwrap();
            let shapes: [&[usize]; 3] = [&[3, 5], &[7], &[2, 2, 4]];
            let value = |t: usize, i: usize, r: usize| (t * 100 + i) as f32 * (r + 1) as f32;
            let mut grads: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(t, s)| {
                    let n: usize = s.iter().product();
                    let v: Vec<f32> = (0..n).map(|i| value(t, i, rank)).collect();
                    Tensor::from_slice(&v, s, dev).unwrap()
                })
                .collect();
            for bucket_bytes in [4 * 8, 1 << 20] {
                let mut g = grads.clone();
                boot.barrier().unwrap();
                let before = super::host_copies();
                boot.barrier().unwrap();
                c.average_gradients(&mut g, bucket_bytes).unwrap();
                AscendBackend::shared(rank as u32)
                    .unwrap()
                    .synchronize()
                    .unwrap();
                boot.barrier().unwrap();
                let copies = super::host_copies() - before;
                boot.barrier().unwrap();
                assert_eq!(
                    copies, 0,
                    "host copies while averaging ({bucket_bytes} B buckets)"
                );
                for (t, (g, s)) in g.iter().zip(shapes).enumerate() {
                    assert_eq!(g.shape(), s);
                    assert_eq!(g.device(), dev);
                    let want: Vec<f32> = (0..g.numel())
                        .map(|i| (value(t, i, 0) + value(t, i, 1)) / 2.0)
                        .collect();
                    assert_eq!(
                        g.to_vec().unwrap(),
                        want,
                        "tensor {t}, {bucket_bytes} B buckets"
                    );
                }
            }
            grads.clear();
        });
    }

    #[test]
    fn hccl_communicator_between_two_devices() {
        setup();
        let world = 2;
        let reports = on_ranks(world, |boot| {
            let rank = boot.rank;
            let c = HcclCommunicator::init(&boot, rank as u32).unwrap();
            assert_eq!((c.rank(), c.world_size()), (rank, world));
            let mut v: Vec<f32> = (0..5).map(|i| (i * (rank + 1)) as f32).collect();
            c.all_reduce_sum(&mut v).unwrap();
            assert_eq!(v, [0.0, 3.0, 6.0, 9.0, 12.0]);
            let mut b = vec![rank as f32 + 10.0; 3];
            c.broadcast(&mut b, 1).unwrap();
            assert_eq!(b, [11.0; 3]);
            let mine: Vec<u8> = (0..(3 + 4 * rank) as u8).collect();
            let all = c.all_gather_bytes(&mine).unwrap();
            assert_eq!(all[0], (0..3u8).collect::<Vec<_>>());
            assert_eq!(all[1], (0..7u8).collect::<Vec<_>>());
            let mut bb = if rank == 0 { vec![7u8; 9] } else { vec![] };
            c.broadcast_bytes(&mut bb, 0).unwrap();
            assert_eq!(bb, [7u8; 9]);
            c.barrier().unwrap();
            let mut m = vec![rank as f32; 4];
            c.all_reduce_mean(&mut m).unwrap();
            assert_eq!(m, [0.5; 4]);
            medsam::dist::selftest::run(&c).unwrap()
        });
        for report in reports {
            eprintln!("{report}");
        }
    }
}

// ------------------------------------------------------------------ CLI end to end

/// Two 64×64 slices in MedSAM's npy layout, one box-shaped organ each.
fn write_slices(data_dir: &Path) {
    std::fs::create_dir_all(data_dir.join("imgs")).unwrap();
    std::fs::create_dir_all(data_dir.join("gts")).unwrap();
    for i in 0..2usize {
        let mut gt = vec![0u8; 64 * 64];
        for y in 10 + i..30 + i {
            for x in 20..40 + 2 * i {
                gt[y * 64 + x] = 1;
            }
        }
        let img: Vec<f64> = gt.iter().flat_map(|&g| [0.2 + 0.6 * g as f64; 3]).collect();
        let name = format!("s{i}.npy");
        medsam::npy::write_npy_f64(data_dir.join("imgs").join(&name), &[64, 64, 3], &img).unwrap();
        medsam::npy::write_npy_u8(data_dir.join("gts").join(&name), &[64, 64], &gt).unwrap();
    }
}

/// `medsam train --device npu:0` on the stand-in: two steps of the tiny model on synthetic
/// slices, against the same run with `--device cpu` (same seed): the printed per-step output
/// must agree to the precision it is printed with.
#[test]
fn cli_train_on_npu_matches_cpu() {
    setup();
    let dir = std::env::temp_dir().join(format!("medsam-npu-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.join("data");
    write_slices(&data_dir);
    let cfg =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam/tiny_sam_config.json");
    // The run's learning rate and AdamW steps, which also bound how far a parameter can move.
    let (lr, steps) = (0.01f32, 2usize);
    let run = |device: &str| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_medsam"))
            .args(["train", "--tr-npy-path"])
            .arg(&data_dir)
            .args(["--work-dir"])
            .arg(dir.join(format!("work-{}", device.replace(':', ""))))
            .arg("--model-config")
            .arg(&cfg)
            .args([
                "--batch-size",
                "1",
                "--max-steps",
                steps.to_string().as_str(),
                "--bbox-shift",
                "0",
                "--lr",
                lr.to_string().as_str(),
                "--seed",
                "2023",
            ])
            .args(["--device", device])
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{device}: stdout:\n{o}\nstderr:\n{e}");
        o + &e
    };
    let cpu = run("cpu");
    let npu = run("npu:0");
    // Compare the checkpoints the two runs wrote (every trained parameter after two AdamW steps).
    let ckpt = |out: &str| -> PathBuf {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("latest checkpoint: "))
            .unwrap_or_else(|| panic!("no checkpoint line in:\n{out}"));
        PathBuf::from(line.trim())
    };
    let load = |p: &Path| {
        let (mut m, _) =
            medsam::weights::load_model(p, None, Some(cfg.as_path()), Device::Cpu).unwrap();
        m.state_dict()
            .into_iter()
            .map(|(n, t)| (n, t.to_vec().unwrap()))
            .collect::<Vec<_>>()
    };
    let (wc, wn) = (load(&ckpt(&cpu)), load(&ckpt(&npu)));
    assert_eq!(wc.len(), wn.len());
    // The initial weights (same seed), so that the comparison is shown to cover real updates.
    let mut init = Sam::new(&SamConfig::from_json_file(&cfg).unwrap(), 2023, Device::Cpu).unwrap();
    let w0: BTreeMap<String, Vec<f32>> = init
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect();
    // Adam normalises each update to about ±lr whatever the gradient's size, so a gradient
    // entry that is ~0 (and rounds differently on the two devices) can move by a different
    // fraction of lr: compare to 5% of lr per step, and require that training moved many tensors
    // by 5× that, so a run that did not train on the NPU fails.
    let tol = 0.05 * lr * steps as f32;
    let mut moved = 0;
    for ((n, c), (_, g)) in wc.iter().zip(&wn) {
        if n.ends_with("k_proj.bias") {
            // A key bias adds the same q·b to every score of a query's row, which softmax
            // ignores: its gradient is zero up to rounding, and Adam turns that rounding noise
            // (different on the two devices) into steps of anything up to lr. Such a tensor can
            // only be held to that bound: `steps` steps of at most lr from its initial value.
            for (what, w) in [("cpu", c), ("npu", g)] {
                let step = w.iter().zip(&w0[n]).map(|(a, b)| (a - b).abs());
                let worst = step.fold(0f32, f32::max);
                assert!(
                    worst <= steps as f32 * lr * 1.01,
                    "{what} {n} moved by {worst}"
                );
            }
            continue;
        }
        close(&format!("checkpoint {n}"), g, c, tol);
        let d = c
            .iter()
            .zip(&w0[n])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        if d > 5.0 * tol {
            moved += 1;
        }
    }
    assert!(
        moved > 10,
        "only {moved} tensors moved by more than {}",
        5.0 * tol
    );
}

#[test]
fn activations_on_device() {
    // Each forward and its backward (`Σ y ⊙ r` gradients) on device: aclnnRelu +
    // aclnnThresholdBackward, aclnnSigmoid + aclnnSigmoidBackward, aclnnExp / Sin / Cos + Mul.
    type F = fn(&Tensor) -> medsam::Result<Tensor>;
    let ops: [(&str, F); 5] = [
        ("relu", |t| t.relu()),
        ("sigmoid", |t| t.sigmoid()),
        ("exp", |t| t.exp()),
        ("sin", |t| t.sin()),
        ("cos", |t| t.cos()),
    ];
    for (name, f) in ops {
        parity(name, &[(&[3, 4, 5], 11)], TOL, |t| f(&t[0].scale(2.5)?));
    }
    parity_cases! {
        "div broadcast": [([2, 3, 4], 1), ([3, 1], 2)]
            => |t| t[0].div(&t[1].scale(0.5)?.shift(1.75)?);
    }
}

#[test]
fn bilinear_up_down_and_identity() {
    for (name, (h, w), (oh, ow)) in [
        ("bilinear up 3x4 -> 7x5", (3, 4), (7, 5)),
        ("bilinear down 8x6 -> 3x4", (8, 6), (3, 4)),
        ("bilinear same 4x4", (4, 4), (4, 4)),
        ("bilinear x4 2x3 -> 8x12", (2, 3), (8, 12)),
    ] {
        parity(name, &[(&[2, 3, h, w], 5)], TOL, |t| {
            t[0].upsample_bilinear(oh, ow)
        });
    }
}

#[test]
fn batch_norm_train_and_eval() {
    parity_cases! {
        // Training mode: batch statistics on device (and their gradient terms in dx).
        "batch_norm train": [([3, 4, 5, 2], 1), ([4], 2), ([4], 3)] => |t| {
            let g = t[1].shift(1.5)?;
            Ok(t[0]
                .scale(2.0)?
                .shift(0.3)?
                .batch_norm(&g, &t[2], None, 1e-5)?
                .0)
        };
        // Inference mode: fixed running statistics (constants, not variables).
        "batch_norm eval": [([2, 3, 4, 4], 4), ([3], 5), ([3], 6)] => |t| {
            let dev = t[0].device();
            let rm = Tensor::from_slice(&[0.1, -0.2, 0.3], &[3], dev)?;
            let rv = Tensor::from_slice(&[0.5, 1.5, 2.0], &[3], dev)?;
            Ok(t[0].batch_norm(&t[1], &t[2], Some((&rm, &rv)), 1e-5)?.0)
        };
    }
    // The batch statistics themselves.
    setup();
    let stats = |dev: Device| {
        let x = Tensor::from_slice(&data(2 * 5 * 9, 7), &[2, 5, 3, 3], dev).unwrap();
        let (g, b) = (
            Tensor::from_slice(&[1.0; 5], &[5], dev).unwrap(),
            Tensor::from_slice(&[0.0; 5], &[5], dev).unwrap(),
        );
        let s = x.batch_norm(&g, &b, None, 1e-5).unwrap().1.unwrap();
        (s.mean.to_vec().unwrap(), s.var.to_vec().unwrap())
    };
    let ((mc, vc), (mn, vn)) = (stats(Device::Cpu), stats(NPU));
    close("batch_norm_stats mean", &mn, &mc, TOL);
    close("batch_norm_stats var", &vn, &vc, TOL);
}

#[test]
fn adamw_on_device_matches_cpu() {
    // Backend::adamw (fused aclnnApplyAdamWV2) and the elementwise composition it falls back
    // to, three steps each, against the CPU update.
    use medsam::backend::ascend::AscendBackend;
    use medsam::backend::{backend, AdamWSlots, AdamWStep, Backend, Storage};
    setup();
    let n = 1000;
    type Step<'a> = &'a dyn Fn(AdamWStep, &Storage, AdamWSlots);
    let run = |b: &dyn Backend, step_fn: Step| {
        let mut w = b.upload(&data(n, 1)).unwrap();
        let mut m = b.zeros(n).unwrap();
        let mut v = b.zeros(n).unwrap();
        for step in 1..=3u64 {
            let g: Vec<f32> = data(n, 10 + step).iter().map(|x| x * 0.1).collect();
            let g = b.upload(&g).unwrap();
            let p = AdamWStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                step,
            };
            let slots = AdamWSlots {
                param: &mut w,
                exp_avg: &mut m,
                exp_avg_sq: &mut v,
            };
            step_fn(p, &g, slots);
        }
        [w, m, v].map(|s| b.download(&s).unwrap())
    };
    let cpu = backend(Device::Cpu).unwrap();
    let want = run(&*cpu, &|p, g, s| cpu.adamw(p, g, s).unwrap());
    let npu = AscendBackend::shared(0).unwrap();
    let fused = run(&*npu, &|p, g, mut s| {
        assert!(
            npu.adamw_fused(p, g, &mut s).unwrap(),
            "aclnnApplyAdamWV2 was not used"
        )
    });
    let composed = run(&*npu, &|p, g, s| npu.adamw_elementwise(p, g, s).unwrap());
    for (path, got) in [("fused", &fused), ("elementwise", &composed)] {
        for (k, what) in ["param", "exp_avg", "exp_avg_sq"].iter().enumerate() {
            close(&format!("adamw {path} {what}"), &got[k], &want[k], 1e-6);
        }
    }
}

/// Host↔device `aclrtMemcpy` calls made so far (a stand-in test counter).
fn host_copies() -> u64 {
    let path = setup().join("libascendcl.so");
    // SAFETY: the stand-in (already loaded by the backend); the symbol is `u64 f(void)`.
    unsafe {
        let lib = libloading::Library::new(&path).expect("open the stand-in");
        let f: libloading::Symbol<unsafe extern "C" fn() -> u64> = lib
            .get(b"standin_host_copies\0")
            .expect("standin_host_copies");
        f()
    }
}

#[test]
fn former_host_fallbacks_make_no_host_round_trip() {
    if !standin_only("former_host_fallbacks_make_no_host_round_trip") {
        return;
    }
    use medsam::backend::{backend, AdamWStep, Binary, Unary, View};
    use medsam_kernels::conv::Conv2dGeom;
    setup();
    let b = backend(NPU).unwrap();
    let (n, c, h, w) = (2, 3, 4, 5);
    let len = n * c * h * w;
    let x = b.upload(&data(len, 1)).unwrap();
    let dy = b.upload(&data(len, 2)).unwrap();
    let pos = b
        .upload(&data(len, 3).iter().map(|v| v + 2.0).collect::<Vec<_>>())
        .unwrap();
    let dw = b.upload(&data(c * 9, 4)).unwrap();
    let gamma = b.upload(&[1.0, 0.5, 2.0]).unwrap();
    let beta = b.upload(&[0.0, 0.1, -0.1]).unwrap();
    let up = b.upload(&data(n * c * 7 * 9, 5)).unwrap();
    let mut p = b.upload(&data(len, 6)).unwrap();
    let (mut m, mut v) = (b.zeros(len).unwrap(), b.zeros(len).unwrap());
    let before = host_copies();

    let mut outs = Vec::new();
    for op in [
        Unary::Relu,
        Unary::Sigmoid,
        Unary::Exp,
        Unary::Sin,
        Unary::Cos,
    ] {
        outs.push(b.unary(op, &x).unwrap());
        outs.push(b.unary_backward(op, &x, &dy).unwrap());
    }
    let view = View {
        shape: vec![len],
        strides: vec![1],
        offset: 0,
    };
    outs.push(b.binary(Binary::Div, (&x, &view), (&pos, &view)).unwrap());
    let r = medsam::backend::ResizeDims {
        planes: n * c,
        hw: (h, w),
        ohw: (7, 9),
    };
    outs.push(b.bilinear(r, &x).unwrap());
    outs.push(b.bilinear_backward(r, &up).unwrap());
    let g = Conv2dGeom {
        n,
        c_in: c,
        h,
        w,
        c_out: c,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (1, 1),
        groups: c,
    };
    let a = medsam::backend::ConvIn {
        x: &x,
        w: &dw,
        bias: Some(&gamma),
    };
    outs.push(b.depthwise_conv2d(g, a).unwrap());
    let a = medsam::backend::ConvGradIn {
        x: &x,
        w: &dw,
        dy: &dy,
        bias: true,
    };
    let gr = b.depthwise_conv2d_backward(g, a).unwrap();
    outs.extend([gr.dx, gr.dw, gr.dbias.unwrap()]);
    let d = medsam::backend::ChannelDims { n, c, hw: h * w };
    let (mean, var) = b.batch_norm_stats(d, &x).unwrap();
    let stats = medsam::backend::NormStats {
        mean: &mean,
        rstd: &gamma,
    };
    let a = medsam::backend::NormIn {
        x: &x,
        gamma: &gamma,
        beta: &beta,
    };
    outs.push(b.batch_norm_apply(d, a, stats).unwrap());
    for batch_stats in [true, false] {
        let a = medsam::backend::NormGradIn {
            x: &x,
            gamma: &gamma,
            stats,
            dy: &dy,
        };
        let gr = b.batch_norm_backward(d, a, batch_stats).unwrap();
        outs.extend([gr.dx, gr.dgamma, gr.dbeta]);
    }
    outs.push(var);
    let hyper = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        step: 1,
    };
    let slots = medsam::backend::AdamWSlots {
        param: &mut p,
        exp_avg: &mut m,
        exp_avg_sq: &mut v,
    };
    b.adamw(hyper, &dy, slots).unwrap();
    // Attention without rel-pos (flash attention) forward and backward.
    let dims = medsam_kernels::attention::AttnDims {
        bh: n * c,
        nq: h,
        nk: h,
        d: w,
        dv: w,
    };
    let args = medsam::backend::AttnArgs {
        dims,
        scale: 0.5,
        rel: None,
        precision: medsam_kernels::gemm::Precision::F32,
    };
    let qkv = medsam::backend::Qkv {
        q: &x,
        k: &pos,
        v: &dy,
    };
    let (o, saved) = b.attention(args, qkv).unwrap();
    let g = medsam::backend::AttnGradIn {
        out: &o,
        saved: &saved,
        dout: &x,
    };
    let gr = b.attention_backward(args, qkv, g).unwrap();
    outs.extend([o, gr.dq, gr.dk, gr.dv]);
    assert_eq!(
        host_copies(),
        before,
        "an NPU method copied data between host and device"
    );
    // The counter does see round trips: a download is one.
    let c0 = host_copies();
    b.download(&x).unwrap();
    assert!(host_copies() > c0, "the host-copy counter does not count");
    // The queued work runs (and its errors surface) at the first download.
    for o in &outs {
        assert!(b.download(o).unwrap().iter().all(|v| v.is_finite()));
    }
    assert!(b.download(&p).unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn attention_without_rel_pos_uses_flash_attention() {
    // d == dv and no rel-pos: aclnnFlashAttentionScore forward, aclnnFlashAttentionScoreGrad
    // backward (gradients of q, k and v against the CPU kernels).
    parity_cases! {
        "flash attention": [([3, 5, 4], 1), ([3, 7, 4], 2), ([3, 7, 4], 3)]
            => |t| attention(&t[0], &t[1], &t[2], 0.5, None);
        "flash attention, one query": [([2, 1, 8], 4), ([2, 9, 8], 5), ([2, 9, 8], 6)]
            => |t| attention(&t[0], &t[1], &t[2], 0.35, None);
    }
    // The forward really took the flash path: its saved state is the softmax statistics.
    use medsam::backend::ascend::FlashAttnState;
    use medsam::backend::{backend, AttnArgs, AttnSaved, Qkv};
    use medsam_kernels::attention::AttnDims;
    let b = backend(NPU).unwrap();
    let (bh, nq, nk, d) = (2, 3, 4, 5);
    let q = b.upload(&data(bh * nq * d, 1)).unwrap();
    let k = b.upload(&data(bh * nk * d, 2)).unwrap();
    let v = b.upload(&data(bh * nk * d, 3)).unwrap();
    let dims = AttnDims {
        bh,
        nq,
        nk,
        d,
        dv: d,
    };
    let args = AttnArgs {
        dims,
        scale: 0.5,
        rel: None,
        precision: medsam_kernels::gemm::Precision::F32,
    };
    let (_, saved) = b
        .attention(
            args,
            Qkv {
                q: &q,
                k: &k,
                v: &v,
            },
        )
        .unwrap();
    match &saved {
        AttnSaved::Device(s) => assert!(
            s.as_any().is::<FlashAttnState>(),
            "saved state is not the flash-attention statistics: {s:?}"
        ),
        other => panic!("saved state is not the flash-attention statistics: {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Random-shape properties (formerly tests/ascend_npu_backend_props.rs).

/// Output and input gradients of `f` (summed) on CPU and NPU, compared with a relative tolerance
/// (fp32 cube units accumulate in a different order than the CPU kernels).
fn parity_rel(
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
fn prop_backend_ops_match_cpu() {
    setup();
    let mut r = Rng(7);
    for _ in 0..8 {
        let (b, m, k, n) = (
            r.range(1, 3),
            r.range(1, 40),
            r.range(1, 70),
            r.range(1, 40),
        );
        let sh = |v: &[usize]| v.to_vec();
        parity_rel(
            "matmul",
            &mut r,
            &[sh(&[b, m, k]), sh(&[b, k, n])],
            1e-3,
            |t| t[0].matmul(&t[1]),
        );
        parity_rel(
            "linear",
            &mut r,
            &[sh(&[b, m, k]), sh(&[n, k]), sh(&[n])],
            1e-3,
            |t| t[0].linear(&t[1], Some(&t[2])),
        );
        parity_rel(
            "layer_norm",
            &mut r,
            &[sh(&[m, k]), sh(&[k]), sh(&[k])],
            1e-3,
            |t| t[0].layer_norm(&t[1], &t[2], 1e-6),
        );
        parity_rel("softmax+gelu", &mut r, &[sh(&[m, k])], 1e-3, |t| {
            t[0].scale(3.0)?.softmax_last()?.gelu()
        });
        let (c, h, w) = (r.range(1, 8), r.range(3, 17), r.range(3, 17));
        parity_rel(
            "conv2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[n.min(8), c, 3, 3]), sh(&[n.min(8)])],
            1e-3,
            |t| t[0].conv2d(&t[1], Some(&t[2]), 2, 1),
        );
        parity_rel(
            "conv_transpose2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[c, 4, 2, 2]), sh(&[4])],
            1e-3,
            |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), 2),
        );
        parity_rel(
            "layer_norm2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[c]), sh(&[c])],
            1e-3,
            |t| t[0].layer_norm2d(&t[1], &t[2], 1e-6),
        );
        // Former host fallbacks (now aclnn ops or compositions of them).
        parity_rel(
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
        parity_rel("div", &mut r, &[sh(&[m, k]), sh(&[k])], 1e-3, |t| {
            t[0].div(&t[1].scale(0.5)?.shift(2.0)?)
        });
        let (oh, ow) = (r.range(1, 40), r.range(1, 40));
        parity_rel("bilinear", &mut r, &[sh(&[b, c, h, w])], 1e-3, |t| {
            t[0].upsample_bilinear(oh, ow)
        });
        parity_rel(
            "depthwise_conv2d",
            &mut r,
            &[sh(&[b, c, h, w]), sh(&[c, 1, 3, 3]), sh(&[c])],
            1e-3,
            |t| t[0].depthwise_conv2d(&t[1], Some(&t[2]), r_stride(h), 1),
        );
        parity_rel(
            "batch_norm train",
            &mut r,
            &[sh(&[b + 1, c, h, w]), sh(&[c]), sh(&[c])],
            1e-3,
            |t| Ok(t[0].batch_norm(&t[1].shift(1.5)?, &t[2], None, 1e-5)?.0),
        );
        // No rel-pos and d == dv: the aclnnFlashAttentionScore path (SAM's decoder attention).
        let (nq, nk, d) = (r.range(1, 64), r.range(2, 80), r.range(1, 64));
        parity_rel(
            "flash attention",
            &mut r,
            &[sh(&[b, nq, d]), sh(&[b, nk, d]), sh(&[b, nk, d])],
            1e-3,
            |t| attention(&t[0], &t[1], &t[2], 0.25, None),
        );
        let (kh, kw, d) = (r.range(1, 6), r.range(1, 6), r.range(1, 32));
        let nq = kh * kw;
        parity_rel(
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
                let rel = RelPosArgs::new([t[3].clone(), t[4].clone()], (kh, kw));
                attention(&t[0], &t[1], &t[2], 0.3, Some(&rel))
            },
        );
    }
}

#[test]
fn prop_adamw_matches_cpu() {
    use medsam::backend::{backend, AdamWSlots, AdamWStep};
    setup();
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
                let slots = AdamWSlots {
                    param: &mut w,
                    exp_avg: &mut m,
                    exp_avg_sq: &mut v,
                };
                b.adamw(p, &g, slots).unwrap();
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
