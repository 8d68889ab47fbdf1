use crate::common::json_numbers;
use crate::common::summary;
use medsam::metrics::*;
use serde_json::Value;
use summary::assert_summary_fields;

fn mask(h: usize, w: usize, on: &[(usize, usize)]) -> Vec<bool> {
    let mut m = vec![false; h * w];
    for &(y, x) in on {
        m[y * w + x] = true;
    }
    m
}

fn rect(h: usize, w: usize, y0: usize, x0: usize, y1: usize, x1: usize) -> Vec<bool> {
    let mut m = vec![false; h * w];
    for y in y0..y1 {
        for x in x0..x1 {
            m[y * w + x] = true;
        }
    }
    m
}

#[test]
fn dice_iou_known_overlaps() {
    // gt 4x4 block (16 px), pred shifted by 2 columns -> intersection 8
    let gt = rect(10, 10, 2, 2, 6, 6);
    let pred = rect(10, 10, 2, 4, 6, 8);
    let o = overlap(&gt, &pred, 10, 10).unwrap();
    assert_eq!((o.gt, o.pred, o.inter), (16, 16, 8));
    assert!((dice(&gt, &pred, 10, 10).unwrap() - 0.5).abs() < 1e-12);
    assert!((iou(&gt, &pred, 10, 10).unwrap() - 8.0 / 24.0).abs() < 1e-12);
    // identical
    assert_eq!(dice(&gt, &gt, 10, 10).unwrap(), 1.0);
    assert_eq!(iou(&gt, &gt, 10, 10).unwrap(), 1.0);
    // u8 masks: any non-zero is foreground
    let g8: Vec<u8> = gt.iter().map(|&b| if b { 255 } else { 0 }).collect();
    let p8: Vec<u8> = pred.iter().map(|&b| b as u8).collect();
    assert!((dice(&g8, &p8, 10, 10).unwrap() - 0.5).abs() < 1e-12);
}

#[test]
fn empty_conventions() {
    let e = vec![false; 12];
    let one = mask(3, 4, &[(1, 2)]);
    assert!(dice(&e, &e, 3, 4).unwrap().is_nan());
    assert!(iou(&e, &e, 3, 4).unwrap().is_nan());
    assert!(normalized_surface_dice(&e, &e, 3, 4, [1.0, 1.0], 2.0)
        .unwrap()
        .is_nan());
    for (g, p) in [(&one, &e), (&e, &one)] {
        assert_eq!(dice(g, p, 3, 4).unwrap(), 0.0);
        assert_eq!(iou(g, p, 3, 4).unwrap(), 0.0);
        assert_eq!(
            normalized_surface_dice(g, p, 3, 4, [1.0, 1.0], 2.0).unwrap(),
            0.0
        );
    }
    // one pixel vs itself
    assert_eq!(dice(&one, &one, 3, 4).unwrap(), 1.0);
    assert_eq!(
        normalized_surface_dice(&one, &one, 3, 4, [1.0, 1.0], 0.0).unwrap(),
        1.0
    );
}

#[test]
fn length_errors_name_the_field() {
    let a = vec![false; 12];
    let b = vec![false; 11];
    let e = dice(&a, &b, 3, 4).unwrap_err().to_string();
    assert!(e.contains("`pred`"), "{e}");
    let e = dice(&b, &a, 3, 4).unwrap_err().to_string();
    assert!(e.contains("`gt`"), "{e}");
    let e = normalized_surface_dice(&a, &a, 3, 4, [0.0, 1.0], 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spacing"), "{e}");
}

#[test]
fn bbox_and_box_mask() {
    let m = mask(8, 9, &[(2, 3), (5, 7), (4, 1)]);
    assert_eq!(mask_bbox(&m, 8, 9).unwrap(), Some([1, 2, 7, 5]));
    assert_eq!(mask_bbox(&[false; 72], 8, 9).unwrap(), None);
    let b = box_mask(8, 9, [1, 2, 7, 5]);
    // inclusive: 7 columns x 4 rows
    assert_eq!(b.iter().filter(|&&v| v).count(), 28);
    assert!(b[2 * 9 + 1] && b[5 * 9 + 7] && !b[6 * 9 + 7] && !b[2 * 9 + 8] && !b[9 + 1]);
    // the box baseline contains the mask
    assert!(m.iter().zip(&b).all(|(&mm, &bb)| !mm || bb));
    // clipped to the image
    let c = box_mask(4, 4, [2, 2, 100, 100]);
    assert_eq!(c.iter().filter(|&&v| v).count(), 4);
    assert!(box_mask(4, 4, [3, 0, 1, 3]).iter().all(|&v| !v));
}

#[test]
fn edt_matches_brute_force() {
    let (r, c) = (13, 17);
    let mut feat = vec![false; r * c];
    for &(y, x) in &[(0, 0), (5, 9), (12, 16), (7, 2)] {
        feat[y * c + x] = true;
    }
    let (s0, s1) = (0.7, 1.3);
    let d = euclidean_distance_to(&feat, r, c, s0, s1);
    for y in 0..r {
        for x in 0..c {
            let mut best = f64::INFINITY;
            for yy in 0..r {
                for xx in 0..c {
                    if feat[yy * c + xx] {
                        let dy = (y as f64 - yy as f64) * s0;
                        let dx = (x as f64 - xx as f64) * s1;
                        best = best.min((dy * dy + dx * dx).sqrt());
                    }
                }
            }
            assert!((d[y * c + x] - best).abs() < 1e-12, "({y},{x})");
        }
    }
    assert!(euclidean_distance_to(&[false; 6], 2, 3, 1.0, 1.0)
        .iter()
        .all(|v| v.is_infinite()));
}

#[test]
fn nsd_hand_computed_single_pixels() {
    // two single pixels 3 apart horizontally. Slab mode: each pixel gives a
    // 2x2 block of corner points, each a 1-pixel pattern; the nearest corner
    // points of the two blocks are 2 apart, the far ones up to sqrt(9+1).
    let gt = mask(5, 8, &[(2, 2)]);
    let pred = mask(5, 8, &[(2, 5)]);
    // per mask corner columns are at distance 2 (near pair) and 3 (far pair)
    let v = |t: f64| normalized_surface_dice(&gt, &pred, 5, 8, [1.0, 1.0], t).unwrap();
    assert_eq!(v(1.9), 0.0);
    assert!((v(2.0) - 0.5).abs() < 1e-12);
    assert!((v(3.0) - 1.0).abs() < 1e-12);
    // contour mode gives the same for isolated pixels
    let c = normalized_surface_dice_with(&gt, &pred, 5, 8, [1.0, 1.0], 2.0, NsdMode::Contour2d)
        .unwrap();
    assert!((c - 0.5).abs() < 1e-12);
}

fn decode(rows: &Value) -> Vec<bool> {
    rows.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_str()
                .unwrap()
                .chars()
                .map(|c| c == '1')
                .collect::<Vec<_>>()
        })
        .collect()
}

fn opt(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[test]
fn nsd_parity_with_python_reference() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics/nsd_cases.json"
    );
    let j: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = j["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut checked = 0;
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let h = c["h"].as_u64().unwrap() as usize;
        let w = c["w"].as_u64().unwrap() as usize;
        let sp = c["spacing"].as_array().unwrap();
        let spacing = [sp[0].as_f64().unwrap(), sp[1].as_f64().unwrap()];
        let gt = decode(&c["gt"]);
        let pred = decode(&c["pred"]);
        let d = dice(&gt, &pred, h, w).unwrap();
        let exp = opt(&c["dsc"]);
        assert!(
            (d.is_nan() && exp.is_nan()) || (d - exp).abs() <= 1e-12,
            "{name} dsc {d} vs {exp}"
        );
        let i = iou(&gt, &pred, h, w).unwrap();
        let exp = opt(&c["iou"]);
        assert!((i.is_nan() && exp.is_nan()) || (i - exp).abs() <= 1e-12);
        for (key, mode) in [
            ("nsd_slab", NsdMode::MedSamSlab),
            ("nsd_contour", NsdMode::Contour2d),
        ] {
            for t in j["tolerances"].as_array().unwrap() {
                let t = t.as_f64().unwrap();
                let exp = opt(&c[key][format!("{t:.1}")]);
                let got = normalized_surface_dice_with(&gt, &pred, h, w, spacing, t, mode).unwrap();
                assert!(
                    (got.is_nan() && exp.is_nan()) || (got - exp).abs() <= 1e-6,
                    "{name} {key} tol {t}: rust {got} vs python {exp}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, cases.len() * 6);
}

#[test]
fn accumulators_merge_and_summary() {
    let m = |d: f64, i: f64, n: f64| SampleMetrics {
        dsc: d,
        iou: i,
        nsd: n,
    };
    let mut a = MetricsAccumulator::new();
    a.add(1, &m(0.8, 0.6, 0.9), Some(&m(0.5, 0.4, 0.3)));
    a.add(2, &m(0.4, 0.2, 0.5), Some(&m(0.3, 0.2, 0.1)));
    a.add_timing(2, 4.0);
    let mut b = MetricsAccumulator::new();
    b.add(1, &m(0.6, 0.4, f64::NAN), None);
    b.add(3, &m(f64::NAN, f64::NAN, f64::NAN), None);
    b.add_timing(3, 5.0);
    // sharded == sequential
    let mut seq = a.clone();
    seq.add(1, &m(0.6, 0.4, f64::NAN), None);
    seq.add(3, &m(f64::NAN, f64::NAN, f64::NAN), None);
    a.merge(&b);
    assert_eq!(a.overall, seq.overall);
    assert_eq!(a.per_label, seq.per_label);
    let s = a.summary();
    assert_eq!(s.count, 4);
    assert!((s.dsc.unwrap() - 0.6).abs() < 1e-12); // NaN skipped: (0.8+0.4+0.6)/3
    assert!((s.miou.unwrap() - 0.4).abs() < 1e-12);
    assert!((s.nsd.unwrap() - 0.7).abs() < 1e-12);
    assert_eq!(a.overall.dsc.nan_count, 1);
    assert_eq!(s.per_label["1"].count, 2);
    assert!((s.per_label["1"].dsc.unwrap() - 0.7).abs() < 1e-12);
    assert_eq!(s.per_label["3"].dsc, None);
    assert!((s.box_baseline.dsc.unwrap() - 0.4).abs() < 1e-12);
    // 5 images over max(4, 5) seconds
    assert!((s.images_per_second.unwrap() - 1.0).abs() < 1e-12);

    // JSON shape
    let v: Value = serde_json::to_value(&s).unwrap();
    assert_summary_fields("the summary", &v);
    for k in ["dsc", "miou", "nsd", "count"] {
        assert!(v["per_label"]["2"].get(k).is_some());
    }
    assert!(v["per_label"]["3"]["dsc"].is_null());
    for k in ["dsc", "miou", "nsd"] {
        assert!(v["box_baseline"][k].is_number());
    }
    // atomic write + read back; accumulator round-trips through JSON too
    let dir = std::env::temp_dir().join(format!("medsam_metrics_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("summary.json");
    s.write_json(&p).unwrap();
    let r = MetricsSummary::read_json(&p).unwrap();
    assert_eq!(r.count, s.count);
    assert!((r.dsc.unwrap() - s.dsc.unwrap()).abs() < 1e-12);
    assert_eq!(
        r.per_label.keys().collect::<Vec<_>>(),
        s.per_label.keys().collect::<Vec<_>>()
    );
    assert_eq!(r.per_label["3"].dsc, None);
    assert!(
        std::fs::read_dir(&dir).unwrap().count() == 1,
        "temp file left behind"
    );
    let acc_json = serde_json::to_string(&a).unwrap();
    let back: MetricsAccumulator = serde_json::from_str(&acc_json).unwrap();
    // serde_json's default float parser may be off by 1 ulp: compare sums approximately
    let close = |x: &GroupAcc, y: &GroupAcc| {
        x.count == y.count
            && [(&x.dsc, &y.dsc), (&x.iou, &y.iou), (&x.nsd, &y.nsd)]
                .iter()
                .all(|(p, q)| {
                    p.count == q.count
                        && p.nan_count == q.nan_count
                        && (p.sum - q.sum).abs() < 1e-12
                })
    };
    assert!(close(&back.overall, &a.overall) && close(&back.box_baseline, &a.box_baseline));
    assert_eq!(back.per_label.len(), a.per_label.len());
    assert!(a
        .per_label
        .iter()
        .all(|(k, v)| close(v, &back.per_label[k])));
    assert_eq!(
        (back.images, back.elapsed_seconds),
        (a.images, a.elapsed_seconds)
    );
    let e = MetricsSummary::read_json(&dir.join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn csv_rows() {
    assert_eq!(
        CSV_HEADER,
        "image,label,dsc,iou,nsd,box_dsc,box_iou,box_nsd"
    );
    let m = SampleMetrics {
        dsc: 0.5,
        iou: 1.0 / 3.0,
        nsd: f64::NAN,
    };
    assert_eq!(
        csv_row("a.png", 3, &m, Some(&m)),
        "a.png,3,0.500000,0.333333,nan,0.500000,0.333333,nan"
    );
    assert_eq!(
        csv_row("x,\"y\"", 1, &m, None),
        "\"x,\"\"y\"\"\",1,0.500000,0.333333,nan,,,"
    );
    assert_eq!(csv_row("a", 0, &m, None).split(',').count(), 8);
}

#[test]
fn sample_metrics_bundle() {
    let gt = rect(16, 16, 4, 4, 12, 12);
    let pred = rect(16, 16, 5, 5, 12, 12);
    let s = sample_metrics(&gt, &pred, 16, 16, [1.0, 1.0], 2.0).unwrap();
    assert!((s.dsc - 2.0 * 49.0 / (64.0 + 49.0)).abs() < 1e-12);
    assert!((s.iou - 49.0 / 64.0).abs() < 1e-12);
    // every surfel is within 2 px of the other surface (shift by 1)
    assert!((s.nsd - 1.0).abs() < 1e-12);
    let s0 = normalized_surface_dice(&gt, &pred, 16, 16, [1.0, 1.0], 0.5).unwrap();
    assert!(s0 < 1.0 && s0 > 0.5, "{s0}");
}

// ---- 3-D: DSC / NSD against DeepMind's surface-distance (tests/fixtures/make_metrics3d_fixtures.py)

/// The uint8 `(d, h, w)` masks of `nsd3d_masks.npz`, by member name.
fn read_masks_npz(path: &str) -> std::collections::BTreeMap<String, Vec<bool>> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let name = f.name().trim_end_matches(".npy").to_string();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        let arr = medsam::npy::parse_npy(&bytes, std::path::Path::new(path)).unwrap();
        out.insert(name, arr.to_u8().unwrap().iter().map(|&v| v != 0).collect());
    }
    out
}

fn close(got: f64, exp: f64, tol: f64) -> bool {
    (got.is_nan() && exp.is_nan()) || (got - exp).abs() <= tol
}

#[test]
fn nsd3d_parity_with_surface_distance() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics");
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/nsd3d_cases.json")).unwrap())
            .unwrap();
    let masks = read_masks_npz(&format!("{dir}/nsd3d_masks.npz"));
    let cases = j["cases"].as_array().unwrap();
    assert!(cases.len() >= 13);
    let mut worst = 0.0f64;
    for (i, c) in cases.iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let shape: [usize; 3] = json_numbers::usizes(&c["shape"]).try_into().unwrap();
        let spacing: [f64; 3] = json_numbers::f64s(&c["spacing"]).try_into().unwrap();
        let gt = &masks[&format!("case{i}_gt")];
        let pred = &masks[&format!("case{i}_pred")];
        let sd = compute_surface_distances_3d(gt, pred, shape, spacing).unwrap();
        assert_eq!(
            sd.surfel_areas_gt.len() as u64,
            c["n_surfels_gt"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            sd.surfel_areas_pred.len() as u64,
            c["n_surfels_pred"].as_u64().unwrap(),
            "{name}"
        );
        let area_gt: f64 = sd.surfel_areas_gt.iter().sum();
        let area_pred: f64 = sd.surfel_areas_pred.iter().sum();
        assert!(
            close(area_gt, opt(&c["area_gt"]), 1e-6),
            "{name}: gt area {area_gt}"
        );
        assert!(
            close(area_pred, opt(&c["area_pred"]), 1e-6),
            "{name}: pred area {area_pred}"
        );
        for (t, exp) in c["tolerances"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["nsd"].as_array().unwrap())
        {
            let t = t.as_f64().unwrap();
            let m = volume_metrics(gt, pred, shape, spacing, t).unwrap();
            let exp = opt(exp);
            assert!(
                close(m.nsd, exp, 1e-6),
                "{name} NSD at {t} mm: rust {} vs python {exp}",
                m.nsd
            );
            assert!(
                close(m.dsc, opt(&c["dsc"]), 1e-12),
                "{name} DSC: rust {} vs python {}",
                m.dsc,
                opt(&c["dsc"])
            );
            if !exp.is_nan() {
                worst = worst.max((m.nsd - exp).abs());
            }
        }
    }
    println!(
        "3-D NSD: worst |rust - surface-distance| = {worst:.2e} over {} cases",
        cases.len()
    );
}

#[test]
fn nsd3d_empty_sets_follow_surface_distance() {
    let shape = [3, 4, 5];
    let empty = vec![false; 60];
    let mut one = empty.clone();
    one[27] = true;
    // both empty: 0/0 = NaN (DSC and NSD); one empty: the other's distances are +inf → 0
    let m = volume_metrics(&empty, &empty, shape, [1.0, 2.0, 3.0], 2.0).unwrap();
    assert!(m.dsc.is_nan() && m.nsd.is_nan());
    let m = volume_metrics(&one, &empty, shape, [1.0, 2.0, 3.0], 2.0).unwrap();
    assert_eq!((m.dsc, m.nsd), (0.0, 0.0));
    let sd = compute_surface_distances_3d(&empty, &one, shape, [1.0; 3]).unwrap();
    assert!(sd.distances_gt_to_pred.is_empty());
    assert!(sd.distances_pred_to_gt.iter().all(|d| d.is_infinite()));
    // identical masks: NSD 1 at any tolerance, DSC 1
    let m = volume_metrics(&one, &one, shape, [0.5, 0.5, 4.0], 0.0).unwrap();
    assert_eq!((m.dsc, m.nsd), (1.0, 1.0));
    // bad arguments are named
    let e = volume_metrics(&one, &one, shape, [1.0, 0.0, 1.0], 2.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spacing"), "{e}");
    let e = volume_metrics(&one, &one[..59], shape, [1.0; 3], 2.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pred"), "{e}");
}

#[test]
fn edt3d_matches_brute_force() {
    let shape = [5, 6, 7];
    let spacing = [2.5, 0.7, 1.1];
    let n = 5 * 6 * 7;
    let feat: Vec<bool> = (0..n).map(|i| (i * 37 + 11) % 23 == 0).collect();
    let got = euclidean_distance_to_3d(&feat, shape, spacing);
    let coord = |i: usize| [i / 42, i / 7 % 6, i % 7];
    for (p, &g) in got.iter().enumerate() {
        let cp = coord(p);
        let want = (0..n)
            .filter(|&q| feat[q])
            .map(|q| {
                let cq = coord(q);
                (0..3)
                    .map(|k| ((cp[k] as f64 - cq[k] as f64) * spacing[k]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .fold(f64::INFINITY, f64::min);
        assert!((g - want).abs() < 1e-12, "point {p}: {g} vs {want}");
    }
    assert!(euclidean_distance_to_3d(&vec![false; n], shape, spacing)
        .iter()
        .all(|d| d.is_infinite()));
}
