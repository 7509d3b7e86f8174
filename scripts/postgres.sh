#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for tests (issue 18: the ledger test suite against a real
# PostgreSQL). scripts/test.sh (and so .ci/run) starts one with a CRAT_PG_DIR of its own, exports
# its URL as CRAT_TEST_POSTGRES_URL for the PostgreSQL ledger's tests, and stops it on exit.
#
#   scripts/postgres.sh start   starts a server, creates the database crat_test, waits until it
#                               accepts connections and prints its URL on stdout:
#                               postgres://postgres@127.0.0.1:PORT/crat_test
#   scripts/postgres.sh url     prints that URL again (fails when no server was started)
#   scripts/postgres.sh ca      prints the path of the CA certificate (PEM) the server's TLS
#                               certificate is signed with (for tests of TLS to the server)
#   scripts/postgres.sh stop    stops the server (pg_ctl stop -m fast) and deletes its data
#                               directory; stopping when none runs is not an error
#
# Typical use:
#   url="$(scripts/postgres.sh start)"
#   trap 'scripts/postgres.sh stop' EXIT
#   CRAT_TEST_POSTGRES_URL="$url" cargo test ...   # (a variable name for the example)
#
# The server:
# - runs as the `postgres` OS user (PostgreSQL refuses to run as root): through `runuser` when
#   this script runs as root (as CI does), through `sudo -u postgres` otherwise (without a
#   password when sudo allows it, else asking on the terminal), directly when it runs as
#   `postgres`;
# - has a fresh data directory made by initdb (${TMPDIR:-/tmp}/crat-pgdata.XXXXXX, owned by
#   `postgres`; /tmp when `postgres` cannot reach $TMPDIR), with trust authentication, and
#   connections only on a unix socket in that directory and on 127.0.0.1;
# - listens on a free TCP port of 127.0.0.1 (a random one, retried when it turns out taken);
# - runs with fsync off: it is a test server, thrown away after the run;
# - accepts TLS (and plain) connections: its certificate, for 127.0.0.1 and localhost, is signed
#   by a throwaway CA made with `openssl` at start ($CRAT_PG_DIR/ca.pem, `scripts/postgres.sh
#   ca`), so that tests can check that a client verifies it.
#
# State (the port, the data directory, the URL) is kept in the directory $CRAT_PG_DIR, by default
# ${TMPDIR:-/tmp}/crat-postgres-$(id -u). One state directory holds one server: give each
# server started at the same time its own CRAT_PG_DIR.
#
# Environment: CRAT_PG_DIR (above); CRAT_PG_BIN, the server's binaries (default
# /usr/lib/postgresql/15/bin, from Debian's postgresql-15).
set -euo pipefail

me="scripts/postgres.sh"
bin="${CRAT_PG_BIN:-/usr/lib/postgresql/15/bin}"
state_dir="${CRAT_PG_DIR:-${TMPDIR:-/tmp}/crat-postgres-$(id -u)}"
state="$state_dir/state"
database=crat_test

die() {
    echo "$me: $*" >&2
    exit 1
}

say() {
    echo "$me: $*" >&2
}

# Runs a command as the postgres OS user, from / (the caller's directory may be closed to it).
as_pg() {
    if [ "$(id -un)" = postgres ]; then
        (cd / && "$@")
    elif [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && sudo "${sudo_flags[@]}" -u postgres -- "$@")
    fi
}

# How this user becomes postgres: nothing to do as postgres or root; otherwise sudo, without a
# password when allowed, else (on a terminal) asking for it once.
sudo_flags=(-n)
check_runner() {
    if [ "$(id -un)" = postgres ]; then
        return 0
    elif [ "$(id -u)" -eq 0 ]; then
        command -v runuser >/dev/null || die "runuser (util-linux) is missing"
        return 0
    fi
    command -v sudo >/dev/null \
        || die "running as $(id -un): the server must run as 'postgres', and sudo is missing"
    if sudo -n -u postgres -- true 2>/dev/null; then
        return 0
    fi
    [ -t 0 ] && sudo -u postgres -- true \
        || die "running as $(id -un): 'sudo -u postgres' is not allowed (or needs a password
and this is no terminal)"
    sudo_flags=()
}

check_tools() {
    command -v openssl >/dev/null \
        || die "openssl is missing (the test server's TLS certificate is made with it; Debian:
apt-get install openssl)"
    local tool
    for tool in initdb pg_ctl pg_isready psql postgres; do
        [ -x "$bin/$tool" ] || die "$bin/$tool is missing: install PostgreSQL 15's server
(Debian: apt-get install postgresql-15) or set CRAT_PG_BIN to the directory of its binaries"
    done
    id -u postgres >/dev/null 2>&1 \
        || die "there is no 'postgres' OS user to run the server as (PostgreSQL refuses root);
install Debian's postgresql-15, which creates it, or create it (useradd --system postgres)"
    check_runner
}

# A port of 127.0.0.1 nobody listens on now (postgres may still lose a race for it: start
# retries then).
pick_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if command -v ss >/dev/null; then
            ss -Htln "sport = :$port" 2>/dev/null | grep -q . && continue
        elif (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        echo "$port"
        return 0
    done
    die "found no free TCP port on 127.0.0.1"
}

read_state() {
    [ -f "$state" ] || return 1
    port="$(sed -n 's/^port=//p' "$state")"
    data="$(sed -n 's/^data=//p' "$state")"
    url="$(sed -n 's/^url=//p' "$state")"
    [ -n "$port" ] && [ -n "$data" ] && [ -n "$url" ] || die "$state is damaged; remove it"
}

running() {
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d "$database" -U postgres -t 2
}

remove_data() {
    # The data directory belongs to postgres, and only a directory this script made.
    case "$data" in
    */crat-pgdata.*) as_pg rm -rf -- "$data" || rm -rf -- "$data" ;;
    *) die "refusing to delete $data: not a data directory of $me" ;;
    esac
}

# Undoes a start that failed half-way.
abandon() {
    if [ -f "$data/postmaster.pid" ]; then
        as_pg "$bin/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    as_pg rm -rf -- "$data" 2>/dev/null || true
}

stop() {
    if ! read_state; then
        say "no server started (no $state)"
        return 0
    fi
    check_runner
    local what="found no server running on port $port"
    if [ -f "$data/postmaster.pid" ]; then
        what="stopped the server on port $port"
        as_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >&2 \
            || as_pg "$bin/pg_ctl" -D "$data" -m immediate -w -t 30 stop >&2 \
            || what="could not stop the server on port $port (pg_ctl failed)"
    fi
    remove_data
    rm -f -- "$state" "$state_dir/ca.pem"
    rmdir -- "$state_dir" 2>/dev/null || true
    say "$what; deleted $data"
}

start() {
    check_tools
    if read_state; then
        if running; then
            die "a server runs already at $url ($state): '$me stop' it first, or give this one
its own CRAT_PG_DIR"
        fi
        say "the server of $state is gone; deleting what it left"
        stop
    fi
    mkdir -p -- "$state_dir"

    local base="${TMPDIR:-/tmp}"
    as_pg test -w "$base" -a -x "$base" 2>/dev/null || base=/tmp
    data="$(as_pg mktemp -d "$base/crat-pgdata.XXXXXX")" \
        || die "cannot make a data directory under $base as postgres"
    # From here on, a failure stops the server (if it started) and deletes the data directory.
    trap 'abandon' EXIT
    as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C \
        --no-instructions >"$state_dir/initdb.log" 2>&1 \
        || { cat "$state_dir/initdb.log" >&2; die "initdb failed"; }
    rm -f -- "$state_dir/initdb.log"
    # Only the socket in the data directory and 127.0.0.1, both trusted.
    as_pg sh -c "cat > '$data/pg_hba.conf'" <<'EOF'
local all all             trust
host  all all 127.0.0.1/32 trust
EOF

    # TLS: a throwaway CA (kept in the state directory, for the tests) signs the server's
    # certificate (in the data directory, its key readable by postgres only).
    local tls="$state_dir/tls"
    rm -rf -- "$tls" && mkdir -p -- "$tls"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
            -subj "/CN=crat test CA" -keyout "$tls/ca.key" -out "$state_dir/ca.pem" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout "$tls/server.key" -out "$tls/server.csr"
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$tls/server.ext"
        openssl x509 -req -in "$tls/server.csr" -CA "$state_dir/ca.pem" -CAkey "$tls/ca.key" \
            -CAcreateserial -days 7 -extfile "$tls/server.ext" -out "$tls/server.pem"
    } >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl failed"; }
    chmod 644 "$state_dir/ca.pem"
    as_pg sh -c "cat > '$data/server.pem'" <"$tls/server.pem"
    as_pg sh -c "umask 077 && cat > '$data/server.key'" <"$tls/server.key"
    rm -rf -- "$tls"

    local tries=0 log
    while :; do
        port="$(pick_port)"
        as_pg sh -c "cat >> '$data/postgresql.conf'" <<EOF

# $me
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = 'server.pem'
ssl_key_file = 'server.key'
EOF
        log="$data/server.log"
        if as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1; then
            break
        fi
        tries=$((tries + 1))
        if [ "$tries" -ge 5 ] || ! as_pg grep -q 'could not \(bind\|create listen\)' "$log"; then
            as_pg cat "$log" >&2 || true
            die "the server did not start (log above)"
        fi
        say "port $port was taken; trying another"
    done

    for _ in $(seq 1 60); do
        running && break
        sleep 0.5
    done
    running || die "the server on port $port does not accept connections"
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "CREATE DATABASE $database" >&2 \
        || die "cannot create the database $database"
    url="postgres://postgres@127.0.0.1:$port/$database"
    running || die "the database $database does not accept connections at $url"

    printf 'port=%s\ndata=%s\nurl=%s\n' "$port" "$data" "$url" >"$state.tmp"
    mv -- "$state.tmp" "$state"
    trap - EXIT
    say "started PostgreSQL ($("$bin/postgres" --version)) on 127.0.0.1:$port, data $data"
    echo "$url"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
url)
    read_state || die "no server started (no $state): run '$me start'"
    echo "$url"
    ;;
ca)
    read_state || die "no server started (no $state): run '$me start'"
    echo "$state_dir/ca.pem"
    ;;
*)
    echo "usage: $me start|stop|url|ca" >&2
    exit 2
    ;;
esac
