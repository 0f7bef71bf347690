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
cleanup() {
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

echo "== compose project $PROJECT: ${SERVICES[*]}, ${DURATION} s, aperture $APERTURE, breathers $BREATHER, $MIX values, tantrum $TANTRUM %"
RUN_START=$(date +%s.%N)
"${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" up -d --no-build "${SERVICES[@]}" >"$OUT/compose-up.log" 2>&1 || exit 2
FAILED=0
for s in "${SERVICES[@]}"; do
    id=$("${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" ps -q "$s")
    code=$(docker wait "$id")
    [ "$code" = 0 ] || { echo "   $s exited with $code" >&2; FAILED=1; }
done
RUN_END=$(date +%s.%N)
"${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" logs --no-color > "$OUT/compose.log" 2>&1

echo "== report ($OUT)"
"$BIN" report "$OUT" --expect "$NODES"
VERDICT=$?
END=$(date +%s.%N)
printf '== timings: run %.1f s (workload %s s), total %.1f s\n' \
    "$(echo "$RUN_END - $RUN_START" | bc)" "$DURATION" "$(echo "$END - $START" | bc)"
[ "$FAILED" = 0 ] || exit 1
exit "$VERDICT"
