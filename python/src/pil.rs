//! Pillow's `Image.resize(size, BILINEAR)` for 8-bit images (libImaging/Resample.c), which
//! `segment_anything`'s `ResizeLongestSide.apply_image` runs through torchvision: a separable
//! triangle filter widened by the scale when shrinking (anti-aliasing), double coefficients
//! normalised per output pixel then rounded to 22-bit fixed point, horizontal pass first with a
//! uint8 intermediate, then vertical.

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Per output pixel: first source index and fixed-point weights (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| triangle((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if ww != 0.0 { v / ww } else { v };
                    let f = v * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (-0.5 + f) as i32
                    } else {
                        (0.5 + f) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an interleaved `h × w × cn` uint8 image to `oh × ow`.
pub(crate) fn resize_bilinear_u8(
    src: &[u8],
    (h, w, cn): (usize, usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    let horiz = if ow != w {
        let kx = coeffs(w, ow);
        let mut out = vec![0u8; h * ow * cn];
        for y in 0..h {
            for (xx, (xmin, k)) in kx.iter().enumerate() {
                for c in 0..cn {
                    let mut ss = round;
                    for (i, &kv) in k.iter().enumerate() {
                        ss += src[(y * w + xmin + i) * cn + c] as i64 * kv as i64;
                    }
                    out[(y * ow + xx) * cn + c] = clip8(ss);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return horiz;
    }
    let ky = coeffs(h, oh);
    let mut out = vec![0u8; oh * ow * cn];
    for (yy, (ymin, k)) in ky.iter().enumerate() {
        for x in 0..ow * cn {
            let mut ss = round;
            for (i, &kv) in k.iter().enumerate() {
                ss += horiz[(ymin + i) * ow * cn + x] as i64 * kv as i64;
            }
            out[yy * ow * cn + x] = clip8(ss);
        }
    }
    out
}
