#!/usr/bin/env bash
# curl against every route of `crat gateway --local` and every error status: 400 bad input,
# 401 missing/malformed/unknown key, 402 a spent allowance, 403 revoked and expired keys,
# 404 unknown model/version/route, 413 a body over the limit, 503 with Retry-After (a gateway
# configured to run no inference). CRAT_BIN names the `crat` binary.
set -euo pipefail
: "${CRAT_BIN:?CRAT_BIN must name the built crat binary}"
command -v curl >/dev/null || { echo "curl.sh: curl is not installed" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# start NAME CONFIG_TEXT: runs a local gateway, waits for its JSON line into $work/NAME.json.
start() {
    printf '%s\n' "$2" > "$work/$1.toml"
    "$CRAT_BIN" gateway --local --config "$work/$1.toml" > "$work/$1.out" 2> "$work/$1.err" &
    pids+=($!)
    for _ in $(seq 1 240); do
        if [ -s "$work/$1.out" ]; then head -n1 "$work/$1.out" > "$work/$1.json"; return; fi
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.5
    done
    echo "curl.sh: gateway $1 did not start:" >&2; cat "$work/$1.err" >&2; exit 1
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/$1.json" "$2"; }

start main $'[gateway]\nbody_bytes_max = 1048576'
start drained $'[gateway]\ninfer_inflight_max = 0'
url=$(field main url); key=$(field main key); version=$(field main version)
dep=$(field main deployment); revoked=$(field main revoked_key); expired=$(field main expired_key)
drained=$(field drained url); dkey=$(field drained key)

failures=0
# expect STATUS NAME curl-args...: checks the status; error answers must carry {"error": "..."}
# and 503s a Retry-After header.
expect() {
    local want=$1 name=$2; shift 2
    local got
    got=$(curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' "$@")
    if [ "$got" != "$want" ]; then
        echo "FAIL $name: status $got, expected $want: $(head -c 300 "$work/body")"; failures=$((failures + 1)); return
    fi
    if [ "$want" -ge 400 ] && ! python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert isinstance(e,str) and e' "$work/body" 2>/dev/null; then
        echo "FAIL $name: no OIP error body: $(head -c 300 "$work/body")"; failures=$((failures + 1)); return
    fi
    if [ "$want" = 503 ] && ! grep -qi '^retry-after: [0-9]' "$work/headers"; then
        echo "FAIL $name: 503 without Retry-After"; failures=$((failures + 1)); return
    fi
    echo "ok   $name ($got)"
}

auth=(-H "Authorization: Bearer $key")
python3 - "$work" <<'PY'
import json, struct, sys
work = sys.argv[1]
pixels = [((i * 2654435761) % 1000) / 1000 for i in range(784)]
inp = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32"}
json.dump({"inputs": [dict(inp, data=pixels)]}, open(f"{work}/infer.json", "w"))
json.dump({"inputs": [dict(inp, shape=[1, 1, 27, 28], data=[0.0] * 756)]}, open(f"{work}/bad.json", "w"))
header = json.dumps({"inputs": [dict(inp, parameters={"binary_data_size": 3136})],
                     "outputs": [{"name": "probs", "parameters": {"binary_data": True}}]}).encode()
open(f"{work}/infer.bin", "wb").write(header + struct.pack("<784f", *pixels))
open(f"{work}/header_len", "w").write(str(len(header)))
open(f"{work}/big.json", "wb").write(b" " * (2 << 20))
PY
hlen=$(cat "$work/header_len")

expect 200 "GET /v2/health/live" "$url/v2/health/live"
expect 200 "GET /v2/health/ready" "$url/v2/health/ready"
expect 200 "GET /v2" "$url/v2"
expect 200 "GET /v2/models/tiny" "${auth[@]}" "$url/v2/models/tiny"
expect 200 "GET /v2/models/{deployment id}" "${auth[@]}" "$url/v2/models/$dep"
expect 200 "GET /v2/models/tiny/versions/{version}" "${auth[@]}" "$url/v2/models/tiny/versions/$version"
expect 200 "GET /v2/models/tiny/ready" "${auth[@]}" "$url/v2/models/tiny/ready"
expect 200 "GET /v2/models/tiny/versions/{version}/ready" "${auth[@]}" "$url/v2/models/tiny/versions/$version/ready"
expect 200 "GET /v2/models/tiny/config" "${auth[@]}" "$url/v2/models/tiny/config"
expect 200 "GET /v2/models/tiny/versions/{version}/config" "${auth[@]}" "$url/v2/models/tiny/versions/$version/config"
expect 200 "POST /v2/models/tiny/infer (JSON)" "${auth[@]}" --data-binary "@$work/infer.json" "$url/v2/models/tiny/infer"
python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["outputs"][0]; assert o["name"]=="probs" and o["shape"]==[1,10] and len(o["data"])==10, o' "$work/body" \
    || { echo "FAIL JSON infer answer"; failures=$((failures + 1)); }
expect 200 "POST /v2/models/tiny/versions/{version}/infer (binary)" "${auth[@]}" \
    -H "Inference-Header-Content-Length: $hlen" -H "Content-Type: application/octet-stream" \
    --data-binary "@$work/infer.bin" "$url/v2/models/tiny/versions/$version/infer"
json_len=$(grep -i '^inference-header-content-length:' "$work/headers" | tr -dc '0-9')
[ "$(( $(stat -c %s "$work/body") - json_len ))" = 40 ] \
    || { echo "FAIL binary infer answer: not 40 bytes of probs after the JSON"; failures=$((failures + 1)); }
expect 200 "GET /metrics" "$url/metrics"
grep -q '^crat_gateway_requests_total{route="/v2/models/{name}/infer",code="200"} 1$' "$work/body" \
    || { echo "FAIL /metrics lacks the JSON inference"; failures=$((failures + 1)); }

expect 400 "invalid input (shape)" "${auth[@]}" --data-binary "@$work/bad.json" "$url/v2/models/tiny/infer"
expect 400 "invalid JSON" "${auth[@]}" --data-binary '{"inputs": [' "$url/v2/models/tiny/infer"
expect 400 "binary size disagreeing with the header" "${auth[@]}" -H "Inference-Header-Content-Length: 99999" \
    --data-binary "@$work/infer.bin" "$url/v2/models/tiny/infer"
expect 401 "no key" --data-binary "@$work/infer.json" "$url/v2/models/tiny/infer"
expect 401 "malformed key" -H "Authorization: Bearer sk_nope" "$url/v2/models/tiny"
expect 401 "unknown key" -H "Authorization: Bearer sk_$(printf '0%.0s' {1..32})_$(printf '0%.0s' {1..64})" \
    --data-binary "@$work/infer.json" "$url/v2/models/tiny/infer"
expect 402 "insufficient credits (spent allowance)" "${auth[@]}" --data-binary "@$work/infer.json" "$url/v2/models/tiny-spent/infer"
expect 403 "revoked key" -H "Authorization: Bearer $revoked" --data-binary "@$work/infer.json" "$url/v2/models/tiny/infer"
expect 403 "expired key" -H "Authorization: Bearer $expired" "$url/v2/models/tiny"
expect 404 "unknown model" "${auth[@]}" "$url/v2/models/nope"
expect 404 "unknown version" "${auth[@]}" "$url/v2/models/tiny/versions/$(printf 'a%.0s' {1..64})/ready"
expect 404 "unknown route" "$url/v3"
expect 405 "wrong method" "${auth[@]}" "$url/v2/models/tiny/infer"
expect 413 "body over the limit" "${auth[@]}" --data-binary "@$work/big.json" "$url/v2/models/tiny/infer"
expect 503 "no inference slot (infer_inflight_max = 0)" -H "Authorization: Bearer $dkey" \
    --data-binary "@$work/infer.json" "$drained/v2/models/tiny/infer"

# The README's curl example, as written there, against this gateway.
readme="$(dirname "$0")/../../README.md"
awk '/<!-- tests\/gateway\/curl.sh runs the next block in CI -->/ {found=1; next}
     found && /^```sh/ {inside=1; next}
     inside && /^```/ {exit}
     inside {print}' "$readme" > "$work/readme.sh"
if [ ! -s "$work/readme.sh" ]; then
    echo "FAIL the README's curl example: no block after the marker"; failures=$((failures + 1))
elif URL="$url" KEY="$key" bash -euo pipefail "$work/readme.sh" > "$work/readme.out" 2>&1 \
    && grep -q '"versions"' "$work/readme.out" && grep -q '"name":"probs"' "$work/readme.out"; then
    echo "ok   the README's curl example"
else
    echo "FAIL the README's curl example: $(head -c 500 "$work/readme.out")"; failures=$((failures + 1))
fi

if [ "$failures" -ne 0 ]; then echo "curl.sh: $failures failed" >&2; exit 1; fi
echo "curl.sh: every route and error status as expected"
