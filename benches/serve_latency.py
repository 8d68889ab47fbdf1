"""Latency of `medsam serve` (box → mask), through the web API and the nnInteractive v2 protocol.

Usage:
  python benches/serve_latency.py --bin target/release/medsam -c assets/lite_medsam.pth \
      [--size 512] [--requests 50] [--clients 8] [--model-type lite]

Starts the server on a free loopback port, then measures:
  1. web API (`/api/segment`): the first box on a new slice (encoder + decoder), then N boxes on
     the same slice (embedding cached): p50/p95;
  2. nnInteractive v2 (the real `nninteractive-client`, if importable): the first box on a new
     slice, then N boxes on the cached slice, each through `add_bbox_interaction` (client-side
     encoding and mask decoding included);
  3. load: C clients × N boxes, each client its own session and slice, concurrently; errors,
     p50/p95, and the server's RSS before and after (R rounds: later rounds show growth).
Prints one JSON object. Timings depend on the machine's load: say how busy it was.
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib


def png_gray(img, h, w):
    """A grey 8-bit PNG (no dependencies)."""
    raw = b"".join(b"\x00" + bytes(img[y * w:(y + 1) * w]) for y in range(h))

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def phantom(h, w, shift=0):
    """A bright ellipse on a gradient (a CT-like slice), shifted per slice/client."""
    img = bytearray(h * w)
    cy, cx = h * 0.45 + shift, w * 0.55
    for y in range(h):
        for x in range(w):
            dy, dx = (y - cy) / (h * 0.22), (x - cx) / (w * 0.18)
            img[y * w + x] = 220 if dx * dx + dy * dy < 1 else int(20 + 60 * x / w)
    return img


def request(url, method="GET", body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.status, r.read()


def pct(xs, p):
    s = sorted(xs)
    return round(s[min(len(s) - 1, round((len(s) - 1) * p))], 1)


def summary(lat):
    return {"n": len(lat), "p50_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95), "max_ms": round(max(lat), 1)}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def web_session(base, png):
    st, b = request(base + "/api/open?name=slice.png", "POST", png, {"Content-Type": "application/octet-stream"})
    return json.loads(b)["token"]


def web_box(base, token, box):
    body = json.dumps({"z": 0, "label": 1, "box": box}).encode()
    t = time.perf_counter()
    st, out = request(base + "/api/segment", "POST", body,
                      {"X-Lease-Token": token, "Content-Type": "application/json"})
    return (time.perf_counter() - t) * 1e3, st


def boxes(size, n, c=0):
    m = size // 8
    return [[m + (c + i) % 5, m + 2, size - m - i % 3, size - m] for i in range(n)]


def bench_web(base, size, n):
    token = web_session(base, png_gray(phantom(size, size), size, size))
    bs = boxes(size, n + 1)
    first, _ = web_box(base, token, bs[0])
    lat = [web_box(base, token, b)[0] for b in bs[1:]]
    request(base + "/release", "POST", b"", {"X-Lease-Token": token})
    return {"first_on_new_slice_ms": round(first, 1), "cached": summary(lat)}


def bench_nninteractive(base, size, n):
    try:
        import numpy as np
        from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
    except ImportError as e:
        return {"skipped": f"nninteractive-client not importable: {e}"}
    d = 3
    vol = np.stack([np.frombuffer(bytes(phantom(size, size, 4 * z)), np.uint8).reshape(size, size) for z in range(d)])
    s = nnInteractiveRemoteInferenceSession(base)
    try:
        s.set_image(vol[None], {"spacing": [1.0, 1.0, 1.0]})
        target = np.zeros(vol.shape, dtype=np.uint8)
        s.set_target_buffer(target)
        bs = boxes(size, n + 1)

        def one(b, z=1):
            t = time.perf_counter()
            s.add_bbox_interaction([[z, z + 1], [b[1], b[3]], [b[0], b[2]]], include_interaction=True)
            return (time.perf_counter() - t) * 1e3

        first = one(bs[0])
        lat = [one(b) for b in bs[1:]]
    finally:
        s.close()
    return {"first_on_new_slice_ms": round(first, 1), "cached": summary(lat)}


def bench_load(base, size, n, clients, pid):
    rss0 = rss_kib(pid)
    lat, errors = [], []
    lock = threading.Lock()

    def client(c):
        try:
            token = web_session(base, png_gray(phantom(size, size, 3 * c), size, size))
            mine = []
            for b in boxes(size, n, c):
                ms, st = web_box(base, token, b)
                mine.append(ms)
            request(base + "/release", "POST", b"", {"X-Lease-Token": token})
            with lock:
                lat.extend(mine[1:])
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            with lock:
                errors.append(repr(e))

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    out = {"clients": clients, "requests_each": n, "errors": len(errors), "error_samples": errors[:3],
           "wall_s": round(wall, 1), "rss_kib_before": rss0, "rss_kib_after": rss_kib(pid)}
    if lat:
        out["cached"] = summary(lat)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/medsam")
    ap.add_argument("-c", "--checkpoint", required=True)
    ap.add_argument("--model-type", default=None)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="load rounds (RSS after each shows growth)")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [a.bin, "serve", "-c", a.checkpoint, "--port", str(port), "--max-sessions", str(a.clients + 4)]
    if a.model_type:
        cmd += ["--model-type", a.model_type]
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = srv.stdout.readline()
        base = "http://" + line.split("http://")[1].strip().rstrip("/")
        out = {"model": line.split(":")[1].split(" on ")[0].strip(), "slice": [a.size, a.size],
               "loadavg_start": os.getloadavg(), "cpus": os.cpu_count()}
        out["web"] = bench_web(base, a.size, a.requests)
        out["nninteractive_v2"] = bench_nninteractive(base, a.size, a.requests)
        out["load"] = [bench_load(base, a.size, a.requests, a.clients, srv.pid) for _ in range(a.rounds)]
        out["loadavg_end"] = os.getloadavg()
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
