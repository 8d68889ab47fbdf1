"""Reading a CT series from a folder of DICOM files, ours vs SimpleITK, in one run (issue 17:
ours must take at most 0.5× SimpleITK's time).

The series (default 300 slices of 512×512 int16, explicit VR little endian, RescaleIntercept
-1024, one file per slice, files in shuffled order) is written once with pydicom into a temporary
folder. Then, for N interleaved rounds, each side reads the whole folder into a volume:
- ours: `medsam dicom DIR`, which times `read_series` (scan, group by series, sort along the
  normal, decode, rescale) inside the process and prints it;
- SimpleITK: `ImageSeriesReader.GetGDCMSeriesFileNames(DIR)` (scan, group, sort) + `Execute()`
  timed inside a Python worker (the array copy `GetArrayFromImage` is not counted).
Both sides read from the page cache after the first round. Prints every measurement, min and
median per side and the ratio ours/SimpleITK of the medians.

    python benches/dicom_vs_sitk.py [--rounds 5] [--slices 300] [--size 512] [--medsam PATH]
                                    [--baseline PATH_TO_AN_OLDER_MEDSAM]

Needs a Python with numpy, pydicom and SimpleITK (MEDSAM_PYTHON=/path/to/python) and a release
build of `medsam` (cargo build --release). Timings on a shared machine are noisy; compare within
one run only.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lite_vs_torch import ROOT, python, run  # noqa: E402  ($MEDSAM_PYTHON; RESULT lines)

MAKE_SERIES = r'''
import sys, random, numpy as np, pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid, CTImageStorage
out, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:size, 0:size]
base = (np.hypot(yy - size / 2, xx - size / 2) < size * 0.4) * 1000 + 24
study, series, frame = generate_uid(), generate_uid(), generate_uid()
order = list(range(n)); random.Random(0).shuffle(order)
for i, z in enumerate(order):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality = "CT"; ds.PatientName = "Bench^CT"; ds.PatientID = "bench"
    ds.SeriesNumber = 1; ds.InstanceNumber = z + 1
    ds.ImagePositionPatient = [-200.0, -180.0, -300.0 + 1.25 * z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.78125, 0.78125]; ds.SliceThickness = 1.25
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1; ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16; ds.BitsStored = 12; ds.HighBit = 11; ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024; ds.RescaleSlope = 1
    img = (base + rng.integers(0, 200, (size, size)) + z).astype(np.uint16)
    ds.PixelData = img.tobytes()
    ds.save_as(f"{out}/IM{i:05d}", enforce_file_format=True)
print("RESULT ok=1")
'''

SITK_WORKER = r'''
import sys, time, SimpleITK as sitk
d, rounds = sys.argv[1], int(sys.argv[2])
for _ in range(rounds):
    t0 = time.perf_counter()
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(d))
    img = r.Execute()
    t = time.perf_counter() - t0
    print(f"RESULT impl=sitk secs={t:.4f} size={'x'.join(map(str, img.GetSize()))} type={img.GetPixelIDTypeAsString().replace(' ', '_')} threads={sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
'''


def ours(medsam, d):
    out = subprocess.run([medsam, "dicom", d], capture_output=True, text=True, cwd=ROOT)
    m = re.search(r"in ([0-9.]+) s", out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"`medsam dicom` failed or printed no timing:\n{out.stdout}\n{out.stderr[-3000:]}")
    return float(m.group(1))


def sitk(d):
    return float(run([python(), "-c", SITK_WORKER, d, "1"])["secs"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--medsam", default=os.path.join(ROOT, "target", "release", "medsam"))
    ap.add_argument("--baseline", help="another medsam binary to time in the same rounds")
    a = ap.parse_args()
    if not os.path.isfile(a.medsam):
        sys.exit(f"{a.medsam} not found: run `cargo build --release` first (or pass --medsam)")
    tmp = tempfile.mkdtemp(prefix="dicom_vs_sitk_")
    try:
        run([python(), "-c", MAKE_SERIES, tmp, str(a.slices), str(a.size)])
        print(f"series: {a.slices} slices of {a.size}×{a.size} uint16 (12 bits stored), explicit VR LE")
        sides = {"ours": lambda: ours(a.medsam, tmp), "sitk": lambda: sitk(tmp)}
        if a.baseline:
            sides["baseline"] = lambda: ours(a.baseline, tmp)
        for read in sides.values():  # one untimed read each to fill the page cache
            read()
        times = {k: [] for k in sides}
        for r in range(a.rounds):
            for k, read in sides.items():
                times[k].append(read())
            print(f"round {r + 1}: " + "   ".join(f"{k} {t[-1]:.3f} s" for k, t in times.items()))
        names = {"ours": "ours (medsam dicom)", "sitk": "SimpleITK ImageSeriesReader",
                 "baseline": "baseline medsam"}
        for k in times:
            print(f"{names[k]:<30} min {min(times[k]):.3f} s  median {statistics.median(times[k]):.3f} s")
        for k in [k for k in times if k != "sitk"]:
            ratio = statistics.median(times[k]) / statistics.median(times["sitk"])
            print(f"ratio {k}/SimpleITK (medians): {ratio:.2f} (target <= 0.5)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
