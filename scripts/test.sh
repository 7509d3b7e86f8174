#!/usr/bin/env bash
# The test command: installs what the tests need (the ONNX Runtime library, from PyPI), starts a
# throwaway PostgreSQL server (scripts/postgres.sh) and S3-compatible service (scripts/s3.sh), both
# stopped on exit, then runs every test of the
# workspace with every feature, as CI does, then the Python package's tests
# (scripts/test-python.sh) and the gateway's tests with the official Triton client and
# curl. The Python packages come from PyPI into virtual environments under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."
# Chromium and chromedriver (the dashboard's browser test), systemd-analyze (the unit files'
# test) and nftables (the NAT lab's tests), from Debian when missing.
scripts/install-system-packages.sh
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
# The wheel it came from (kept in its cache): crat-node's tests/ort_setup.rs serves it from a
# loopback package index and installs it as `crat node` would.
CRAT_ORT_WHEEL="$(scripts/install-onnxruntime.sh --print-wheel)"
export ORT_DYLIB_PATH CRAT_ORT_WHEEL
# ONNX Runtime's PyPI build starts a telemetry uploader (to mobile.events.data.microsoft.com) in
# every process that loads it unless this is 1 before it loads (crat_backend::ort's docs): the
# tests and the Python tools they start send traffic to loopback only. The `crat` binary sets it
# itself, and .cargo/config.toml for what cargo runs.
# (ORT_TELEMETRY_DISABLED: the same switch as newer versions name it.)
export ORT_DISABLE_TELEMETRY=1 ORT_TELEMETRY_DISABLED=1
# A throwaway PostgreSQL 15 server (scripts/postgres.sh) for the PostgreSQL ledger's tests
# (crat-dispatcher's `postgres` feature, crates/cli/tests/postgres_ledger.rs), in a state directory
# of this run's own, stopped when this script exits, also when a test fails.
CRAT_PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/crat-pg-run.XXXXXX")"
# A throwaway S3-compatible service (scripts/s3.sh: moto's server from PyPI, in memory) for the
# object-store model store's S3 test (crat-dispatcher's `s3` feature), stopped on exit too.
CRAT_S3_DIR="$(mktemp -d "${TMPDIR:-/tmp}/crat-s3-run.XXXXXX")"
export CRAT_PG_DIR CRAT_S3_DIR
trap 'scripts/postgres.sh stop || true; scripts/s3.sh stop || true; rm -rf -- "$CRAT_PG_DIR" "$CRAT_S3_DIR"' EXIT
CRAT_TEST_POSTGRES_URL="$(scripts/postgres.sh start)"
# The CA its TLS certificate is signed with (the ledger's TLS tests).
CRAT_TEST_POSTGRES_CA="$(scripts/postgres.sh ca)"
CRAT_TEST_S3_ENDPOINT="$(scripts/s3.sh start)"
export CRAT_TEST_POSTGRES_URL CRAT_TEST_POSTGRES_CA CRAT_TEST_S3_ENDPOINT
cargo test --workspace --all-features --locked "$@"

# --- the Python package (python/, its own Cargo workspace): build it and run its pytest suite.
scripts/test-python.sh
# --- end of the Python package

# --- gateway (issue 15, item 2): tritonclient[http,grpc] and curl against `crat gateway --local` ---
# The Python packages of tests/gateway/requirements.txt, from PyPI into a virtual environment
# ($CRAT_GATEWAY_VENV, default ~/.cache/cryptorat-gateway-venv). Missing packages fail the
# run: nothing is skipped.
command -v curl >/dev/null || { echo "scripts/test.sh: the gateway tests need curl" >&2; exit 1; }
gateway_venv="${CRAT_GATEWAY_VENV:-$HOME/.cache/cryptorat-gateway-venv}"
[ -x "$gateway_venv/bin/python" ] || python3 -m venv "$gateway_venv" || {
    echo "scripts/test.sh: cannot create a virtual environment at $gateway_venv" >&2
    exit 1
}
"$gateway_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r tests/gateway/requirements.txt || {
    echo "scripts/test.sh: cannot install tests/gateway/requirements.txt from PyPI" >&2
    exit 1
}
gateway_python="$gateway_venv/bin/python"
if ! "$gateway_python" -c 'import tritonclient.http, tritonclient.grpc, numpy, onnxruntime, pytest, fastapi, uvicorn' 2>/dev/null; then
    echo "scripts/test.sh: the gateway tests need tritonclient[http,grpc], numpy, onnxruntime, pytest, fastapi and uvicorn" >&2
    exit 1
fi
cargo build --locked -p crat-cli --bin crat
CRAT_BIN="${CARGO_TARGET_DIR:-target}/debug/crat"
CRAT_BIN="$(cd "$(dirname "$CRAT_BIN")" && pwd)/crat"
export CRAT_BIN
"$gateway_python" -m pytest -q -p no:cacheprovider tests/gateway
tests/gateway/curl.sh
# The comparison's Python scripts (issue 19): its FastAPI anchor against the same Triton
# client, and the finder of onnxruntime-gpu's libraries.
"$gateway_python" -m pytest -q -p no:cacheprovider tests/benches
# --- end gateway ---
