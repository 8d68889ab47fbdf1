"""Floating-point work per propagated frame of MedSAM2 (t512), counted by PyTorch's own
FlopCounterMode on the official `sam2` package (random weights of the real config, as
benches/sam2_vs_torch.py uses). A multiply-add counts 2, attention included.

Why it matters: a speed target is only reachable if the machine can do that work in the time.
The script prints the GFLOP per frame once the memory bank is full (num_maskmem frames in it)
and the sustained rate a given time per frame would need.

    MEDSAM_PYTHON=/path/to/venv/bin/python $MEDSAM_PYTHON benches/sam2_flops.py [--frames 12]
"""
import argparse
import os
import sys
import warnings

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=12, help="frames to propagate (>= num_maskmem + 3)")
    ap.add_argument("--counted", type=int, default=2, help="last frames whose work is counted")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import sam2.sam2_video_predictor as svp
    from make_sam2_fixtures import T512, build

    model = build(T512)
    size = T512["image_size"]
    frames = torch.randn(a.frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    svp.load_video_frames = lambda **kw: (frames, 256, 256)
    box = np.array([60, 60, 190, 190], np.float32)
    with torch.inference_mode():
        enc = FlopCounterMode(display=False)
        with enc:
            model.forward_image(frames[:1])
        state = model.init_state(video_path="unused")
        model.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=box)
        steps = model.propagate_in_video(state, start_frame_idx=0)
        for _ in range(a.frames - a.counted):
            next(steps)
        step = FlopCounterMode(display=False)
        with step:
            for _ in range(a.counted):
                next(steps)
    per_step = step.get_total_flops() / a.counted
    by_module = {m: sum(c.values()) / a.counted for m, c in step.get_flop_counts().items()}
    print(f"image encoder: {enc.get_total_flops() / 1e9:.1f} GFLOP per frame")
    print(f"one propagation step (memory bank full): {per_step / 1e9:.1f} GFLOP")
    for name in ("ImageEncoder", "MemoryAttention", "MemoryEncoder", "SAM2Base"):
        hits = [v for m, v in by_module.items() if m.split(".")[-1] == name or m == name]
        if hits:
            print(f"  {name}: {max(hits) / 1e9:.1f} GFLOP")
    for t in (1.0, 0.5):
        print(f"{t:.2f} s per frame needs {per_step / t / 1e9:.0f} GFLOP/s sustained")


if __name__ == "__main__":
    main()
