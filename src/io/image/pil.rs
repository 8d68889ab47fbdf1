//! Pillow's `Image.resize` for 8-bit images (libImaging/Resample.c): a separable filter widened
//! by the scale when shrinking (anti-aliasing), double coefficients normalised per output pixel
//! then rounded to 22-bit fixed point, horizontal pass first with a uint8 intermediate, then
//! vertical. `segment_anything`'s `ResizeLongestSide.apply_image` resizes this way (bilinear,
//! through torchvision), and MedSAM2's 3D script resizes its slices this way (bicubic).

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's resampling filters used by the reference scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.BILINEAR`: the triangle filter, support 1.
    Bilinear,
    /// `Image.BICUBIC`: the cubic kernel with a = −0.5, support 2.
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            PilFilter::Bilinear if x < 1.0 => 1.0 - x,
            PilFilter::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            PilFilter::Bilinear => 0.0,
        }
    }
}

/// Per output sample: the first input index and fixed-point weights (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coeffs(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if ww != 0.0 { v / ww } else { v };
                    let f = v * (1u64 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (-0.5 + f) as i64
                    } else {
                        (0.5 + f) as i64
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
pub fn resize_u8_pil(
    src: &[u8],
    (h, w, cn): (usize, usize, usize),
    (oh, ow): (usize, usize),
    filter: PilFilter,
) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    let horiz = if ow != w {
        let kx = coeffs(w, ow, filter);
        let mut out = vec![0u8; h * ow * cn];
        for y in 0..h {
            for (xx, (xmin, k)) in kx.iter().enumerate() {
                for c in 0..cn {
                    let mut ss = round;
                    for (i, &kv) in k.iter().enumerate() {
                        ss += src[(y * w + xmin + i) * cn + c] as i64 * kv;
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
    let ky = coeffs(h, oh, filter);
    let mut out = vec![0u8; oh * ow * cn];
    for (yy, (ymin, k)) in ky.iter().enumerate() {
        for x in 0..ow * cn {
            let mut ss = round;
            for (i, &kv) in k.iter().enumerate() {
                ss += horiz[(ymin + i) * ow * cn + x] as i64 * kv;
            }
            out[yy * ow * cn + x] = clip8(ss);
        }
    }
    out
}
