"""Replays the SlicerNNInteractive extension's requests (its remote mode before the v2 client,
`nninteractive-slicer-server` 0.3.2 endpoints) against `medsam serve`, with httpx.

Usage: slicer_replay.py URL VOLUME.npy Z Y0 Y1 X0 X1 OUT_DIR

Uploads the volume as the extension does (multipart `file` = np.save bytes), sends a box as two
corners equal along the slice axis, saves the returned mask (gzip + packbits) to
OUT_DIR/slicer_box.npy, checks that a lasso is refused and that an empty segment resets, and
prints a JSON summary.
"""

import gzip
import io
import json
import sys

import httpx
import numpy as np


def unpack(resp, shape):
    bits = np.unpackbits(np.frombuffer(resp.content, dtype=np.uint8))[: int(np.prod(shape))]
    return bits.reshape(shape).astype(np.uint8)


def npy_bytes(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def main():
    url, vol_path = sys.argv[1], sys.argv[2]
    z, y0, y1, x0, x1 = (int(v) for v in sys.argv[3:8])
    out = sys.argv[8]
    vol = np.load(vol_path)
    summary = {}
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/upload_image", files={"file": ("volume.npy", npy_bytes(vol), "application/octet-stream")})
        summary["upload_image"] = [r.status_code, r.json()]
        r = c.post(
            "/add_bbox_interaction",
            json={"outer_point_one": [z, y0, x0], "outer_point_two": [z, y1, x1], "positive_click": True},
        )
        summary["bbox_status"] = r.status_code
        summary["content_encoding"] = r.headers.get("content-encoding")
        mask = unpack(r, vol.shape)
        np.save(f"{out}/slicer_box.npy", mask)
        summary["box_voxels"] = int(mask.sum())
        r = c.post("/add_point_interaction", json={"voxel_coord": [z, (y0 + y1) // 2, (x0 + x1) // 2], "positive_click": False})
        summary["point_status"] = r.status_code
        seg = gzip.compress(npy_bytes(np.ones(vol.shape, np.uint8) * 0))
        r = c.post(
            "/add_lasso_interaction",
            files={"file": ("volume.npy.gz", seg, "application/octet-stream")},
            data={"positive_click": "True"},
            headers={"Content-Encoding": "gzip"},
        )
        summary["lasso"] = [r.status_code, r.json().get("detail")]
        r = c.post("/upload_segment", files={"file": ("volume.npy.gz", seg, "application/octet-stream")}, headers={"Content-Encoding": "gzip"})
        summary["upload_segment"] = r.status_code
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
