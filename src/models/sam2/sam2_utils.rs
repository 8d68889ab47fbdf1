//! Pieces shared by SAM 2's modules (`sam2/modeling/sam2_utils.py`, `position_encoding.py`),
//! plus host-side reference versions of the few resampling ops the tensor library lacks
//! (max-pool 2×2, nearest 2× upsampling, bicubic resize of a parameter). All tensors are f32
//! NCHW unless a function says NHWC.

use crate::error::{Error, Result};
pub use crate::models::common::Mlp;
use crate::models::common::Module;
use crate::tensor::Tensor;

/// 64-bit FNV-1a of a name: the seed of its parameter stream in [`named_init`].
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    h
}

/// `n` values in [-1, 1) from the SplitMix64 stream seeded by `fnv1a(name)` (the same stream as
/// `splitmix_uniform` in tests/fixtures/make_sam2_fixtures.py).
pub fn splitmix_uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// Fills every parameter of `m` from its state-dict name (`named_fill` in the fixture script),
/// so a parity test needs no stored weights.
pub fn named_init(m: &mut dyn Module) -> Result<()> {
    let mut failure = None;
    m.visit("", &mut |name, t| {
        let shape = t.shape().to_vec();
        let n: usize = shape.iter().product();
        let u = splitmix_uniform(name, n);
        let last = name.rsplit('.').next().unwrap_or(name);
        let v: Vec<f32> = if name.contains("gaussian") {
            u.iter().map(|&x| x as f32).collect()
        } else if name.ends_with("pred_obj_score_head.layers.2.bias") {
            u.iter().map(|&x| (0.5 + 0.1 * x) as f32).collect()
        } else if shape.len() <= 1 && last == "weight" {
            u.iter().map(|&x| (1.0 + 0.2 * x) as f32).collect()
        } else if shape.len() <= 1 {
            u.iter().map(|&x| (0.1 * x) as f32).collect()
        } else {
            let fan: usize = shape[1..].iter().product();
            let s = 1.5 / (fan.max(1) as f64).sqrt();
            u.iter().map(|&x| (x * s) as f32).collect()
        };
        match Tensor::from_slice(&v, &shape, t.device()) {
            Ok(src) => {
                if let Err(e) = t.assign(&src) {
                    failure = Some(e);
                }
            }
            Err(e) => failure = Some(e),
        }
    });
    failure.map_or(Ok(()), Err)
}

/// `F.interpolate(scale_factor=2, mode="nearest")` on NCHW, as a broadcast view made dense.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    x.reshape(&[b, c, h, 1, w, 1])?
        .broadcast_to(&[b, c, h, 2, w, 2])?
        .contiguous()?
        .reshape(&[b, c, 2 * h, 2 * w])
}

fn cubic1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}
fn cubic2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// Interpolation matrix `[out, in]` of PyTorch's bicubic (A = −0.75, align_corners=False, edge
/// indices clamped).
fn bicubic_matrix(inp: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out * inp];
    let scale = inp as f32 / out as f32;
    for i in 0..out {
        let src = (i as f32 + 0.5) * scale - 0.5;
        let x0 = src.floor();
        let t = src - x0;
        let a = -0.75;
        let ws = [
            cubic2(t + 1.0, a),
            cubic1(t, a),
            cubic1(1.0 - t, a),
            cubic2(2.0 - t, a),
        ];
        for (k, wk) in ws.iter().enumerate() {
            let idx = (x0 as i64 - 1 + k as i64).clamp(0, inp as i64 - 1) as usize;
            m[i * inp + idx] += wk;
        }
    }
    m
}

/// `F.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False)` on NCHW (separable:
/// rows, then columns — the order PyTorch's CPU kernel sums in is not reproduced bit for bit).
/// Each input row is first resampled along x once (`row[sy][xx] = Σ_sx mw[xx, sx]·src[sy, sx]`),
/// then each output sums the rows its y weights select.
pub fn interpolate_bicubic(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (mh, mw) = (bicubic_matrix(h, oh), bicubic_matrix(w, ow));
    let v = x.to_vec()?;
    let mut out = vec![0.0f32; b * c * oh * ow];
    let mut rows = vec![0.0f32; h * ow];
    for p in 0..b * c {
        let src = &v[p * h * w..(p + 1) * h * w];
        for sy in 0..h {
            for xx in 0..ow {
                let mut row = 0.0f32;
                for sx in 0..w {
                    row += mw[xx * w + sx] * src[sy * w + sx];
                }
                rows[sy * ow + xx] = row;
            }
        }
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for y in 0..oh {
            let d = &mut dst[y * ow..(y + 1) * ow];
            for sy in 0..h {
                let wy = mh[y * h + sy];
                if wy == 0.0 {
                    continue;
                }
                for (o, &r) in d.iter_mut().zip(&rows[sy * ow..(sy + 1) * ow]) {
                    *o += wy * r;
                }
            }
        }
    }
    Tensor::from_slice(&out, &[b, c, oh, ow], x.device())
}

/// `PositionEmbeddingSine(num_pos_feats=d, normalize=True)` of an `h × w` grid: `[1, d, h, w]`.
pub fn position_embedding_sine(
    d: usize,
    h: usize,
    w: usize,
    device: crate::Device,
) -> Result<Tensor> {
    if !d.is_multiple_of(4) {
        return Err(Error::shape(
            "position_embedding_sine",
            format!("{d} channels is not a multiple of 4"),
        ));
    }
    let npf = d / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..npf)
        .map(|j| 10000f32.powf((2 * (j / 2)) as f32 / npf as f32))
        .collect();
    let enc = |p: f32, j: usize| {
        let v = p / dim_t[j];
        if j.is_multiple_of(2) {
            v.sin()
        } else {
            v.cos()
        }
    };
    // Channel j < npf depends on y only, channel npf + j on x only: one sin/cos per row or
    // column, then filled.
    let mut out = vec![0.0f32; d * h * w];
    let (y_half, x_half) = out.split_at_mut(npf * h * w);
    for j in 0..npf {
        for y in 0..h {
            let ye = (y as f32 + 1.0) / (h as f32 + 1e-6) * scale;
            y_half[(j * h + y) * w..(j * h + y + 1) * w].fill(enc(ye, j));
        }
        let xs: Vec<f32> = (0..w)
            .map(|x| enc((x as f32 + 1.0) / (w as f32 + 1e-6) * scale, j))
            .collect();
        for y in 0..h {
            x_half[(j * h + y) * w..(j * h + y + 1) * w].copy_from_slice(&xs);
        }
    }
    Tensor::from_slice(&out, &[1, d, h, w], device)
}

/// `get_1d_sine_pe(pos, dim)`: `[n, dim]`, sin half then cos half.
pub fn get_1d_sine_pe(pos: &[f32], dim: usize, device: crate::Device) -> Result<Tensor> {
    let pe_dim = dim / 2;
    let dim_t: Vec<f32> = (0..pe_dim)
        .map(|j| 10000f32.powf((2 * (j / 2)) as f32 / pe_dim as f32))
        .collect();
    let mut out = vec![0.0f32; pos.len() * dim];
    for (i, &p) in pos.iter().enumerate() {
        for j in 0..pe_dim {
            let v = p / dim_t[j];
            out[i * dim + j] = v.sin();
            out[i * dim + pe_dim + j] = v.cos();
        }
    }
    Tensor::from_slice(&out, &[pos.len(), dim], device)
}

/// Per output sample: the first input index and the normalised weights of PyTorch's
/// antialiased linear resampling (`_compute_weights_aa`, computed in f32 as for float input).
fn bilinear_aa_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    let (support, invscale) = if scale >= 1.0 {
        (scale, 1.0 / scale)
    } else {
        (1.0, 1.0)
    };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| {
                    let x = ((j as f32 - center + 0.5) * invscale).abs();
                    if x < 1.0 {
                        1.0 - x
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f32 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// `F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)`
/// on NCHW: a triangle filter widened by the downscaling factor, rows first, then columns
/// (PyTorch's order), f32 sums.
pub fn interpolate_bilinear_aa(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (wy, wx) = (bilinear_aa_weights(h, oh), bilinear_aa_weights(w, ow));
    let v = x.contiguous()?.to_vec()?;
    let mut out = vec![0.0f32; b * c * oh * ow];
    let mut tmp = vec![0.0f32; h * ow];
    for p in 0..b * c {
        let src = &v[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            for (xo, (x0, k)) in wx.iter().enumerate() {
                let row = &src[y * w + x0..];
                tmp[y * ow + xo] = k.iter().zip(row).fold(0.0, |a, (k, s)| a + k * s);
            }
        }
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for (yo, (y0, k)) in wy.iter().enumerate() {
            for xo in 0..ow {
                dst[yo * ow + xo] = k
                    .iter()
                    .enumerate()
                    .fold(0.0, |a, (j, k)| a + k * tmp[(y0 + j) * ow + xo]);
            }
        }
    }
    Tensor::from_slice(&out, &[b, c, oh, ow], x.device())
}
