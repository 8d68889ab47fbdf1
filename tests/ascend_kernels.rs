//! The custom Ascend C kernel path of the NPU backend (`rel_pos_attention`, `layer_norm2d`;
//! `kernels/ascend/`) on the TEST-ONLY stand-in runtime: the backend locates a kernel "binary"
//! through `MEDSAM_ASCEND_KERNELS` (for the stand-in, a descriptor file naming the kernels),
//! computes tiling and argument block in the C++ launch glue (cxx), and launches with
//! `aclrtLaunchKernel`; the stand-in decodes the argument block and runs the host reference of
//! the same tiled algorithm (`medsam_kernels::ascend_tiled`) on its device memory, in stream
//! order. Results are compared with the CPU backend (1e-4), forward (incl. the log-sum-exp)
//! and backward (which recomputes the probabilities from the saved log-sum-exp).
//!
//! What this proves: launch glue, argument layout, tiling upload, kernel selection and the
//! tiled algorithm. It does NOT prove the Ascend C sources compile or run on an NPU.
#![cfg(feature = "ascend")]

#[path = "common/npu_parity.rs"]
mod npu_parity;
#[path = "common/standin.rs"]
mod standin;
use medsam::backend::{self, ascend::AscendBackend, Device, RelPos};
use medsam::ops::nn::{attention, RelPosArgs};
use medsam::Tensor;
use medsam_kernels::attention::AttnDims;
use standin::*;
use std::path::PathBuf;
use std::sync::OnceLock;

const NPU: Device = Device::Npu(0);
const TOL: f32 = 1e-4;

/// Stand-in libraries + a kernel descriptor, set before any backend exists.
fn setup() {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = link_standin("medsam-npu-kernels");
        let desc = dir.join("medsam_ascend_kernels.standin");
        std::fs::write(
            &desc,
            "medsam-standin-kernels 1\nrel_pos_attention\nlayer_norm2d\n",
        )
        .unwrap();
        // Set while every other test thread waits on this OnceLock.
        std::env::set_var("MEDSAM_ASCEND_LIB_DIR", &dir);
        std::env::set_var("MEDSAM_ASCEND_KERNELS", &desc);
        // Attention without rel-pos would take CANN's flash attention first: these tests are
        // about the custom kernel, so turn that path off in this test process.
        std::env::set_var("MEDSAM_NPU_FLASH_ATTENTION", "0");
        dir
    });
}

#[test]
fn the_kernel_binary_is_loaded() {
    setup();
    let b = AscendBackend::shared(0).unwrap();
    let p = b.custom_kernels().expect("custom kernels selected");
    assert!(
        p.ends_with("medsam_ascend_kernels.standin"),
        "{}",
        p.display()
    );
}

/// Backend-level forward on both backends: out and the saved log-sum-exp.
fn attention_forward(bh: usize, nq: usize, grid: (usize, usize), d: usize, dv: usize, rel: bool) {
    setup();
    let (kh, kw) = grid;
    let nk = kh * kw;
    let dims = AttnDims { bh, nq, nk, d, dv };
    let scale = 1.0 / (d as f32).sqrt();
    let host = [
        data(bh * nq * d, 1),
        data(bh * nk * d, 2),
        data(bh * nk * dv, 3),
        data(bh * nq * kh, 4),
        data(bh * nq * kw, 5),
    ];
    let run = |dev: Device| {
        let be = backend::backend(dev).unwrap();
        let s: Vec<_> = host.iter().map(|h| be.upload(h).unwrap()).collect();
        let r = rel.then(|| RelPos {
            rel_h: &s[3],
            rel_w: &s[4],
            kh,
            kw,
        });
        let args = backend::AttnArgs {
            dims,
            scale,
            rel: r,
            precision: medsam_kernels::gemm::Precision::F32,
        };
        let qkv = backend::Qkv {
            q: &s[0],
            k: &s[1],
            v: &s[2],
        };
        let (o, saved) = be.attention(args, qkv).unwrap();
        let backend::AttnSaved::Lse(l) = saved else {
            panic!("{dev}: attention saved {saved:?}, not a log-sum-exp");
        };
        (be.download(&o).unwrap(), be.download(&l).unwrap())
    };
    let (oc, lc) = run(Device::Cpu);
    let before = launches();
    let (on, ln) = run(NPU);
    assert_eq!(
        launches(),
        before + 1,
        "attention did not launch the custom kernel"
    );
    let what = format!("attention bh={bh} nq={nq} {kh}x{kw} d={d} dv={dv} rel={rel}");
    close(&format!("{what}: out"), &on, &oc, TOL);
    // The custom kernel saves the log-sum-exp, as the CPU backend does.
    close(&format!("{what}: lse"), &ln, &lc, TOL);
}

#[test]
fn attention_forward_odd_and_sam_shapes() {
    // several heads, N not a multiple of any tile, with and without the bias
    attention_forward(3, 5, (2, 3), 4, 3, false);
    attention_forward(4, 37, (5, 7), 12, 9, true);
    attention_forward(2, 130, (13, 11), 8, 8, true); // > one key tile (128)
                                                     // windowed 14×14 tokens (2 windows × 3 heads), global 64×64 tokens (one head)
    attention_forward(6, 196, (14, 14), 16, 16, true);
    attention_forward(1, 4096, (64, 64), 8, 8, true);
}

/// Tensor-level forward + backward parity (the backward recomputes P from the saved lse); input
/// `i` is seeded `i + 10`.
fn parity(name: &str, shapes: &[&[usize]], f: impl Fn(&[Tensor]) -> medsam::Result<Tensor>) {
    setup();
    let inputs: Vec<(&[usize], u64)> = (shapes.iter().enumerate())
        .map(|(i, s)| (*s, i as u64 + 10))
        .collect();
    npu_parity::parity(name, &inputs, TOL, f)
}

#[test]
fn attention_backward_from_saved_lse() {
    parity(
        "attention 3 heads",
        &[&[3, 5, 4], &[3, 6, 4], &[3, 6, 3]],
        |t| attention(&t[0], &t[1], &t[2], 0.5, None),
    );
    parity(
        "attention rel-pos 7x5",
        &[&[2, 9, 8], &[2, 35, 8], &[2, 35, 6], &[2, 9, 7], &[2, 9, 5]],
        |t| {
            let rel = RelPosArgs::new([t[3].clone(), t[4].clone()], (7, 5));
            attention(&t[0], &t[1], &t[2], 0.3, Some(&rel))
        },
    );
    // one key: log-sum-exp and probabilities have the same size
    parity(
        "attention nk=1",
        &[&[2, 3, 4], &[2, 1, 4], &[2, 1, 2]],
        |t| attention(&t[0], &t[1], &t[2], 0.5, None),
    );
}

#[test]
fn layer_norm2d_custom_kernel() {
    // odd channel / pixel counts, a pixel count above one tile, and SAM's neck (256 × 64×64)
    for (n, c, h, w) in [
        (2, 3, 5, 7),
        (1, 33, 9, 31),
        (2, 256, 16, 16),
        (1, 256, 64, 64),
    ] {
        let before = launches();
        parity(
            &format!("layer_norm2d {n}x{c}x{h}x{w}"),
            &[&[n, c, h, w], &[c], &[c]],
            |t| t[0].layer_norm2d(&t[1], &t[2], 1e-6),
        );
        assert!(
            launches() > before,
            "layer_norm2d did not launch the custom kernel"
        );
    }
}

fn launches() -> u64 {
    setup();
    AscendBackend::shared(0).unwrap().custom_kernel_launches()
}

/// The C++ launch glue alone (no runtime needed): tiling fits the UB, decodes to the Rust
/// mirror, argument blocks are packed 8-byte GM addresses, unfit shapes are errors.
#[test]
fn launch_glue_tiling_and_argument_block() {
    use medsam_ffi::ascend::{self as acl, AttnShape, Hardware, Ln2dShape};
    use medsam_kernels::ascend_tiled::{LayerNorm2dTiling, RelPosAttnTiling};
    let hw = Hardware {
        ub_bytes: 192 * 1024,
        cores: 40,
    };
    for (bh, n, d) in [(12usize, 196u32, 64u32), (12, 4096, 64), (3, 5, 4)] {
        let grid = (n as f64).sqrt() as u32;
        let nk = if grid * grid == n { n } else { 6 };
        let (kh, kw) = if grid * grid == n {
            (grid, grid)
        } else {
            (2, 3)
        };
        let shape = AttnShape {
            bh: bh as u32,
            nq: n,
            nk,
            d,
            dv: d,
            kh,
            kw,
            has_rel: true,
            scale: 0.125,
        };
        let p = acl::plan_rel_pos_attention(&shape, &hw).unwrap();
        let t = RelPosAttnTiling::from_bytes(&p.tiling).unwrap();
        assert_eq!(p.tiling.len(), RelPosAttnTiling::BYTES);
        t.validate().unwrap();
        assert_eq!(
            (t.nq, t.nk, t.d, t.kh, t.kw, t.scale),
            (n, nk, d, kh, kw, 0.125)
        );
        assert_eq!(
            (p.block_dim, p.tile_a, p.tile_b),
            (t.block_dim, t.tile_q, t.tile_k)
        );
        assert!(t.block_dim >= 1 && t.block_dim <= 40);
    }
    let ln = acl::plan_layer_norm2d(
        &Ln2dShape {
            n: 2,
            c: 256,
            hw: 4096,
            eps: 1e-6,
        },
        &hw,
    )
    .unwrap();
    let t = LayerNorm2dTiling::from_bytes(&ln.tiling).unwrap();
    t.validate().unwrap();
    assert!(
        t.tile_hw.is_multiple_of(8) && (t.c as usize + 3) * t.tile_hw as usize * 4 < 192 * 1024
    );
    // too large for any tile: an error naming the UB, not a bad launch
    let e = acl::plan_rel_pos_attention(
        &AttnShape {
            bh: 1,
            nq: 1,
            nk: 1,
            d: 100_000,
            dv: 1,
            kh: 0,
            kw: 0,
            has_rel: false,
            scale: 1.0,
        },
        &hw,
    )
    .err()
    .expect("d = 100000 cannot be tiled")
    .to_string();
    assert!(e.contains("UB"), "{e}");
    let args = acl::pack_gm_args(&[0x1122_3344_5566_7788, 0, 42]);
    let b = args.as_bytes();
    assert_eq!(b.len(), 24);
    assert_eq!(
        u64::from_ne_bytes(b[0..8].try_into().unwrap()),
        0x1122_3344_5566_7788
    );
    assert_eq!(u64::from_ne_bytes(b[16..24].try_into().unwrap()), 42);
}
