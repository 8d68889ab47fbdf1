//! Images: resizing with the exact semantics of the reference tools (skimage, OpenCV).

pub mod resize;
