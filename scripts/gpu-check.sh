#!/usr/bin/env bash
# Runs the CUDA path for real on a machine with an NVIDIA GPU: installs ONNX Runtime for the GPU
# (the PyPI `onnxruntime-gpu[cuda,cudnn]` wheels: ONNX Runtime 1.31.1 with the CUDA 13 and
# cuDNN 9 libraries, into a virtual environment), builds `crat` in release (with the `cuda`
# feature, as shipped) and runs `crat gpu-check --require-gpu`: the NVML probe, the backend the
# node selects (the CUDA execution provider, selected for real), a proof-of-hardware challenge
# on the GPU with its opened rows verified, and the tiny CNN and the PaddleOCR classifier on
# CUDA against ONNX Runtime on the CPU (agreement within the network's tolerance, median time
# per run). Exits non-zero if the GPU is not used or a model disagrees.
#
#     scripts/gpu-check.sh [crat gpu-check options, e.g. --json --runs 100]
#
# Environment:
#   CRAT_GPU_VENV    virtual environment for the wheels (default ~/.cache/cryptorat-gpu-venv)
#   CRAT_GPU_WHEELS  a directory of wheels to install from instead of PyPI (for machines that
#                    cannot reach it: `pip download "onnxruntime-gpu[cuda,cudnn]==1.31.1"`)
#   CRAT_BIN         a built `crat` to use instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'gpu-check: %s\n' "$*" >&2; }

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
else
    log "nvidia-smi not found: no NVIDIA driver here (the check runs, and fails --require-gpu)"
fi

venv="${CRAT_GPU_VENV:-$HOME/.cache/cryptorat-gpu-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
spec="onnxruntime-gpu[cuda,cudnn]==1.31.1"
if [ -n "${CRAT_GPU_WHEELS:-}" ]; then
    "$venv/bin/python" -m pip install --quiet --no-index --find-links "$CRAT_GPU_WHEELS" "$spec"
else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
fi
# The wheel's libonnxruntime, and the directories of the CUDA and cuDNN libraries it loads.
. scripts/onnxruntime-gpu-env.sh "$venv/bin/python"
log "ONNX Runtime: $ORT_DYLIB_PATH"

crat="${CRAT_BIN:-}"
if [ -z "$crat" ]; then
    cargo build --release --locked -p crat-cli --bin crat >&2
    crat="${CARGO_TARGET_DIR:-target}/release/crat"
fi
exec "$crat" gpu-check --require-gpu "$@"
