//! Hand-rasterised line plots (loss curves): axes, grid, numeric ticks,
//! legend and Bresenham polylines, text via the embedded bitmap font.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::font::{draw_text, text_height, text_width};
use super::{save_png, Result, VizError};

/// Series colours, in order (matplotlib "tab10").
pub const PALETTE: [Rgb<u8>; 8] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
];
pub const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
pub const AXIS_COLOR: Rgb<u8> = Rgb([0, 0, 0]);
pub const GRID_COLOR: Rgb<u8> = Rgb([225, 225, 225]);
/// Default size used by [`loss_curve_png`].
pub const DEFAULT_SIZE: (u32, u32) = (800, 500);

/// Where data coordinates land in the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotLayout {
    pub width: u32,
    pub height: u32,
    /// Plot area in pixels: x in `left..=right`, y in `top..=bottom`.
    pub left: u32,
    pub right: u32,
    pub top: u32,
    pub bottom: u32,
    pub x_min: f64,
    pub x_max: f64,
    pub y_min: f64,
    pub y_max: f64,
    pub x_step: f64,
    pub y_step: f64,
}

impl PlotLayout {
    /// Pixel position (column, row) of data point (x, y), unrounded.
    pub fn to_pixel(&self, x: f64, y: f64) -> (f64, f64) {
        let px = self.left as f64
            + (x - self.x_min) / (self.x_max - self.x_min) * (self.right - self.left) as f64;
        let py = self.bottom as f64
            - (y - self.y_min) / (self.y_max - self.y_min) * (self.bottom - self.top) as f64;
        (px, py)
    }
}

/// A "nice" step (1, 2 or 5 × 10^k) giving about `target` intervals over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = range / target;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nf = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nf * mag
}

/// Axis range snapped outward to multiples of a nice step.
fn nice_range(lo: f64, hi: f64) -> (f64, f64, f64) {
    let (mut lo, mut hi) = (lo, hi);
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= d;
        hi += d;
    }
    let step = nice_step(hi - lo, 5.0);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// Tick label: enough decimals for `step`, scientific for very large/small values.
fn tick_label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    let mag = v.abs().max(step);
    if mag >= 1e5 || step < 1e-4 {
        format!("{v:.1e}")
    } else {
        let dec = (-step.log10().floor()).max(0.0) as usize;
        format!("{v:.dec$}")
    }
}

fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let n = ((hi - lo) / step).round() as i64;
    (0..=n).map(|i| lo + i as f64 * step).collect()
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Bresenham line between integer pixel positions (inclusive).
pub fn draw_line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let dx = (x1 - x0).abs();
    let dy = -(y1 - y0).abs();
    let sx = if x0 < x1 { 1 } else { -1 };
    let sy = if y0 < y1 { 1 } else { -1 };
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Renders a line plot of `series` (name, points). Non-finite points are
/// skipped (they break the polyline). Axis ranges cover all finite points,
/// snapped to nice ticks. Returns the image and its [`PlotLayout`].
pub fn render_loss_curve<N: AsRef<str>>(
    series: &[(N, Vec<(f64, f64)>)],
    title: &str,
    width: u32,
    height: u32,
) -> Result<(RgbImage, PlotLayout)> {
    if width < 120 || height < 100 {
        return Err(VizError::InvalidArgument {
            field: "width/height",
            reason: format!("{width}x{height} is too small (min 120x100)"),
        });
    }
    let finite = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut xl, mut xh, mut yl, mut yh) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in finite {
        xl = xl.min(x);
        xh = xh.max(x);
        yl = yl.min(y);
        yh = yh.max(y);
    }
    if !xl.is_finite() {
        (xl, xh, yl, yh) = (0.0, 1.0, 0.0, 1.0);
    }
    let (x_min, x_max, x_step) = nice_range(xl, xh);
    let (y_min, y_max, y_step) = nice_range(yl, yh);
    let yt = ticks(y_min, y_max, y_step);
    let xt = ticks(x_min, x_max, x_step);
    let ylabels: Vec<String> = yt.iter().map(|&v| tick_label(v, y_step)).collect();
    let ylab_w = ylabels.iter().map(|s| text_width(s, 1)).max().unwrap_or(0);
    let th = text_height(1);
    let left = ylab_w + 16;
    let top = text_height(2) + 16;
    let bottom = height - (th + 16);
    let right = width - 20;
    let layout = PlotLayout {
        width,
        height,
        left,
        right,
        top,
        bottom,
        x_min,
        x_max,
        y_min,
        y_max,
        x_step,
        y_step,
    };
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    // grid + ticks
    for (v, lab) in yt.iter().zip(&ylabels) {
        let py = layout.to_pixel(x_min, *v).1.round() as i64;
        draw_line(&mut img, (left as i64, py), (right as i64, py), GRID_COLOR);
        draw_line(
            &mut img,
            (left as i64 - 5, py),
            (left as i64, py),
            AXIS_COLOR,
        );
        let tx = left as i64 - 8 - text_width(lab, 1) as i64;
        draw_text(&mut img, tx, py - th as i64 / 2, lab, AXIS_COLOR, 1);
    }
    for v in &xt {
        let px = layout.to_pixel(*v, y_min).0.round() as i64;
        draw_line(&mut img, (px, top as i64), (px, bottom as i64), GRID_COLOR);
        draw_line(
            &mut img,
            (px, bottom as i64),
            (px, bottom as i64 + 5),
            AXIS_COLOR,
        );
        let lab = tick_label(*v, x_step);
        let tx = px - text_width(&lab, 1) as i64 / 2;
        draw_text(&mut img, tx, bottom as i64 + 8, &lab, AXIS_COLOR, 1);
    }
    // axes
    draw_line(
        &mut img,
        (left as i64, top as i64),
        (left as i64, bottom as i64),
        AXIS_COLOR,
    );
    draw_line(
        &mut img,
        (left as i64, bottom as i64),
        (right as i64, bottom as i64),
        AXIS_COLOR,
    );
    // title
    let tx = (width as i64 - text_width(title, 2) as i64) / 2;
    draw_text(&mut img, tx.max(0), 6, title, AXIS_COLOR, 2);
    // series
    for (i, (_, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in pts {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let (px, py) = layout.to_pixel(x, y);
            let p = (px.round() as i64, py.round() as i64);
            match prev {
                Some(q) => draw_line(&mut img, q, p, c),
                None => put(&mut img, p.0, p.1, c),
            }
            prev = Some(p);
        }
    }
    // legend (top-right inside the plot area)
    if !series.is_empty() {
        let names: Vec<&str> = series.iter().map(|(n, _)| n.as_ref()).collect();
        let lw = names.iter().map(|n| text_width(n, 1)).max().unwrap_or(0) + 30;
        let lh = names.len() as u32 * (th + 6) + 6;
        let lx = right as i64 - lw as i64 - 8;
        let ly = top as i64 + 8;
        for y in ly..ly + lh as i64 {
            for x in lx..lx + lw as i64 {
                put(&mut img, x, y, BACKGROUND);
            }
        }
        let (x1, y1) = (lx + lw as i64 - 1, ly + lh as i64 - 1);
        for (a, b) in [
            ((lx, ly), (x1, ly)),
            ((x1, ly), (x1, y1)),
            ((x1, y1), (lx, y1)),
            ((lx, y1), (lx, ly)),
        ] {
            draw_line(&mut img, a, b, AXIS_COLOR);
        }
        for (i, n) in names.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let ry = ly + 6 + i as i64 * (th + 6) as i64;
            let my = ry + th as i64 / 2;
            draw_line(&mut img, (lx + 5, my), (lx + 20, my), c);
            draw_line(&mut img, (lx + 5, my + 1), (lx + 20, my + 1), c);
            draw_text(&mut img, lx + 25, ry, n, AXIS_COLOR, 1);
        }
    }
    Ok((img, layout))
}

/// Renders [`render_loss_curve`] at [`DEFAULT_SIZE`] and saves it as PNG.
pub fn loss_curve_png<N: AsRef<str>>(
    path: &Path,
    series: &[(N, Vec<(f64, f64)>)],
    title: &str,
) -> Result<()> {
    let (img, _) = render_loss_curve(series, title, DEFAULT_SIZE.0, DEFAULT_SIZE.1)?;
    save_png(path, &img)
}
