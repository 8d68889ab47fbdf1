//! Volume files of the CVPR24 LiteMedSAM challenge and NIfTI: reading a uint8 `(D, H, W)` volume
//! with its boxes and voxel spacing (or, from a 2D challenge `.npz`, a uint8 `(H, W, 3)` image with
//! its boxes: [`read_challenge_npz`]), and writing segmentations as `.npz` (`np.savez_compressed`
//! layout, member `segs`).

use crate::error::{Error, Result};
use crate::io::atomic::write_bytes_atomic;
use crate::io::{nifti, npy};
use crate::pipeline::infer::lite::Box3d;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A uint8 `(D, H, W)` volume with its boxes (from the file, if any) and voxel spacing `(x, y, z)`.
pub struct Volume {
    pub shape: (usize, usize, usize),
    pub data: Vec<u8>,
    pub boxes: Option<Vec<Box3d>>,
    pub spacing: [f64; 3],
    /// What the reader changed on the way in (e.g. a min-max scaling to 0–255), for the caller
    /// to show; `None` when the values were used as stored.
    pub note: Option<String>,
}

fn npz_member(
    path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    key: &str,
) -> Result<Option<npy::NpyArray>> {
    let name = format!("{key}.npy");
    let f = match zip.by_name(&name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(Error::file(path, format!("{name}: {e}"))),
    };
    // The header's claimed size is checked first; the inflated bytes are counted as they come.
    let limits = crate::io::limits::Limits::current_or_default();
    let max = limits.max_voxels.saturating_mul(8).saturating_add(1 << 20);
    if f.size() > max {
        return Err(crate::io::limits::too_big(
            path,
            &format!("member {name}"),
            max,
        ));
    }
    let bytes = crate::io::limits::read_bounded(f, max, path, &format!("member {name}"))?;
    let member = PathBuf::from(format!("{}:{name}", path.display()));
    npy::parse_npy(&bytes, &member)
        .map(Some)
        .map_err(Error::from)
}

/// Opens an `.npz` (a zip archive) and lists its members' names (without `.npy`).
fn open_npz(path: &Path) -> Result<(zip::ZipArchive<std::fs::File>, Vec<String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::file(path, format!("not an .npz (zip) archive: {e}")))?;
    let keys = zip
        .file_names()
        .map(|n| n.trim_end_matches(".npy").to_string())
        .collect();
    Ok((zip, keys))
}

/// The `imgs` member of a challenge `.npz`; its absence is an error naming `expected`.
fn npz_imgs(
    path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    keys: &[String],
    expected: &str,
) -> Result<npy::NpyArray> {
    npz_member(path, zip, "imgs")?.ok_or_else(|| {
        Error::file(
            path,
            format!(
                "no `imgs` array (keys: {}); expected {expected}",
                keys.join(", ")
            ),
        )
    })
}

/// Reads a CVPR24 LiteMedSAM challenge `.npz`: `imgs` (D, H, W) uint8, optional `boxes` (N, 6)
/// and `spacing` (3).
pub fn read_npz_volume(path: &Path) -> Result<Volume> {
    let (mut zip, keys) = open_npz(path)?;
    let imgs = npz_imgs(path, &mut zip, &keys, "imgs (D, H, W) uint8")?;
    let boxes = npz_member(path, &mut zip, "boxes")?;
    volume_from_members(path, &mut zip, imgs, boxes)
}

/// The [`Volume`] of a 3D challenge `.npz` from its `imgs` and `boxes` (and `spacing`, read here).
fn volume_from_members(
    path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    imgs: npy::NpyArray,
    boxes: Option<npy::NpyArray>,
) -> Result<Volume> {
    let (d, h, w) = shape_3d(path, "imgs", &imgs, "volume")?;
    if d == 0 || h == 0 || w == 0 {
        return Err(Error::file(path, format!("`imgs` is empty: {d}×{h}×{w}")));
    }
    let data = imgs
        .to_u8()
        .map_err(|e| Error::file(path, format!("`imgs` must be uint8: {e}")))?;
    let boxes = match boxes {
        None => None,
        Some(b) => {
            let n = match b.shape.as_slice() {
                &[n, 6] => n,
                &[6] => 1,
                s => {
                    return Err(Error::file(
                        path,
                        format!("`boxes` has shape {s:?}; 3D boxes are (N, 6) [x_min, y_min, z_min, x_max, y_max, z_max]"),
                    ))
                }
            };
            let v = b.to_f64();
            if let Some(x) = v.iter().find(|x| x.fract() != 0.0 || !x.is_finite()) {
                return Err(Error::file(
                    path,
                    format!("`boxes` holds {x}; box coordinates must be integers"),
                ));
            }
            Some(
                (0..n)
                    .map(|i| std::array::from_fn(|j| v[i * 6 + j] as i64))
                    .collect(),
            )
        }
    };
    let spacing = match npz_member(path, zip, "spacing")? {
        Some(s) if s.len() == 3 => {
            let v = s.to_f64();
            [v[0], v[1], v[2]].map(|x| if x.is_finite() && x > 0.0 { x } else { 1.0 })
        }
        _ => [1.0; 3],
    };
    Ok(Volume {
        shape: (d, h, w),
        data,
        boxes,
        spacing,
        note: None,
    })
}

/// Which of the challenge's two `.npz` layouts a file follows (or a caller's boxes ask for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpzKind {
    /// `imgs` (H, W, 3) uint8 with `boxes` (N, 4) `[x_min, y_min, x_max, y_max]`
    /// (upstream's `MedSAM_infer_npz_2D`).
    Image2d,
    /// `imgs` (D, H, W) uint8 with `boxes` (N, 6) (upstream's `MedSAM_infer_npz_3D`).
    Volume3d,
}

/// A 2D challenge image: uint8, row-major `h × w × channels` (`imgs` (H, W, 3), or (H, W) grey
/// with `channels` 1), with the file's boxes `[x_min, y_min, x_max, y_max]` in pixels, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct NpzImage2d {
    pub h: usize,
    pub w: usize,
    pub channels: usize,
    pub data: Vec<u8>,
    pub boxes: Option<Vec<[f64; 4]>>,
}

/// A challenge `.npz` of either layout.
pub enum ChallengeNpz {
    Image2d(NpzImage2d),
    Volume3d(Volume),
}

/// Reads a CVPR24 challenge `.npz`, 2D or 3D. The shape of `boxes` decides: (N, 4) or (4,) is a
/// 2D image, (N, 6) or (6,) a 3D volume. Without `boxes`, `prompt` (the kind of boxes the caller
/// brings) decides, and without that the shape of `imgs`: (H, W, 3) or (H, W) is a 2D image,
/// any other rank-3 shape a volume. A `prompt` that contradicts the file's `boxes` is an error.
pub fn read_challenge_npz(path: &Path, prompt: Option<NpzKind>) -> Result<ChallengeNpz> {
    let (mut zip, keys) = open_npz(path)?;
    let imgs = npz_imgs(
        path,
        &mut zip,
        &keys,
        "imgs (H, W, 3) uint8 (2D) or (D, H, W) uint8 (3D)",
    )?;
    let boxes = npz_member(path, &mut zip, "boxes")?;
    let from_boxes = match boxes.as_ref().map(|b| b.shape.as_slice()) {
        None => None,
        Some(&[_, 4] | &[4]) => Some(NpzKind::Image2d),
        Some(&[_, 6] | &[6]) => Some(NpzKind::Volume3d),
        Some(s) => {
            return Err(Error::file(
                path,
                format!(
                    "`boxes` has shape {s:?}; expected (N, 4) [x_min, y_min, x_max, y_max] for a 2D image or (N, 6) [x_min, y_min, z_min, x_max, y_max, z_max] for a 3D volume"
                ),
            ))
        }
    };
    let kind = match (from_boxes, prompt) {
        (Some(file), Some(given)) if file != given => {
            let (is, takes) = match file {
                NpzKind::Image2d => ("a 2D image (`boxes` (N, 4))", "2D boxes (--box)"),
                NpzKind::Volume3d => ("a 3D volume (`boxes` (N, 6))", "3D boxes (--box3d)"),
            };
            return Err(Error::file(
                path,
                format!("is {is}: give {takes}, or none to use the file's `boxes`"),
            ));
        }
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => match imgs.shape.as_slice() {
            &[_, _] | &[_, _, 3] => NpzKind::Image2d,
            &[_, _, _] => NpzKind::Volume3d,
            s => {
                return Err(Error::file(
                    path,
                    format!(
                        "`imgs` has shape {s:?}; expected (H, W, 3) or (H, W) uint8 for a 2D image, (D, H, W) uint8 for a 3D volume"
                    ),
                ))
            }
        },
    };
    match kind {
        NpzKind::Image2d => image_2d_from_members(path, imgs, boxes).map(ChallengeNpz::Image2d),
        NpzKind::Volume3d => {
            volume_from_members(path, &mut zip, imgs, boxes).map(ChallengeNpz::Volume3d)
        }
    }
}

/// The [`NpzImage2d`] of a 2D challenge `.npz` from its `imgs` and `boxes`.
fn image_2d_from_members(
    path: &Path,
    imgs: npy::NpyArray,
    boxes: Option<npy::NpyArray>,
) -> Result<NpzImage2d> {
    let (h, w, channels) = match *imgs.shape.as_slice() {
        [h, w, 3] => (h, w, 3),
        [h, w] => (h, w, 1),
        ref s => {
            return Err(Error::file(
                path,
                format!("`imgs` has shape {s:?}; a 2D image needs (H, W, 3) or (H, W) uint8 (a 3D volume, (D, H, W), takes 3D boxes)"),
            ))
        }
    };
    if h == 0 || w == 0 {
        return Err(Error::file(path, format!("`imgs` is empty: {h}×{w}")));
    }
    // Upstream asserts values < 256 and resizes the array as it is; only uint8 gives its
    // numbers (cv2's INTER_AREA rounds uint8 results, not float ones), so nothing is converted.
    if !imgs.is_u8() {
        let (lo, hi) = imgs
            .to_f64()
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        return Err(Error::file(
            path,
            format!(
                "`imgs` is {} with values in [{lo}, {hi}]; a 2D image must be uint8 (0–255)",
                imgs.data.descr()
            ),
        ));
    }
    let data = imgs.to_u8().map_err(|e| Error::file(path, e))?;
    let boxes = match boxes {
        None => None,
        Some(b) => {
            let n = match *b.shape.as_slice() {
                [n, 4] => n,
                [4] => 1,
                ref s => {
                    let expected = "2D boxes are (N, 4) [x_min, y_min, x_max, y_max]";
                    return Err(Error::file(
                        path,
                        format!("`boxes` has shape {s:?}; {expected}"),
                    ));
                }
            };
            let v = b.to_f64();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::file(
                    path,
                    format!(
                        "`boxes`[{}] holds {}; box coordinates must be finite",
                        i / 4,
                        v[i]
                    ),
                ));
            }
            Some(
                (0..n)
                    .map(|i| std::array::from_fn(|j| v[i * 4 + j]))
                    .collect(),
            )
        }
    };
    Ok(NpzImage2d {
        h,
        w,
        channels,
        data,
        boxes,
    })
}

/// `(D, H, W)` of the `.npz` member `name`, which holds a 3D `what`.
fn shape_3d(
    path: &Path,
    name: &str,
    a: &npy::NpyArray,
    what: &str,
) -> Result<(usize, usize, usize)> {
    match *a.shape.as_slice() {
        [d, h, w] => Ok((d, h, w)),
        _ => Err(Error::file(
            path,
            format!(
                "`{name}` has shape {:?}; a 3D {what} needs (D, H, W)",
                a.shape
            ),
        )),
    }
}

/// Reads the label map of a CVPR24 challenge `.npz`: `gts` (D, H, W), integer labels 0–255.
pub fn read_npz_labels(path: &Path) -> Result<((usize, usize, usize), Vec<u8>)> {
    let (mut zip, _) = open_npz(path)?;
    let gts = npz_member(path, &mut zip, "gts")?
        .ok_or_else(|| Error::file(path, "no `gts` array: a label .npz needs gts (D, H, W)"))?;
    let (d, h, w) = shape_3d(path, "gts", &gts, "label map")?;
    let v = gts.to_f64();
    if let Some(x) = v
        .iter()
        .find(|x| !(x.fract() == 0.0 && (0.0..=255.0).contains(*x)))
    {
        return Err(Error::file(
            path,
            format!("`gts` holds {x}; labels must be integers in 0..=255"),
        ));
    }
    Ok(((d, h, w), v.iter().map(|&x| x as u8).collect()))
}

/// The `spacing` member of a challenge `.npz` as stored (`None` when absent), for callers that
/// refuse a non-positive spacing rather than take [`read_npz_volume`]'s fallback of 1.
pub fn read_npz_spacing(path: &Path) -> Result<Option<Vec<f64>>> {
    let (mut zip, _) = open_npz(path)?;
    Ok(npz_member(path, &mut zip, "spacing")?.map(|s| s.to_f64()))
}

/// Reads a NIfTI volume as uint8: values already integers in 0–255 as they are, anything else
/// min-max scaled to 0–255 over the volume (with a note; window CT beforehand for best results).
pub fn read_nifti_volume(path: &Path) -> Result<Volume> {
    let v = nifti::read_nifti(path)?;
    check_finite(path, &v)?;
    Ok(u8_volume(path, &v))
}

/// Refuses a volume holding NaN or infinity (its segmentation would be meaningless).
pub fn check_finite(path: &Path, v: &nifti::NiftiVolume) -> Result<()> {
    let bad = v.data.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        return Err(Error::file(
            path,
            format!(
                "volume holds {bad} NaN or infinite voxel(s); a segmentation of it would be meaningless"
            ),
        ));
    }
    Ok(())
}

/// A NIfTI or DICOM volume (read from `path`) as uint8, as [`read_nifti_volume`] converts it.
pub fn u8_volume(path: &Path, v: &nifti::NiftiVolume) -> Volume {
    let [d, h, w] = v.shape;
    let integral = v
        .data
        .iter()
        .all(|&x| x.fract() == 0.0 && (0.0..=255.0).contains(&x));
    let mut note = None;
    let data = if integral {
        v.data.iter().map(|&x| x as u8).collect()
    } else {
        let (lo, hi) = v
            .data
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        note = Some(format!(
            "{} has values in [{lo}, {hi}], not uint8; min-max scaled to 0–255 (window CT first for LiteMedSAM's intensity convention)",
            path.display()
        ));
        let r = (hi - lo).max(1e-8);
        v.data
            .iter()
            .map(|&x| ((x - lo) / r * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect()
    };
    Volume {
        shape: (d, h, w),
        data,
        boxes: None,
        spacing: v.spacing,
        note,
    }
}

/// Writes `segs` (D, H, W) uint8 as a one-member `.npz` (`np.savez_compressed` layout), atomically.
pub fn write_npz_segs(path: &Path, shape: (usize, usize, usize), segs: &[u8]) -> Result<()> {
    let (d, h, w) = shape;
    if d * h * w != segs.len() {
        return Err(Error::arg(
            "segs",
            format!("{} values for a {d}×{h}×{w} volume", segs.len()),
        ));
    }
    let member = npy::encode_npy_u8(&[d, h, w], segs);
    write_npz_members(path, &[("segs", member)])
}

/// Writes `segs` (H, W) uint8 as a one-member `.npz`, atomically: the output of upstream's
/// `MedSAM_infer_npz_2D` (uint8, as the 3D writer's).
pub fn write_npz_segs_2d(path: &Path, (h, w): (usize, usize), segs: &[u8]) -> Result<()> {
    if h * w != segs.len() {
        return Err(Error::arg(
            "segs",
            format!("{} values for a {h}×{w} image", segs.len()),
        ));
    }
    let member = npy::encode_npy_u8(&[h, w], segs);
    write_npz_members(path, &[("segs", member)])
}

/// Writes `.npy` members (`name` → `name.npy`, bytes from [`npy::encode_npy`]) as a deflated
/// `.npz` (`np.savez_compressed` layout), atomically.
pub fn write_npz_members(path: &Path, members: &[(&str, Vec<u8>)]) -> Result<()> {
    let zipped = (|| -> zip::result::ZipResult<Vec<u8>> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, member) in members {
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .large_file(member.len() >= u32::MAX as usize);
            z.start_file(format!("{name}.npy"), opts)?;
            z.write_all(member)?;
        }
        Ok(z.finish()?.into_inner())
    })()
    .map_err(|e| Error::file(path, format!("zipping the .npz members: {e}")))?;
    write_bytes_atomic(path, &zipped).map_err(|e| Error::io(path, e))
}

/// Whether `path` names a NIfTI file (`.nii`, `.nii.gz`).
pub fn is_nifti_path(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// Writes a `(D, H, W)` segmentation of `input` as `.nii.gz`, atomically: with the input's
/// header geometry (pixdim, qform/sform codes and matrices, units) when the input is a NIfTI
/// file, otherwise axis-aligned with `spacing` (e.g. from an `.npz`).
pub fn write_nifti_segs(
    out: &Path,
    input: &Path,
    shape: (usize, usize, usize),
    segs: &[u8],
    spacing: [f64; 3],
) -> Result<()> {
    let (d, h, w) = shape;
    let geometry = if is_nifti_path(input) {
        nifti::read_nifti_geometry(input)?
    } else {
        nifti::NiftiGeometry::from_affine(spacing, None)
    };
    nifti::write_nifti_gz_geometry(out, [d, h, w], segs, &geometry)?;
    Ok(())
}
