#!/usr/bin/env bash
# DICOM checks that need outside tools (issue 17): dciodvfy from Debian's dicom3tools validates the
# SEG we write, and pydicom/highdicom read it back (tests/fixtures/check_dicom_seg.py). The Rust
# tests themselves already ran in `cargo test --workspace --release` (printing "SKIPPED: ..." for
# these checks); this reruns the dicom test binary with the tools present.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "== dicom: dicom3tools (dciodvfy) and pydicom/highdicom"
if ! command -v dciodvfy >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y --no-install-recommends dicom3tools >/dev/null \
      || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends dicom3tools >/dev/null; } \
      || echo "   dicom3tools not installable: the dciodvfy check will be skipped"
  fi
fi
source scripts/ci/venv.sh
ci_venv dicom
# Same features as the last cargo build in scripts/test.sh, so nothing but this test binary relinks.
cargo test --release --features "mpi ascend" --test dicom -- --nocapture

# JPEG-LS (cargo feature `jpegls`): the `charls` crate builds CharLS from its own C++ sources with
# CMake. This rebuilds the library once with the feature and runs the JPEG-LS test.
echo "== dicom: JPEG-LS (CharLS, cargo feature jpegls)"
if ! command -v cmake >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y --no-install-recommends cmake g++ >/dev/null \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends cmake g++ >/dev/null; } \
    || true
fi
if command -v cmake >/dev/null 2>&1; then
  cargo test --release --features "mpi ascend jpegls" --test dicom jpeg_ls -- --nocapture
else
  echo "SKIPPED: JPEG-LS test (cmake not installable)"
fi
