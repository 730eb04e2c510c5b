#!/usr/bin/env bash
# The virtual environment `make test` and `make demo` own for the Python package `yr`: created
# from the system Python when missing, with maturin, pytest, numpy and cloudpickle from PyPI,
# then the package itself built from python/ and installed into it (maturin develop).
# The extension is a debug build (quick to build, for tests) unless YR_PY_RELEASE=1 (benches).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
env=${YR_PYENV:-$HOME/.cache/yr/py}
# Debian ships venv apart from python3 (python3-venv); install-deps --test installs it.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || "$here/scripts/install-deps.sh" --test
if [ ! -x "$env/bin/maturin" ] || [ ! -x "$env/bin/pytest" ]; then
  echo "creating the Python environment $env"
  rm -rf "$env"
  python3 -m venv "$env"
  "$env/bin/pip" install -q --disable-pip-version-check \
    "maturin>=1.5,<2" "pytest>=7" "numpy>=1.24" "cloudpickle>=2"
fi
cd "$here/python"
profile=""
if [ "${YR_PY_RELEASE:-0}" = 1 ]; then profile=--release; fi
VIRTUAL_ENV="$env" PATH="$env/bin:$PATH" maturin develop $profile
