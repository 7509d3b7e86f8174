#!/usr/bin/env bash
# The test command: installs what the tests need (the ONNX Runtime library, from PyPI), then
# runs every test of the workspace with every feature, as CI does, then the Python package's
# tests (scripts/test-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
cargo test --workspace --all-features --locked "$@"

# --- the Python package (python/, its own Cargo workspace): build it and run its pytest suite.
scripts/test-python.sh
# --- end of the Python package
