#!/usr/bin/env bash
# Fetch the CANN ACL + HCCL C headers that ship inside the PyPI wheel `torch-npu`, so that
# `cargo build --features ascend` can run bindgen on a machine without the CANN toolkit.
#
#   scripts/fetch_cann_headers.sh [DEST]        (default DEST: target/cann-headers)
#
# Result (the wheel's own layout is kept, because its hccl.h includes
# "third_party/hccl/inc/hccl/hccl_types.h" relative to an include root):
#   DEST/third_party/acl/inc/acl/acl.h, acl_rt.h, acl_op_compiler.h, ...
#   DEST/third_party/hccl/inc/hccl/hccl.h, hccl_types.h
# Then build with MEDSAM_CANN_INCLUDE=DEST (ffi/build.rs also finds target/cann-headers by itself).
#
# Only the include directories are extracted; no CANN library is downloaded (there is none in
# the wheel that we use). Idempotent: a stamp file records the pinned version and the wheel hash.
set -euo pipefail

TORCH_NPU_VERSION="2.14.0"
# sha256 of torch_npu-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl (the headers are the same in
# every platform wheel of one release; we pin the x86_64 / CPython 3.11 one).
WHEEL_NAME="torch_npu-${TORCH_NPU_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256="7736f7d82cf9f16c7dfc4537f7e7c638153da760273a193455e70857f912189e"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/target/cann-headers}"
STAMP="$DEST/.torch-npu-headers"
WANT="torch-npu==${TORCH_NPU_VERSION} sha256=${WHEEL_SHA256}"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" \
      && -f "$DEST/third_party/acl/inc/acl/acl.h" && -f "$DEST/third_party/hccl/inc/hccl/hccl.h" ]]; then
  echo "CANN headers already present in $DEST ($WANT)"
  exit 0
fi

PY="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "Downloading torch-npu ${TORCH_NPU_VERSION} wheel (headers only are kept) ..."
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_28_x86_64 \
  -d "$TMP" "torch-npu==${TORCH_NPU_VERSION}"

WHEEL="$TMP/$WHEEL_NAME"
if [[ ! -f "$WHEEL" ]]; then
  echo "error: expected $WHEEL_NAME, pip produced: $(ls "$TMP")" >&2
  exit 1
fi
GOT="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
if [[ "$GOT" != "$WHEEL_SHA256" ]]; then
  echo "error: sha256 mismatch for $WHEEL_NAME: got $GOT, want $WHEEL_SHA256" >&2
  exit 1
fi

rm -rf "$DEST/third_party"
mkdir -p "$DEST"
"$PY" - "$WHEEL" "$DEST" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefixes = ("torch_npu/include/third_party/acl/inc/", "torch_npu/include/third_party/hccl/inc/")
strip = "torch_npu/include/"
n = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefixes) and not name.endswith("/"):
            out = os.path.join(dest, name[len(strip):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                dst.write(src.read())
            n += 1
if n == 0:
    sys.exit("error: no acl/hccl headers found in " + wheel)
print(f"extracted {n} header files")
PYEOF

for f in third_party/acl/inc/acl/acl.h third_party/acl/inc/acl/acl_op_compiler.h third_party/hccl/inc/hccl/hccl.h; do
  [[ -f "$DEST/$f" ]] || { echo "error: $f missing after extraction" >&2; exit 1; }
done
echo "$WANT" > "$STAMP"
echo "CANN headers from torch-npu ${TORCH_NPU_VERSION} are in $DEST"
echo "  (build with: MEDSAM_CANN_INCLUDE=$DEST cargo build --features ascend)"
