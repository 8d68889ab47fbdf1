"""Blosc2 chunks and NNIA arrays made by the real `blosc2` package and the nnInteractive client's
encoder, for tests/serve.rs.

Usage: blosc2_cases.py OUT_DIR      -> writes NAME.raw / NAME.b2 / NAME.nnia, prints the names
       blosc2_cases.py --check FILE -> decodes an NNIA file with blosc2, prints it as a JSON list
"""

import json
import struct
import sys

import blosc2
import numpy as np


def pack_nnia(arr, codec, filters):
    """The client's pack_array layout (serialization.py), one chunk."""
    name = arr.dtype.name.encode()
    codec_id = {blosc2.Codec.ZSTD: 1, blosc2.Codec.LZ4: 2}[codec]
    raw = np.ascontiguousarray(arr).tobytes()
    c = blosc2.compress2(raw, typesize=arr.dtype.itemsize, codec=codec, clevel=3, filters=filters)
    head = struct.pack(f"<4sBBBB{len(name)}s", b"NNIA", 1, codec_id, arr.ndim, len(name), name)
    head += struct.pack(f"<{arr.ndim}q", *arr.shape) + struct.pack("<I", 1)
    return head + struct.pack("<QQ", len(raw), len(c)) + c, raw, c


def cases():
    rng = np.random.default_rng(0)
    yield "zeros_u8", np.zeros((7, 9, 11), np.uint8)
    yield "const_u16", np.full((5, 33, 17), 7, np.uint16)
    yield "ramp_f32", np.arange(3 * 50 * 41, dtype=np.float32).reshape(3, 50, 41) * 0.5
    yield "noise_u8", rng.integers(0, 256, (9, 64, 70), dtype=np.uint8)
    yield "noise_i16", rng.integers(-2000, 3000, (4, 61, 59), dtype=np.int16)
    yield "smooth_f64", np.sin(np.linspace(0, 20, 3 * 77 * 5)).reshape(3, 77, 5)
    yield "mask_bool", rng.random((6, 40, 40)) > 0.7
    yield "big_i32", rng.integers(0, 100, (2, 300, 301), dtype=np.int32)
    yield "odd_1byte", np.arange(1001, dtype=np.uint8)


def main():
    if sys.argv[1] == "--check":
        from nnInteractive.inference.remote.serialization import unpack_array

        a = unpack_array(open(sys.argv[2], "rb").read())
        print(json.dumps(a.ravel().tolist()))
        return
    out = sys.argv[1]
    for name, arr in cases():
        for codec in (blosc2.Codec.ZSTD, blosc2.Codec.LZ4):
            for f in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE):
                n = f"{name}_{codec.name}_{f.name}"
                nnia, raw, c = pack_nnia(arr, codec, [f])
                open(f"{out}/{n}.raw", "wb").write(raw)
                open(f"{out}/{n}.b2", "wb").write(c)
                open(f"{out}/{n}.nnia", "wb").write(nnia)
                print(n)


if __name__ == "__main__":
    main()
