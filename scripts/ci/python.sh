#!/usr/bin/env bash
# The Python package (python/, `medsam_rs`): builds the abi3 wheel with maturin into a venv at
# target/ci-venv, installs it, runs python/tests with pytest and the notebook-style example.
# Torch is not installed: parity tests read committed fixtures (python/tests/make_fixtures.py
# made them from the official code); tests that need torch skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ci/venv.sh
ci_venv
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q -r scripts/ci/requirements-python.txt
echo "== python: maturin build (abi3 wheel, release)"
rm -rf target/wheels
"$venv/bin/maturin" build --release -m python/Cargo.toml -o target/wheels -i "$venv/bin/python"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps target/wheels/medsam_rs-*.whl
echo "== python: pytest"
# Run from python/tests so `import medsam_rs` is the installed wheel, not the source folder.
(cd python/tests && "$MEDSAM_PYTHON" -m pytest -q -rs .)
echo "== python: example"
"$MEDSAM_PYTHON" examples/python_predictor.py
