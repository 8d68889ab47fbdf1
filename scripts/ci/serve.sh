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
source scripts/ci/venv.sh
ci_venv serve
echo "== serve: cargo test --test serve"
cargo test --release --test serve -- --test-threads=1
