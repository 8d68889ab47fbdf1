//! The benchmarked operators at MedSAM ViT-B shapes, shared by `ops` (criterion) and `opbench`
//! (machine-readable lines for `compare_torch.py`). Names match the ops in `compare_torch.py`.

use medsam_kernels::attention::rel_pos::{decomposed_rel_pos, RelPosDims};
use medsam_kernels::attention::{attention_forward, attention_forward_bf16, AttnDims, RelPosBias};
use medsam_kernels::conv::{conv2d_forward, conv_transpose2d_forward, Conv2dGeom};
use medsam_kernels::gemm::{gemm, int8, Epilogue, GemmDims, Layout, Precision};
use medsam_kernels::norm::layer_norm_forward;

/// One benchmark: `make` allocates the inputs and returns a closure that runs the op once.
pub struct Op {
    pub name: &'static str,
    /// Floating-point operations per call (multiply-add = 2), used for GFLOP/s. For layernorm,
    /// a nominal 8 flops per element.
    pub flops: f64,
    pub make: Box<dyn Fn() -> Box<dyn FnMut()>>,
}

/// Deterministic data in [-1, 1): benchmarks must not depend on values, only on being finite.
pub use medsam_kernels::testing::data_star as data;

/// `C[m×n] = A[m×k] · B` where B is `W[n×k]ᵀ` (`linear`, like `F.linear`) or a row-major
/// `[k×n]` matrix (`mm`, like `torch.mm`).
fn gemm_op(name: &'static str, m: usize, k: usize, n: usize, linear: bool, p: Precision) -> Op {
    batched_gemm_op(name, GemmDims { batch: 1, m, n, k }, linear, p)
}

/// `batch` × (`m×k` · `k×n`); with `bt`, B is stored `[n, k]` per batch and read transposed
/// through strides.
fn batched_gemm_op(name: &'static str, dims: GemmDims, bt: bool, p: Precision) -> Op {
    let GemmDims { batch, m, n, k } = dims;
    Op {
        name,
        flops: 2.0 * (batch * m * n * k) as f64,
        make: Box::new(move || {
            let (a, b) = (data(batch * m * k, 1), data(batch * k * n, 2));
            let mut c = vec![0.0f32; batch * m * n];
            let la = Layout::row_major(m, k);
            let lb = [Layout::row_major(k, n), Layout::transposed(n, k)][bt as usize];
            let lc = Layout::row_major(m, n);
            Box::new(move || gemm(dims, &a, la, &b, lb, &mut c, lc, false, p))
        }),
    }
}

/// `C[m×n] = x[m×k] · Wᵀ` in int8 (`gemm::int8`: x quantized per row at every call, W
/// quantized once outside the timed closure, as at model load). Still counts 2 flops per
/// multiply-add, so GFLOP/s compare directly with the f32 and bf16 entries.
fn int8_op(name: &'static str, m: usize, k: usize, n: usize) -> Op {
    Op {
        name,
        flops: 2.0 * (m * n * k) as f64,
        make: Box::new(move || {
            let x = data(m * k, 1);
            let wf = data(n * k, 2);
            let w = int8::Int8Weights::quantize(&wf, n, k);
            let mut c = vec![0.0f32; m * n];
            Box::new(move || int8::linear(&x, k, m, &w, &wf, &mut c, n, Epilogue::default()))
        }),
    }
}

/// Batched `q·kᵀ` (`kt`) or `p·v` GEMMs of windowed attention: `batch` × (`m×k` · `k×n`).
fn bmm_op(name: &'static str, batch: usize, m: usize, k: usize, n: usize, kt: bool) -> Op {
    batched_gemm_op(name, GemmDims { batch, m, n, k }, kt, Precision::F32)
}

/// SAM attention with decomposed rel-pos bias: `bh` heads × `side²` tokens × 64, in f32 or (with
/// `Precision::Bf16`) bf16 arithmetic (`attention_forward_bf16`, whether or not it pays here).
fn attention_op(name: &'static str, bh: usize, side: usize, p: Precision) -> Op {
    let forward = match p {
        Precision::F32 => attention_forward,
        Precision::Bf16 => attention_forward_bf16,
    };
    let (nq, d) = (side * side, 64);
    Op {
        name,
        flops: 4.0 * (bh * nq * nq * d) as f64,
        make: Box::new(move || {
            let dims = AttnDims::new(bh, nq, nq, d, d);
            let q = data(bh * nq * d, 1);
            let k = data(bh * nq * d, 2);
            let v = data(bh * nq * d, 3);
            let rel_h = data(bh * nq * side, 4);
            let rel_w = data(bh * nq * side, 5);
            let mut out = vec![0.0f32; bh * nq * d];
            let mut lse = vec![0.0f32; bh * nq];
            let scale = 1.0 / (d as f32).sqrt();
            Box::new(move || {
                let bias = RelPosBias {
                    rel_h: &rel_h,
                    rel_w: &rel_w,
                    kh: side,
                    kw: side,
                };
                forward(dims, &q, &k, &v, scale, Some(bias), &mut out, &mut lse)
            })
        }),
    }
}

fn conv_op(name: &'static str, g: Conv2dGeom, transpose: bool) -> Op {
    let (oh, ow) = if transpose {
        g.transpose_out_hw()
    } else {
        g.out_hw()
    };
    let flops = if transpose {
        2.0 * (g.n * g.c_in * g.h * g.w * g.c_out * g.kh * g.kw) as f64
    } else {
        2.0 * (g.n * g.c_out * oh * ow * (g.c_in / g.groups) * g.kh * g.kw) as f64
    };
    Op {
        name,
        flops,
        make: Box::new(move || {
            let x = data(g.n * g.c_in * g.h * g.w, 1);
            let w = data(g.c_out * (g.c_in / g.groups) * g.kh * g.kw, 2);
            let bias = data(g.c_out, 3);
            let mut y = vec![0.0f32; g.n * g.c_out * oh * ow];
            Box::new(move || {
                if transpose {
                    conv_transpose2d_forward(g, &x, &w, Some(&bias), &mut y)
                } else {
                    conv2d_forward(g, &x, &w, Some(&bias), &mut y)
                }
            })
        }),
    }
}

fn geom(c_in: usize, hw: usize, c_out: usize, kk: usize, stride: usize, pad: usize) -> Conv2dGeom {
    Conv2dGeom::new(
        [1, c_in, hw, hw],
        c_out,
        (kk, kk),
        (stride, stride),
        (pad, pad),
        1,
    )
}

/// Every benchmarked op, GEMMs first.
/// SAM's decomposed rel-pos terms (upstream's two einsums) for `maps` heads × windows of
/// `side × side` tokens, 64 channels.
fn rel_pos_op(name: &'static str, maps: usize, side: usize) -> Op {
    let (n, c) = (maps * side * side, 64);
    Op {
        name,
        flops: 4.0 * (n * side * c) as f64,
        make: Box::new(move || {
            let d = RelPosDims {
                maps,
                h: side,
                w: side,
                c,
                kh: side,
                kw: side,
            };
            let q = data(n * c, 1);
            let (rh, rw) = (data(side * side * c, 2), data(side * side * c, 3));
            let (mut rel_h, mut rel_w) = (vec![0.0f32; n * side], vec![0.0f32; n * side]);
            Box::new(move || decomposed_rel_pos(d, &q, &rh, &rw, &mut rel_h, &mut rel_w))
        }),
    }
}

pub fn ops() -> Vec<Op> {
    use Precision::{Bf16, F32};
    let mut v = Vec::new();
    for (p, sfx) in [(F32, "f32"), (Bf16, "bf16")] {
        let shapes: [(&str, &str, usize, usize); 3] = [
            ("mm_qkv", "linear_qkv", 768, 2304),
            ("mm_mlp1", "linear_mlp1", 768, 3072),
            ("mm_mlp2", "linear_mlp2", 3072, 768),
        ];
        for (mm, lin, k, n) in shapes {
            // Leaked names keep `Op::name` a plain &'static str; a handful per process.
            let mm: &'static str = Box::leak(format!("{mm}_{sfx}").into_boxed_str());
            let lin: &'static str = Box::leak(format!("{lin}_{sfx}").into_boxed_str());
            v.push(gemm_op(mm, 4096, k, n, false, p));
            v.push(gemm_op(lin, 4096, k, n, true, p));
        }
    }
    v.push(int8_op("linear_qkv_int8", 4096, 768, 2304));
    v.push(int8_op("linear_mlp1_int8", 4096, 768, 3072));
    v.push(int8_op("linear_mlp2_int8", 4096, 3072, 768));
    v.push(bmm_op("bmm_window_qk", 25 * 12, 196, 64, 196, true));
    v.push(bmm_op("bmm_window_pv", 25 * 12, 196, 196, 64, false));
    v.push(attention_op("attn_global", 12, 64, F32));
    v.push(attention_op("attn_window", 25 * 12, 14, F32));
    v.push(attention_op("attn_global_bf16", 12, 64, Bf16));
    v.push(attention_op("attn_window_bf16", 25 * 12, 14, Bf16));
    v.push(rel_pos_op("rel_pos_global", 12, 64));
    v.push(rel_pos_op("rel_pos_window", 25 * 12, 14));
    v.push(Op {
        name: "layernorm",
        flops: 8.0 * (4096 * 768) as f64,
        make: Box::new(|| {
            let (rows, dim) = (4096, 768);
            let x = data(rows * dim, 1);
            let gamma = data(dim, 2);
            let beta = data(dim, 3);
            let mut y = vec![0.0f32; rows * dim];
            let mut mean = vec![0.0f32; rows];
            let mut rstd = vec![0.0f32; rows];
            Box::new(move || {
                layer_norm_forward(
                    rows, dim, &x, &gamma, &beta, 1e-6, &mut y, &mut mean, &mut rstd,
                )
            })
        }),
    });
    v.push(conv_op("patch_embed", geom(3, 1024, 768, 16, 16, 0), false));
    v.push(conv_op("neck_conv1x1", geom(768, 64, 256, 1, 1, 0), false));
    v.push(conv_op("neck_conv3x3", geom(256, 64, 256, 3, 1, 1), false));
    v.push(conv_op("conv_transpose", geom(256, 64, 64, 2, 2, 0), true));
    v
}
