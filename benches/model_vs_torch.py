"""Whole-model timings, ours vs PyTorch CPU, side by side in one run (same machine, same thread
count, runs interleaved). Prints each measurement and the ratio ours/PyTorch.

    python benches/model_vs_torch.py encode [--precision f32|bf16] [--repeats 2]
    python benches/model_vs_torch.py train  [--precision f32|bf16]
    python benches/model_vs_torch.py infer            # whole `medsam infer` process vs MedSAM_Inference-style script

Needs a Python with torch and segment-anything (e.g. MEDSAM_PYTHON=/path/to/venv/bin/python).
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_WORKER = r'''
import sys, time, resource, torch, torch.nn.functional as F
from segment_anything import sam_model_registry
mode, precision, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
sam = sam_model_registry["vit_b"]()
x = torch.rand(1, 3, 1024, 1024)
ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else (lambda: torch.autocast("cpu", enabled=False))
times = []
if mode == "encode":
    sam.eval()
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with ctx():
                sam.image_encoder(x)
            times.append(time.perf_counter() - t0)
else:
    sam.train()
    for p in sam.prompt_encoder.parameters():
        p.requires_grad_(False)
    params = list(sam.image_encoder.parameters()) + list(sam.mask_decoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    gt = torch.zeros(1, 1, 1024, 1024); gt[..., 300:600, 350:700] = 1
    box = torch.tensor([[[340.0, 290.0, 710.0, 610.0]]])
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with ctx():
            emb = sam.image_encoder(x)
            with torch.no_grad():
                sp, de = sam.prompt_encoder(points=None, boxes=box, masks=None)
            low, _ = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sp, de, False)
            up = F.interpolate(low, size=(1024, 1024), mode="bilinear", align_corners=False)
        up = up.float(); p = torch.sigmoid(up)
        dice = 1 - (2 * (p * gt).sum((2, 3)) + 1e-5) / ((gt ** 2).sum((2, 3)) + (p ** 2).sum((2, 3)) + 1e-5)
        loss = dice.mean() + F.binary_cross_entropy_with_logits(up, gt)
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t0)
warm = sorted(times[1:])
print(f"RESULT impl=torch mode={mode} precision={precision} first_s={times[0]:.3f} best_s={warm[0]:.3f} "
      f"median_s={warm[len(warm)//2]:.3f} peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} "
      f"threads={torch.get_num_threads()}")
'''

INFER_TORCH = r'''
import sys, numpy as np, torch, torch.nn.functional as F
from skimage import io, transform
from segment_anything import sam_model_registry
ckpt, img_path, box = sys.argv[1], sys.argv[2], sys.argv[3]
sam = sam_model_registry["vit_b"](checkpoint=ckpt).eval()
img = io.imread(img_path)
img3 = np.repeat(img[:, :, None], 3, axis=-1) if img.ndim == 2 else img
H, W, _ = img3.shape
i1024 = transform.resize(img3, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
i1024 = (i1024 - i1024.min()) / np.clip(i1024.max() - i1024.min(), 1e-8, None)
t = torch.tensor(i1024).float().permute(2, 0, 1).unsqueeze(0)
b = np.array([[int(v) for v in box[1:-1].split(",")]]) / np.array([W, H, W, H]) * 1024
with torch.no_grad():
    emb = sam.image_encoder(t)
    sp, de = sam.prompt_encoder(points=None, boxes=torch.as_tensor(b, dtype=torch.float)[:, None, :], masks=None)
    low, _ = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sp, de, False)
    seg = (F.interpolate(torch.sigmoid(low), size=(H, W), mode="bilinear", align_corners=False) > 0.5)
io.imsave(sys.argv[4], (seg.squeeze().numpy() * 255).astype(np.uint8), check_contrast=False)
'''


def python():
    return os.environ.get("MEDSAM_PYTHON", sys.executable)


def parse(line):
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def run(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    return parse(lines[-1])


def timed_process(cmd):
    """Wall seconds of `cmd`, and its resource use: user and system seconds, minor and major
    page faults (this child's, from the difference of RUSAGE_CHILDREN), and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    use = {k: getattr(after, k) - getattr(before, k) for k in ("ru_utime", "ru_stime", "ru_minflt", "ru_majflt")}
    return wall, use, out.stderr


def usage(wall, use):
    return (f"user {use['ru_utime']:.2f} s, sys {use['ru_stime']:.2f} s "
            f"({100 * use['ru_stime'] / wall:.1f}% of wall), "
            f"page faults {use['ru_minflt']} minor / {use['ru_majflt']} major")


def model_mode(mode, precision, repeats, rounds):
    subprocess.run(["cargo", "build", "--release", "--example", "bench_model"], cwd=ROOT, check=True)
    ours = [os.path.join(ROOT, "target/release/examples/bench_model"), mode, "vit_b", precision, str(repeats)]
    theirs = [python(), "-c", TORCH_WORKER, mode, precision, str(repeats)]
    rows = []
    for r in range(rounds):  # interleave to share the machine's noise
        rows.append((run(theirs), run(ours)))
    for t, o in rows:
        print(f"torch {mode} {precision}: best {t['best_s']} s, peak {t['peak_rss_mb']} MB | "
              f"ours: best {o['best_s']} s, peak {o['peak_rss_mb']} MB | "
              f"time ratio ours/torch {float(o['best_s']) / float(t['best_s']):.2f}, "
              f"memory ratio {float(o['peak_rss_mb']) / float(t['peak_rss_mb']):.2f}")


def infer_mode(rounds):
    subprocess.run(["cargo", "build", "--release", "--bin", "medsam"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="medsam-bench-")
    ckpt, img = os.path.join(tmp, "vit_b_random.pth"), os.path.join(tmp, "img.png")
    subprocess.run([python(), "-c", (
        "import torch, numpy as np; from skimage import io; from segment_anything import sam_model_registry;"
        "torch.manual_seed(0); torch.save(sam_model_registry['vit_b']().state_dict(), r'%s');"
        "y, x = np.mgrid[:512, :512]; io.imsave(r'%s', ((np.sin(x / 9) + np.cos(y / 13)) * 60 + 128).astype(np.uint8))"
    ) % (ckpt, img)], check=True)
    box = "[100,120,380,400]"
    ours = [os.path.join(ROOT, "target/release/medsam"), "infer", "-i", img, "-o", tmp, "--box", box, "-c", ckpt,
            "--timings"]
    theirs = [python(), "-c", INFER_TORCH, ckpt, img, box, os.path.join(tmp, "torch_seg.png")]
    for _ in range(rounds):
        t, tuse, _ = timed_process(theirs)
        o, ouse, err = timed_process(ours)
        print(f"whole process, one box: torch {t:.2f} s | ours {o:.2f} s | ratio ours/torch {o / t:.2f}")
        print(f"  torch: {usage(t, tuse)}")
        print(f"  ours:  {usage(o, ouse)}")
        stages = [l for l in err.splitlines() if l.startswith("timings:")]
        print(f"  ours {stages[-1] if stages else 'timings: (none printed)'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["encode", "train", "infer"])
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.mode == "infer":
        infer_mode(a.rounds)
    else:
        model_mode(a.mode, a.precision, a.repeats, a.rounds)


if __name__ == "__main__":
    main()
