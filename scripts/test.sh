#!/usr/bin/env bash
# The test command: installs what the tests need (the ONNX Runtime library, from PyPI), then
# runs every test of the workspace with every feature, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
exec cargo test --workspace --all-features --locked "$@"
