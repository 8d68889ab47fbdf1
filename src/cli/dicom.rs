//! `medsam dicom`: list the series of a DICOM folder, read one (timed) and optionally convert it
//! to NIfTI with its geometry.

use super::common::show;
use medsam::io::dicom::{
    format_series_list, list_series, read_series_compact, write_nifti_with_geometry,
};
use medsam::io::npy::NpyData;
use medsam::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DicomArgs {
    /// Folder of DICOM files (searched recursively) or one DICOM file.
    pub dir: PathBuf,
    /// SeriesInstanceUID to read when the folder holds several series.
    #[arg(long)]
    pub series: Option<String>,
    /// Write the series as NIfTI (.nii.gz; int16 when the values fit, else float32) with its
    /// geometry (LPS → RAS affine).
    #[arg(long = "to-nifti")]
    pub to_nifti: Option<PathBuf>,
}

pub fn run(a: &DicomArgs) -> Result<()> {
    let err = |e: medsam::io::dicom::DicomError| Error::Other(e.to_string());
    let series = list_series(&a.dir).map_err(err)?;
    println!("{} series in {}:", series.len(), show(&a.dir));
    println!("{}", format_series_list(&series));
    if series.len() > 1 && a.series.is_none() {
        println!("choose one with --series UID to read it");
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let s = read_series_compact(&a.dir, a.series.as_deref()).map_err(err)?;
    let secs = t0.elapsed().as_secs_f64();
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    let v = &s.volume;
    let (lo, hi) = v.range();
    let g = &s.geometry;
    println!(
        "read {} ({}): {}×{}×{} (D×H×W) in {secs:.3} s",
        s.info.series_instance_uid, s.info.modality, v.shape[0], v.shape[1], v.shape[2]
    );
    println!("  values    [{lo}, {hi}] ({:?})", v.kind());
    println!("  spacing   {:?} mm (x, y, z)", g.spacing);
    println!("  origin    {:?} mm (LPS)", g.origin);
    println!(
        "  axes      x {:?} y {:?} z {:?}",
        g.axes[0], g.axes[1], g.axes[2]
    );
    if let Some(out) = &a.to_nifti {
        let werr = |e: medsam::io::dicom::DicomError| Error::file(out, e.to_string());
        if let NpyData::I16(d) = &v.voxels {
            write_nifti_with_geometry(out, v.shape, d, g).map_err(werr)?;
        } else {
            let d: Vec<f32> = v.to_f64().iter().map(|&x| x as f32).collect();
            write_nifti_with_geometry(out, v.shape, &d, g).map_err(werr)?;
        }
        println!("wrote {}", show(out));
    }
    Ok(())
}
