//! Image resizing with the exact semantics of OpenCV (`cv2.resize`), as LiteMedSAM's upstream
//! pipeline (`CVPR24_LiteMedSAM_infer.py`, the training data loader) calls it.

/// `cv2.resize(..., INTER_NEAREST)` of a row-major plane: source index `⌊d · src/dst⌋`.
pub fn resize_nearest_cv2(
    src: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let (fy, fx) = (h as f64 / oh as f64, w as f64 / ow as f64);
    let mut out = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        let sy = ((y as f64 * fy).floor() as usize).min(h - 1);
        for x in 0..ow {
            let sx = ((x as f64 * fx).floor() as usize).min(w - 1);
            out.push(src[sy * w + sx]);
        }
    }
    out
}

/// OpenCV's `saturate_cast<uchar>(float)`: round half to even, clamp.
fn sat_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// `cv::resize(..., INTER_AREA)` of an interleaved uint8 image, bit-exact: box averaging for
/// integer factors (with the 2×2 fast path's round-half-up), area-weighted averaging for other
/// shrinking factors, and OpenCV's fixed-point "area" bilinear when either axis grows.
pub fn resize_area_u8_cv2(
    src: &[u8],
    h: usize,
    w: usize,
    cn: usize,
    oh: usize,
    ow: usize,
) -> Vec<u8> {
    assert_eq!(src.len(), h * w * cn, "resize_area_u8_cv2: buffer size");
    let (inv_x, inv_y) = (ow as f64 / w as f64, oh as f64 / h as f64);
    let (sx, sy) = (1.0 / inv_x, 1.0 / inv_y);
    let area = AreaResize {
        src,
        h,
        w,
        cn,
        oh,
        ow,
    };
    if sx >= 1.0 && sy >= 1.0 {
        let (ix, iy) = (sx.round_ties_even(), sy.round_ties_even());
        if (sx - ix).abs() < f64::EPSILON && (sy - iy).abs() < f64::EPSILON {
            return area.fast(ix as usize, iy as usize);
        }
        return area.generic(sx, sy);
    }
    area.linear((sx, inv_x), (sy, inv_y))
}

/// One `INTER_AREA` resize: the interleaved `h × w × cn` source and the output size.
#[derive(Clone, Copy)]
struct AreaResize<'a> {
    src: &'a [u8],
    h: usize,
    w: usize,
    cn: usize,
    oh: usize,
    ow: usize,
}

impl<'a> AreaResize<'a> {
    /// `(src, h, w, cn, oh, ow)`.
    #[inline(always)]
    fn parts(self) -> (&'a [u8], usize, usize, usize, usize, usize) {
        (self.src, self.h, self.w, self.cn, self.oh, self.ow)
    }

    /// Integer shrinking factors `kx × ky`: box averaging.
    fn fast(self, kx: usize, ky: usize) -> Vec<u8> {
        let (src, h, w, cn, oh, ow) = self.parts();
        let mut out = vec![0u8; oh * ow * cn];
        let scale = 1.0f32 / (kx * ky) as f32;
        for dy in 0..oh {
            for dx in 0..ow {
                for c in 0..cn {
                    let (mut sum, mut count) = (0u32, 0u32);
                    for yy in dy * ky..(dy * ky + ky).min(h) {
                        for xx in dx * kx..(dx * kx + kx).min(w) {
                            sum += src[(yy * w + xx) * cn + c] as u32;
                            count += 1;
                        }
                    }
                    out[(dy * ow + dx) * cn + c] = if count == 0 {
                        0
                    } else if count as usize != kx * ky {
                        sat_u8(sum as f32 / count as f32)
                    } else if kx == 2 && ky == 2 && matches!(cn, 1 | 3 | 4) {
                        ((sum + 2) >> 2) as u8
                    } else {
                        sat_u8(sum as f32 * scale)
                    };
                }
            }
        }
        out
    }

    /// Other shrinking factors: area-weighted averaging.
    fn generic(self, sx: f64, sy: f64) -> Vec<u8> {
        let (src, h, w, cn, oh, ow) = self.parts();
        let (xtab, ytab) = (area_tab(w, ow, sx), area_tab(h, oh, sy));
        let width = ow * cn;
        let mut out = vec![0u8; oh * width];
        let (mut buf, mut sum) = (vec![0.0f32; width], vec![0.0f32; width]);
        let mut prev_dy = ytab.first().map_or(0, |t| t.0);
        for &(dy, syi, beta) in &ytab {
            buf.fill(0.0);
            let row = &src[syi * w * cn..(syi + 1) * w * cn];
            for &(dx, sxi, alpha) in &xtab {
                for c in 0..cn {
                    buf[dx * cn + c] += row[sxi * cn + c] as f32 * alpha;
                }
            }
            if dy != prev_dy {
                let d = &mut out[prev_dy * width..(prev_dy + 1) * width];
                for ((o, s), b) in d.iter_mut().zip(sum.iter_mut()).zip(&buf) {
                    *o = sat_u8(*s);
                    *s = beta * b;
                }
                prev_dy = dy;
            } else {
                for (s, b) in sum.iter_mut().zip(&buf) {
                    *s += beta * b;
                }
            }
        }
        for (o, s) in out[prev_dy * width..(prev_dy + 1) * width]
            .iter_mut()
            .zip(&sum)
        {
            *o = sat_u8(*s);
        }
        out
    }

    /// Either axis grows: OpenCV's fixed-point "area" bilinear.
    fn linear(self, (sx, inv_x): (f64, f64), (sy, inv_y): (f64, f64)) -> Vec<u8> {
        let (src, h, w, cn, oh, ow) = self.parts();
        // Horizontal taps (OpenCV clamps at the right edge: past it, the last pixel with weight 1).
        let mut xofs = vec![0usize; ow];
        let mut xalpha = vec![(0i32, 0i32); ow];
        let mut xmax = ow;
        for dx in 0..ow {
            let (mut s, mut f) = area_linear_coef(dx, sx, inv_x);
            if s < 0 {
                s = 0;
                f = 0.0;
            }
            if s + 1 >= w as i64 {
                xmax = xmax.min(dx);
                if s >= w as i64 - 1 {
                    s = w as i64 - 1;
                    f = 0.0;
                }
            }
            xofs[dx] = s as usize;
            xalpha[dx] = (fixed((1.0 - f) * 2048.0), fixed(f * 2048.0));
        }
        let hrow = |y: usize| -> Vec<i32> {
            let row = &src[y * w * cn..(y + 1) * w * cn];
            let mut out = vec![0i32; ow * cn];
            for dx in 0..ow {
                for c in 0..cn {
                    let s = xofs[dx] * cn + c;
                    out[dx * cn + c] = if dx < xmax {
                        row[s] as i32 * xalpha[dx].0 + row[s + cn] as i32 * xalpha[dx].1
                    } else {
                        row[s] as i32 * 2048
                    };
                }
            }
            out
        };
        let mut out = vec![0u8; oh * ow * cn];
        for dy in 0..oh {
            let (s, f) = area_linear_coef(dy, sy, inv_y);
            let clip = |v: i64| v.clamp(0, h as i64 - 1) as usize;
            let (r0, r1) = (hrow(clip(s)), hrow(clip(s + 1)));
            let (b0, b1) = (fixed((1.0 - f) * 2048.0), fixed(f * 2048.0));
            for (i, o) in out[dy * ow * cn..(dy + 1) * ow * cn].iter_mut().enumerate() {
                *o = ((((b0 * (r0[i] >> 4)) >> 16) + ((b1 * (r1[i] >> 4)) >> 16) + 2) >> 2) as u8;
            }
        }
        out
    }
}

/// OpenCV's `computeResizeAreaTab`: `(dst index, src index, weight)` triples.
fn area_tab(ssize: usize, dsize: usize, scale: f64) -> Vec<(usize, usize, f32)> {
    let mut tab = Vec::new();
    for dx in 0..dsize {
        let fsx1 = dx as f64 * scale;
        let fsx2 = fsx1 + scale;
        let cell = scale.min(ssize as f64 - fsx1);
        let mut sx2 = fsx2.floor() as i64;
        sx2 = sx2.min(ssize as i64 - 1);
        let sx1 = (fsx1.ceil() as i64).min(sx2);
        if sx1 as f64 - fsx1 > 1e-3 {
            tab.push((dx, (sx1 - 1) as usize, ((sx1 as f64 - fsx1) / cell) as f32));
        }
        for s in sx1..sx2 {
            tab.push((dx, s as usize, (1.0 / cell) as f32));
        }
        if fsx2 - sx2 as f64 > 1e-3 {
            tab.push((
                dx,
                sx2 as usize,
                ((fsx2 - sx2 as f64).min(1.0).min(cell) / cell) as f32,
            ));
        }
    }
    tab
}

/// Source index and fixed-point weights (×2048) of one output position in OpenCV's area-mode
/// bilinear: `sx = ⌊d·scale⌋`, `f = (d+1) − (sx+1)/scale` wrapped to [0, 1).
fn area_linear_coef(d: usize, scale: f64, inv: f64) -> (i64, f32) {
    let s = (d as f64 * scale).floor() as i64;
    let mut f = ((d + 1) as f64 - (s + 1) as f64 * inv) as f32;
    f = if f <= 0.0 { 0.0 } else { f - f.floor() };
    (s, f)
}

fn fixed(v: f32) -> i32 {
    v.round_ties_even() as i32
}
