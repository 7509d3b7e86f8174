#!/usr/bin/env bash
# A manual NAT experiment for the iroh transport (issue 17), needs root (network namespaces, nft).
#
#   nodeA 192.168.1.2 ── natA (masquerade) 10.0.1.2 ─┐
#                                                    inet 10.0.1.1 / 10.0.2.1 (relay on 10.0.1.1:3340)
#   nodeB 192.168.2.2 ── natB (masquerade) 10.0.2.2 ─┘
#
# Scenarios (the dialler is given only the relay URL; `crat` ids are seeds 1 and 2):
#   public  — server behind natA, dialler in inet (a public client or dispatcher);
#   natnat  — server behind natA, dialler behind natB;
#   natnat-qad — the same, the relay also serving QUIC address discovery (QAD) on UDP 7842
#             under a self-signed certificate the endpoints trust.
# Usage: scripts/iroh-nat-experiment.sh [public|natnat|natnat-qad|all]  (build the example first)
set -euo pipefail
P=hiroh
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/examples/iroh_nat}
[ -x "$BIN" ] || { echo "build first: cargo build -p crat-transport --features iroh-relay --example iroh_nat"; exit 1; }
ns() { ip netns exec "$P-$1" "${@:2}"; }

cleanup() {
  for pid in ${PIDS:-}; do kill "$pid" 2>/dev/null || true; done
  for n in inet natA natB nodeA nodeB; do ip netns del "$P-$n" 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup

for n in inet natA natB nodeA nodeB; do ip netns add "$P-$n"; ns "$n" ip link set lo up; done
link() { # link <nsA> <ifA> <addrA> <nsB> <ifB> <addrB>
  ip link add "$P-tmpa" type veth peer name "$P-tmpb"
  ip link set "$P-tmpa" netns "$P-$1"; ip link set "$P-tmpb" netns "$P-$4"
  ns "$1" ip link set "$P-tmpa" name "$2"; ns "$4" ip link set "$P-tmpb" name "$5"
  ns "$1" ip addr add "$3" dev "$2"; ns "$4" ip addr add "$6" dev "$5"
  ns "$1" ip link set "$2" up; ns "$4" ip link set "$5" up
}
link inet wanA 10.0.1.1/24 natA wan 10.0.1.2/24
link inet wanB 10.0.2.1/24 natB wan 10.0.2.2/24
link natA lan 192.168.1.1/24 nodeA eth0 192.168.1.2/24
link natB lan 192.168.2.1/24 nodeB eth0 192.168.2.2/24
ns inet sysctl -qw net.ipv4.ip_forward=1
for s in A B; do
  ns "nat$s" sysctl -qw net.ipv4.ip_forward=1
  ns "nat$s" ip route add default via "10.0.$([ $s = A ] && echo 1 || echo 2).1"
  ns "node$s" ip route add default via "192.168.$([ $s = A ] && echo 1 || echo 2).1"
  ns "nat$s" nft add table ip nat
  ns "nat$s" nft add chain ip nat post '{ type nat hook postrouting priority 100; }'
  ns "nat$s" nft add rule ip nat post oifname wan masquerade
  # As home routers do: nothing unsolicited from the WAN reaches the router itself. (Without
  # this, a peer's first hole-punching packet is accepted locally and its conntrack entry makes
  # the router re-map the node's own outgoing packet to another port: no direct path.)
  ns "nat$s" nft add table ip filter
  ns "nat$s" nft add chain ip filter input '{ type filter hook input priority 0; policy accept; }'
  ns "nat$s" nft add rule ip filter input iifname wan ct state established,related accept
  ns "nat$s" nft add rule ip filter input iifname wan drop
done

PIDS=""
RELAY=http://10.0.1.1:3340/
CERT=$(mktemp)
relay() { # relay [qad]
  if [ "${1:-}" = qad ]; then
    ip netns exec "$P-inet" "$BIN" relay 10.0.1.1:3340 10.0.1.1:7842 10.0.1.1 "$CERT" &
  else
    ip netns exec "$P-inet" "$BIN" relay 10.0.1.1:3340 &
  fi
  RELAY_PID=$!; PIDS="$PIDS $RELAY_PID"; sleep 1
}

run() { # run <name> <server ns> <dialler ns>
  echo "=== $1: server in $2, dialler in $3, dialler knows only $RELAY"
  ip netns exec "$P-$2" "$BIN" serve 0.0.0.0:0 "$RELAY" 1 & local spid=$!
  sleep 2
  ns "$3" timeout 30 "$BIN" dial 0.0.0.0:0 "$RELAY" 2 1 "$RELAY" || echo "dial failed: $?"
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
}
stop_relay() { kill "$RELAY_PID" 2>/dev/null || true; wait "$RELAY_PID" 2>/dev/null || true; }
qad() {
  relay qad
  export IROH_QAD_PORT=7842 IROH_RELAY_CERT=$CERT
  run natnat-qad nodeA nodeB
  unset IROH_QAD_PORT IROH_RELAY_CERT
  stop_relay
}
case "${1:-all}" in
  public) relay; run public nodeA inet; stop_relay ;;
  natnat) relay; run natnat nodeA nodeB; stop_relay ;;
  natnat-qad) qad ;;
  all) relay; run public nodeA inet; run natnat nodeA nodeB; stop_relay; qad ;;
esac
