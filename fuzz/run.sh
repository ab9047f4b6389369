#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 60):
#
#   bash fuzz/run.sh [SECONDS]
#
# 1. installs cargo-fuzz if it is missing (cargo install cargo-fuzz --locked);
# 2. writes the seed corpus into fuzz/corpus/<target>/ (valid files from the
#    real writer: tests/examples/fuzz_seeds.rs, fuzz/src/seeds.rs);
# 3. builds the targets (cargo fuzz build: optimised, with debug assertions and
#    overflow checks, and AddressSanitizer; `-O` would drop the overflow
#    checks) with nightly, or with stable and RUSTC_BOOTSTRAP=1 when no
#    nightly toolchain is installed;
# 4. runs each target with libFuzzer for SECONDS (-max_total_time), with a
#    10 s timeout per input and 2 GiB limits on RSS and on any one malloc,
#    DEATHTENSORS_FUZZ_JOBS targets at a time (default: one per core, at most 4);
#    DEATHTENSORS_FUZZ_ARGS adds libFuzzer flags (later ones win, e.g.
#    "-use_value_profile=1" or "-malloc_limit_mb=512");
# 5. prints the executions per target, and exits non-zero if any target
#    found a crash, a hang or an out-of-memory (the input is saved under
#    fuzz/artifacts/<target>/; the log is fuzz/artifacts/<target>.log).
#
# A crash is a bug: fix it, copy the input into
# tests/data/fuzz-regressions/<target>/ and run
# `cargo test -p deathtensors-integration-tests --test fuzz_regressions`.
# See docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECONDS_PER_TARGET=${1:-60}
TARGETS=(header open_read chunks safetensors_import append sharded_index repack)
case "$SECONDS_PER_TARGET" in
    '' | *[!0-9]*) echo "usage: bash fuzz/run.sh [SECONDS]" >&2; exit 2 ;;
esac

# The fuzz crate needs nightly (-Z sanitizer flags); stable accepts them with RUSTC_BOOTSTRAP=1.
if cargo +nightly --version >/dev/null 2>&1; then
    FUZZ=(cargo +nightly fuzz)
    RUSTC=(rustc +nightly)
else
    echo "fuzz: no nightly toolchain; building with stable and RUSTC_BOOTSTRAP=1" >&2
    FUZZ=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
    RUSTC=(rustc)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== seed corpus"
cargo run --quiet -p deathtensors-integration-tests --example fuzz_seeds -- "$ROOT/fuzz/corpus"

echo "== building the fuzz targets"
(cd fuzz && "${FUZZ[@]}" build)
TRIPLE=$("${RUSTC[@]}" -vV | sed -n 's/^host: //p')
BIN_DIR=$ROOT/fuzz/target/$TRIPLE/release

# Inputs become temporary files; keep them in memory when possible.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

JOBS=${DEATHTENSORS_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$JOBS" -ge 1 ] 2>/dev/null || JOBS=1
[ "$JOBS" -le ${#TARGETS[@]} ] || JOBS=${#TARGETS[@]}

run_target() {
    local target=$1
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    "$BIN_DIR/$target" "fuzz/corpus/$target" \
        -artifact_prefix="fuzz/artifacts/$target/" \
        -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 \
        -print_final_stats=1 \
        ${DEATHTENSORS_FUZZ_ARGS:-} \
        >"fuzz/artifacts/$target.log" 2>&1
}

echo "== fuzzing ${#TARGETS[@]} targets for ${SECONDS_PER_TARGET}s each, $JOBS at a time"
declare -A STATUS
pending=("${TARGETS[@]}")
while [ ${#pending[@]} -gt 0 ]; do
    batch=("${pending[@]:0:$JOBS}")
    pending=("${pending[@]:$JOBS}")
    declare -A PIDS=()
    for target in "${batch[@]}"; do
        run_target "$target" &
        PIDS[$target]=$!
    done
    for target in "${batch[@]}"; do
        if wait "${PIDS[$target]}"; then STATUS[$target]=0; else STATUS[$target]=$?; fi
    done
    unset PIDS
done

failed=0
printf '%-20s %14s %8s %10s  %s\n' target executions seconds corpus result
for target in "${TARGETS[@]}"; do
    log=fuzz/artifacts/$target.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    if [ "${STATUS[$target]}" -eq 0 ]; then
        result=ok
    else
        failed=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        result="FAILED (exit ${STATUS[$target]}; ${artifact:-see $log})"
    fi
    printf '%-20s %14s %8s %10s  %s\n' "$target" "${execs:-?}" "${took:-?}" "$corpus" "$result"
done
if [ "$failed" -ne 0 ]; then
    echo "fuzz: a target failed; its log follows" >&2
    for target in "${TARGETS[@]}"; do
        if [ "${STATUS[$target]}" -ne 0 ]; then
            echo "---- fuzz/artifacts/$target.log (last 60 lines)" >&2
            tail -n 60 "fuzz/artifacts/$target.log" >&2
        fi
    done
    exit 1
fi
