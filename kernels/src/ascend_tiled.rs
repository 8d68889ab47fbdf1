//! Host reference of the hand-written Ascend C kernels in `kernels/ascend/`
//! (`rel_pos_attention.cpp`, `layer_norm2d.cpp`): the **same tiling, work split and
//! recurrences**, written as plain Rust so that the algorithm is compiled and tested here,
//! where no Ascend C compiler exists. Each function mirrors one kernel:
//! * the outer loop over `block` is the kernel's `GetBlockIdx()` / `GetBlockNum()` split;
//! * each `Vec` named `*_ub` is one Unified Buffer allocation of the kernel (sizes from the
//!   tiling), every read of an input goes through a tile copy (`DataCopyPad` GM → UB), every
//!   write of an output through one (UB → GM);
//! * arithmetic is f32, in the order the vector instructions apply it.
//!
//! The tiling structs are `#[repr(C)]` mirrors of the C++ structs in `kernels/ascend/tiling.h`
//! (which `medsam-ffi`'s cxx launch glue fills and uploads); [`RelPosAttnTiling::from_bytes`]
//! decodes the bytes that glue produced. This file has no dependencies: the test-only CANN
//! stand-in (`tests/ascend_standin`) includes it with `#[path]` to "execute" launches.
//!
//! Attention (per head `b`, query tile `[q0, q0+tq)`): flash-style online softmax over key
//! tiles of `tile_k` keys, so the `nq × nk` score matrix is never stored:
//! ```text
//! m = -inf, l = 0, acc = 0
//! for each key tile:
//!     s[r, j]  = (scale·q_r)·k_j + rel_h[b, r, j / kw] + rel_w[b, r, j % kw]
//!     m'       = max(m, max_j s[r, j])
//!     alpha    = exp(m - m')                    (0 on the first tile: exp(-inf))
//!     p[r, j]  = exp(s[r, j] - m')
//!     l        = alpha·l + Σ_j p[r, j]
//!     acc[r]   = alpha·acc[r] + Σ_j p[r, j]·v_j
//!     m        = m'
//! out[r] = acc[r] / l,   lse[r] = m + ln(l)
//! ```
//! LayerNorm2d (per image `ni`, pixel tile `[p0, p0+np)`): the `[c, np]` block is copied with
//! one strided copy (c rows of `np` contiguous pixels), then mean, variance (two-pass, from the
//! mean) and the affine output are vector operations over the pixel axis, one channel row at
//! a time: no transpose.

// Index loops mirror the kernels' element addressing on purpose.
#![allow(clippy::needless_range_loop)]

/// Tiling of `rel_pos_attention` (C layout, 14 × 4 bytes; mirrors `RelPosAttnTiling` in
/// `kernels/ascend/tiling.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RelPosAttnTiling {
    /// batch × heads
    pub bh: u32,
    pub nq: u32,
    pub nk: u32,
    /// q/k feature size
    pub d: u32,
    /// v feature size
    pub dv: u32,
    /// key grid (kh·kw == nk) when `has_rel != 0`
    pub kh: u32,
    pub kw: u32,
    pub has_rel: u32,
    /// queries per tile
    pub tile_q: u32,
    /// keys per tile
    pub tile_k: u32,
    /// number of AI cores launched
    pub block_dim: u32,
    /// ceil(nq / tile_q)
    pub q_tiles: u32,
    pub scale: f32,
    pub reserved: u32,
}

/// Tiling of `layer_norm2d` (C layout, 8 × 4 bytes; mirrors `LayerNorm2dTiling`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerNorm2dTiling {
    pub n: u32,
    pub c: u32,
    pub hw: u32,
    /// pixels per tile
    pub tile_hw: u32,
    pub block_dim: u32,
    /// ceil(hw / tile_hw)
    pub hw_tiles: u32,
    pub eps: f32,
    pub reserved: u32,
}

// The C structs are plain 4-byte fields (static_assert'ed in ffi/src/launch.cc).
const _: () = assert!(std::mem::size_of::<RelPosAttnTiling>() == RelPosAttnTiling::BYTES);
const _: () = assert!(std::mem::size_of::<LayerNorm2dTiling>() == LayerNorm2dTiling::BYTES);

fn words<const N: usize>(b: &[u8]) -> Option<[u32; N]> {
    if b.len() < 4 * N {
        return None;
    }
    let mut w = [0u32; N];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    }
    Some(w)
}

impl RelPosAttnTiling {
    /// Size of the C struct in bytes.
    pub const BYTES: usize = 56;
    /// Decodes the C struct (native endianness); `None` if `b` is too short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let w = words::<14>(b)?;
        Some(Self {
            bh: w[0],
            nq: w[1],
            nk: w[2],
            d: w[3],
            dv: w[4],
            kh: w[5],
            kw: w[6],
            has_rel: w[7],
            tile_q: w[8],
            tile_k: w[9],
            block_dim: w[10],
            q_tiles: w[11],
            scale: f32::from_bits(w[12]),
            reserved: w[13],
        })
    }
    /// Checks the fields against each other; the error names the first inconsistency.
    pub fn validate(&self) -> Result<(), String> {
        let t = self;
        if t.nk == 0 || t.d == 0 || t.dv == 0 {
            return Err(format!("nk, d, dv must be > 0: {t:?}"));
        }
        if t.tile_q == 0 || t.tile_k == 0 || t.block_dim == 0 {
            return Err(format!("tile_q, tile_k, block_dim must be > 0: {t:?}"));
        }
        if t.q_tiles != t.nq.div_ceil(t.tile_q) {
            return Err(format!("q_tiles != ceil(nq / tile_q): {t:?}"));
        }
        if t.has_rel != 0 && (t.kh as u64) * (t.kw as u64) != t.nk as u64 {
            return Err(format!("kh·kw != nk: {t:?}"));
        }
        Ok(())
    }
    /// Elements of each operand: q, k, v, rel_h, rel_w, out, lse.
    pub fn lens(&self) -> [usize; 7] {
        let (bh, nq, nk) = (self.bh as usize, self.nq as usize, self.nk as usize);
        let (d, dv) = (self.d as usize, self.dv as usize);
        let (rh, rw) = if self.has_rel != 0 {
            (bh * nq * self.kh as usize, bh * nq * self.kw as usize)
        } else {
            (0, 0)
        };
        [
            bh * nq * d,
            bh * nk * d,
            bh * nk * dv,
            rh,
            rw,
            bh * nq * dv,
            bh * nq,
        ]
    }
}

impl LayerNorm2dTiling {
    /// Size of the C struct in bytes.
    pub const BYTES: usize = 32;
    /// Decodes the C struct (native endianness); `None` if `b` is too short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let w = words::<8>(b)?;
        Some(Self {
            n: w[0],
            c: w[1],
            hw: w[2],
            tile_hw: w[3],
            block_dim: w[4],
            hw_tiles: w[5],
            eps: f32::from_bits(w[6]),
            reserved: w[7],
        })
    }
    /// Checks the fields against each other.
    pub fn validate(&self) -> Result<(), String> {
        let t = self;
        if t.c == 0 || t.tile_hw == 0 || t.block_dim == 0 {
            return Err(format!("c, tile_hw, block_dim must be > 0: {t:?}"));
        }
        if t.hw_tiles != t.hw.div_ceil(t.tile_hw) {
            return Err(format!("hw_tiles != ceil(hw / tile_hw): {t:?}"));
        }
        Ok(())
    }
    /// Elements of each operand: x, gamma, beta, y, mean, rstd.
    pub fn lens(&self) -> [usize; 6] {
        let (n, c, hw) = (self.n as usize, self.c as usize, self.hw as usize);
        [n * c * hw, c, c, n * c * hw, n * hw, n * hw]
    }
}

/// Operands of [`rel_pos_attention_block`] (GM tensors of the kernel).
pub struct AttnGm<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// `[bh, nq, kh]` (empty when `has_rel == 0`)
    pub rel_h: &'a [f32],
    /// `[bh, nq, kw]` (empty when `has_rel == 0`)
    pub rel_w: &'a [f32],
}

/// One AI core (`block` of `t.block_dim`) of `rel_pos_attention`: work items are
/// `(head b, query tile qt)` numbered `b·q_tiles + qt`, taken round-robin
/// (`item = block, block + block_dim, ...`), so every core writes disjoint rows of `out`/`lse`.
pub fn rel_pos_attention_block(
    t: &RelPosAttnTiling,
    block: u32,
    gm: &AttnGm,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (nq, nk, d, dv) = (t.nq as usize, t.nk as usize, t.d as usize, t.dv as usize);
    let (kh, kw) = (t.kh as usize, t.kw as usize);
    let (tq, tk) = (t.tile_q as usize, t.tile_k as usize);
    let rel = t.has_rel != 0;
    // UB allocations (sizes fixed by the tiling, reused for every item / key tile).
    let mut q_ub = vec![0f32; tq * d];
    let mut k_ub = vec![0f32; tk * d];
    let mut v_ub = vec![0f32; tk * dv];
    let mut s_ub = vec![0f32; tk]; // one score row
    let mut acc_ub = vec![0f32; tq * dv];
    let mut m_ub = vec![0f32; tq];
    let mut l_ub = vec![0f32; tq];
    let mut rh_ub = vec![0f32; if rel { tq * kh } else { 0 }];
    let mut rw_ub = vec![0f32; if rel { tq * kw } else { 0 }];
    let items = t.bh as usize * t.q_tiles as usize;
    let mut item = block as usize;
    while item < items {
        let b = item / t.q_tiles as usize;
        let q0 = (item % t.q_tiles as usize) * tq;
        let rows = tq.min(nq - q0);
        // CopyIn q tile, Muls(scale); rel-pos rows of this tile.
        let qg = (b * nq + q0) * d;
        q_ub[..rows * d].copy_from_slice(&gm.q[qg..qg + rows * d]);
        for x in &mut q_ub[..rows * d] {
            *x *= t.scale;
        }
        if rel {
            let h0 = (b * nq + q0) * kh;
            rh_ub[..rows * kh].copy_from_slice(&gm.rel_h[h0..h0 + rows * kh]);
            let w0 = (b * nq + q0) * kw;
            rw_ub[..rows * kw].copy_from_slice(&gm.rel_w[w0..w0 + rows * kw]);
        }
        // Duplicate: m = -inf, l = 0, acc = 0
        m_ub[..rows].fill(f32::NEG_INFINITY);
        l_ub[..rows].fill(0.0);
        acc_ub[..rows * dv].fill(0.0);
        let mut k0 = 0;
        while k0 < nk {
            let cols = tk.min(nk - k0);
            let kg = (b * nk + k0) * d;
            k_ub[..cols * d].copy_from_slice(&gm.k[kg..kg + cols * d]);
            let vg = (b * nk + k0) * dv;
            v_ub[..cols * dv].copy_from_slice(&gm.v[vg..vg + cols * dv]);
            for r in 0..rows {
                let qr = &q_ub[r * d..(r + 1) * d];
                // scores of row r against the key tile: Mul + ReduceSum per key
                for j in 0..cols {
                    let kj = &k_ub[j * d..(j + 1) * d];
                    let mut dot = 0f32;
                    for c in 0..d {
                        dot += qr[c] * kj[c];
                    }
                    s_ub[j] = dot;
                }
                if rel {
                    for j in 0..cols {
                        let g = k0 + j;
                        s_ub[j] += rh_ub[r * kh + g / kw] + rw_ub[r * kw + g % kw];
                    }
                }
                // ReduceMax, online-softmax update
                let tile_max = s_ub[..cols]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
                let m_new = m_ub[r].max(tile_max);
                let alpha = (m_ub[r] - m_new).exp();
                let mut psum = 0f32;
                for x in &mut s_ub[..cols] {
                    *x = (*x - m_new).exp();
                    psum += *x;
                }
                l_ub[r] = alpha * l_ub[r] + psum;
                let acc = &mut acc_ub[r * dv..(r + 1) * dv];
                for a in acc.iter_mut() {
                    *a *= alpha;
                }
                // Axpy per key: acc += p_j · v_j
                for j in 0..cols {
                    let p = s_ub[j];
                    let vj = &v_ub[j * dv..(j + 1) * dv];
                    for (a, &x) in acc.iter_mut().zip(vj) {
                        *a += p * x;
                    }
                }
                m_ub[r] = m_new;
            }
            k0 += cols;
        }
        // out = acc / l, lse = m + ln(l); CopyOut
        for r in 0..rows {
            let inv = 1.0 / l_ub[r];
            let og = (b * nq + q0 + r) * dv;
            for (o, &a) in out[og..og + dv]
                .iter_mut()
                .zip(&acc_ub[r * dv..(r + 1) * dv])
            {
                *o = a * inv;
            }
            lse[b * nq + q0 + r] = m_ub[r] + l_ub[r].ln();
        }
        item += t.block_dim as usize;
    }
}

/// All `block_dim` cores of `rel_pos_attention`, one after another.
pub fn rel_pos_attention(t: &RelPosAttnTiling, gm: &AttnGm, out: &mut [f32], lse: &mut [f32]) {
    for block in 0..t.block_dim {
        rel_pos_attention_block(t, block, gm, out, lse);
    }
}

/// Operands of [`layer_norm2d_block`].
pub struct Ln2dGm<'a> {
    pub x: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// Outputs of [`layer_norm2d_block`].
pub struct Ln2dOut<'a> {
    pub y: &'a mut [f32],
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
}

/// One AI core of `layer_norm2d`: items `(image ni, pixel tile pt)` numbered
/// `ni·hw_tiles + pt`, round-robin over cores.
pub fn layer_norm2d_block(t: &LayerNorm2dTiling, block: u32, gm: &Ln2dGm, o: &mut Ln2dOut) {
    let (c, hw, th) = (t.c as usize, t.hw as usize, t.tile_hw as usize);
    let inv_c = 1.0 / c as f32;
    let mut x_ub = vec![0f32; c * th];
    let mut g_ub = vec![0f32; c];
    let mut b_ub = vec![0f32; c];
    let mut mean_ub = vec![0f32; th];
    let mut rstd_ub = vec![0f32; th];
    let mut tmp_ub = vec![0f32; th];
    g_ub.copy_from_slice(&gm.gamma[..c]);
    b_ub.copy_from_slice(&gm.beta[..c]);
    let items = t.n as usize * t.hw_tiles as usize;
    let mut item = block as usize;
    while item < items {
        let ni = item / t.hw_tiles as usize;
        let p0 = (item % t.hw_tiles as usize) * th;
        let np = th.min(hw - p0);
        // strided CopyIn: c rows of np pixels (GM stride hw)
        for ci in 0..c {
            let g = (ni * c + ci) * hw + p0;
            x_ub[ci * th..ci * th + np].copy_from_slice(&gm.x[g..g + np]);
        }
        // mean: Σ_c rows (Add), then Muls(1/c)
        mean_ub[..np].fill(0.0);
        for ci in 0..c {
            for (m, &x) in mean_ub[..np].iter_mut().zip(&x_ub[ci * th..ci * th + np]) {
                *m += x;
            }
        }
        for m in &mut mean_ub[..np] {
            *m *= inv_c;
        }
        // variance: Σ_c (x - mean)² (Sub, Mul, Add), Muls(1/c), Adds(eps), Sqrt, reciprocal
        rstd_ub[..np].fill(0.0);
        for ci in 0..c {
            let xr = &x_ub[ci * th..ci * th + np];
            for p in 0..np {
                tmp_ub[p] = xr[p] - mean_ub[p];
                rstd_ub[p] += tmp_ub[p] * tmp_ub[p];
            }
        }
        for r in &mut rstd_ub[..np] {
            *r = 1.0 / (*r * inv_c + t.eps).sqrt();
        }
        // y = (x - mean)·rstd·gamma[c] + beta[c], in place, strided CopyOut
        for ci in 0..c {
            let xr = &mut x_ub[ci * th..ci * th + np];
            for p in 0..np {
                xr[p] = (xr[p] - mean_ub[p]) * rstd_ub[p] * g_ub[ci] + b_ub[ci];
            }
            let g = (ni * c + ci) * hw + p0;
            o.y[g..g + np].copy_from_slice(xr);
        }
        let s = ni * hw + p0;
        o.mean[s..s + np].copy_from_slice(&mean_ub[..np]);
        o.rstd[s..s + np].copy_from_slice(&rstd_ub[..np]);
        item += t.block_dim as usize;
    }
}

/// All `block_dim` cores of `layer_norm2d`, one after another.
pub fn layer_norm2d(t: &LayerNorm2dTiling, gm: &Ln2dGm, o: &mut Ln2dOut) {
    for block in 0..t.block_dim {
        layer_norm2d_block(t, block, gm, o);
    }
}
