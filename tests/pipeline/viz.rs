use std::path::PathBuf;

use image::Rgb;
use medsam::viz::plot::{BACKGROUND, PALETTE};
use medsam::viz::*;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam_viz_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gradient(h: usize, w: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[(x * 4) as u8, (y * 4) as u8, 100]);
        }
    }
    v
}

fn blend(p: [u8; 3], c: Rgb<u8>) -> [u8; 3] {
    [0, 1, 2].map(|i| (0.4 * p[i] as f32 + 0.6 * c.0[i] as f32).round() as u8)
}

#[test]
fn mask_png_roundtrip() {
    let d = tmpdir("mask");
    let (h, w) = (7, 9);
    let mut m = vec![0u8; h * w];
    m[2 * w + 3] = 1;
    m[6 * w + 8] = 7;
    let p = d.join("m.png");
    save_mask_png(&p, &m, h, w).unwrap();
    let img = image::open(&p).unwrap();
    assert_eq!(img.color(), image::ColorType::L8);
    let g = img.to_luma8();
    assert_eq!(g.dimensions(), (w as u32, h as u32));
    for y in 0..h {
        for x in 0..w {
            let e = if m[y * w + x] != 0 { 255 } else { 0 };
            assert_eq!(g.get_pixel(x as u32, y as u32).0[0], e);
        }
    }
    // wrong length names the field, nothing written
    let e = save_mask_png(&d.join("bad.png"), &m[1..], h, w)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`mask`"), "{e}");
    assert!(!d.join("bad.png").exists());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "temp files left");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn overlay_box_and_tint() {
    let (h, w) = (40, 50);
    let img = gradient(h, w);
    let mut mask = vec![false; h * w];
    for y in 15..25 {
        for x in 20..30 {
            mask[y * w + x] = true;
        }
    }
    let bbox = [10, 8, 40, 30];
    let out = overlay(&img, h, w, &mask, &[bbox]).unwrap();
    assert_eq!(out.dimensions(), (w as u32, h as u32));
    let px = |x: usize, y: usize| out.get_pixel(x as u32, y as u32).0;
    let orig = |x: usize, y: usize| {
        [
            img[(y * w + x) * 3],
            img[(y * w + x) * 3 + 1],
            img[(y * w + x) * 3 + 2],
        ]
    };
    // outline: 2 px on every side, inclusive bounds
    for &(x, y) in &[
        (10, 8),
        (11, 9),
        (40, 30),
        (39, 29),
        (25, 8),
        (25, 9),
        (10, 20),
        (40, 20),
        (25, 30),
    ] {
        assert_eq!(px(x, y), BOX_COLOR.0, "box pixel ({x},{y})");
    }
    // just inside / outside the outline untouched
    for &(x, y) in &[(12, 10), (9, 8), (41, 30), (25, 31), (25, 7), (5, 5)] {
        assert_eq!(px(x, y), orig(x, y), "({x},{y})");
    }
    // mask tinted exactly
    for &(x, y) in &[(20, 15), (29, 24), (25, 20)] {
        assert_eq!(px(x, y), blend(orig(x, y), MASK_COLOR), "({x},{y})");
    }
    assert_eq!(px(19, 15), orig(19, 15));
    // saved PNG decodes to the same pixels
    let d = tmpdir("overlay");
    let p = d.join("o.png");
    save_overlay_png(&p, &img, h, w, &mask, &[bbox]).unwrap();
    assert_eq!(image::open(&p).unwrap().to_rgb8(), out);
    assert!(overlay(&img[3..], h, w, &mask, &[]).is_err());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn comparison_figure_panels() {
    let (h, w) = (32, 32);
    let img = vec![60u8; h * w * 3];
    let mut gt = vec![false; h * w];
    let mut pred = vec![false; h * w];
    for y in 8..20 {
        for x in 8..20 {
            gt[y * w + x] = true;
            pred[(y + 2) * w + x + 2] = true;
        }
    }
    let rows = [
        ComparisonRow {
            image: &img,
            h,
            w,
            gt: &gt,
            pred: &pred,
            bbox: Some([8, 8, 19, 19]),
            title: "case 1",
        },
        ComparisonRow {
            image: &img,
            h,
            w,
            gt: &gt,
            pred: &gt,
            bbox: None,
            title: "case 2",
        },
    ];
    let fig = comparison_figure(&rows).unwrap();
    let (origins, size) = comparison_layout(&rows);
    assert_eq!(fig.dimensions(), size);
    let cw = origins[0][1].0 - origins[0][0].0 - FIG_PAD;
    assert_eq!(cw, font::text_width("Pred DSC 0.00", FIG_TEXT_SCALE));
    assert_eq!(size.0, 3 * cw + 4 * FIG_PAD);
    let at = |(ox, oy): (u32, u32), x: u32, y: u32| fig.get_pixel(ox + x, oy + y).0;
    let base = [60, 60, 60];
    // row 0: panel 0 has the box, no tint; panel 1 gt tint; panel 2 pred tint
    assert_eq!(at(origins[0][0], 8, 8), BOX_COLOR.0);
    assert_eq!(at(origins[0][0], 12, 12), base);
    assert_eq!(at(origins[0][1], 9, 9), blend(base, GT_COLOR));
    assert_eq!(at(origins[0][1], 21, 21), base);
    assert_eq!(at(origins[0][2], 21, 21), blend(base, MASK_COLOR));
    assert_eq!(at(origins[0][2], 9, 9), base);
    // row 1 has no box
    assert_eq!(at(origins[1][0], 8, 8), base);
    // label bands contain dark text pixels above each panel
    for o in &origins[0] {
        let band_top = o.1 - 2 * 7 - FIG_PAD;
        let dark = (band_top..o.1)
            .flat_map(|y| (o.0..o.0 + 32).map(move |x| (x, y)))
            .filter(|&(x, y)| fig.get_pixel(x, y).0 == [0, 0, 0])
            .count();
        assert!(dark > 10, "no label above panel {o:?}");
    }
    // labels are exactly the expected text: render it on white and compare the band
    // gt 12x12, pred shifted by (2,2): DSC = 2*100/288 = 0.694
    let label_band = |o: (u32, u32), text: &str| {
        let bh = 2 * 7 + FIG_PAD;
        let mut exp = image::RgbImage::from_pixel(cw, bh, Rgb([255, 255, 255]));
        font::draw_text(&mut exp, 0, 0, text, Rgb([0, 0, 0]), FIG_TEXT_SCALE);
        let got = image::imageops::crop_imm(&fig, o.0, o.1 - bh, cw, bh).to_image();
        assert_eq!(got, exp, "label {text:?}");
    };
    label_band(origins[0][0], "Image");
    label_band(origins[0][1], "GT");
    label_band(origins[0][2], "Pred DSC 0.69");
    label_band(origins[1][2], "Pred DSC 1.00");
    let d = tmpdir("cmp");
    let p = d.join("c.png");
    save_comparison_png(&p, &rows).unwrap();
    assert_eq!(image::open(&p).unwrap().to_rgb8(), fig);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn font_glyphs_distinct() {
    use medsam::viz::font::glyph;
    let chars: Vec<char> = (33u8..=126).map(|c| c as char).collect();
    for (i, a) in chars.iter().enumerate() {
        assert!(glyph(*a).iter().any(|&r| r != 0), "{a} empty");
        assert!(glyph(*a).iter().all(|&r| r < 32), "{a} wider than 5");
        for b in &chars[i + 1..] {
            assert_ne!(glyph(*a), glyph(*b), "{a} == {b}");
        }
    }
    assert_eq!(glyph('\u{e9}'), glyph('?'));
}

#[test]
fn loss_curve_line_where_expected() {
    // y = 10 - x on x in [0, 10]: a straight descending line
    let pts: Vec<(f64, f64)> = (0..=10).map(|i| (i as f64, 10.0 - i as f64)).collect();
    let series = vec![
        ("train".to_string(), pts),
        ("val".to_string(), vec![(0.0, 5.0), (10.0, 5.0)]),
    ];
    let (img, lay) = render_loss_curve(&series, "Loss", 400, 300).unwrap();
    assert_eq!(img.dimensions(), (400, 300));
    assert_eq!(
        (lay.x_min, lay.x_max, lay.y_min, lay.y_max),
        (0.0, 10.0, 0.0, 10.0)
    );
    let c0 = PALETTE[0];
    let c1 = PALETTE[1];
    // pixels along the line (sampled densely, away from the legend) have the series colour
    for k in 0..=80 {
        let x = k as f64 * 0.1;
        let (px, py) = lay.to_pixel(x, 10.0 - x);
        let p = (px.round() as u32, py.round() as u32);
        let near = (-1i64..=1)
            .flat_map(|dy| (-1i64..=1).map(move |dx| (dx, dy)))
            .any(|(dx, dy)| {
                *img.get_pixel((p.0 as i64 + dx) as u32, (p.1 as i64 + dy) as u32) == c0
            });
        assert!(near, "no curve pixel near x={x} at {p:?}");
        if k % 10 == 0 && k != 50 {
            // (x = 5 is where the val line crosses and is drawn on top)
            // data points are drawn exactly at their rounded position
            assert_eq!(*img.get_pixel(p.0, p.1), c0, "x={x} at {p:?}");
        }
    }
    // the horizontal val line at y=5 is exactly one row
    let (_, py) = lay.to_pixel(0.0, 5.0);
    let row = py.round() as u32;
    let (xa, _) = lay.to_pixel(1.0, 5.0);
    let (xb, _) = lay.to_pixel(4.0, 5.0);
    for x in xa.round() as u32..=xb.round() as u32 {
        assert_eq!(*img.get_pixel(x, row), c1);
        assert_ne!(*img.get_pixel(x, row - 3), c1);
    }
    // series colour appears nowhere far from both lines
    for y in lay.top..=lay.bottom {
        for x in lay.left..=lay.right {
            if *img.get_pixel(x, y) == c0 {
                let (dx0, _) = lay.to_pixel(0.0, 0.0);
                let xd = (x as f64 - dx0) / (lay.right - lay.left) as f64 * 10.0;
                let yd = (lay.bottom - y) as f64 / (lay.bottom - lay.top) as f64 * 10.0;
                let in_legend = y < lay.top + 40 && x > lay.right - 80;
                assert!(
                    in_legend || ((xd + yd) - 10.0).abs() < 0.3,
                    "stray pixel ({x},{y})"
                );
            }
        }
    }
    // axes, tick labels and title produce black pixels; image is not uniform
    let black = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
    assert!(black > 500, "{black}");
    assert!(img.pixels().any(|p| *p != BACKGROUND));
    // tick-label region left of the y axis has ink
    let ink = (lay.top..=lay.bottom)
        .flat_map(|y| (0..lay.left - 6).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0 == [0, 0, 0])
        .count();
    assert!(ink > 50);
    // saved PNG
    let d = tmpdir("loss");
    let p = d.join("loss.png");
    loss_curve_png(&p, &series, "Loss").unwrap();
    let dec = image::open(&p).unwrap().to_rgb8();
    assert_eq!(dec.dimensions(), plot::DEFAULT_SIZE);
    let first = *dec.get_pixel(0, 0);
    assert!(dec.pixels().any(|p| *p != first));
    assert!(dec.pixels().any(|p| *p == c0) && dec.pixels().any(|p| *p == c1));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn loss_curve_degenerate_inputs() {
    // constant series, NaNs, empty series: still renders
    let s = vec![
        ("flat", vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 1.0)]),
        ("empty", vec![]),
    ];
    let (img, lay) = render_loss_curve(&s, "flat", 300, 200).unwrap();
    assert!(lay.y_min < 1.0 && lay.y_max > 1.0);
    assert!(img.pixels().any(|p| *p == PALETTE[0]));
    assert!(render_loss_curve(&s, "x", 10, 10).is_err());
}
