#!/usr/bin/env bash
# Installs the CPU build of ONNX Runtime (libonnxruntime) from the PyPI `onnxruntime` wheel and
# prints the absolute path of the shared library on stdout (with --print-wheel: of the wheel it
# came from, which crat-node's tests serve from a loopback package index). Everything else goes to
# stderr, so
#
#     export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)
#
# is all a shell or CI job needs before `cargo test -p crat-backend --features ort`.
#
# The library lands in ${CRAT_CACHE_DIR:-$HOME/.cache/cryptorat}/onnxruntime-<version>/ and the
# wheel is kept in .../wheels/; a second run finds both there and downloads nothing. Needs python3 with pip (only to download the wheel;
# nothing is installed into Python) and unzip or python3's zipfile.
#
# Environment:
#   ORT_VERSION     wheel version (default 1.31.1; the `ort` crate's api-24 needs >= 1.24)
#   CRAT_CACHE_DIR  cache root (default $HOME/.cache/cryptorat)
#   PIP             pip command (default "python3 -m pip")
set -euo pipefail

version="${ORT_VERSION:-1.31.1}"
cache_root="${CRAT_CACHE_DIR:-${HOME}/.cache/cryptorat}"
dest="${cache_root}/onnxruntime-${version}"
lib="${dest}/libonnxruntime.so.${version}"
pip_cmd="${PIP:-python3 -m pip}"
print_wheel=0
if [[ "${1:-}" == "--print-wheel" ]]; then print_wheel=1; fi

log() { printf 'install-onnxruntime: %s\n' "$*" >&2; }

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) platform="manylinux_2_28_x86_64" ;;
    Linux-aarch64) platform="manylinux_2_28_aarch64" ;;
    *) log "unsupported platform $(uname -s)-$(uname -m); install libonnxruntime ${version} yourself and set ORT_DYLIB_PATH"; exit 1 ;;
esac

wheels="${cache_root}/wheels"
# The wheel's native library does not depend on the Python version; cp311 is simply a build
# that exists for every release we care about.
wheel="${wheels}/onnxruntime-${version}-cp311-cp311-${platform}.whl"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

if [[ ! -s "${wheel}" ]]; then
    log "downloading onnxruntime==${version} (${platform}, cp311) from PyPI"
    ${pip_cmd} download --no-deps --only-binary=:all: \
        --platform "${platform}" --python-version 3.11 --implementation cp --abi cp311 \
        "onnxruntime==${version}" -d "${work}/download" >&2
    if [[ ! -s "${work}/download/$(basename "${wheel}")" ]]; then
        log "pip did not produce $(basename "${wheel}")"
        exit 1
    fi
    mkdir -p "${wheels}"
    # Copy then rename within the cache, so an interrupted run never leaves a partial wheel.
    cp "${work}/download/$(basename "${wheel}")" "${wheel}.tmp.$$"
    mv -f "${wheel}.tmp.$$" "${wheel}"
fi

if [[ "${print_wheel}" == 1 ]]; then
    printf '%s\n' "$(cd "$(dirname "${wheel}")" && pwd)/$(basename "${wheel}")"
    exit 0
fi

if [[ -s "${lib}" ]]; then
    log "already installed: ${lib}"
    printf '%s\n' "${lib}"
    exit 0
fi

log "unpacking $(basename "${wheel}")"
member="onnxruntime/capi/libonnxruntime.so.${version}"
if command -v unzip > /dev/null 2>&1; then
    unzip -q -o "${wheel}" "${member}" -d "${work}/unpacked" >&2
else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
        "${wheel}" "${member}" "${work}/unpacked"
fi
if [[ ! -s "${work}/unpacked/${member}" ]]; then
    log "${member} not found in the wheel"
    exit 1
fi

mkdir -p "${dest}"
# Copy then rename, so a concurrent or interrupted run never leaves a half-written library
# behind under the final name.
cp "${work}/unpacked/${member}" "${lib}.tmp.$$"
mv -f "${lib}.tmp.$$" "${lib}"
log "installed ${lib}"
printf '%s\n' "$(cd "$(dirname "${lib}")" && pwd)/$(basename "${lib}")"
