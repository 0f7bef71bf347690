#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one at a time, one job each, starting
# from the committed corpus (new finds go to a scratch corpus; crashes to fuzz/artifacts/).
# Installs cargo-fuzz if it is missing; if that is impossible, says so and exits 0.
# Uses a nightly toolchain when one is installed, otherwise RUSTC_BOOTSTRAP=1 on stable.
#
#   fuzz/run.sh 600            # ten minutes per target
#   TARGETS="endpoint" fuzz/run.sh 60
set -euo pipefail
secs="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
targets="${TARGETS:-datagram_plain datagram_sealed message endpoint}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz missing, trying: cargo install cargo-fuzz"
    if ! cargo install cargo-fuzz >/dev/null 2>&1; then
        echo "fuzz/run.sh: cannot install cargo-fuzz (offline?); skipping fuzzing"
        exit 0
    fi
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

scratch="${FUZZ_SCRATCH:-$here/target/scratch-corpus}"
status=0
for t in $targets; do
    mkdir -p "$scratch/$t" "$here/corpus/$t"
    echo "== fuzz $t for ${secs}s"
    # Every committed seed is also replayed by tests/it/fuzz_corpus.rs in the regular test suite.
    if ! cargo "${toolchain[@]}" fuzz run "$t" "$scratch/$t" "$here/corpus/$t" -- \
        -max_total_time="$secs" -jobs=1 -workers=1 -max_len=8192 -rss_limit_mb=1024 \
        -print_final_stats=1; then
        echo "fuzz/run.sh: $t FAILED (see fuzz/artifacts/$t/)"
        status=1
    fi
done
exit $status
