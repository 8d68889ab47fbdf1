//! Tiny synthetic training data in MedSAM's npy layout (`imgs/`, `gts/`).

use std::path::Path;

/// `n` 64×64 slices `s<i>.npy`, each a bright box-shaped organ (label 1) that moves and grows
/// with `i`, on a dark background.
pub fn write_box_slices(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    std::fs::create_dir_all(dir.join("gts")).unwrap();
    for i in 0..n {
        let mut gt = vec![0u8; 64 * 64];
        for y in 10 + i..30 + i {
            for x in 20..40 + 2 * i {
                gt[y * 64 + x] = 1;
            }
        }
        let img: Vec<f64> = gt.iter().flat_map(|&g| [0.2 + 0.6 * g as f64; 3]).collect();
        let name = format!("s{i}.npy");
        medsam::npy::write_npy_f64(dir.join("imgs").join(&name), &[64, 64, 3], &img).unwrap();
        medsam::npy::write_npy_u8(dir.join("gts").join(&name), &[64, 64], &gt).unwrap();
    }
}
