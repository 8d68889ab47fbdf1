//! Synthetic abdominal-CT-like phantoms in the FLARE22 layout, for demos and tests.
//!
//! `<out>/images/<case>_0000.nii.gz` (int16 HU) and `<out>/labels/<case>.nii.gz` (uint8 ids).
//! Everything is driven by a SplitMix64 stream seeded from `(seed, case index)`, so a seed
//! always gives byte-identical volumes regardless of thread scheduling.
//!
//! Content (all sizes relative to the volume so any size works): air (−1000 HU) outside an
//! elliptical body whose outline varies along z; a subcutaneous fat ring (≈ −100 HU) around
//! soft tissue (≈ 40 HU) with smooth texture; organs as smooth, lumpy ellipsoids with FLARE22
//! ids — liver 1 (≈ 60 HU), right kidney 2 and left kidney 13 (medulla ≈ 30 HU, bright
//! cortex), spleen 3 (≈ 50 HU), aorta 5 (≈ 180 HU tube), duodenum 12 (removed by the default
//! `remove_label_ids`), a bright tumour 14 inside the liver, the right kidney touching the
//! liver, and a few tiny "gallbladder" (9) specks that the 3-D dust filter removes; Gaussian
//! noise (σ ≈ 12 HU) on top.

use crate::io::nifti::{write_nifti_gz, NiftiError};
use crate::rng::{Rng, GOLDEN_GAMMA};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nifti(#[from] NiftiError),
    #[error("invalid phantom size {0:?}: every dimension must be in 8..=4096")]
    Size((usize, usize, usize)),
}

crate::error::wrap_into_error!(PhantomError);

/// What [`make_phantom`] wrote.
#[derive(Debug, Clone)]
pub struct PhantomCase {
    pub name: String,
    pub image: PathBuf,
    pub label: PathBuf,
    /// Voxel count per label id (index = id).
    pub label_voxels: Vec<usize>,
}

/// Default phantom size `(x, y, z)`.
pub const DEFAULT_SIZE: (usize, usize, usize) = (128, 128, 32);

/// A lumpy ellipsoid in normalised coordinates (fractions of the volume size).
struct Blob {
    c: [f64; 3],
    r: [f64; 3],
    lump: f64,
    phase: f64,
    freq: f64,
}

impl Blob {
    fn new(rng: &mut Rng, c: [f64; 3], r: [f64; 3], jitter: f64) -> Blob {
        let mut j = |v: f64| v * (1.0 + rng.range(-jitter, jitter));
        Blob {
            c: [j(c[0]), j(c[1]), c[2]],
            r: [j(r[0]), j(r[1]), j(r[2])],
            lump: rng.range(0.04, 0.12),
            phase: rng.range(0.0, std::f64::consts::TAU),
            freq: (2 + (rng.next_u64() % 3)) as f64,
        }
    }
    /// Normalised radius (< 1 inside).
    fn rho(&self, p: [f64; 3]) -> f64 {
        let d = [
            (p[0] - self.c[0]) / self.r[0],
            (p[1] - self.c[1]) / self.r[1],
            (p[2] - self.c[2]) / self.r[2],
        ];
        let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        let ang = d[1].atan2(d[0]);
        r / (1.0 + self.lump * (self.freq * ang + self.phase).sin())
    }
}

/// Generates `cases` phantoms into `out_dir` (FLARE22 layout). `size` is `(x, y, z)`.
pub fn make_phantom(
    out_dir: impl AsRef<Path>,
    cases: usize,
    seed: u64,
    size: (usize, usize, usize),
) -> Result<Vec<PhantomCase>, PhantomError> {
    let (nx, ny, nz) = size;
    if [nx, ny, nz].iter().any(|&d| !(8..=4096).contains(&d)) {
        return Err(PhantomError::Size(size));
    }
    let out_dir = out_dir.as_ref();
    let images = out_dir.join("images");
    let labels = out_dir.join("labels");
    for d in [&images, &labels] {
        std::fs::create_dir_all(d).map_err(|source| PhantomError::Io {
            path: d.clone(),
            source,
        })?;
    }
    let mut out = Vec::with_capacity(cases);
    for i in 0..cases {
        let name = format!("Phantom_{:04}", i + 1);
        let case_seed = seed
            .wrapping_mul(0x2545_F491_4F6C_DD1D)
            .wrapping_add((i as u64 + 1).wrapping_mul(GOLDEN_GAMMA));
        let (img, lab) = generate_case(case_seed, size);
        let spacing = [
            350.0 / nx as f64, // ~35 cm field of view
            350.0 / ny as f64,
            (160.0 / nz as f64).max(1.0),
        ];
        let ip = images.join(format!("{name}_0000.nii.gz"));
        let lp = labels.join(format!("{name}.nii.gz"));
        write_nifti_gz(&ip, [nz, ny, nx], &img, spacing)?;
        write_nifti_gz(&lp, [nz, ny, nx], &lab, spacing)?;
        let mut counts = vec![0usize; 256];
        lab.iter().for_each(|&v| counts[v as usize] += 1);
        let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        counts.truncate(last + 1);
        out.push(PhantomCase {
            name,
            image: ip,
            label: lp,
            label_voxels: counts,
        });
    }
    Ok(out)
}

/// One phantom: `(z, y, x)` HU image and label map.
pub fn generate_case(seed: u64, size: (usize, usize, usize)) -> (Vec<i16>, Vec<u8>) {
    let (nx, ny, nz) = size;
    let mut rng = Rng::from_state(seed);
    // body outline
    let body_a = rng.range(0.40, 0.46);
    let body_b = rng.range(0.30, 0.36);
    let fat = rng.range(0.06, 0.1);
    // texture: a few smooth waves
    let waves: Vec<([f64; 3], f64, f64)> = (0..4)
        .map(|_| {
            (
                [
                    rng.range(2.0, 9.0),
                    rng.range(2.0, 9.0),
                    rng.range(0.5, 3.0),
                ],
                rng.range(0.0, std::f64::consts::TAU),
                rng.range(3.0, 8.0),
            )
        })
        .collect();
    // organs: (label, blob, HU)
    let liver = Blob::new(&mut rng, [0.34, 0.45, 0.55], [0.2, 0.17, 0.38], 0.08);
    let spleen = Blob::new(&mut rng, [0.72, 0.40, 0.6], [0.08, 0.1, 0.25], 0.1);
    // right kidney placed against the liver's lower edge so the two touch
    let rk = Blob::new(
        &mut rng,
        [liver.c[0] + 0.02, liver.c[1] + liver.r[1] + 0.05, 0.42],
        [0.07, 0.08, 0.25],
        0.05,
    );
    let lk = Blob::new(&mut rng, [0.66, 0.63, 0.45], [0.07, 0.08, 0.25], 0.08);
    let duod = Blob::new(&mut rng, [0.52, 0.55, 0.35], [0.07, 0.03, 0.15], 0.1);
    let tumour = Blob::new(
        &mut rng,
        [liver.c[0] - 0.05, liver.c[1] - 0.03, 0.55],
        [0.075, 0.075, 0.2],
        0.1,
    );
    let aorta_c = [rng.range(0.5, 0.54), rng.range(0.58, 0.62)];
    let aorta_r = 0.05;
    let specks: Vec<Blob> = (0..3)
        .map(|k| {
            let c = [
                rng.range(0.4, 0.6),
                rng.range(0.35, 0.5),
                0.2 + 0.25 * k as f64,
            ];
            Blob::new(&mut rng, c, [0.015, 0.015, 0.05], 0.1)
        })
        .collect();
    let hu_liver = rng.range(55.0, 65.0);
    let hu_spleen = rng.range(45.0, 55.0);

    let n = nx * ny * nz;
    let mut img = vec![0i16; n];
    let mut lab = vec![0u8; n];
    for z in 0..nz {
        let pz = (z as f64 + 0.5) / nz as f64;
        let shrink = 1.0 - 0.25 * (pz - 0.5) * (pz - 0.5);
        for y in 0..ny {
            let py = (y as f64 + 0.5) / ny as f64;
            for x in 0..nx {
                let px = (x as f64 + 0.5) / nx as f64;
                let p = [px, py, pz];
                let idx = (z * ny + y) * nx + x;
                let ex = (px - 0.5) / (body_a * shrink);
                let ey = (py - 0.5) / (body_b * shrink);
                let rb = (ex * ex + ey * ey).sqrt();
                let noise = 12.0 * rng.normal();
                if rb >= 1.0 {
                    img[idx] = (-1000.0 + noise).round() as i16;
                    continue;
                }
                let tex: f64 = waves
                    .iter()
                    .map(|(f, ph, amp)| {
                        amp * (std::f64::consts::TAU * (f[0] * px + f[1] * py + f[2] * pz) + ph)
                            .sin()
                    })
                    .sum();
                let mut hu = if rb > 1.0 - fat { -100.0 } else { 40.0 } + tex;
                let mut l = 0u8;
                if liver.rho(p) < 1.0 {
                    hu = hu_liver + tex;
                    l = 1;
                }
                if tumour.rho(p) < 1.0 {
                    hu = 120.0 + tex;
                    l = 14;
                }
                if spleen.rho(p) < 1.0 {
                    hu = hu_spleen + tex;
                    l = 3;
                }
                for (k, id) in [(&rk, 2u8), (&lk, 13u8)] {
                    let r = k.rho(p);
                    if r < 1.0 {
                        hu = if r > 0.7 { 150.0 } else { 30.0 } + tex;
                        l = id;
                    }
                }
                if duod.rho(p) < 1.0 {
                    hu = 35.0 + tex;
                    l = 12;
                }
                let (dx, dy) = (px - aorta_c[0], py - aorta_c[1]);
                if (dx * dx + dy * dy).sqrt() < aorta_r && pz > 0.1 && pz < 0.95 {
                    hu = 180.0 + tex;
                    l = 5;
                }
                for s in &specks {
                    if s.rho(p) < 1.0 {
                        hu = 20.0 + tex;
                        l = 9;
                    }
                }
                img[idx] = (hu + noise).round().clamp(-1024.0, 3071.0) as i16;
                lab[idx] = l;
            }
        }
    }
    (img, lab)
}
