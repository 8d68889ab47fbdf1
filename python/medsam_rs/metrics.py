"""Segmentation metrics as MedSAM evaluates them (2-D masks; non-zero = foreground)."""
from ._native import dice, iou, nsd

__all__ = ["dice", "iou", "nsd"]
