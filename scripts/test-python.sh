#!/usr/bin/env bash
# The Python package's tests (python/): builds the `cryptorat` extension with maturin into a
# virtual environment kept outside the clone, then runs its pytest suite (the whole integrator
# flow on cryptorat.testing.LocalNetwork, every dtype, typed errors, infer_many, progress, the
# README's quick start). Called by scripts/test.sh; runs alone too. Arguments go to pytest.
#
# Needs python3 (3.9+, with venv and pip) and PyPI. CRAT_PYTHON_VENV overrides where the
# environment lives (default ~/.cache/cryptorat-python-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "scripts/test-python.sh: $*" >&2
    exit 1
}

command -v python3 >/dev/null || fail "python3 is not installed: the Python package's tests need it"
venv="${CRAT_PYTHON_VENV:-$HOME/.cache/cryptorat-python-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || fail "cannot create a virtual environment at $venv (python3 -m venv)"
fi
# What the build and the tests need, from PyPI (already there: no download).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "maturin>=1.9,<2" "numpy>=1.21" "pytest>=7" "onnx>=1.14" ||
    fail "cannot install maturin, numpy, pytest and onnx from PyPI into $venv"

# The extension, built into the environment (debug profile: dependencies are optimised, see
# python/Cargo.toml), with python/Cargo.lock as it is.
(cd python && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --locked --quiet) ||
    fail "building the cryptorat extension (maturin develop in python/) failed"
"$venv/bin/python" -c "import cryptorat, cryptorat.testing" ||
    fail "the cryptorat package does not import after the build"

cd python
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
