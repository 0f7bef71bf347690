#!/usr/bin/env bash
# A multi-container stress run: N `mccache node` containers (FROM scratch, static binary) on a
# private compose bridge network, then `mccache report` on their results. No registry is used.
set -uo pipefail
source "$(dirname "$0")/common.sh"
parse_args "$@"

COMPOSE=(docker-compose)
if ! command -v docker-compose >/dev/null; then COMPOSE=(docker compose); fi
START=$(date +%s.%N)
build_static

PROJECT="$RUN_ID"
IMAGE="mccache-cluster-test:$RUN_ID"
CTX="$(mktemp -d)"
NFT_TABLE=""
cleanup() {
    [ -n "$NFT_TABLE" ] && nft delete table bridge "$NFT_TABLE" >/dev/null 2>&1
    "${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" down --volumes --remove-orphans >/dev/null 2>&1
    docker image rm -f "$IMAGE" >/dev/null 2>&1
    rm -rf "$CTX"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

echo "== image $IMAGE (FROM scratch)"
cp "$BIN" "$CTX/mccache"
docker build --quiet -t "$IMAGE" -f "$HERE/Dockerfile" "$CTX" >/dev/null 2>"$OUT/docker-build.log" || exit 2

export MCCACHE_IMAGE="$IMAGE" MCCACHE_OUT="$OUT"
export TEST_KEY_ENTRIES="$KEYS" TEST_APERTURE="$APERTURE" TEST_BREATHER="$BREATHER" TEST_DATA_SIZE_MIX="$MIX"
export TEST_RUN_DURATION="$DURATION" TEST_MONKEY_TANTRUM="$TANTRUM" TEST_CLUSTER_SIZE="$NODES"
export TEST_CRYPTO_KEY="$CRYPTO_KEY"
SERVICES=()
for i in $(seq 1 "$NODES"); do SERVICES+=("$(printf 'node%02d' "$i")"); done
FIRST=("${SERVICES[@]}") LATER=()
if [ -n "$JOIN_LATE" ]; then
    E=$(early_nodes)
    FIRST=("${SERVICES[@]:0:$E}") LATER=("${SERVICES[@]:$E}")
    export TEST_START_WITH="$E"
    echo "== ${LATER[*]} joins ${LATE_AFTER} s after the others"
fi
if [ "$UNICAST" = 1 ]; then
    export MCCACHE_TRANSPORT=unicast MCCACHE_PEERS=mccache:4000 MCCACHE_DISCOVERY_INTERVAL=1
    export MCCACHE_CLUSTER_NAME="$RUN_ID"
    E=$(early_nodes)
    FIRST=("${SERVICES[@]:0:$E}") LATER=("${SERVICES[@]:$E}")
fi

echo "== compose project $PROJECT: ${SERVICES[*]}, ${DURATION} s, aperture $APERTURE, breathers $BREATHER, $MIX values, tantrum $TANTRUM %"
RUN_START=$(date +%s.%N)
if [ "$UNICAST" = 1 ]; then
    # Create the network first, then block multicast on its bridge before any node starts.
    "${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" up --no-start --no-build "${SERVICES[@]}" >"$OUT/compose-up.log" 2>&1 || exit 2
    SUBNET=$(docker network inspect -f '{{(index .IPAM.Config 0).Subnet}}' "${PROJECT}_mcnet") || exit 2
    command -v nft >/dev/null || { echo "error: -U needs nftables to block multicast" >&2; exit 2; }
    NFT_TABLE="$RUN_ID"
    nft -f - <<NFT || exit 2
table bridge $NFT_TABLE {
    chain mcufilter {
        type filter hook forward priority 0;
        ether type ip ip saddr $SUBNET ip daddr 224.0.0.0/4 counter drop
    }
}
NFT
    echo "   multicast from $SUBNET dropped on the bridge; peers: $MCCACHE_PEERS; first ${FIRST[*]}, ${LATE_AFTER} s later ${LATER[*]:-none}"
fi
"${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" up -d --no-build "${FIRST[@]}" >>"$OUT/compose-up.log" 2>&1 || exit 2
if [ "${#LATER[@]}" -gt 0 ]; then
    sleep "$LATE_AFTER"
    "${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" up -d --no-build "${LATER[@]}" >>"$OUT/compose-up.log" 2>&1 || exit 2
fi
FAILED=0
for s in "${SERVICES[@]}"; do
    id=$("${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" ps -q "$s")
    code=$(docker wait "$id")
    [ "$code" = 0 ] || { echo "   $s exited with $code" >&2; FAILED=1; }
done
RUN_END=$(date +%s.%N)
"${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" logs --no-color > "$OUT/compose.log" 2>&1

finish_run nft list table bridge "$NFT_TABLE"
