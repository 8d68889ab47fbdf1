#!/usr/bin/env python3
"""Generates a corpus of hostile inputs and runs the `medsam` CLI on each one (issue 14).

Every run is classified: `refused` (exit 1 with a message: the expected outcome), `ok` (exit 0
where success is right), `exit-0` (exit 0 on a hostile input: a silent wrong answer), `panic`
(exit 70/101 or a panic message), `abort` (killed by a signal), `hang` (over the timeout), and
`data-loss` (an input changed, or two runs shared a directory). Peak memory comes from
`/usr/bin/time -v` when available; bombs must stay under 2x the configured limit.

Usage: hostile_corpus.py MEDSAM_BINARY OUT_DIR [--keep-small FIXTURE_DIR]
Only the Python standard library is used.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
import gzip

LIMIT = 256 << 20  # bytes; MEDSAM_MAX_TENSOR_BYTES, and 32M voxels x 8 bytes
ENV = dict(os.environ, MEDSAM_MAX_TENSOR_BYTES="256M", MEDSAM_MAX_VOXELS="32M",
           MEDSAM_MAX_IMAGE_PIXELS="32M", RAYON_NUM_THREADS="2")
TIMEOUT = 300


def npy_bytes(shape, descr, body):
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join("%d," % s for s in shape))
    hdr += " " * (63 - (10 + len(hdr)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + body


def nifti_header(dims, datatype, bitpix, vox_offset=352.0):
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<4f", h, 76, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, vox_offset)
    h[344:348] = b"n+1\0"
    return bytes(h)


def gz_nifti(path, dims, mib):
    """A gzip NIfTI whose header declares `dims` (uint8) followed by `mib` MiB of zeros."""
    with gzip.open(path, "wb", 9) as f:
        f.write(nifti_header(dims, 2, 8))
        block = b"\0" * (1 << 20)
        for _ in range(mib):
            f.write(block)


def png_bytes(w, h, raw_rows=None, level=9):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xffffffff)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(raw_rows if raw_rows is not None else b"", level)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zero_stream_png(w, h):
    """A PNG of w x h zero pixels, compressed in pieces (never all in memory)."""
    c = zlib.compressobj(9)
    row = b"\0" * (w + 1)
    parts = [c.compress(row) for _ in range(h)]
    parts.append(c.flush())
    data = b"".join(parts)
    def chunk(kind, d):
        return struct.pack(">I", len(d)) + kind + d + struct.pack(">I", zlib.crc32(kind + d) & 0xffffffff)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def pk_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def pk_int(i):
    return b"J" + struct.pack("<i", i)


def pickle_view(name, size, stride, key="0"):
    p = b"\x80\x02}(" + pk_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(("
    p += pk_str("storage") + b"ctorch\nFloatStorage\n" + pk_str(key) + pk_str("cpu") + pk_int(1) + b"tQ"
    p += pk_int(0) + b"(" + b"".join(pk_int(s) for s in size) + b"t("
    p += b"".join(pk_int(s) for s in stride) + b"t\x89ccollections\nOrderedDict\n)RtRu."
    return p


def torch_zip(path, pkl, storages, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as z:
        z.writestr("archive/data.pkl", pkl)
        for k, b in storages:
            if callable(b):
                with z.open("archive/data/" + k, "w", force_zip64=True) as f:
                    b(f)
            else:
                z.writestr("archive/data/" + k, b)


def patch_claimed_size(path, member, size):
    b = bytearray(open(path, "rb").read())
    i = b.find(b"PK\x01\x02")
    while i >= 0:
        n = struct.unpack_from("<H", b, i + 28)[0]
        if bytes(b[i + 46:i + 46 + n]) == member.encode():
            struct.pack_into("<I", b, i + 24, size)
        i = b.find(b"PK\x01\x02", i + 4)
    open(path, "wb").write(bytes(b))


def write_zeros(n):
    def w(f):
        block = b"\0" * (1 << 20)
        for _ in range(n >> 20):
            f.write(block)
    return w


def sha(path):
    if not os.path.isfile(path):
        return None
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


class Corpus:
    def __init__(self, exe, out):
        self.exe, self.out = exe, out
        self.cases = []  # (name, argv, expect, protect, bomb)
        self.time = shutil.which("time") and os.path.exists("/usr/bin/time")

    def p(self, name):
        return os.path.join(self.out, name)

    def add(self, name, argv, expect="refused", protect=(), bomb=False):
        self.cases.append((name, argv, expect, list(protect), bomb))

    def run_one(self, argv):
        cmd = [self.exe] + argv
        if self.time:
            cmd = ["/usr/bin/time", "-v"] + cmd
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT,
                               cwd=self.out)
        except subprocess.TimeoutExpired:
            return "hang", None, ""
        err = r.stderr
        peak = None
        for line in err.splitlines():
            if "Maximum resident set size" in line:
                peak = int(line.split(":")[1]) * 1024
        code = r.returncode
        if self.time and "Command terminated by signal" in err:
            return "abort", peak, err
        if code < 0 or code >= 128:
            return "abort", peak, err
        if code in (70, 101) or "panicked" in err or "internal error" in err:
            return "panic", peak, err
        if code == 0:
            return "exit-0", peak, err
        return "refused", peak, err


def build(c, tiny_config):
    p = c.p
    os.makedirs(c.out, exist_ok=True)
    # --- legitimate inputs the hostile ones are paired with
    open(p("good.png"), "wb").write(zero_stream_png(16, 16))
    shutil.copy(tiny_config, p("tiny.json"))
    data = p("data")
    for sub in ("imgs", "gts"):
        os.makedirs(os.path.join(data, sub), exist_ok=True)
    for i in range(2):
        img = bytearray(struct.pack("<d", 0.2) * (64 * 64 * 3))
        gt = bytearray(64 * 64)
        for y in range(20, 40):
            for x in range(20 + i, 40 + i):
                gt[y * 64 + x] = 1
                for ch in range(3):
                    struct.pack_into("<d", img, ((y * 64 + x) * 3 + ch) * 8, 0.8)
        open(os.path.join(data, "imgs", "S_%03d.npy" % i), "wb").write(npy_bytes((64, 64, 3), "<f8", bytes(img)))
        open(os.path.join(data, "gts", "S_%03d.npy" % i), "wb").write(npy_bytes((64, 64), "|u1", bytes(gt)))
    # A tiny trained checkpoint (one step) to pair with hostile images and configurations.
    r = subprocess.run([c.exe, "train", "--tr-npy-path", data, "--task-name", "tiny",
                        "--work-dir", p("work0"), "--model-config", p("tiny.json"),
                        "--batch-size", "2", "--max-steps", "1", "--num-epochs", "1",
                        "--num-workers", "0"], capture_output=True, text=True, env=ENV, cwd=c.out)
    ck = None
    for root, _, files in os.walk(p("work0")):
        if "medsam_model_latest.pth" in files:
            ck = os.path.join(root, "medsam_model_latest.pth")
    if ck is None:
        sys.exit("could not train the tiny checkpoint: " + r.stderr)
    shutil.copy(ck, p("tiny.pth"))
    infer = lambda i, ckpt, *extra: ["infer", "--box", "[2,2,12,12]", "-i", i, "-c", ckpt,
                                     "-o", p("seg")] + list(extra)
    tiny = lambda i, *extra: infer(i, p("tiny.pth"), "--model-config", p("tiny.json"), *extra)

    # --- class 2: checkpoints whose sizes lie
    torch_zip(p("stride0.pth"), pickle_view("w", [1000000, 1000000], [0, 0]), [("0", b"\0" * 4)])
    c.add("pth stride-0 view of 1e12 elements", infer(p("good.png"), p("stride0.pth")), bomb=True)
    torch_zip(p("claims3g.pth"), pickle_view("w", [1], [1]), [("0", b"\0" * 4)])
    patch_claimed_size(p("claims3g.pth"), "archive/data/0", 3 << 30)
    c.add("pth member header claims 3 GiB", infer(p("good.png"), p("claims3g.pth")), bomb=True)
    torch_zip(p("inflates1g.pth"), pickle_view("w", [1], [1]), [("0", write_zeros(1 << 30))],
              zipfile.ZIP_DEFLATED)
    c.add("pth storage inflating to 1 GiB", infer(p("good.png"), p("inflates1g.pth")), bomb=True)
    pk = b"\x80\x02](" + pk_str("x" * (1 << 20)) + b"q\x00" + b"h\x00" * 2000 + b"e."
    torch_zip(p("shared_strings.pth"), pk, [])
    c.add("pth shared string x2000 (2 GB)", infer(p("good.png"), p("shared_strings.pth")), bomb=True)
    pk = b"\x80\x02N" + b"q\x00h\x00h\x00\x86" * 40 + b"."
    torch_zip(p("doubling.pth"), pk, [])
    c.add("pth doubling tuples 2^40", infer(p("good.png"), p("doubling.pth")), bomb=True)
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4]}}).encode()
    open(p("claims.safetensors"), "wb").write(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 4)
    c.add("safetensors shape of 1e12", infer(p("good.png"), p("claims.safetensors")), bomb=True)
    hdr = b'{"w":' * 100000
    open(p("deep.safetensors"), "wb").write(struct.pack("<Q", len(hdr)) + hdr)
    c.add("safetensors deeply nested header", infer(p("good.png"), p("deep.safetensors")))
    open(p("garbage.pth"), "wb").write(os.urandom(4096))
    c.add("pth random bytes", infer(p("good.png"), p("garbage.pth")))
    c.add("checkpoint /dev/zero", infer(p("good.png"), "/dev/zero"), bomb=True)
    c.add("checkpoint is a directory", infer(p("good.png"), c.out))
    # NaN weights: the trained checkpoint with its first storage overwritten by NaN.
    with zipfile.ZipFile(p("tiny.pth")) as z, zipfile.ZipFile(p("nan.pth"), "w") as o:
        for info in z.infolist():
            b = z.read(info.filename)
            if info.filename.endswith("/data/0"):
                b = struct.pack("<f", float("nan")) * (len(b) // 4)
            o.writestr(info, b)
    c.add("checkpoint with NaN weights",
          infer(p("good.png"), p("nan.pth"), "--model-config", p("tiny.json")))

    # --- class 1: configurations
    cfg = json.load(open(tiny_config))
    for name, edit in [("heads0", ("image_encoder", "num_heads", 0)),
                       ("patch0", ("image_encoder", "patch_size", 0)),
                       ("img_huge", ("image_encoder", "img_size", 1 << 40)),
                       ("dec_heads0", ("mask_decoder", "transformer_num_heads", 0)),
                       ("dec_heads3", ("mask_decoder", "transformer_num_heads", 3)),
                       ("depth_huge", ("image_encoder", "depth", 10 ** 9)),
                       ("mask_chans1", ("prompt_encoder", "mask_in_chans", 1))]:
        bad = json.loads(json.dumps(cfg))
        bad[edit[0]][edit[1]] = edit[2]
        json.dump(bad, open(p(name + ".json"), "w"))
        c.add("config " + name, infer(p("good.png"), p("tiny.pth"), "--model-config", p(name + ".json")),
              bomb=name.endswith("huge"))
    open(p("binary.json"), "wb").write(bytes(range(256)))
    c.add("config binary file", infer(p("good.png"), p("tiny.pth"), "--model-config", p("binary.json")))
    c.add("non-preset checkpoint without --model-config", infer(p("good.png"), p("tiny.pth")))

    # --- class 2: images
    open(p("claims.png"), "wb").write(png_bytes(100000, 100000))
    c.add("png header 1e10 pixels", tiny(p("claims.png")), bomb=True)
    open(p("bomb.png"), "wb").write(zero_stream_png(20000, 20000))
    c.add("png 400 Mpx of zeros (small file)", tiny(p("bomb.png")), bomb=True)
    open(p("trunc.png"), "wb").write(zero_stream_png(64, 64)[:60])
    c.add("png truncated", tiny(p("trunc.png")))
    open(p("overflow.npy"), "wb").write(npy_bytes((1 << 32, 1 << 32, 16), "<f4", b""))
    c.add("npy shape product overflows", tiny(p("overflow.npy")), bomb=True)
    open(p("nan.npy"), "wb").write(npy_bytes((16, 16, 3), "<f4", struct.pack("<f", float("nan")) * 768))
    c.add("npy image all NaN", tiny(p("nan.npy")))
    c.add("image /dev/zero", tiny("/dev/zero"), bomb=True)
    if not os.path.exists(p("zero.npy")):
        os.symlink("/dev/zero", p("zero.npy"))
    c.add("npy symlink to /dev/zero", tiny(p("zero.npy")), bomb=True)

    # --- class 2: volumes
    vol = lambda i: ["infer", "-i", i, "-c", p("tiny.pth"), "--model-config", p("tiny.json"),
                     "--box3d", "[1,1,1,3,3,3]", "-o", p("seg")]
    open(p("claims1024.nii.gz"), "wb").write(gzip.compress(nifti_header([1024, 1024, 1024], 2, 8)))
    c.add("nii.gz header 1024^3", vol(p("claims1024.nii.gz")), bomb=True)
    gz_nifti(p("inflate.nii.gz"), [1024, 1024, 1152], 1152)
    c.add("nii.gz inflating to 1.2 GB", vol(p("inflate.nii.gz")), bomb=True)
    gz_nifti(p("lying.nii.gz"), [8, 8, 8], 512)
    c.add("nii.gz declaring 8^3, inflating to 512 MB", vol(p("lying.nii.gz")), expect="refused-or-ok", bomb=True)
    h = bytearray(nifti_header([16, 16, 16], 16, 32))
    open(p("nanvol.nii"), "wb").write(bytes(h) + struct.pack("<f", float("nan")) * 4096)
    c.add("nii float volume all NaN", vol(p("nanvol.nii")))
    h = nifti_header([1, 1, 1], 2, 8, vox_offset=3.0e38)
    open(p("voxoff.nii"), "wb").write(h + b"\0")
    c.add("nii vox_offset 3e38", vol(p("voxoff.nii")))
    with zipfile.ZipFile(p("claims.npz"), "w") as z:
        z.writestr("imgs.npy", npy_bytes((2, 2, 2), "|u1", b"\0" * 8))
    patch_claimed_size(p("claims.npz"), "imgs.npy", 3 << 30)
    c.add("npz member header claims 3 GiB", vol(p("claims.npz")), bomb=True)
    with zipfile.ZipFile(p("inflate.npz"), "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("imgs.npy", "w", force_zip64=True) as f:
            f.write(npy_bytes((1024, 1024, 1024), "|u1", b""))
            write_zeros(1 << 30)(f)
    c.add("npz imgs inflating to 1 GiB (1024^3)", vol(p("inflate.npz")), bomb=True)

    # --- class 3: preprocess
    def case(root, name, lab_dims, lab_code, lab_bitpix, lab_body, img_code, img_bitpix, img_body):
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        os.makedirs(os.path.join(root, "labels"), exist_ok=True)
        open(os.path.join(root, "labels", name + ".nii"), "wb").write(
            nifti_header(lab_dims, lab_code, lab_bitpix) + lab_body)
        open(os.path.join(root, "images", name + "_0000.nii"), "wb").write(
            nifti_header(lab_dims, img_code, img_bitpix) + img_body)
    n = 16 * 16 * 2
    lab300 = struct.pack("<%dh" % n, *[300 if 40 <= i < 80 else 0 for i in range(n)])
    img = struct.pack("<%dh" % n, *[i % 200 for i in range(n)])
    lab = bytes(1 if 40 <= i < 80 else 0 for i in range(n))
    case(p("prep_wrap"), "c1", [16, 16, 2], 4, 16, lab300, 4, 16, img)
    case(p("prep_nan"), "c1", [16, 16, 2], 2, 8, lab, 16, 32, struct.pack("<f", float("nan")) * n)
    case(p("prep_ok"), "c1", [16, 16, 2], 2, 8, lab, 4, 16, img)
    os.makedirs(p("prep_empty/labels"), exist_ok=True)
    os.makedirs(p("prep_empty/images"), exist_ok=True)
    prep = lambda root, *extra: ["preprocess", "--nii-path", os.path.join(root, "images"),
                                 "--gt-path", os.path.join(root, "labels"), "--npy-path",
                                 os.path.join(root, "npy"), "--img-name-suffix", "_0000.nii",
                                 "--gt-name-suffix", ".nii", "--remove-label-ids", "",
                                 "--voxel-num-thre2d", "0", "--voxel-num-thre3d", "0"] + list(extra)
    c.add("preprocess label 300", prep(p("prep_wrap")))
    c.add("preprocess all-NaN image", prep(p("prep_nan")))
    c.add("preprocess --window-width 0", prep(p("prep_ok"), "--window-width", "0"))
    c.add("preprocess no case found", prep(p("prep_empty")))

    # --- class 3: training hyper-parameters
    train = lambda work, *extra: ["train", "--tr-npy-path", data, "--task-name", "t", "--work-dir",
                                  work, "--model-config", p("tiny.json"), "--batch-size", "2",
                                  "--max-steps", "1", "--num-workers", "0"] + list(extra)
    for flag, v in [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--weight-decay", "nan"),
                    ("--weight-decay", "-1"), ("--num-epochs", "0")]:
        c.add("train %s %s" % (flag, v), train(p("work_bad"), "%s=%s" % (flag, v)))

    # --- class 4: outputs that are inputs
    c.add("convert --format safetensors into .pth", ["convert", "--format", "safetensors",
          "--sam-ckpt-path", p("tiny.pth"), "--medsam-ckpt-path", p("tiny.pth"), "--save-path",
          p("conv_out.pth")])
    shutil.copy(p("tiny.pth"), p("victim.pth"))
    os.makedirs(p("seg"), exist_ok=True)
    c.add("convert --save-path is the input", ["convert", "--sam-ckpt-path", p("tiny.pth"),
          "--medsam-ckpt-path", p("victim.pth"), "--save-path", p("seg/../victim.pth")],
          protect=[p("victim.pth")])
    shutil.copy(p("good.png"), p("victim.png"))
    c.add("infer --logits is the input image", tiny(p("victim.png"), "--logits", p("victim.png")),
          protect=[p("victim.png")])
    c.add("infer --logits is the checkpoint", tiny(p("good.png"), "--logits", p("tiny.pth")),
          protect=[p("tiny.pth")])
    open(p("afile"), "w").write("x")
    c.add("infer -o under a regular file", ["infer", "--box", "[2,2,12,12]", "-i", p("good.png"),
          "-c", p("tiny.pth"), "--model-config", p("tiny.json"), "-o", p("afile/sub")])
    c.add("infer --logits is the model config", tiny(p("good.png"), "--logits", p("tiny.json")),
          protect=[p("tiny.json")])


def main():
    exe, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    tiny_config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                               "fixtures", "sam", "tiny_sam_config.json")
    c = Corpus(exe, out)
    build(c, tiny_config)
    counts = {}
    peaks = []
    for name, argv, expect, protect, bomb in c.cases:
        before = [sha(f) for f in protect]
        kind, peak, err = c.run_one(argv)
        if [sha(f) for f in protect] != before:
            kind = "data-loss"
        if kind == "refused" and expect == "ok":
            kind = "refused-valid"
        if kind == "exit-0" and expect in ("ok", "refused-or-ok"):
            kind = "ok"
        counts[kind] = counts.get(kind, 0) + 1
        msg = [l for l in err.splitlines() if l.startswith("error") or "internal error" in l]
        text = msg[0] if msg else ""
        mb = "%.0f MB" % (peak / 1e6) if peak else "?"
        print("%-12s %-8s %s%s" % (kind, mb, name, " [bomb]" if bomb else ""))
        if text:
            print("             " + text[:220])
        if bomb and peak:
            peaks.append((peak, name))
    # Two runs with one task name in the same second: distinct directories, both complete.
    work = os.path.join(out, "work_twice")
    shutil.rmtree(work, ignore_errors=True)
    args = ["train", "--tr-npy-path", os.path.join(out, "data"), "--task-name", "same",
            "--work-dir", work, "--model-config", os.path.join(out, "tiny.json"),
            "--batch-size", "2", "--max-steps", "1", "--num-workers", "0"]
    procs = [subprocess.Popen([exe] + args, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    codes = [q.wait() for q in procs]
    dirs = [d for d in os.listdir(work)] if os.path.isdir(work) else []
    full = [d for d in dirs if os.path.exists(os.path.join(work, d, "medsam_model_latest.pth"))]
    kind = "ok" if codes == [0, 0] and len(full) == 2 else "data-loss"
    counts[kind] = counts.get(kind, 0) + 1
    print("%-12s %-8s two concurrent train runs, one task name (%s)" % (kind, "", ", ".join(sorted(dirs))))
    print()
    print("cases: %d" % (len(c.cases) + 1))
    for k in ("refused", "ok", "panic", "abort", "hang", "exit-0", "data-loss", "refused-valid"):
        print("  %-14s %d" % (k, counts.get(k, 0)))
    if peaks:
        peak, name = max(peaks)
        print("peak memory on bombs: %.0f MB (%s); 2x the limit = %.0f MB" % (peak / 1e6, name, 2 * LIMIT / 1e6))
    bad = sum(counts.get(k, 0) for k in ("panic", "abort", "hang", "exit-0", "data-loss", "refused-valid"))
    over = [n for pk, n in peaks if pk > 2 * LIMIT]
    if over:
        print("over 2x the limit:", ", ".join(over))
    sys.exit(1 if bad or over else 0)


if __name__ == "__main__":
    main()
