#!/usr/bin/env bash
# A throwaway S3-compatible service for tests (issue 18: the object-store model store against a
# real S3 API): moto's server (`moto[server]` from PyPI, tests/s3/requirements.txt), in memory,
# on 127.0.0.1. scripts/test.sh (and so .ci/run) starts one, exports its endpoint as
# CRAT_TEST_S3_ENDPOINT for crat-dispatcher's S3 tests, and stops it on exit.
#
#   scripts/s3.sh start   installs moto into a virtual environment when missing, starts the server
#                         on a free port of 127.0.0.1, creates the bucket `crat-test`, waits until
#                         it answers and prints its endpoint on stdout: http://127.0.0.1:PORT
#   scripts/s3.sh url     prints that endpoint again (fails when no server was started)
#   scripts/s3.sh stop    stops the server; stopping when none runs is not an error
#
# The server accepts any credentials (tests use AWS_ACCESS_KEY_ID=test) and keeps objects in
# memory: everything is gone when it stops.
#
# Environment: CRAT_S3_DIR, the state directory (the pid, the endpoint, the server's log; default
# ${TMPDIR:-/tmp}/crat-s3-$(id -u); one server per state directory); CRAT_S3_VENV, the virtual
# environment (default ~/.cache/cryptorat-s3-venv).
set -euo pipefail

me="scripts/s3.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
state_dir="${CRAT_S3_DIR:-${TMPDIR:-/tmp}/crat-s3-$(id -u)}"
venv="${CRAT_S3_VENV:-$HOME/.cache/cryptorat-s3-venv}"
bucket=crat-test

die() {
    echo "$me: $*" >&2
    exit 1
}

running() {
    [ -f "$state_dir/pid" ] && kill -0 "$(cat "$state_dir/pid")" 2>/dev/null
}

install() {
    if [ ! -x "$venv/bin/moto_server" ]; then
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv" ||
            die "cannot create a virtual environment at $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$root/tests/s3/requirements.txt" >&2 ||
            die "cannot install tests/s3/requirements.txt (moto[server]) from PyPI"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    command -v curl >/dev/null || die "needs curl"
    running && die "a server already runs for $state_dir (scripts/s3.sh stop first)"
    install
    mkdir -p "$state_dir"
    for _ in 1 2 3 4 5; do
        port="$(free_port)"
        nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$state_dir/log" 2>&1 &
        echo $! >"$state_dir/pid"
        for _ in $(seq 1 100); do
            if curl -sf -o /dev/null "http://127.0.0.1:$port/moto-api/"; then
                curl -sf -o /dev/null -X PUT "http://127.0.0.1:$port/$bucket" ||
                    die "the server on port $port did not create the bucket $bucket"
                echo "http://127.0.0.1:$port" >"$state_dir/url"
                cat "$state_dir/url"
                return 0
            fi
            running || break
            sleep 0.1
        done
        # The port was taken meanwhile, or the server did not come up: try another.
        kill "$(cat "$state_dir/pid")" 2>/dev/null || true
        rm -f "$state_dir/pid"
    done
    die "moto_server did not start (log: $state_dir/log): $(tail -5 "$state_dir/log" 2>/dev/null)"
}

stop() {
    if running; then
        kill "$(cat "$state_dir/pid")"
    fi
    rm -f "$state_dir/pid" "$state_dir/url"
}

case "${1:-}" in
    start) start ;;
    url) [ -f "$state_dir/url" ] && running || die "no server started"; cat "$state_dir/url" ;;
    stop) stop ;;
    *) die "usage: $me start|url|stop" ;;
esac
