#!/usr/bin/env bash
# Ascend FFI contract tests on the stand-in runtime (links only medsam-ffi, so it is quick):
# one test per CANN-contract defect of issue 15, plus the kernel build-rule unit test.
# Run from the repository root after scripts/fetch_cann_headers.sh (called by scripts/test.sh).
set -euo pipefail
echo "== ascend: medsam-ffi contract tests (stand-in runtime)"
cargo test --release -p medsam-ffi --features ascend -- --test-threads=1
