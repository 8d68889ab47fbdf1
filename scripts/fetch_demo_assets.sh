#!/usr/bin/env bash
# Fetches what `medsam demo` needs for its real-scan stage into assets/ (nothing is committed):
#   - LiteMedSAM's pretrained weights (assets/lite_medsam.pth, via fetch_lite_medsam.sh);
#   - the Colin27 single-subject T1 MRI (ch2.nii.gz) and its skull-stripped version
#     (ch2bet.nii.gz, `> 0` = brain mask) from Debian's `mricron-data` package.
# Without root the package is downloaded and unpacked (`apt-get download` + `dpkg -x`); when
# those tools are missing but the package is installed, its files are copied; as root with
# neither, it is installed.
#
#   scripts/fetch_demo_assets.sh [DEST_DIR]     # default DEST_DIR: assets
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-assets}"
mkdir -p "$dest"

bash scripts/fetch_lite_medsam.sh "$dest/lite_medsam.pth"

have_scan() { [ -s "$dest/ch2.nii.gz" ] && [ -s "$dest/ch2bet.nii.gz" ]; }
system=/usr/share/mricron/templates
copy_from() { cp "$1/ch2.nii.gz" "$1/ch2bet.nii.gz" "$dest/"; }

if have_scan; then
  echo "$dest/ch2.nii.gz, $dest/ch2bet.nii.gz: present"
  exit 0
fi
if [ -s "$system/ch2.nii.gz" ] && [ -s "$system/ch2bet.nii.gz" ]; then
  copy_from "$system"
elif command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if (cd "$tmp" && apt-get download mricron-data >/dev/null 2>&1) \
    || { [ "$(id -u)" = 0 ] && apt-get update -qq && (cd "$tmp" && apt-get download mricron-data >/dev/null); }; then
    dpkg -x "$tmp"/mricron-data_*.deb "$tmp/x"
    copy_from "$tmp/x$system"
  elif [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq mricron-data >/dev/null
    copy_from "$system"
  else
    echo "cannot download mricron-data (try: sudo apt-get update, then rerun)" >&2
    exit 1
  fi
else
  echo "needs apt-get and dpkg (Debian/Ubuntu), or ch2.nii.gz and ch2bet.nii.gz copied into $dest/" >&2
  exit 1
fi
have_scan
echo "$dest/ch2.nii.gz, $dest/ch2bet.nii.gz: fetched (Colin27 T1 from mricron-data)"
