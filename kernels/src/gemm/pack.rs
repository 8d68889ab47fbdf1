//! Packing of A and B into the micro-panel layouts the micro-kernels stream through.
//!
//! Every packed element is 32 bits: an f32 (possibly rounded to bf16 precision first), or a pair
//! of bf16 values adjacent in k (`low half = even k`, `high half = odd k`), which is the operand
//! format of `vdpbf16ps` and of AMX's `tdpbf16ps` B tiles. Out-of-range rows/columns/k are zero,
//! so the micro-kernels never need bounds checks.

use half::bf16;

/// What a packed 32-bit unit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PackFormat {
    /// The f32 value as is.
    F32,
    /// The f32 value rounded to the nearest bf16 (ties to even), stored as f32.
    F32RoundBf16,
    /// Two bf16 values at k = 2u and 2u+1.
    Bf16Pairs,
}

#[inline(always)]
fn round_bf16(x: f32) -> u32 {
    bf16::from_f32(x).to_f32().to_bits()
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16::from_f32(lo).to_bits() as u32 | (bf16::from_f32(hi).to_bits() as u32) << 16
}

/// The data part of one panel: `n` lines by `kc` k values in format `fmt`, line `l` and packed k
/// unit `u` going to `dst[l*dl + u*du]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PanelData {
    pub fmt: PackFormat,
    pub n: usize,
    pub kc: usize,
    pub dl: usize,
    pub du: usize,
}

impl PanelData {
    fn new(fmt: PackFormat, n: usize, kc: usize, (dl, du): (usize, usize)) -> Self {
        PanelData { fmt, n, kc, dl, du }
    }
    /// Packed k units holding data: `kc`, or `⌈kc/2⌉` bf16 pairs.
    pub(crate) fn units(&self) -> usize {
        match self.fmt {
            PackFormat::Bf16Pairs => self.kc.div_ceil(2),
            _ => self.kc,
        }
    }
}

/// Packs `rows × kc` of A (element `(i, p)` at `base + i*rs + p*cs`) into `ceil(rows/mr)`
/// micro-panels of `kp * mr` units: `[k][row]`, or `[row][k]` if `row_major`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_a(
    fmt: PackFormat,
    row_major: bool,
    mr: usize,
    a: &[f32],
    base: usize,
    rs: usize,
    cs: usize,
    rows: usize,
    kc: usize,
    kp: usize,
    dst: &mut [u32],
) {
    for (panel, d) in dst.chunks_mut(kp * mr).enumerate() {
        let r0 = panel * mr;
        let nrows = mr.min(rows - r0);
        // Unit strides swap roles: index (row, k) → (u, v) where v runs over k.
        let (urs, ucs) = if row_major { (kp, 1) } else { (1, mr) };
        let data = PanelData::new(fmt, nrows, kc, (urs, ucs));
        pack_panel(data, a, base + r0 * rs, rs, cs, mr, kp, d);
    }
}

/// Packs `kc × cols` of B (element `(p, j)` at `base + p*rs + j*cs`) into one `[k][col]`
/// micro-panel of `kp * nr` units.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_b(
    fmt: PackFormat,
    nr: usize,
    b: &[f32],
    base: usize,
    rs: usize,
    cs: usize,
    kc: usize,
    cols: usize,
    kp: usize,
    dst: &mut [u32],
) {
    // B's columns play the role of A's rows: element (j, p) at base + j*cs + p*rs.
    let data = PanelData::new(fmt, cols, kc, (1, nr));
    pack_panel(data, b, base, cs, rs, nr, kp, dst);
}

/// Packs a panel of `n` "lines" (rows of A / columns of B) by `kc` k values, where element
/// `(l, p)` is at `src[base + l*ls + p*ks]`, into `dst[l*dl + u*du]` for packed k unit `u`.
/// Lines `n..width` and units past the data are zero.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pack_panel(
    data: PanelData,
    src: &[f32],
    base: usize,
    ls: usize,
    ks: usize,
    width: usize,
    kp: usize,
    dst: &mut [u32],
) {
    let dst = &mut dst[..kp * width];
    #[cfg(target_arch = "x86_64")]
    if super::x86::pack_panel_avx512(data, src, base, ls, ks, dst) {
        zero_fill(data, width, kp, dst);
        return;
    }
    let PanelData { fmt, n, kc, dl, du } = data;
    match fmt {
        PackFormat::F32 | PackFormat::F32RoundBf16 => {
            let conv = |x: f32| {
                if fmt == PackFormat::F32 {
                    x.to_bits()
                } else {
                    round_bf16(x)
                }
            };
            if ks == 1 && ls != 1 {
                // Each line is contiguous in k (row-major A, transposed B).
                for l in 0..n {
                    let line = &src[base + l * ls..][..kc];
                    for (p, &x) in line.iter().enumerate() {
                        dst[l * dl + p * du] = conv(x);
                    }
                }
            } else {
                // Each k is contiguous across lines (row-major B, transposed A), or general.
                for p in 0..kc {
                    for l in 0..n {
                        dst[l * dl + p * du] = conv(src[base + l * ls + p * ks]);
                    }
                }
            }
            for p in 0..kp {
                for l in n..width {
                    dst[l * dl + p * du] = 0;
                }
            }
            for p in kc..kp {
                for l in 0..n {
                    dst[l * dl + p * du] = 0;
                }
            }
        }
        PackFormat::Bf16Pairs => {
            let full = kc / 2;
            for u in 0..full {
                let k0 = base + 2 * u * ks;
                for l in 0..n {
                    let i = k0 + l * ls;
                    dst[l * dl + u * du] = pair(src[i], src[i + ks]);
                }
            }
            for u in full..kp {
                for l in 0..n {
                    dst[l * dl + u * du] = if 2 * u < kc {
                        pair(src[base + l * ls + 2 * u * ks], 0.0)
                    } else {
                        0
                    };
                }
            }
            for u in 0..kp {
                for l in n..width {
                    dst[l * dl + u * du] = 0;
                }
            }
        }
    }
}

/// Zeroes what the data loops do not write: lines `n..width`, and units past the data.
fn zero_fill(data: PanelData, width: usize, kp: usize, dst: &mut [u32]) {
    let (units, PanelData { n, dl, du, .. }) = (data.units(), data);
    for u in 0..kp {
        let from = if u < units { n } else { 0 };
        for l in from..width {
            dst[l * dl + u * du] = 0;
        }
    }
}
