"""MedSAM's quick-start notebook, cell by cell, with medsam_rs instead of PyTorch.

    python examples/python_predictor.py [--checkpoint medsam_vit_b.pth] [--lite lite_medsam.pth]

Without --checkpoint it runs the same cells on the repository's tiny test SAM (random weights,
64×64 input), so it doubles as a smoke test in CI; the masks are then meaningless, the calls are
not. With --lite it also segments a synthetic volume with LiteMedSAM's slice propagation.
"""
import argparse
import os
import tempfile
import time

import numpy as np

import medsam_rs

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def tiny_checkpoint(tmp):
    """The Rust tests' tiny SAM (weights stored under "w." next to test inputs) as a .pth file."""
    w = medsam_rs.load_checkpoint(os.path.join(ROOT, "tests/fixtures/sam/tiny_sam.safetensors"))
    path = os.path.join(tmp, "tiny_sam.pth")
    medsam_rs.save_checkpoint(path, {k[2:]: v for k, v in w.items() if k.startswith("w.")})
    return path, os.path.join(ROOT, "tests/fixtures/sam/tiny_sam_config.json")


def phantom(h=180, w=240):
    """A CT-like slice (HU) with one bright organ, and its ground-truth mask."""
    y, x = np.mgrid[:h, :w]
    organ = ((x - 140) / 45.0) ** 2 + ((y - 90) / 30.0) ** 2 < 1.0
    body = ((x - 120) / 110.0) ** 2 + ((y - 90) / 85.0) ** 2 < 1.0
    hu = np.where(body, 20.0, -1000.0) + 120.0 * organ + np.sin(x / 7.0) * 5
    return hu, organ


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="MedSAM/SAM checkpoint (.pth or .safetensors)")
    ap.add_argument("--lite", help="LiteMedSAM checkpoint, for the 3D cell")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # %% Load the model (model type and configuration come from the checkpoint's shapes).
        ckpt, config = (args.checkpoint, None) if args.checkpoint else tiny_checkpoint(tmp)
        predictor = medsam_rs.Predictor(ckpt, config=config)
        print(predictor)

        # %% An image: CT window to uint8 (pre_CT_MR.py's normalisation), grey → the model's 3 channels.
        hu, truth = phantom()
        img = medsam_rs.normalize_ct_mr(hu, "CT", window_level=40, window_width=400)
        H, W = img.shape

        # %% Embed once (the expensive part; the GIL is released meanwhile).
        t0 = time.perf_counter()
        predictor.set_image(img)
        print(f"image {H}x{W}: embedding {predictor.get_image_embedding().shape} "
              f"in {time.perf_counter() - t0:.3f} s")

        # %% Prompt with a box in image pixels (x0, y0, x1, y1), as in the notebook.
        ys, xs = np.nonzero(truth)
        box = np.array([xs.min() - 5, ys.min() - 5, xs.max() + 5, ys.max() + 5])
        masks, iou, low_res = predictor.predict(box=box)
        seg = masks[0]
        print(f"box {box.tolist()}: mask {seg.shape}, {int(seg.sum())} px, predicted IoU {iou[0]:.3f}, "
              f"low-res logits {low_res.shape}")
        print(f"DSC {medsam_rs.metrics.dice(truth, seg):.3f}  NSD {medsam_rs.metrics.nsd(truth, seg):.3f}")

        # %% Several boxes at once, and points with multimask output.
        boxes = np.stack([box, box + np.array([-10, -10, 10, 10])])
        m2, iou2, _ = predictor.predict(box=boxes)
        m3, iou3, _ = predictor.predict(point_coords=np.array([[140.0, 90.0]]), point_labels=np.array([1]),
                                        multimask_output=True)
        print(f"2 boxes: masks {m2.shape}; 1 point, multimask: masks {m3.shape}, IoU {[round(float(v), 3) for v in iou3]}")

        # %% LiteMedSAM: a volume, propagated slice by slice from each 3D box's middle slice.
        if args.lite:
            lite = medsam_rs.Predictor(args.lite)
            vol = np.stack([img] * 5)
            z = [0]
            segs = medsam_rs.segment_volume(lite, vol, np.array([[*box[:2], 0, *box[2:], 5]]),
                                            progress=lambda b, zz: z.append(zz))
            print(f"volume {vol.shape}: {int((segs == 1).sum())} voxels labelled over {len(z) - 1} slices")


if __name__ == "__main__":
    main()
