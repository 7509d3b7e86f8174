#!/usr/bin/env bash
# Issue 19's comparison, set up and run: CryptoRAT (crat dispatcher, two crat nodes on ONNX
# Runtime, crat gateway; separate processes) against FastAPI + uvicorn + onnxruntime on the
# tiny CNN, the PaddleOCR classifier and the PP-OCRv4 detector. See README.md beside it.
#
#   benches/compare/run.sh                 # every model
#   CRAT_COMPARE_MODELS=cls benches/compare/run.sh
#   CRAT_COMPARE_DEVICE=cuda benches/compare/run.sh    # on a GPU: onnxruntime-gpu both sides
#   CRAT_COMPARE_SETUP_ONLY=1 benches/compare/run.sh   # set up, print the detector's path
#
# Needs network access once (PyPI): the Python packages of requirements.txt in a virtual
# environment, the rapidocr-onnxruntime wheel the detector comes from, ONNX Runtime for the
# nodes (scripts/install-onnxruntime.sh). Every other setting is passed through (see the
# bench's doc: benches/benches/compare.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${CRAT_COMPARE_CACHE:-$HOME/.cache/cryptorat-compare}"
device="${CRAT_COMPARE_DEVICE:-cpu}"
case "$device" in
cpu) venv="${CRAT_COMPARE_VENV:-$HOME/.cache/cryptorat-compare-venv}" ;;
# onnxruntime-gpu and the CUDA 13 / cuDNN 9 wheels it loads, in a virtual environment of
# their own (onnxruntime and onnxruntime-gpu cannot share one).
cuda) venv="${CRAT_COMPARE_VENV:-$HOME/.cache/cryptorat-compare-gpu-venv}" ;;
*) echo "CRAT_COMPARE_DEVICE=$device: cpu (the default) or cuda" >&2; exit 2 ;;
esac
# The detector: PaddleOCR's PP-OCRv4 text detection model as the rapidocr-onnxruntime
# package ships it (Apache-2.0).
rapidocr="rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
rapidocr_sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
detector="$cache/ch_PP-OCRv4_det_infer.onnx"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
if [[ "$device" == cuda ]]; then
    # requirements.txt with onnxruntime-gpu (and its CUDA wheels) for onnxruntime.
    grep -v '^onnxruntime==' benches/compare/requirements.txt >"$venv/requirements-cuda.txt"
    echo 'onnxruntime-gpu[cuda,cudnn]==1.31.1' >>"$venv/requirements-cuda.txt"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$venv/requirements-cuda.txt"
else
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r benches/compare/requirements.txt
fi

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

if [[ -n "${CRAT_COMPARE_SETUP_ONLY:-}" ]]; then
    echo "$detector"
    exit 0
fi

if [[ "$device" == cuda ]]; then
    # The nodes load onnxruntime-gpu's own library, and find its CUDA libraries.
    . scripts/onnxruntime-gpu-env.sh "$venv/bin/python"
    ort="$ORT_DYLIB_PATH"
    export CRAT_COMPARE_DEVICE=cuda
else
    ort="${CRAT_COMPARE_ORT_DYLIB:-${ORT_DYLIB_PATH:-}}"
    if [[ -z "$ort" ]]; then
        ort="$(scripts/install-onnxruntime.sh)"
    fi
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p crat-cli --bin crat
CRAT_BIN="$CARGO_TARGET_DIR/release/crat" \
    CRAT_COMPARE_PYTHON="$venv/bin/python" \
    CRAT_COMPARE_DETECTOR="$detector" \
    CRAT_COMPARE_ORT_DYLIB="$ort" \
    cargo bench --quiet -p crat-benches --bench compare
