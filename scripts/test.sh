#!/usr/bin/env bash
# The test command: installs what the checks need on a bare Debian machine (as root), then runs
# formatting, lint and the whole test suite (release-optimised test profile), then the feature
# builds: `mpi` (OpenMPI, 2-process tests under mpirun) and `ascend` (bindgen against the real
# CANN headers from the pinned torch-npu wheel, exercised through the stand-in runtime).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=()
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || pkgs+=(libclang-dev)
command -v mpirun >/dev/null 2>&1 || pkgs+=(openmpi-bin libopenmpi-dev)
command -v c++ >/dev/null 2>&1 || pkgs+=(g++)   # cxx_build: the Ascend kernel launch glue (ffi/src/launch.cc)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "missing packages (install as root): ${pkgs[*]}" >&2
  fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# No incremental caches: they would double the lint stage's footprint and are never reused here.
export CARGO_INCREMENTAL=0

# Each stage builds with a different profile or feature set, so nothing of one is reused by the
# next. On a small disk, drop a finished stage's artifacts before the next builds its own (a
# machine with room keeps them for the developer's next incremental run).
free_gb() { df -Pk target 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}'; }
report_disk() { echo "   target/: $(du -sh target 2>/dev/null | cut -f1), free on disk: $(free_gb) GB"; }
drop_if_disk_low() {
  local free
  free=$(free_gb)
  report_disk
  if [ "${free:-0}" -lt "${MEDSAM_TEST_MIN_FREE_GB:-20}" ]; then
    echo "   less than ${MEDSAM_TEST_MIN_FREE_GB:-20} GB free: removing $* before the next stage"
    rm -rf "$@"
  fi
}
mkdir -p target
bash scripts/fetch_cann_headers.sh   # into target/cann-headers, where ffi/build.rs looks

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings (default features, then mpi + ascend)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --all-targets --features "mpi ascend" -- -D warnings
echo "== cargo doc -D warnings (intra-doc links resolve, no private items named in public docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
drop_if_disk_low target/debug
echo "== cargo test (release)"
cargo test --workspace --release
bash scripts/ci/serve.sh   # the server with its real clients (chromium, nninteractive-client)
# The feature build below turns on bindgen, which changes syn's and proc-macro2's features, so it
# rebuilds nearly every crate anyway.
drop_if_disk_low target/release
echo "== feature tests: mpi (2 processes) and ascend (stand-in runtime; NPU tests skip without hardware)"
feature_tests=()
for t in tests/dist_mpi.rs tests/ascend_standin.rs tests/ascend_npu_props.rs tests/ascend_backend.rs tests/ascend_kernels.rs tests/ascend_npu_backend_props.rs; do
  [ -f "$t" ] && feature_tests+=(--test "$(basename "$t" .rs)")
done
cargo test --release --features "mpi ascend" "${feature_tests[@]}" -- --test-threads=1
bash scripts/ci/dicom.sh
report_disk
bash scripts/ci/ascend.sh
bash scripts/ci/python.sh
