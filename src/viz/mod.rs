//! Image and figure outputs: mask PNGs, MedSAM-style overlays, GT-vs-prediction
//! comparison figures and loss-curve plots, all rasterised by hand with the
//! embedded bitmap font in [`font`]. Every file is written to a temp file in
//! the destination directory and then renamed into place.

pub mod font;
pub mod plot;

use std::path::{Path, PathBuf};

use image::{GrayImage, ImageEncoder, Rgb, RgbImage};

use crate::pipeline::metrics::{check_mask, write_atomic, MaskValue, MetricsError};

pub use plot::{loss_curve_png, render_loss_curve, PlotLayout};

/// Mask tint of MedSAM_Inference.py's `show_mask`: RGB (251, 252, 30) ...
pub const MASK_COLOR: Rgb<u8> = Rgb([251, 252, 30]);
/// ... blended with alpha 0.6.
pub const MASK_ALPHA: f32 = 0.6;
/// Ground-truth tint used in the comparison figure.
pub const GT_COLOR: Rgb<u8> = Rgb([30, 200, 60]);
/// Box outline colour (matplotlib "blue", as `show_box`).
pub const BOX_COLOR: Rgb<u8> = Rgb([0, 0, 255]);
/// Box outline width in pixels (`lw=2`), drawn inward from the inclusive box bounds.
pub const BOX_LINE_WIDTH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum VizError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("encoding PNG for {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

pub type Result<T> = std::result::Result<T, VizError>;

crate::error::wrap_into_error!(VizError);

fn encode_png(
    path: &Path,
    data: &[u8],
    w: u32,
    h: u32,
    ct: image::ExtendedColorType,
) -> Result<()> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(data, w, h, ct)
        .map_err(|source| VizError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    write_atomic(path, &buf)?;
    Ok(())
}

/// Saves an RGB image as PNG (atomically).
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    encode_png(
        path,
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
}

/// Saves a binary mask as an 8-bit grey PNG with values 0 / 255.
pub fn save_mask_png<T: MaskValue>(path: &Path, mask: &[T], h: usize, w: usize) -> Result<()> {
    check_mask("mask", mask, h, w)?;
    let img = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([if mask[y as usize * w + x as usize].is_on() {
            255
        } else {
            0
        }])
    });
    encode_png(
        path,
        img.as_raw(),
        w as u32,
        h as u32,
        image::ExtendedColorType::L8,
    )
}

fn rgb_from_slice(image_rgb: &[u8], h: usize, w: usize) -> Result<RgbImage> {
    if image_rgb.len() != h * w * 3 {
        return Err(VizError::InvalidArgument {
            field: "image_rgb",
            reason: format!(
                "has {} bytes, expected h*w*3 = {}",
                image_rgb.len(),
                h * w * 3
            ),
        });
    }
    Ok(RgbImage::from_raw(w as u32, h as u32, image_rgb.to_vec()).expect("length checked"))
}

/// Blends `color` with `alpha` into the pixels where `mask` is on:
/// `out = round((1 - alpha) * pixel + alpha * color)`.
pub fn tint_mask<T: MaskValue>(
    img: &mut RgbImage,
    mask: &[T],
    color: Rgb<u8>,
    alpha: f32,
) -> Result<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    check_mask("mask", mask, h, w)?;
    for (i, p) in img.pixels_mut().enumerate() {
        if mask[i].is_on() {
            for c in 0..3 {
                let v = (1.0 - alpha) * p.0[c] as f32 + alpha * color.0[c] as f32;
                p.0[c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(())
}

/// Draws the outline of the inclusive box `[x0, y0, x1, y1]`, `width` pixels
/// thick inward from the bounds, clipped to the image.
pub fn draw_box(img: &mut RgbImage, bbox: [usize; 4], color: Rgb<u8>, width: usize) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let [x0, y0, x1, y1] = bbox;
    if w == 0 || h == 0 || x0 > x1 || y0 > y1 || x0 >= w || y0 >= h {
        return;
    }
    let (cx1, cy1) = (x1.min(w - 1), y1.min(h - 1));
    for y in y0..=cy1 {
        for x in x0..=cx1 {
            let near_edge = x - x0 < width || x1 - x < width || y - y0 < width || y1 - y < width;
            if near_edge {
                img.put_pixel(x as u32, y as u32, color);
            }
        }
    }
}

/// MedSAM_Inference.py-style overlay: the image, the mask blended with
/// [`MASK_COLOR`] at [`MASK_ALPHA`], and each box as a [`BOX_COLOR`] outline
/// ([`BOX_LINE_WIDTH`] px) drawn on top. `image_rgb` is row-major `h × w × 3`.
pub fn overlay<T: MaskValue>(
    image_rgb: &[u8],
    h: usize,
    w: usize,
    mask: &[T],
    boxes: &[[usize; 4]],
) -> Result<RgbImage> {
    let mut img = rgb_from_slice(image_rgb, h, w)?;
    tint_mask(&mut img, mask, MASK_COLOR, MASK_ALPHA)?;
    for b in boxes {
        draw_box(&mut img, *b, BOX_COLOR, BOX_LINE_WIDTH);
    }
    Ok(img)
}

/// [`overlay`] saved as PNG.
pub fn save_overlay_png<T: MaskValue>(
    path: &Path,
    image_rgb: &[u8],
    h: usize,
    w: usize,
    mask: &[T],
    boxes: &[[usize; 4]],
) -> Result<()> {
    save_png(path, &overlay(image_rgb, h, w, mask, boxes)?)
}

/// One row of a comparison figure.
#[derive(Debug, Clone, Copy)]
pub struct ComparisonRow<'a, T: MaskValue> {
    /// Row-major RGB, `h × w × 3`.
    pub image: &'a [u8],
    pub h: usize,
    pub w: usize,
    pub gt: &'a [T],
    pub pred: &'a [T],
    pub bbox: Option<[usize; 4]>,
    pub title: &'a str,
}

/// Figure margins / bands (pixels) and text scale of the comparison figure.
pub const FIG_PAD: u32 = 8;
pub const FIG_TEXT_SCALE: u32 = 2;
fn band() -> u32 {
    font::text_height(FIG_TEXT_SCALE) + FIG_PAD
}

/// Top-left pixel corners `(x, y)` of the three panels of one figure row.
pub type PanelOrigins = [(u32, u32); 3];

/// Top-left corners of the three panels (image+box, GT, prediction) of every
/// row, and the total figure size `(width, height)`. Each row has a title band
/// and a panel-label band above its panels; columns are as wide as the widest
/// image or the widest panel label ("Pred DSC 0.00"), whichever is larger.
pub fn comparison_layout<T: MaskValue>(
    rows: &[ComparisonRow<T>],
) -> (Vec<PanelOrigins>, (u32, u32)) {
    let cw = rows
        .iter()
        .map(|r| r.w as u32)
        .max()
        .unwrap_or(0)
        .max(font::text_width("Pred DSC 0.00", FIG_TEXT_SCALE));
    let mut y = FIG_PAD;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let py = y + 2 * band();
        out.push([0u32, 1, 2].map(|i| (FIG_PAD + i * (cw + FIG_PAD), py)));
        y = py + r.h as u32 + FIG_PAD;
    }
    let width = 3 * cw + 4 * FIG_PAD;
    let width = width.max(
        rows.iter()
            .map(|r| font::text_width(r.title, FIG_TEXT_SCALE) + 2 * FIG_PAD)
            .max()
            .unwrap_or(0),
    );
    (out, (width, y))
}

/// Comparison figure: one row per slice with three panels — image with box |
/// ground truth (tinted [`GT_COLOR`]) | prediction (tinted [`MASK_COLOR`]) —
/// labelled "Image", "GT" and "Pred DSC 0.91" (DSC computed here, 2 decimals,
/// "n/a" when both masks are empty), under the row's title. White background.
pub fn comparison_figure<T: MaskValue>(rows: &[ComparisonRow<T>]) -> Result<RgbImage> {
    if rows.is_empty() {
        return Err(VizError::InvalidArgument {
            field: "rows",
            reason: "no rows".into(),
        });
    }
    let (origins, (fw, fh)) = comparison_layout(rows);
    let mut fig = RgbImage::from_pixel(fw, fh, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    for (r, org) in rows.iter().zip(&origins) {
        let base = rgb_from_slice(r.image, r.h, r.w)?;
        let dsc = crate::pipeline::metrics::dice(r.gt, r.pred, r.h, r.w)?;
        let mut p0 = base.clone();
        if let Some(b) = r.bbox {
            draw_box(&mut p0, b, BOX_COLOR, BOX_LINE_WIDTH);
        }
        let mut p1 = base.clone();
        tint_mask(&mut p1, r.gt, GT_COLOR, MASK_ALPHA)?;
        let mut p2 = base;
        tint_mask(&mut p2, r.pred, MASK_COLOR, MASK_ALPHA)?;
        let pred_label = if dsc.is_nan() {
            "Pred DSC n/a".to_string()
        } else {
            format!("Pred DSC {dsc:.2}")
        };
        let title_y = org[0].1 - 2 * band();
        font::draw_text(
            &mut fig,
            FIG_PAD as i64,
            title_y as i64,
            r.title,
            black,
            FIG_TEXT_SCALE,
        );
        for (panel, (&(x, y), label)) in
            [p0, p1, p2]
                .iter()
                .zip(org.iter().zip(["Image", "GT", pred_label.as_str()]))
        {
            font::draw_text(
                &mut fig,
                x as i64,
                (y - band()) as i64,
                label,
                black,
                FIG_TEXT_SCALE,
            );
            image::imageops::replace(&mut fig, panel, x as i64, y as i64);
        }
    }
    Ok(fig)
}

/// [`comparison_figure`] saved as one PNG.
pub fn save_comparison_png<T: MaskValue>(path: &Path, rows: &[ComparisonRow<T>]) -> Result<()> {
    save_png(path, &comparison_figure(rows)?)
}
