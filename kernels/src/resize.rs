//! Bilinear interpolation of `[planes, h, w]` with PyTorch's `align_corners=False` semantics
//! (`F.interpolate(mode="bilinear")`), forward and backward.
//!
//! Source coordinate of output index `o` along an axis of input size `n_in` and output size `n_out`:
//! `src = max((o + 0.5) * n_in / n_out - 0.5, 0)`, `i0 = floor(src)`, `i1 = min(i0 + 1, n_in - 1)`,
//! weights `(1 - (src - i0), src - i0)`. The fast version is separable (width pass, then height pass).

#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

/// Interpolation taps along one axis: `(i0, i1, w0, w1)`.
fn taps(n_in: usize, n_out: usize, o: usize) -> (usize, usize, f32, f32) {
    let scale = n_in as f32 / n_out as f32;
    let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(n_in - 1);
    let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
    let l1 = src - i0 as f32;
    (i0, i1, 1.0 - l1, l1)
}

fn tap_table(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
    (0..n_out).map(|o| taps(n_in, n_out, o)).collect()
}

/// For each input index, the output indices that read it and with what weight (transposed taps).
fn transposed_taps(n_in: usize, t: &[(usize, usize, f32, f32)]) -> Vec<Vec<(usize, f32)>> {
    let mut r = vec![Vec::new(); n_in];
    for (o, &(i0, i1, w0, w1)) in t.iter().enumerate() {
        r[i0].push((o, w0));
        r[i1].push((o, w1));
    }
    r
}

fn check(planes: usize, h: usize, w: usize, oh: usize, ow: usize, x: &[f32], y: &[f32]) {
    assert_eq!(x.len(), planes * h * w);
    assert_eq!(y.len(), planes * oh * ow);
    assert!(
        planes == 0 || (h > 0 && w > 0) || oh * ow == 0,
        "empty input"
    );
}

/// y `[planes, oh, ow]` from x `[planes, h, w]`.
pub fn bilinear_forward(
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    x: &[f32],
    y: &mut [f32],
) {
    check(planes, h, w, oh, ow, x, y);
    if planes * oh * ow == 0 {
        return;
    }
    let th = tap_table(h, oh);
    let tw = tap_table(w, ow);
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(y, x)| {
            // Width pass: tmp [h, ow].
            let mut tmp = vec![0.0f32; h * ow];
            tmp.par_chunks_mut(ow)
                .zip(x.par_chunks(w))
                .for_each(|(t, xr)| {
                    for (t, &(i0, i1, w0, w1)) in t.iter_mut().zip(&tw) {
                        *t = w0 * xr[i0] + w1 * xr[i1];
                    }
                });
            // Height pass.
            y.par_chunks_mut(ow)
                .zip(&th)
                .for_each(|(yr, &(i0, i1, w0, w1))| {
                    let (a, b) = (&tmp[i0 * ow..(i0 + 1) * ow], &tmp[i1 * ow..(i1 + 1) * ow]);
                    for ((y, &a), &b) in yr.iter_mut().zip(a).zip(b) {
                        *y = w0 * a + w1 * b;
                    }
                });
        });
}

/// dx (overwritten) from dy.
pub fn bilinear_backward(
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    dy: &[f32],
    dx: &mut [f32],
) {
    check(planes, h, w, oh, ow, dx, dy);
    if planes * h * w == 0 {
        return;
    }
    if oh * ow == 0 {
        dx.fill(0.0);
        return;
    }
    let th_t = transposed_taps(h, &tap_table(h, oh));
    let tw = tap_table(w, ow);
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dx, dy)| {
            // Height pass as a gather: dtmp [h, ow], row r = Σ_{oy reading r} weight · dy[oy].
            // Then the width pass scatters each row into dx (rows are independent).
            dx.par_chunks_mut(w).zip(&th_t).for_each(|(dxr, contrib)| {
                let mut t = vec![0.0f32; ow];
                for &(oy, wt) in contrib {
                    let dyr = &dy[oy * ow..(oy + 1) * ow];
                    t.iter_mut().zip(dyr).for_each(|(t, &d)| *t += wt * d);
                }
                dxr.fill(0.0);
                for (&g, &(i0, i1, w0, w1)) in t.iter().zip(&tw) {
                    dxr[i0] += w0 * g;
                    dxr[i1] += w1 * g;
                }
            });
        });
}

/// Plain-loop oracles: one output pixel at a time, four taps.
pub mod reference {
    use super::taps;

    pub fn bilinear_forward(
        planes: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        x: &[f32],
        y: &mut [f32],
    ) {
        for p in 0..planes {
            let xp = &x[p * h * w..];
            for oy in 0..oh {
                let (y0, y1, a0, a1) = taps(h, oh, oy);
                for ox in 0..ow {
                    let (x0, x1, b0, b1) = taps(w, ow, ox);
                    y[p * oh * ow + oy * ow + ox] = a0
                        * (b0 * xp[y0 * w + x0] + b1 * xp[y0 * w + x1])
                        + a1 * (b0 * xp[y1 * w + x0] + b1 * xp[y1 * w + x1]);
                }
            }
        }
    }

    pub fn bilinear_backward(
        planes: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        dy: &[f32],
        dx: &mut [f32],
    ) {
        dx.fill(0.0);
        for p in 0..planes {
            let dxp = &mut dx[p * h * w..(p + 1) * h * w];
            for oy in 0..oh {
                let (y0, y1, a0, a1) = taps(h, oh, oy);
                for ox in 0..ow {
                    let (x0, x1, b0, b1) = taps(w, ow, ox);
                    let g = dy[p * oh * ow + oy * ow + ox];
                    dxp[y0 * w + x0] += a0 * b0 * g;
                    dxp[y0 * w + x1] += a0 * b1 * g;
                    dxp[y1 * w + x0] += a1 * b0 * g;
                    dxp[y1 * w + x1] += a1 * b1 * g;
                }
            }
        }
    }
}
