"""MedSAM / LiteMedSAM from Python, backed by the ``medsam`` Rust crate.

>>> import medsam_rs
>>> p = medsam_rs.Predictor("medsam_vit_b.pth")
>>> p.set_image(image)                      # (H, W, 3) or (H, W); uint8, or float in [0, 1]
>>> masks, iou, low_res = p.predict(box=np.array([x0, y0, x1, y1]))

Compute releases the GIL. Errors are ``MedsamError`` (base), ``InvalidArgumentError`` (also a
``ValueError``) and ``MedsamFileNotFoundError`` (also a ``FileNotFoundError``).
"""
from . import metrics
from ._native import (
    InvalidArgumentError,
    MedsamError,
    MedsamFileNotFoundError,
    Predictor,
    __version__,
    load_checkpoint,
    normalize_ct_mr,
    preprocess_ct_mr,
    save_checkpoint,
    segment_volume,
    train,
)

__all__ = [
    "InvalidArgumentError",
    "MedsamError",
    "MedsamFileNotFoundError",
    "Predictor",
    "__version__",
    "load_checkpoint",
    "metrics",
    "normalize_ct_mr",
    "preprocess_ct_mr",
    "save_checkpoint",
    "segment_volume",
    "train",
]
