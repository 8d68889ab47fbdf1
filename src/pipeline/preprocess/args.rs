//! Command-line arguments of `medsam preprocess` and `medsam phantom` (clap), kept in the library
//! so their mapping onto [`PreprocessConfig`] is tested; the binary only runs them.

use super::{Modality, PreprocessConfig};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct PreprocessArgs {
    /// Directory of images (`<case><img-name-suffix>`)
    #[arg(long, default_value = "data/FLARE22Train/images")]
    pub nii_path: PathBuf,
    /// Directory of DICOM series, one sub-folder per case named `<case>` (instead of
    /// --nii-path/--img-name-suffix); each folder must hold one series, read with its rescale
    /// (HU) and slice order; the label map must be in that series' voxel order
    #[arg(long)]
    pub dicom_path: Option<PathBuf>,
    /// Directory of label maps (`<case><gt-name-suffix>`)
    #[arg(long, default_value = "data/FLARE22Train/labels")]
    pub gt_path: PathBuf,
    /// Output directory (imgs/ and gts/ are created inside)
    #[arg(long, default_value = "data/npy/CT_Abd")]
    pub npy_path: PathBuf,
    /// CT or MR
    #[arg(long, default_value = "CT")]
    pub modality: Modality,
    /// Anatomy / dataset name used in output file names
    #[arg(long, default_value = "Abd")]
    pub anatomy: String,
    #[arg(long, default_value = "_0000.nii.gz")]
    pub img_name_suffix: String,
    #[arg(long, default_value = ".nii.gz")]
    pub gt_name_suffix: String,
    /// Label ids set to background (comma separated); pass an empty string for none
    #[arg(long, value_delimiter = ',', default_value = "12")]
    pub remove_label_ids: Vec<String>,
    /// Label id converted to 26-connected instances
    #[arg(long)]
    pub tumor_id: Option<u8>,
    /// CT window level (HU)
    #[arg(long, default_value_t = 40.0)]
    pub window_level: f64,
    /// CT window width (HU)
    #[arg(long, default_value_t = 400.0)]
    pub window_width: f64,
    /// Output slice size (square)
    #[arg(long, default_value_t = 1024)]
    pub image_size: usize,
    /// Minimum 2-D component size (8-connected, per slice)
    #[arg(long, default_value_t = 100)]
    pub voxel_num_thre2d: usize,
    /// Minimum 3-D component size (26-connected)
    #[arg(long, default_value_t = 1000)]
    pub voxel_num_thre3d: usize,
    /// Cases processed in parallel (0 = all cores)
    #[arg(long, default_value_t = 4)]
    pub num_workers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessCliError {
    #[error("--remove-label-ids: `{0}` is not a label id in 0..=255")]
    LabelId(String),
    #[error(transparent)]
    Preprocess(#[from] super::PreprocessError),
}

crate::error::wrap_into_error!(PreprocessCliError);

impl PreprocessArgs {
    pub fn to_config(&self) -> Result<PreprocessConfig, PreprocessCliError> {
        let remove_label_ids = self
            .remove_label_ids
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u8>()
                    .map_err(|_| PreprocessCliError::LabelId(s.into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreprocessConfig {
            nii_path: self.nii_path.clone(),
            dicom_path: self.dicom_path.clone(),
            gt_path: self.gt_path.clone(),
            npy_path: self.npy_path.clone(),
            modality: self.modality,
            anatomy: self.anatomy.clone(),
            img_name_suffix: self.img_name_suffix.clone(),
            gt_name_suffix: self.gt_name_suffix.clone(),
            remove_label_ids,
            tumor_id: self.tumor_id,
            window_level: self.window_level,
            window_width: self.window_width,
            image_size: self.image_size,
            voxel_num_thre2d: self.voxel_num_thre2d,
            voxel_num_thre3d: self.voxel_num_thre3d,
            num_workers: self.num_workers,
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PhantomArgs {
    /// Output directory (images/ and labels/ are created inside)
    #[arg(long, default_value = "data/phantom")]
    pub out: PathBuf,
    /// Number of cases
    #[arg(long, default_value_t = 4)]
    pub cases: usize,
    /// PRNG seed (same seed, same volumes)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Volume size as XxYxZ
    #[arg(long, default_value = "128x128x32", value_parser = parse_size)]
    pub size: (usize, usize, usize),
}

/// Parses `XxYxZ` (e.g. `128x128x32`).
pub fn parse_size(s: &str) -> Result<(usize, usize, usize), String> {
    let parts: Vec<&str> = s.split(['x', 'X', ',']).collect();
    if parts.len() != 3 {
        return Err(format!("`{s}`: expected XxYxZ, e.g. 128x128x32"));
    }
    let p = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|e| format!("`{s}`: bad dimension `{t}`: {e}"))
    };
    Ok((p(parts[0])?, p(parts[1])?, p(parts[2])?))
}
