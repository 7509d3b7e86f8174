#!/usr/bin/env bash
# Packs what `device.sh` needs to run issue 19's comparison on a lent GPU machine, which
# reaches no package index and takes at most 64 MiB per call: the release `crat` and the
# compare bench (built here, stripped), onnxruntime-gpu and the FastAPI stack for its Python
# 3.12 (`requirements.txt` beside this script, installed here for that platform) and the
# PP-OCRv4 detector, as one xz-compressed tar cut into parts `.gpu/part-NN` of at most
# `CRAT_GPU_PART_MIB` (default 55) MiB, with `.gpu/SHA256SUMS`. `.gpu/` is git-ignored
# (through `.git/info/exclude`). README.md beside this script says how the parts travel.
#
#     benches/compare/gpu/pack.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."

log() { printf 'gpu/pack: %s\n' "$*" >&2; }

out=.gpu
part_mib="${CRAT_GPU_PART_MIB:-55}"
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
# A call carries at most 64 MiB: the working tree (tracked and untracked files git does not
# ignore) and one part, with 512 KiB to spare.
tree_kib="$(git ls-files -co --exclude-standard -z | du -c -k --files0-from=- | tail -1 | cut -f1)"
if (( tree_kib + part_mib * 1024 > 64 * 1024 - 512 )); then
    log "the working tree (${tree_kib} KiB) and a part of ${part_mib} MiB come to more than a call carries: set CRAT_GPU_PART_MIB lower"
    exit 1
fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/models"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
log "building crat and the compare bench (release)"
cargo build --release --locked --quiet -p crat-cli --bin crat
bench="$(cargo bench --no-run --locked -p crat-benches --bench compare --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "compare":
        print(m["executable"])')"
[[ -x "$bench" ]] || { log "no compare bench executable found"; exit 1; }
strip -o "$stage/bin/crat" "$CARGO_TARGET_DIR/release/crat"
strip -o "$stage/bin/compare" "$bench"

log "the detector (benches/compare/run.sh's set-up)"
cp "$(CRAT_COMPARE_SETUP_ONLY=1 benches/compare/run.sh)" "$stage/models/ch_PP-OCRv4_det_infer.onnx"

log "onnxruntime-gpu and the FastAPI stack for CPython 3.12 on manylinux x86_64"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --only-binary=:all: --implementation cp --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target "$stage/site" -r benches/compare/gpu/requirements.txt

log "compressing (xz -9, a few minutes)"
rm -rf "$out"
mkdir -p "$out"
tar -C "$stage" -cf - . | xz -9 -T0 | split -b "${part_mib}M" -d -a 2 - "$out/part-"
(cd "$out" && sha256sum part-* >SHA256SUMS)
log "$(ls "$out"/part-* | wc -l) parts in $out ($(du -sh "$out" | cut -f1)); the working tree that travels with each: ${tree_kib} KiB"
ls -l "$out" >&2
