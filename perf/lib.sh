# shellcheck shell=bash disable=SC2034 # variables used by the scripts that source this
# Shared by perf/latency.sh, perf/scaling.sh and perf/compare.sh (sourced, not run).
#
# Provides: build_release, free_port, start_target, stop_target, run_perf,
# and the variables BIN, NQN, PERF_TIME, PERF_WARMUP, WORK (a scratch
# directory removed on exit; with PERF_KEEP_RAW=1 the scripts copy its JSON
# and logs next to their results), TARGET_CPU, CLIENT_CPU.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BIN=${BIN:-$ROOT/target/release/nvmf-tpc}
NQN=${NQN:-nqn.2026-11.io.nvmf-tpc:perf}
PERF_TIME=${PERF_TIME:-10}      # seconds measured per run
PERF_WARMUP=${PERF_WARMUP:-1}   # seconds of load before each measurement
RESULTS=$ROOT/perf/results
STAMP=$(date +%Y%m%d-%H%M%S)
WORK=$(mktemp -d /tmp/nvmf-tpc-perf.XXXXXX)
FAILED=0

# Target on the first CPU, client on the second (both on CPU 0 with one CPU).
NCPU=$(nproc)
TARGET_CPU=${TARGET_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-$((NCPU > 1 ? 1 : 0))}

TARGET_PID=
TARGET_ADDR=

cleanup() {
    stop_target
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

# Build the release binary (cargo does nothing when it is up to date).
# PERF_NO_BUILD=1 uses $BIN as it is.
build_release() {
    if [[ "${PERF_NO_BUILD:-0}" == 1 ]]; then
        [[ -x "$BIN" ]] || { log "no $BIN (PERF_NO_BUILD=1)"; exit 1; }
        return
    fi
    log "building release binary"
    cargo build --release --quiet --bin nvmf-tpc --example ceiling
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_target SERVE-ARGS...: starts `nvmf-tpc serve` on a free loopback port;
# sets TARGET_PID and TARGET_ADDR, and waits for its banner.
start_target() {
    local port
    port=$(free_port)
    TARGET_ADDR=127.0.0.1:$port
    "$BIN" serve --listen "$TARGET_ADDR" --log-level warn "$@" >"$WORK/target.log" 2>&1 &
    TARGET_PID=$!
    local _
    for _ in $(seq 100); do
        if grep -q "listening on" "$WORK/target.log"; then
            log "target: pid $TARGET_PID on $TARGET_ADDR ($*)"
            return
        fi
        if ! kill -0 "$TARGET_PID" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    log "the target did not start:"
    cat "$WORK/target.log" >&2
    exit 1
}

stop_target() {
    if [[ -n "$TARGET_PID" ]] && kill -0 "$TARGET_PID" 2>/dev/null; then
        kill -TERM "$TARGET_PID"
        wait "$TARGET_PID" 2>/dev/null || true
    fi
    TARGET_PID=
}

# run_perf NAME PERF-ARGS...: one load run; its JSON goes to $WORK/NAME.json
# and its output to $WORK/NAME.log (and the terminal). A failing run is
# reported and counted in FAILED; the script goes on with the next.
run_perf() {
    local name=$1
    shift
    log ""
    log "=== $name"
    # shellcheck disable=SC2086 # PERF_ARGS is a list of flags
    if ! "$BIN" perf --time "$PERF_TIME" --warmup "$PERF_WARMUP" --json "$WORK/$name.json" \
        ${PERF_ARGS:-} "$@" 2>&1 | tee "$WORK/$name.log"; then
        log "*** $name FAILED (see above)"
        FAILED=$((FAILED + 1))
    fi
}

# The standard matrix: NAME and the perf flags of each workload.
MATRIX=(
    "randread-4k-qd1|--rw randread --bs 4K --qd 1"
    "randread-4k-qd32|--rw randread --bs 4K --qd 32"
    "randwrite-4k-qd32|--rw randwrite --bs 4K --qd 32"
    "read-128k-qd8|--rw read --bs 128K --qd 8"
    "randrw70-4k-qd32|--rw randrw --mix 70 --bs 4K --qd 32"
    "randread-4k-4x8|--rw randread --bs 4K --qd 8 --queues 4"
)

machine_note() {
    local model
    model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
    echo "$(nproc) CPU(s) ${model:+($model)}, $(uname -r), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+changes')"
}
