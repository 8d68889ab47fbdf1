# Sourced by scripts/ci/*.sh from the repository root: `ci_venv NAME...` creates the venv
# target/ci-venv when it is missing (installing Debian's python3-venv first when root and needed),
# installs scripts/ci/requirements-NAME.txt for each NAME, sets $venv and exports MEDSAM_PYTHON.
ci_venv() {
  venv="$(pwd)/target/ci-venv"
  if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      # Debian's python3 lacks ensurepip until python3-venv is installed.
      if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      fi
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
  fi
  local name
  for name in "$@"; do
    "$venv/bin/python" -m pip install -q -r "scripts/ci/requirements-$name.txt"
  done
  export MEDSAM_PYTHON="$venv/bin/python"
}
