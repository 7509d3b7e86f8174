#!/usr/bin/env bash
# Compares every output a user can see of two `crat` binaries byte for byte: `crat sim run` on
# every shipped scenario (CSV, JSON, exported rounds, SVG plots), `crat rewards compute` on the
# fixtures and on every exported round, and `crat rewards explain`. For restructurings that must
# change no output: build the binary of the commit before the change and of the change, then
#
#   scripts/compare-outputs.sh OLD_CRAT NEW_CRAT [WORK_DIR]
#
# Exits non-zero and lists the files that differ when any does. Progress lines on stderr and
# the wall times on stdout are not compared (they differ between any two runs). bench_1m is
# skipped (minutes per run); set CRAT_COMPARE_BENCH_1M=1 to include it.
set -euo pipefail
cd "$(dirname "$0")/.."
old="$(realpath "$1")"
new="$(realpath "$2")"
work="${3:-$(mktemp -d)}"
mkdir -p "$work"

outputs() {
    local bin="$1" out="$2"
    rm -rf "$out"
    mkdir -p "$out/compute"
    for f in scenarios/*.toml; do
        local n
        n="$(basename "$f" .toml)"
        case "$n" in
            bench_1m) [[ "${CRAT_COMPARE_BENCH_1M:-0}" == 1 ]] || continue ;;
        esac
        if [[ "$n" == bench_* ]]; then
            "$bin" sim run "$f" --out "$out/sim/$n" > /dev/null 2>&1
        else
            "$bin" sim run "$f" --out "$out/sim/$n" --export-rounds "$out/rounds/$n" --plot \
                > /dev/null 2>&1
        fi
        echo "$n rc=$?" >> "$out/rc.txt"
    done
    "$bin" sim run scenarios/baseline.toml --seeds 3 --seed 7 --out "$out/sim/baseline-seeds" \
        --export-rounds "$out/rounds/baseline-seeds" > /dev/null 2>&1
    local i=0 fx
    for fx in crates/cli/tests/data/round.json fuzz/seeds/rewards_inputs_json/*.json \
        fuzz/seeds/rewards_outcome_json/*.json; do
        i=$((i + 1))
        set +e
        "$bin" rewards compute < "$fx" > "$out/compute/fixture-$i.json" 2> "$out/compute/fixture-$i.err"
        echo "fixture-$i rc=$?" >> "$out/rc.txt"
        set -e
    done
    find "$out/rounds" -name 'round-*[0-9].json' | sort | while read -r r; do
        local rel="${r#"$out"/rounds/}"
        mkdir -p "$out/compute/$(dirname "$rel")"
        "$bin" rewards compute < "$r" > "$out/compute/$rel.computed" 2>&1 || true
    done
    local id
    for id in $(python3 -c "import json;[print(n['id']) for n in json.load(open('crates/cli/tests/data/round.json'))['nodes']]"); do
        "$bin" rewards explain --node "$id" --input crates/cli/tests/data/round.json \
            > "$out/compute/explain-$id.txt" 2>&1
    done
}

echo "compare-outputs: old $old"
outputs "$old" "$work/old"
echo "compare-outputs: new $new"
outputs "$new" "$work/new"
files="$(find "$work/old" -type f | wc -l)"
bytes="$(du -sb "$work/old" | cut -f1)"
if diff -rq "$work/old" "$work/new"; then
    echo "compare-outputs: identical: $files files, $bytes bytes (in $work)"
else
    echo "compare-outputs: DIFFERENT (in $work)" >&2
    exit 1
fi
