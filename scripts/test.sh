#!/usr/bin/env bash
# The test command: installs what the tests need (the ONNX Runtime library, from PyPI), then
# runs every test of the workspace with every feature, as CI does, then the gateway's tests
# with the official Triton client and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
cargo test --workspace --all-features --locked "$@"

# --- gateway (issue 15, item 2): tritonclient[http] and curl against `crat gateway --local` ---
# Python with tests/gateway/requirements.txt installed: $CRAT_GATEWAY_PYTHON (.ci/run makes a
# virtual environment), else python3. Missing packages fail the run: nothing is skipped.
gateway_python="${CRAT_GATEWAY_PYTHON:-python3}"
if ! "$gateway_python" -c 'import tritonclient.http, numpy, onnxruntime, pytest' 2>/dev/null; then
    echo "scripts/test.sh: the gateway tests need tritonclient[http], numpy, onnxruntime and pytest for" \
        "$gateway_python: pip install -r tests/gateway/requirements.txt (or set CRAT_GATEWAY_PYTHON)" >&2
    exit 1
fi
cargo build --locked -p crat-cli --bin crat
CRAT_BIN="${CARGO_TARGET_DIR:-target}/debug/crat"
CRAT_BIN="$(cd "$(dirname "$CRAT_BIN")" && pwd)/crat"
export CRAT_BIN
"$gateway_python" -m pytest -q tests/gateway
tests/gateway/curl.sh
# --- end gateway ---
