"""MedSAM2 (t512) on a whole volume, ours (`medsam infer --model-type medsam2`) vs the official
`sam2` package's `SAM2VideoPredictor` on CPU, interleaved on the same input. Both run
MedSAM2's 3D recipe (`medsam2_infer_3D_CT.py`): every slice resized to 512² (Pillow bicubic),
a box on the middle slice, a forward pass, reset, the same box and a reverse pass.
Weights are random (SAM2's t512 config, filled by name as the parity fixtures are) and saved
by the official code as a `{"model": state_dict}` .pt, which our CLI loads unchanged.

Reports per side: whole-run wall time (process: load + preprocess + segment), segmentation
time, per-slice propagation time, image-encoder vs memory-path (everything else) split, and
peak RSS (the child process's ru_maxrss).

    MEDSAM_PYTHON=/path/to/venv/bin/python $MEDSAM_PYTHON benches/sam2_vs_torch.py \
        [--slices 64] [--size 256] [--rounds 1] [--precision f32,bf16,int8] \
        [--medsam target/release/medsam]

`--precision`: ours runs once per listed precision of its image encoder in every round (its
memory attention then runs in bf16; the heads and the memory encoder stay f32); PyTorch runs in
f32, as the official recipe does on a CPU.

Needs torch, sam2 (1.1.0) and numpy in MEDSAM_PYTHON; build the CLI first
(`cargo build --release`). On a shared machine the figures are indicative only.
"""
import argparse
import os
import subprocess
import sys
import time

from lite_vs_torch import ROOT, python  # noqa: E402  (the benches share the oracle's python)

PREPARE = r'''
import json, os, sys, numpy as np, torch
sys.path.insert(0, os.path.join(sys.argv[1], "tests", "fixtures"))
from make_sam2_fixtures import T512, build
out, d, s = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = build(T512)
torch.save({"model": model.state_dict()}, os.path.join(out, "bench_t512.pt"))
json.dump({"model": T512}, open(os.path.join(out, "bench_t512.json"), "w"))
z, y, x = np.meshgrid(np.arange(d), np.arange(s), np.arange(s), indexing="ij")
r = s * (0.18 + 0.08 * np.sin(np.pi * z / max(d - 1, 1)))
blob = (x - 0.5 * s) ** 2 + (y - 0.48 * s) ** 2 <= r ** 2
rng = np.random.default_rng(0)
imgs = np.clip(60 + 120 * blob + rng.normal(0, 12, blob.shape), 0, 255).astype(np.uint8)
box = [int(0.25 * s), int(0.23 * s), 0, int(0.75 * s), int(0.73 * s), d]
np.savez_compressed(os.path.join(out, "bench.npz"), imgs=imgs, boxes=np.array([box]),
                    spacing=np.array([1.0, 1.0, 2.5]))
print("RESULT box=" + ",".join(map(str, box)))
'''

TORCH_WORKER = r'''
import os, sys, time, warnings, numpy as np, torch
warnings.filterwarnings("ignore")
t_start = time.perf_counter()
sys.path.insert(0, os.path.join(sys.argv[1], "tests", "fixtures"))
from PIL import Image
import sam2.sam2_video_predictor as svp
from make_sam2_fixtures import T512, build
out = sys.argv[2]
model = build(T512)
sd = torch.load(os.path.join(out, "bench_t512.pt"), map_location="cpu", weights_only=True)
model.load_state_dict(sd["model"])
enc = [0.0]
fwd_image = model.forward_image
def timed_forward_image(img):
    t0 = time.perf_counter(); r = fwd_image(img); enc[0] += time.perf_counter() - t0; return r
model.forward_image = timed_forward_image
t_seg = time.perf_counter()
npz = np.load(os.path.join(out, "bench.npz"))
imgs, box = npz["imgs"], npz["boxes"][0]
d, h, w = imgs.shape
S = T512["image_size"]
frames = np.stack([np.array(Image.fromarray(sl).convert("RGB").resize((S, S))) for sl in imgs])
x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
x = (x - mean) / std
svp.load_video_frames = lambda **kw: (x, h, w)
key = (int(box[2]) + int(box[5]) - 1) // 2
bbox = np.array([box[0], box[1], box[3], box[4]], dtype=np.float32)
segs = np.zeros((d, h, w), np.uint8)
steps = []
with torch.inference_mode():
    state = model.init_state(video_path="unused")
    for reverse in (False, True):
        model.reset_state(state)
        model.add_new_points_or_box(state, frame_idx=key, obj_id=1, box=bbox)
        t0 = time.perf_counter()
        for t, _, logits in model.propagate_in_video(state, start_frame_idx=key, reverse=reverse):
            segs[t][(logits[0, 0] > 0).numpy()] = 1
            t1 = time.perf_counter(); steps.append(t1 - t0); t0 = t1
t_end = time.perf_counter()
print(f"RESULT impl=torch wall_s={t_end - t_start:.2f} seg_s={t_end - t_seg:.2f} steps={len(steps)} "
      f"per_slice_s={np.median(steps):.3f} encoder_s={enc[0]:.2f} threads={torch.get_num_threads()} "
      f"fg={int(segs.sum())}")
'''


def run_child(cmd):
    """Runs `cmd`; returns its stdout (exits with its stderr on failure)."""
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p.stdout


def peak_rss_mib(cmd):
    """Runs `cmd` under os.wait4 to read its own usage; returns (stdout, wall s, peak RSS MiB,
    CPU s) — CPU seconds tell more than wall time on a shared machine."""
    import tempfile
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return out, wall, ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime


def result(out):
    line = [l for l in out.splitlines() if l.startswith("RESULT")][-1]
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def ours(medsam, work, box, precision):
    cmd = [medsam, "infer", "--model-type", "medsam2", "--precision", precision,
           "-c", os.path.join(work, "bench_t512.pt"),
           "--model-config", os.path.join(work, "bench_t512.json"),
           "-i", os.path.join(work, "bench.npz"), "-o", os.path.join(work, "out"),
           "--box3d", "[" + box + "]", "--no-fill-holes"]
    out, wall, rss, cpu = peak_rss_mib(cmd)
    # "1 object(s), N slice step(s) in X s (image encoder Y s)"
    line = [l for l in out.splitlines() if "slice step(s)" in l][-1].split()
    steps, seg, enc = int(line[2]), float(line[6]), float(line[10])
    return {"wall_s": wall, "seg_s": seg, "steps": steps, "per_slice_s": seg / steps,
            "encoder_s": enc, "rss_mib": rss, "cpu_s": cpu}


def torch_side(work):
    out, wall, rss, cpu = peak_rss_mib([python(), "-c", TORCH_WORKER, ROOT, work])
    r = result(out)
    return {"wall_s": wall, "seg_s": float(r["seg_s"]), "steps": int(r["steps"]),
            "per_slice_s": float(r["per_slice_s"]), "encoder_s": float(r["encoder_s"]),
            "rss_mib": rss, "cpu_s": cpu, "threads": r["threads"]}


def show(name, r):
    mem = r["seg_s"] - r["encoder_s"]
    print(f"{name:10s} wall {r['wall_s']:7.1f} s  segmentation {r['seg_s']:7.1f} s  "
          f"{r['steps']} steps, {r['per_slice_s']:.3f} s/slice  encoder {r['encoder_s']:6.1f} s  "
          f"memory path + heads {mem:6.1f} s  CPU {r['cpu_s']:7.1f} s  "
          f"peak RSS {r['rss_mib']:7.0f} MiB", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=256, help="in-plane size of the test volume")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--precision", default="f32", help="ours: comma-separated f32, bf16, int8")
    ap.add_argument("--medsam", default=os.path.join(ROOT, "target", "release", "medsam"))
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "sam2_bench"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    out = run_child([python(), "-c", PREPARE, ROOT, a.work, str(a.slices), str(a.size)])
    box = result(out)["box"]
    print(f"t512, {a.slices} slices of {a.size}², box {box}, nproc {os.cpu_count()}", flush=True)
    precisions = a.precision.split(",")
    rows = {p: [] for p in precisions}
    rows["torch"] = []
    for _ in range(a.rounds):
        for p in precisions:
            rows[p].append(ours(a.medsam, a.work, box, p))
            show(f"ours {p}", rows[p][-1])
        rows["torch"].append(torch_side(a.work))
        show("torch", rows["torch"][-1])
    best = {k: min(v, key=lambda r: r["seg_s"]) for k, v in rows.items()}
    for p in precisions:
        for k in ("wall_s", "seg_s", "per_slice_s", "encoder_s", "cpu_s", "rss_mib"):
            print(f"ratio ours {p}/torch f32 {k}: {best[p][k] / best['torch'][k]:.2f}")


if __name__ == "__main__":
    main()
