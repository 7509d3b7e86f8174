#!/usr/bin/env bash
# On a lent GPU machine (see README.md beside this script), from the repository's root:
#
#     benches/compare/gpu/device.sh receive   # after each call that carried a part: which are here
#     benches/compare/gpu/device.sh run       # once every part is here: unpack, check, compare
#
# `run` checks the parts against `.gpu/SHA256SUMS`, unpacks them into `$CRAT_GPU_DIR`
# (default /tmp/crat-gpu), installs nothing system-wide (the Python packages are on
# PYTHONPATH), puts onnxruntime-gpu's library and the machine's CUDA 13 / cuDNN 9 libraries
# (the `nvidia-*` wheels beside PyTorch) where `crat` finds them, then runs
# `crat gpu-check --require-gpu` (the CUDA provider selected for real, a proof-of-hardware
# challenge on the GPU, the shipped models against the CPU) and the comparison with
# `CRAT_COMPARE_DEVICE=cuda` (nodes on `ort/cuda`, FastAPI on onnxruntime-gpu's CUDA
# provider). What it prints goes to `$OUT` too (nvidia-smi.txt, gpu-check.json,
# compare-gpu.txt) when `OUT` is set. Any `CRAT_COMPARE_*` setting is passed through
# (`CRAT_COMPARE_MODELS`, `CRAT_COMPARE_SCALE`, ...).
set -euo pipefail
cd "$(dirname "$0")/../../.."

log() { printf 'gpu/device: %s\n' "$*" >&2; }

parts=.gpu
dir="${CRAT_GPU_DIR:-/tmp/crat-gpu}"
out="${OUT:-$dir/out}"

# xz's decompression, by Python's lzma where the image has no `xz`.
unxz_stream() {
    if command -v xz >/dev/null; then
        xz -d
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer, 1 << 20)'
    fi
}

# Which parts are here and whole (every part's sha256 is in SHA256SUMS).
check_parts() {
    [[ -f "$parts/SHA256SUMS" ]] || { log "no $parts/SHA256SUMS: carry it with each part"; return 1; }
    local missing=0 name
    while read -r _ name; do
        if [[ ! -f "$parts/$name" ]]; then
            log "missing: $name"
            missing=1
        fi
    done <"$parts/SHA256SUMS"
    (cd "$parts" && sha256sum --check --quiet --ignore-missing SHA256SUMS) || return 1
    return "$missing"
}

case "${1:-}" in
receive)
    if check_parts; then
        log "every part is here: next, benches/compare/gpu/device.sh run"
    else
        log "parts so far are whole; carry the missing ones"
    fi
    ls -l "$parts" >&2
    ;;
run)
    check_parts || { log "not every part is here (or one is damaged): nothing run"; exit 1; }
    rm -rf "$dir"
    mkdir -p "$dir" "$out"
    cat "$parts"/part-* | unxz_stream | tar -x -C "$dir"
    nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt" >&2 || log "nvidia-smi failed"

    # The FastAPI side's Python: the machine's python3 with onnxruntime-gpu and the FastAPI
    # stack first on its path (they shadow its CPU onnxruntime).
    export PYTHONPATH="$dir/site${PYTHONPATH:+:$PYTHONPATH}"
    python="$dir/python"
    printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >"$python"
    chmod +x "$python"
    . scripts/onnxruntime-gpu-env.sh "$python"
    # The driver's libraries (libcuda, libnvidia-ml for the nodes' GPU probe), last, where
    # the image mounts them, in case the loader's own paths miss them.
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
        [[ -d "$d" ]] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
    log "ONNX Runtime: $ORT_DYLIB_PATH"
    log "LD_LIBRARY_PATH: $LD_LIBRARY_PATH"

    log "crat gpu-check --require-gpu"
    "$dir/bin/crat" gpu-check --require-gpu --json >"$out/gpu-check.json" ||
        { cat "$out/gpu-check.json" >&2; log "gpu-check failed: the comparison is not run"; exit 1; }
    cat "$out/gpu-check.json" >&2

    log "the comparison on the GPU"
    export CRAT_BIN="$dir/bin/crat"
    export CRAT_COMPARE_PYTHON="$python"
    export CRAT_COMPARE_DETECTOR="$dir/models/ch_PP-OCRv4_det_infer.onnx"
    export CRAT_COMPARE_ORT_DYLIB="$ORT_DYLIB_PATH"
    export CRAT_COMPARE_DEVICE=cuda
    export CRAT_BENCHES_DIR="$PWD/benches"
    (cd benches && "$dir/bin/compare" --bench) 2>&1 | tee "$out/compare-gpu.txt"
    ;;
*)
    log "usage: $0 receive|run"
    exit 2
    ;;
esac
