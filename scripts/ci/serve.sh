#!/usr/bin/env bash
# `medsam serve` tests with their real clients: headless Chromium (Debian's chromium +
# chromium-driver) for the web page, and nninteractive-client (+ blosc2) for the nnInteractive
# v2 protocol, in the venv target/ci-venv. Run from the repository root by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "== serve: apt chromium chromium-driver"
apt-get update -qq
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "== serve: pip nninteractive-client into target/ci-venv"
venv="$PWD/target/ci-venv"
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install -q -r scripts/ci/requirements-serve.txt
export MEDSAM_PYTHON="$venv/bin/python"
echo "== serve: cargo test --test serve"
cargo test --release --test serve -- --test-threads=1
