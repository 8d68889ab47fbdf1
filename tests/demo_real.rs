//! The demo's real-scan stage: pretrained LiteMedSAM on the Colin27 MRI against its brain mask.
//! Needs `scripts/fetch_demo_assets.sh` (→ assets/lite_medsam.pth, ch2.nii.gz, ch2bet.nii.gz);
//! without them the scoring test prints "SKIPPED: ..." and returns. The missing-assets behaviour
//! of `medsam demo --real-only` is tested always.

use medsam::demo_real::{find_assets, format_table, run, RealConfig};
use std::path::PathBuf;
use std::process::Command;

fn assets_dir() -> PathBuf {
    std::env::var_os("MEDSAM_DEMO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

#[test]
fn pretrained_lite_segments_the_real_brain() {
    let Some(assets) = find_assets(&assets_dir()) else {
        eprintln!(
            "SKIPPED: pretrained_lite_segments_the_real_brain: demo assets not found under {} — run scripts/fetch_demo_assets.sh or set MEDSAM_DEMO_ASSETS",
            assets_dir().display()
        );
        return;
    };
    let out = std::env::temp_dir().join(format!("medsam-demo-real-{}", std::process::id()));
    let cfg = RealConfig {
        assets,
        out_dir: out.clone(),
        slices: 2,
        margin: 5,
    };
    let mut calls = 0;
    let r = run(&cfg, &mut |_, _| calls += 1).unwrap();
    assert_eq!(r.shape, [181, 217, 181], "Colin27 is 181×217×181 (z, y, x)");
    assert_eq!((r.slices.len(), calls), (2, 2));
    let table = format_table(&r);
    for s in &r.slices {
        // Measured 0.83–0.90 on these slices; far below means the pipeline broke.
        assert!(s.dsc > 0.7, "slice z={} DSC {}\n{table}", s.z, s.dsc);
        assert!(s.bbox[2] > s.bbox[0] && s.bbox[3] > s.bbox[1]);
    }
    assert!(r.figure.is_file() && table.contains("mean"));
}

#[test]
fn real_only_without_assets_says_how_to_get_them() {
    let empty = std::env::temp_dir().join(format!("medsam-demo-noassets-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert!(find_assets(&empty).is_none());
    let o = Command::new(env!("CARGO_BIN_EXE_medsam"))
        .args(["demo", "--real-only", "--assets"])
        .arg(&empty)
        .arg("--out")
        .arg(empty.join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail without assets");
    assert!(
        err.contains("fetch_demo_assets.sh") && err.contains("--real-only"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
