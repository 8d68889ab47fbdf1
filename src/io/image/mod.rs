//! Images: resizing with the exact semantics of the reference tool each pipeline step uses. The
//! names say which: [`skimage`] (MedSAM's `pre_CT_MR.py` and `MedSAM_Inference.py`), [`cv2`]
//! (LiteMedSAM's pipeline) and [`pil`] (SAM's predictor through torchvision, MedSAM2's slices).
//! Nearest neighbour differs between skimage and cv2 (pixel centres vs corners).

pub mod cv2;
pub mod pil;
pub mod skimage;

pub use cv2::{resize_area_u8_cv2, resize_nearest_cv2};
pub use pil::{resize_u8_pil, PilFilter};
pub use skimage::{
    resize_cubic_aa_skimage, resize_cubic_aa_skimage_mode, resize_nearest_skimage,
    resize_nearest_u8_skimage, ResizeMode,
};

#[doc(hidden)]
pub mod resize {
    //! Old names (before the reference tool was part of each name).
    pub use super::skimage::{
        resize_cubic_aa_skimage as resize_cubic_aa,
        resize_cubic_aa_skimage_mode as resize_cubic_aa_mode,
        resize_nearest_skimage as resize_nearest, resize_nearest_u8_skimage as resize_nearest_u8,
        *,
    };
}
