#!/usr/bin/env python3
"""Side-by-side throughput: our kernels (benches/opbench.rs) vs PyTorch on CPU, same shapes.

    $MEDSAM_PYTHON benches/compare_torch.py [--ops mm_,linear] [--threads 2] [--rounds 3]

Builds the `opbench` bench binary once (cargo bench --no-run), then for every selected op
alternates torch and ours `--rounds` times (the order flips each round) so that load from other
processes hits both sides alike. Each run times calls for at least `--min-time` seconds and takes
the median call; the table shows, per side, the best of the per-round medians, and the ratio
ours/torch. torch uses `torch.set_num_threads(threads)`, ours `RAYON_NUM_THREADS=threads`.

Notes on what torch runs: `mm_*` is torch.mm with a row-major [k, n] B, `linear_*` F.linear with
a [n, k] weight; the bf16 rows give torch bf16 tensors (no conversion), while ours takes f32 and
rounds to bf16 while packing. Attention is F.scaled_dot_product_attention with the decomposed
rel-pos bias materialised as a float attn_mask (built outside the timed region).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gemm_case(m, k, n, linear, dtype):
    a = torch.rand(m, k, dtype=torch.float32).mul_(2).sub_(1).to(dtype)
    if linear:
        w = torch.rand(n, k).mul_(2).sub_(1).to(dtype)
        return 2.0 * m * n * k, lambda: F.linear(a, w)
    b = torch.rand(k, n).mul_(2).sub_(1).to(dtype)
    return 2.0 * m * n * k, lambda: torch.mm(a, b)


def bmm_case(batch, m, k, n, kt):
    a = torch.randn(batch, m, k)
    if kt:
        b = torch.randn(batch, n, k)
        return 2.0 * batch * m * n * k, lambda: torch.bmm(a, b.transpose(1, 2))
    b = torch.randn(batch, k, n)
    return 2.0 * batch * m * n * k, lambda: torch.bmm(a, b)


def attention_case(bh, side, d=64):
    nq = side * side
    q, k, v = (torch.randn(1, bh, nq, d) for _ in range(3))
    rel_h = torch.randn(bh, nq, side)
    rel_w = torch.randn(bh, nq, side)
    mask = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(1, bh, nq, nq)
    scale = d ** -0.5
    return 4.0 * bh * nq * nq * d, lambda: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale)


def rel_pos_case(maps, side, c=64):
    """segment_anything's add_decomposed_rel_pos before the sum: its two einsums."""
    r_q = torch.randn(maps, side, side, c)
    rh, rw = torch.randn(side, side, c), torch.randn(side, side, c)

    def run():
        torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    return 4.0 * maps * side * side * side * c, run


def layernorm_case(rows=4096, dim=768):
    x, g, b = torch.randn(rows, dim), torch.randn(dim), torch.randn(dim)
    return 8.0 * rows * dim, lambda: F.layer_norm(x, (dim,), g, b, 1e-6)


def conv_case(c_in, hw, c_out, kk, stride, pad, transpose=False):
    x = torch.randn(1, c_in, hw, hw)
    b = torch.randn(c_out)
    if transpose:
        w = torch.randn(c_in, c_out, kk, kk)
        flops = 2.0 * c_in * hw * hw * c_out * kk * kk
        return flops, lambda: F.conv_transpose2d(x, w, b, stride=stride, padding=pad)
    w = torch.randn(c_out, c_in, kk, kk)
    oh = (hw + 2 * pad - kk) // stride + 1
    flops = 2.0 * c_out * oh * oh * c_in * kk * kk
    return flops, lambda: F.conv2d(x, w, b, stride=stride, padding=pad)


def torch_ops():
    """name -> zero-argument factory returning (flops, fn). Names match benches/common/mod.rs."""
    ops = {}
    for dtype, sfx in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        for mm, lin, k, n in [("mm_qkv", "linear_qkv", 768, 2304),
                              ("mm_mlp1", "linear_mlp1", 768, 3072),
                              ("mm_mlp2", "linear_mlp2", 3072, 768)]:
            ops[f"{mm}_{sfx}"] = (lambda k=k, n=n, dt=dtype: gemm_case(4096, k, n, False, dt))
            ops[f"{lin}_{sfx}"] = (lambda k=k, n=n, dt=dtype: gemm_case(4096, k, n, True, dt))
    ops["bmm_window_qk"] = lambda: bmm_case(300, 196, 64, 196, True)
    ops["bmm_window_pv"] = lambda: bmm_case(300, 196, 196, 64, False)
    ops["attn_global"] = lambda: attention_case(12, 64)
    ops["attn_window"] = lambda: attention_case(25 * 12, 14)
    ops["rel_pos_global"] = lambda: rel_pos_case(12, 64)
    ops["rel_pos_window"] = lambda: rel_pos_case(25 * 12, 14)
    ops["layernorm"] = layernorm_case
    ops["patch_embed"] = lambda: conv_case(3, 1024, 768, 16, 16, 0)
    ops["neck_conv1x1"] = lambda: conv_case(768, 64, 256, 1, 1, 0)
    ops["neck_conv3x3"] = lambda: conv_case(256, 64, 256, 3, 1, 1)
    ops["conv_transpose"] = lambda: conv_case(256, 64, 64, 2, 2, 0, transpose=True)
    return ops


def time_torch(flops, fn, min_time):
    """Median-call GFLOP/s, timed like opbench: one warm-up, then >= 3 calls and >= min_time."""
    with torch.inference_mode():
        fn()
        times = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < 1000):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def build_opbench():
    out = subprocess.run(
        ["cargo", "bench", "--bench", "opbench", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "opbench" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("could not find the opbench executable")


def run_ours(exe, op, threads, min_time):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([exe, "--ops", op, "--min-time", str(min_time)], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split())
        if fields.get("op") == op:
            return float(fields["gflops"]) if fields.get("status") == "ok" else None
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ops", default="", help="comma-separated name prefixes (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    prefixes = [p for p in args.ops.split(",") if p]
    ops = {n: f for n, f in torch_ops().items()
           if not prefixes or any(n.startswith(p) for p in prefixes)}
    if not ops:
        sys.exit(f"no op matches {args.ops!r}; ops: {', '.join(torch_ops())}")
    exe = build_opbench()

    print(f"threads={args.threads} rounds={args.rounds} torch={torch.__version__} "
          f"(best of per-round median GFLOP/s)")
    print(f"{'op':<18} {'ours':>9} {'torch':>9} {'ours/torch':>10}")
    for name, factory in ops.items():
        flops, fn = factory()
        ours, theirs = [], []
        for r in range(args.rounds):
            steps = [lambda: theirs.append(time_torch(flops, fn, args.min_time)),
                     lambda: ours.append(run_ours(exe, name, args.threads, args.min_time))]
            for step in (steps if r % 2 == 0 else steps[::-1]):
                step()
        del fn
        t = max(theirs)
        if any(o is None for o in ours):
            print(f"{name:<18} {'n/a':>9} {t:9.1f} {'(unimpl.)':>10}", flush=True)
        else:
            o = max(ours)
            print(f"{name:<18} {o:9.1f} {t:9.1f} {o / t:10.2f}", flush=True)


if __name__ == "__main__":
    main()
