"""Drives `medsam serve` with the real nnInteractive v2 client (`nninteractive-client`).

Usage: nninteractive_client.py URL VOLUME.npy Z Y0 Y1 X0 X1 OUT_DIR [API_KEY]

Sets the (D, H, W) volume as a (1, D, H, W) image, a uint8 target buffer, adds the 2D box
[[Z, Z+1], [Y0, Y1], [X0, X1]] and saves the buffer (OUT_DIR/after_box.npy); then checks undo,
a float32 upload of the same volume (exercising the client's filter choice), an int16 buffer,
a positive click in the box's centre (buffer saved as OUT_DIR/after_point.npy), that a lasso is
refused with a 400, and writes a JSON summary to stdout.
"""

import json
import sys

import httpx
import numpy as np
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession


def main():
    url, vol_path = sys.argv[1], sys.argv[2]
    z, y0, y1, x0, x1 = (int(v) for v in sys.argv[3:8])
    out = sys.argv[8]
    key = sys.argv[9] if len(sys.argv) > 9 else None
    vol = np.load(vol_path)
    box = [[z, z + 1], [y0, y1], [x0, x1]]
    summary = {}
    s = nnInteractiveRemoteInferenceSession(url, api_key=key)
    try:
        summary["supported_interactions"] = s.supported_interactions
        summary["supports_undo"] = s.supports_undo
        s.set_image(vol[None], {"spacing": [1.0, 1.0, 1.0]})
        summary["original_image_shape"] = list(s.original_image_shape)
        target = np.zeros(vol.shape, dtype=np.uint8)
        s.set_target_buffer(target)
        s.add_bbox_interaction(box, include_interaction=True)
        np.save(f"{out}/after_box.npy", target)
        summary["box_voxels"] = int(target.sum())
        summary["paste_bbox"] = s._last_paste_bbox
        summary["undo"] = s.undo()
        summary["after_undo_voxels"] = int(target.sum())
        # The same image as float32 and an int16 buffer: the mask must not change.
        s.set_image(vol.astype(np.float32)[None])
        t16 = np.zeros(vol.shape, dtype=np.int16)
        s.set_target_buffer(t16)
        s.add_bbox_interaction(box, include_interaction=True)
        summary["float32_int16_same"] = bool(np.array_equal(t16.astype(np.uint8), np.load(f"{out}/after_box.npy")))
        # A click inside the box refines the same slice.
        s.add_point_interaction([z, (y0 + y1) // 2, (x0 + x1) // 2], include_interaction=True)
        summary["after_point_voxels"] = int((t16 != 0).sum())
        np.save(f"{out}/after_point.npy", (t16 != 0).astype(np.uint8))
        try:
            s.add_lasso_interaction(np.zeros(vol.shape, np.uint8), include_interaction=True)
            summary["lasso"] = "accepted"
        except httpx.HTTPStatusError as e:
            summary["lasso"] = e.response.status_code
            summary["lasso_detail"] = e.response.json().get("detail")
        summary["lease_status"] = sorted(s.lease_status().keys())
        summary["heartbeat"] = s.heartbeat() > 0
    finally:
        s.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
