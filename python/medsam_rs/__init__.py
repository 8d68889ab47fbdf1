"""MedSAM / LiteMedSAM from Python, backed by the ``medsam`` Rust crate.

>>> import medsam_rs
>>> p = medsam_rs.Predictor("medsam_vit_b.pth")
>>> p.set_image(image)                      # (H, W, 3) or (H, W); uint8, or float in [0, 1]
>>> masks, iou, low_res = p.predict(box=np.array([x0, y0, x1, y1]))

MedSAM2 / SAM 2.1 (SAM2VideoPredictor's shape; a volume's slices are its frames):

>>> v = medsam_rs.VideoPredictor("MedSAM2_latest.pt")
>>> state = v.init_state(slices_uint8)      # (N, H, W) or (N, H, W, 3)
>>> _, obj_ids, logits = v.add_new_points_or_box(state, frame_idx=k, obj_id=1, box=box)
>>> for t, obj_ids, logits in v.propagate_in_video(state): ...
>>> labels = v.segment_volume(ct, boxes3d, window=(40, 400))   # MedSAM2's 3D recipe

Compute releases the GIL. Errors are ``MedsamError`` (base), ``InvalidArgumentError`` (also a
``ValueError``) and ``MedsamFileNotFoundError`` (also a ``FileNotFoundError``).
"""
from . import metrics
from ._native import (
    InvalidArgumentError,
    MedsamError,
    MedsamFileNotFoundError,
    InferenceState,
    Predictor,
    VideoPredictor,
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
    "InferenceState",
    "Predictor",
    "VideoPredictor",
    "__version__",
    "load_checkpoint",
    "metrics",
    "normalize_ct_mr",
    "preprocess_ct_mr",
    "save_checkpoint",
    "segment_volume",
    "train",
]
