#!/usr/bin/env bash
# Issue 19's comparison, set up and run: CryptoRAT (crat dispatcher, two crat nodes on ONNX
# Runtime, crat gateway; separate processes) against FastAPI + uvicorn + onnxruntime on the
# tiny CNN, the PaddleOCR classifier and the PP-OCRv4 detector. See README.md beside it.
#
#   benches/compare/run.sh                 # every model
#   CRAT_COMPARE_MODELS=cls benches/compare/run.sh
#
# Needs network access once (PyPI): the Python packages of requirements.txt in a virtual
# environment, the rapidocr-onnxruntime wheel the detector comes from, ONNX Runtime for the
# nodes (scripts/install-onnxruntime.sh). Every other setting is passed through (see the
# bench's doc: benches/benches/compare.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${CRAT_COMPARE_CACHE:-$HOME/.cache/cryptorat-compare}"
venv="${CRAT_COMPARE_VENV:-$HOME/.cache/cryptorat-compare-venv}"
# The detector: PaddleOCR's PP-OCRv4 text detection model as the rapidocr-onnxruntime
# package ships it (Apache-2.0).
rapidocr="rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
rapidocr_sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
detector="$cache/ch_PP-OCRv4_det_infer.onnx"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r benches/compare/requirements.txt

mkdir -p "$cache"
if [[ ! -f "$detector" ]]; then
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
        --dest "$cache" "rapidocr-onnxruntime==1.4.4"
    echo "$rapidocr_sha256  $cache/$rapidocr" | sha256sum --check --quiet
    "$venv/bin/python" - "$cache/$rapidocr" "$detector" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    data = wheel.read("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
open(sys.argv[2], "wb").write(data)
PY
fi

ort="${CRAT_COMPARE_ORT_DYLIB:-${ORT_DYLIB_PATH:-}}"
if [[ -z "$ort" ]]; then
    ort="$(scripts/install-onnxruntime.sh)"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p crat-cli --bin crat
CRAT_BIN="$CARGO_TARGET_DIR/release/crat" \
    CRAT_COMPARE_PYTHON="$venv/bin/python" \
    CRAT_COMPARE_DETECTOR="$detector" \
    CRAT_COMPARE_ORT_DYLIB="$ort" \
    cargo bench --quiet -p crat-benches --bench compare
