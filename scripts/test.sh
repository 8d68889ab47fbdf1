#!/usr/bin/env bash
# The test command: installs what the checks need on a bare Debian machine (as root), then runs
# formatting, lint and the whole test suite (release-optimised test profile), plus the `ascend`
# feature build and its stand-in runtime tests against real CANN headers.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v clang >/dev/null 2>&1 || [ -e /usr/lib/llvm-14/lib/libclang.so ] || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (release)"
cargo test --workspace --release

if [ -x scripts/fetch_cann_headers.sh ]; then
  echo "== ascend feature: bindgen against real CANN headers, stand-in runtime tests"
  export MEDSAM_CANN_INCLUDE="${MEDSAM_CANN_INCLUDE:-$(scripts/fetch_cann_headers.sh)}"
  cargo clippy --features ascend --all-targets -- -D warnings
  cargo test --release --features ascend
fi
