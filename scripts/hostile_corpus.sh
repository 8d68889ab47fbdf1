#!/usr/bin/env bash
# Generates a hostile-input corpus and runs the medsam CLI on every input (issue 14), printing
# one line per case (refused / ok / panic / abort / hang / exit-0 / data-loss, peak memory) and
# the counts. Exits non-zero if any case panicked, aborted, hung, answered silently, lost data,
# or a bomb peaked above 2x the configured limit.
#
#   scripts/hostile_corpus.sh [OUT_DIR]      (default: target/hostile-corpus)
#
# Needs python3 (standard library only) and, for peak memory, /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/hostile-corpus}"
cargo build --release --bin medsam
rm -rf "$out"
mkdir -p "$out"
python3 scripts/hostile_corpus.py target/release/medsam "$out"
