#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time; fails if any
# target crashes (a panic, a broken round-trip property, a timeout or running out of memory).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 20)
#
# Needs cargo-fuzz (installed into ~/.cargo/bin on first use) and a nightly toolchain; without
# one, the stable toolchain is used with RUSTC_BOOTSTRAP=1 (the sanitizer flags are unstable).
# Environment:
#   CRAT_FUZZ_TARGET_DIR  build directory (default fuzz/target); CI keeps one outside the clone
#   CRAT_FUZZ_CORPUS_DIR  where each target's growing corpus lives (default fuzz/corpus); the
#                         committed seeds in fuzz/seeds/<target>/ are always read as well
#   CRAT_FUZZ_TARGETS     space-separated subset of targets to run (default: all)
#   CRAT_FUZZ_CORPUS_FILES_MAX  a target's corpus above this many files is minimised (`cargo
#                         fuzz cmin`) before it runs, so a corpus kept between runs stays
#                         bounded (default 10000)
# A crash leaves its input in fuzz/artifacts/<target>/; replay it with
#   cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
cargo_fuzz_version="0.13.2"
target_dir="${CRAT_FUZZ_TARGET_DIR:-$root/fuzz/target}"
corpus_root="${CRAT_FUZZ_CORPUS_DIR:-$root/fuzz/corpus}"
corpus_files_max="${CRAT_FUZZ_CORPUS_FILES_MAX:-10000}"
# The fuzz crate has its own workspace and lock file; never build into the main target dir.
unset CARGO_TARGET_DIR

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into ~/.cargo/bin"
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    toolchain="nightly"
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    toolchain="$(rustc --version) with RUSTC_BOOTSTRAP=1"
fi

cd fuzz
start=$SECONDS
echo "== building fuzz targets ($toolchain)"
"${fuzz[@]}" build --target-dir "$target_dir"
build_s=$((SECONDS - start))

read -r -a targets <<<"${CRAT_FUZZ_TARGETS:-$("${fuzz[@]}" list | tr '\n' ' ')}"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$corpus_root/$target"
    if (($(find "$corpus_root/$target" -type f | wc -l) > corpus_files_max)); then
        "${fuzz[@]}" cmin --target-dir "$target_dir" "$target" "$corpus_root/$target" \
            >"$logs/$target.cmin.log" 2>&1 || { tail -n 30 "$logs/$target.cmin.log"; exit 1; }
    fi
    seeds=()
    [[ -d "seeds/$target" ]] && seeds=("seeds/$target")
    log="$logs/$target.log"
    # -timeout: one input running 10 s is a hang; -rss_limit_mb: memory must stay bounded.
    if "${fuzz[@]}" run --target-dir "$target_dir" "$target" "$corpus_root/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        corpus=$(find "$corpus_root/$target" -type f | wc -l)
        printf '%-22s ok   %10s execs %8s/s  corpus %5s\n' "$target" "$runs" "$speed" "$corpus"
    else
        printf '%-22s FAILED\n' "$target"
        # The panic (with its assertion message), the sanitizer's verdict and the saved input;
        # then the end of the log (for failures that are not crashes, e.g. a build error).
        grep -E -m1 -A6 'panicked at' "$log" || true
        grep -E '^SUMMARY|==ERROR|Test unit written|^Base64' "$log" || true
        tail -n 15 "$log"
        failed+=("$target")
    fi
done

echo "== fuzz: build ${build_s}s, runs $((SECONDS - start - build_s))s (${#targets[@]} targets x ${seconds}s)"
if ((${#failed[@]})); then
    echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
