#!/usr/bin/env bash
# The same stress run without docker: one network namespace per node, joined by veth pairs to
# a bridge that lives in a hub namespace of its own. Addresses are 10.254.X.0/24, which exist
# only inside these namespaces. Everything is deleted on exit. Needs root (ip netns).
set -uo pipefail
source "$(dirname "$0")/common.sh"
parse_args "$@"

START=$(date +%s.%N)
build_host

NET="10.254.$((RANDOM % 250 + 1))"
HUB="${RUN_ID}-hub"
NSES=()
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for ns in "${NSES[@]}"; do ip netns delete "$ns" 2>/dev/null; rm -rf "/etc/netns/$ns"; done
}
# Unicast: the name `mccache` resolves (the namespaces' hosts files) to the nodes listed.
write_hosts() {
    local n=$1 i j
    for i in $(seq 1 "$NODES"); do
        mkdir -p "/etc/netns/${RUN_ID}-n$i"
        { echo "127.0.0.1 localhost"; for j in $(seq 1 "$n"); do echo "$NET.$j mccache"; done; } \
            > "/etc/netns/${RUN_ID}-n$i/hosts"
    done
}
trap cleanup EXIT
trap 'exit 2' INT TERM

echo "== namespaces: hub $HUB (bridge br0, $NET.254/24) and $NODES node(s)"
ip netns add "$HUB" || exit 2
NSES+=("$HUB")
ip -n "$HUB" link set lo up
ip -n "$HUB" link add br0 type bridge mcast_snooping 0 || exit 2
ip -n "$HUB" addr add "$NET.254/24" dev br0
ip -n "$HUB" link set br0 up
for i in $(seq 1 "$NODES"); do
    ns="${RUN_ID}-n$i"
    ip netns add "$ns" || exit 2
    NSES+=("$ns")
    ip -n "$ns" link set lo up
    # Both ends are created inside the node namespace, then one moves to the hub.
    ip -n "$ns" link add eth0 type veth peer name "veth$i" || exit 2
    ip -n "$ns" link set "veth$i" netns "$HUB"
    ip -n "$HUB" link set "veth$i" master br0
    ip -n "$HUB" link set "veth$i" up
    ip -n "$ns" addr add "$NET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$NET.254"
done

TRANSPORT_ENV=()
E=$NODES START_WITH=$NODES
if [ -n "$JOIN_LATE" ]; then E=$(early_nodes) START_WITH=$E; fi
if [ "$UNICAST" = 1 ]; then
    command -v nft >/dev/null || { echo "error: -U needs nftables to block multicast" >&2; exit 2; }
    ip netns exec "$HUB" nft -f - <<NFT || exit 2
table bridge mcu {
    chain mcufilter {
        type filter hook forward priority 0;
        ether type ip ip daddr 224.0.0.0/4 counter drop
    }
}
NFT
    TRANSPORT_ENV=(MCCACHE_TRANSPORT=unicast MCCACHE_PEERS=mccache:4000 MCCACHE_DISCOVERY_INTERVAL=1)
    E=$(early_nodes)
    write_hosts "$E"
    echo "== unicast: multicast dropped on the bridge; peers mccache:4000 (hosts files); $E node(s) first, the rest ${LATE_AFTER} s later"
fi
if [ -n "$JOIN_LATE" ]; then echo "== node$(printf '%02d' "$NODES") joins ${LATE_AFTER} s after the others"; fi
echo "== $NODES node(s), ${DURATION} s, aperture $APERTURE, breathers $BREATHER, $MIX values, tantrum $TANTRUM %"
SEEDS=(101 127 131 149 151 163 173 181 191)
RUN_START=$(date +%s.%N)
for i in $(seq 1 "$NODES"); do
    name=$(printf 'node%02d' "$i")
    if [ "$i" -gt "$E" ] && [ "$i" -eq $((E + 1)) ]; then
        sleep "$LATE_AFTER"
        # the later nodes appear in the name, as new replicas do in DNS
        if [ "$UNICAST" = 1 ]; then write_hosts "$NODES"; fi
    fi
    ip netns exec "${RUN_ID}-n$i" env \
        TEST_KEY_ENTRIES="$KEYS" TEST_APERTURE="$APERTURE" TEST_DATA_SIZE_MIX="$MIX" \
        TEST_RUN_DURATION="$DURATION" TEST_MONKEY_TANTRUM="$TANTRUM" TEST_CLUSTER_SIZE="$NODES" TEST_START_WITH="$START_WITH" \
        TEST_CRYPTO_KEY="$CRYPTO_KEY" TEST_BREATHER="$BREATHER" TEST_RANDOM_SEED="${SEEDS[$((i - 1))]}" \
        MCCACHE_NODE_NAME="$name" MCCACHE_MULTICAST_IP=239.255.77.3 MCCACHE_MULTICAST_PORT=4000 \
        MCCACHE_DAEMON_SLEEP="${MCCACHE_DAEMON_SLEEP:-0.2}" MCCACHE_CACHE_PULSE="${MCCACHE_CACHE_PULSE:-1}" MCCACHE_CLUSTER_NAME="$RUN_ID" \
        "${TRANSPORT_ENV[@]}" \
        "$BIN" node --interface-from-route --out "$OUT/$name.json" 2>"$OUT/$name.log" &
    PIDS+=($!)
done
FAILED=0
for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}" || { echo "   node$((i + 1)) failed (see $OUT/node0$((i + 1)).log)" >&2; FAILED=1; }
done
PIDS=()
RUN_END=$(date +%s.%N)

finish_run ip netns exec "$HUB" nft list table bridge mcu
