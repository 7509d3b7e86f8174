#!/usr/bin/env bash
# Installs the Debian packages the tests need when they are missing (and only then):
# - chromium and chromium-driver: crates/cli/tests/dashboard.rs drives the node's dashboard in
#   a real headless browser over WebDriver;
# - systemd: `systemd-analyze verify` checks dist/systemd/*.service (crates/cli's
#   config_example tests);
# - iproute2 and nftables: the NAT lab (crat_testnet::netlab) builds homes behind NAT routers
#   in network namespaces (crates/testnet/tests/netlab.rs; needs root);
# - postgresql-15: the server binaries (and the `postgres` OS user) of the throwaway server
#   scripts/postgres.sh starts for the PostgreSQL ledger's tests (its own data directory and
#   port; the Debian cluster the package sets up is not used);
# - openssl: that server's throwaway TLS certificate (the ledger's TLS tests).
# Needs root or sudo, and the Debian archive. Called by scripts/test.sh and .ci/run.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
{ [ -x "${CRAT_PG_BIN:-/usr/lib/postgresql/15/bin}/postgres" ] && id -u postgres >/dev/null 2>&1; } \
    || need+=(postgresql-15)
command -v openssl >/dev/null || need+=(openssl)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "scripts/install-system-packages.sh: the tests need ${need[*]} (Debian packages); run as root or install them" >&2
    exit 1
fi
echo "installing ${need[*]} (Debian packages the tests need)" >&2
"${sudo[@]}" apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}" >&2
