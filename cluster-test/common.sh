# Shared by run.sh and run-netns.sh: the knobs, the usage text and the static build.
# shellcheck shell=bash

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

NODES=3 KEYS=200 APERTURE=0.01 MIX=small DURATION=10 TANTRUM=0 BREATHER=false CRYPTO_KEY="" OUT="" UNICAST=0 JOIN_LATE=""

usage() {
    cat <<USAGE
Usage: $(basename "$0") [-U] [-J seconds] [-C nodes] [-K keys] [-A aperture] [-B] [-M mix] [-R seconds] [-T tantrum] [-k key] [-o dir]

Runs N \`mccache node\` processes with the stress workload of McCache's test suite, waits for
them to quiesce, and judges coherence with \`mccache report\` (lenient and strict rules).

  -U           unicast: multicast is blocked (nftables on the bridge), nodes find each other
               through one DNS name that resolves to every node (a compose network alias /
               the namespaces' hosts files), and the last node(s) start a few seconds
               later and must be found by the running ones
  -J seconds   the last node starts this many seconds after the others: it joins a busy
               cluster (its state transfer runs while the others write)
  -C nodes     cluster size, 1..9 (default $NODES)
  -K keys      keys per key space (default $KEYS)
  -A aperture  seconds between operations per node (default $APERTURE); 0 = flat out, the
               cluster at capacity
  -B           add McCache's breathers (one op in 21 pauses 0.15-0.3 s), for side-by-side runs
  -M mix       value sizes: small | large | mixed (default $MIX)
  -R seconds   workload duration (default $DURATION)
  -T tantrum   percent of datagrams each node drops on purpose (default $TANTRUM)
  -k key       crypto key, base64 of 32 bytes (default: a fresh \`mccache keygen\`)
  -o dir       output directory (default cluster-test/out/<run id>)
  -h           this help

Exit status: 0 when the report says PASS, 1 on FAIL, 2 on a setup error.
USAGE
}

parse_args() {
    local opt
    while getopts "UJ:C:K:A:BM:R:T:k:o:h" opt; do
        case "$opt" in
            U) UNICAST=1 ;;
            J) JOIN_LATE="$OPTARG" ;;
            C) NODES="$OPTARG" ;;
            K) KEYS="$OPTARG" ;;
            A) APERTURE="$OPTARG" ;;
            B) BREATHER=true ;;
            M) MIX="$OPTARG" ;;
            R) DURATION="$OPTARG" ;;
            T) TANTRUM="$OPTARG" ;;
            k) CRYPTO_KEY="$OPTARG" ;;
            o) OUT="$OPTARG" ;;
            h) usage; exit 0 ;;
            *) usage >&2; exit 2 ;;
        esac
    done
    if ! [[ "$NODES" =~ ^[1-9]$ ]]; then
        echo "error: -C must be 1..9, got '$NODES'" >&2; exit 2
    fi
    if [ -n "$JOIN_LATE" ] && ! [[ "$JOIN_LATE" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
        echo "error: -J must be a number of seconds, got '$JOIN_LATE'" >&2; exit 2
    fi
    if [ -n "$JOIN_LATE" ] && [ "$NODES" -lt 2 ]; then
        echo "error: -J needs at least 2 nodes (-C)" >&2; exit 2
    fi
    if [ -n "$JOIN_LATE" ]; then LATE_AFTER="$JOIN_LATE"; fi
    case "$MIX" in small|large|mixed) ;; *) echo "error: -M must be small, large or mixed" >&2; exit 2 ;; esac
    RUN_ID="mcct$(date +%H%M%S)$$"
    if [ "$UNICAST" = 1 ]; then RUN_ID="mcu$(date +%H%M%S)$$"; fi
    OUT="${OUT:-$HERE/out/$RUN_ID}"
    mkdir -p "$OUT"
    OUT="$(cd "$OUT" && pwd)"
}

# Builds the statically linked binary (glibc, static-pie) and sets BIN. Only the binary's own
# crate gets `+crt-static` (`cargo rustc ... -- <flags>` passes them to the final rustc call), so
# it links against the release build the tests made (the libc crate picks static glibc at link
# time): ~1.3 min on a 2-core VM after the tests, where a separate `--target` tree with
# RUSTFLAGS rebuilt every dependency (~2.7 min, a minute of it AWS-LC's C). The binary is copied
# out of `target/release`, where the next `cargo build` of the host binary replaces it.
build_static() {
    local target_dir="${CARGO_TARGET_DIR:-$REPO/target}"
    echo "== building a static mccache (crt-static)"
    (cd "$REPO" && cargo rustc --quiet --release --features cli --bin mccache -- \
        -C target-feature=+crt-static) || exit 2
    mkdir -p "$target_dir/static"
    BIN="$target_dir/static/mccache"
    cp "$target_dir/release/mccache" "$BIN" || exit 2
    if ldd "$BIN" 2>&1 | grep -Eq "not a dynamic executable|statically linked"; then
        echo "   $BIN: statically linked"
    else
        echo "error: $BIN is not statically linked:" >&2; ldd "$BIN" >&2; exit 2
    fi
    if [ -z "$CRYPTO_KEY" ]; then CRYPTO_KEY="$("$BIN" keygen)"; fi
}

# Builds the binary for runs on this host and sets BIN: network namespaces share the host's
# libraries, so it need not be static (`build_static` is for images `FROM scratch`). It shares
# the release build of the tests (a first build takes about a minute on a 2-core VM; the static
# one relinks the binary from the same build).
build_host() {
    local target_dir="${CARGO_TARGET_DIR:-$REPO/target}"
    echo "== building mccache (release, feature cli)"
    (cd "$REPO" && cargo build --quiet --release --features cli --bin mccache) || exit 2
    BIN="$target_dir/release/mccache"
    if [ -z "$CRYPTO_KEY" ]; then CRYPTO_KEY="$("$BIN" keygen)"; fi
}

# How many nodes start first; the rest start LATE_AFTER seconds later (-J: all but the last;
# unicast: so that the running nodes must find the later ones).
early_nodes() {
    if [ -n "$JOIN_LATE" ]; then echo $((NODES - 1)); elif [ "$NODES" -le 1 ]; then echo "$NODES"; elif [ "$NODES" -le 3 ]; then echo $((NODES - 1)); else echo $((NODES - 2)); fi
}
LATE_AFTER=3

# The end of a run: the report's coherence verdict, the multicast frames the bridge dropped (unicast
# runs; "$@" is the command that lists the nft table), the timings. Exits 1 if a node failed (FAILED),
# else with the report's verdict. Uses OUT, NODES, BIN, UNICAST, START, RUN_START, RUN_END, DURATION.
finish_run() {
    echo "== report ($OUT)"
    "$BIN" report "$OUT" --expect "$NODES"
    local verdict=$?
    if [ "$UNICAST" = 1 ]; then
        echo "== multicast frames dropped on the bridge: $("$@" 2>/dev/null | grep -o 'packets [0-9]*' | head -1)"
    fi
    local end
    end=$(date +%s.%N)
    printf '== timings: run %.1f s (workload %s s), total %.1f s\n' \
        "$(echo "$RUN_END - $RUN_START" | bc)" "$DURATION" "$(echo "$end - $START" | bc)"
    [ "$FAILED" = 0 ] || exit 1
    exit "$verdict"
}
