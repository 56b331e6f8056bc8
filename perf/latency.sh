#!/usr/bin/env bash
# Latency and throughput of nvmf-tpc on this machine: one target core, one
# client core, loopback.
#
# Starts `nvmf-tpc serve` pinned to CPU 0 with a RAM (nsid 1) and a null
# (nsid 2) namespace of 1 GiB, drives it with `nvmf-tpc perf` pinned to CPU 1
# through the standard matrix (4 KiB randread QD1 and QD32, 4 KiB randwrite
# QD32, 128 KiB sequential read QD8, 4 KiB 70/30 randrw QD32, and 4 KiB
# randread on 4 queues at QD8 each, as a multi-queue host loads a core) on each
# namespace, then measures the target's CPU use with a connected, idle
# controller. Last, with the target stopped, it measures this machine's bare
# loopback TCP and copy rates (perf/ceiling.rs) on the same two CPUs. Prints
# a table, the ratios to the SPDK reference and to the bare rates, and the
# histograms, and writes perf/results/latency-<date>.md with two SVG plots
# beside it.
#
# Environment: PERF_TIME (seconds per run, default 10; PERF_TIME=3 for a
# quick look), PERF_WARMUP (1), PERF_IDLE (idle window, 10), TARGET_CPU (0),
# CLIENT_CPU (1), PERF_NO_BUILD=1 (use target/release/nvmf-tpc as it is),
# PERF_KEEP_RAW=1 (keep the JSON and logs of every run),
# TARGET_ARGS (extra `serve` flags, e.g. "--idle-poll 0"), PERF_ARGS (extra
# `perf` flags, e.g. "--idle-poll 0" for a client that sleeps at once),
# PERF_CEILING=0 (skip the bare rates), PERF_SPDK=0 (skip the live SPDK runs),
# SPDK_DIR (../shared/spdk). With SPDK's tools present it runs the RAM rows
# against SPDK's nvmf_tgt too and reports those ratios; otherwise it shows the
# stored reference (perf-reference.md) and says it is only that.

# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

PERF_IDLE=${PERF_IDLE:-10}
OUT=$RESULTS/latency-$STAMP

build_release
mkdir -p "$RESULTS"
# shellcheck disable=SC2086 # TARGET_ARGS is a list of flags
start_target --cpus "$TARGET_CPU" --subsystem "$NQN" \
    --namespace ram:1G --namespace null:1G ${TARGET_ARGS:-}

files=()
for ns in 1 2; do
    nsname=$([[ $ns == 1 ]] && echo ram || echo null)
    for entry in "${MATRIX[@]}"; do
        name=${entry%%|*}
        flags=${entry#*|}
        # shellcheck disable=SC2086 # flags is a list of flags
        run_perf "$nsname-$name" --target "$TARGET_ADDR" --nqn "$NQN" --ns "$ns" \
            --cpus "$CLIENT_CPU" --target-pid "$TARGET_PID" $flags
        [[ -f "$WORK/$nsname-$name.json" ]] && files+=("$WORK/$nsname-$name.json")
    done
done

log ""
log "=== idle: one controller with one I/O queue connected, no I/O, ${PERF_IDLE} s"
if "$BIN" perf --target "$TARGET_ADDR" --nqn "$NQN" --cpus "$CLIENT_CPU" \
    --idle "$PERF_IDLE" --target-pid "$TARGET_PID" --json "$WORK/idle.json" \
    2>&1 | tee "$WORK/idle.log"; then
    files+=("$WORK/idle.json")
else
    log "*** idle measurement FAILED"
    FAILED=$((FAILED + 1))
fi
stop_target

# The same RAM runs against SPDK's nvmf_tgt on the same CPU, when its tools
# are here: live figures instead of the stored reference (perf-reference.md
# was measured on another day, on another CPU).
SPDK_DIR=${SPDK_DIR:-$ROOT/../shared/spdk}
live=()
if [[ -x "$SPDK_DIR/nvmf-tgt" && "${PERF_SPDK:-1}" == 1 ]]; then
    port=$(free_port)
    "$SPDK_DIR/nvmf-tgt" --port "$port" --cpu "$TARGET_CPU" --shm-id 23 >"$WORK/spdk.log" 2>&1 &
    spdk_pid=$!
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$spdk_pid" 2>/dev/null || break
        sleep 0.1
    done
    log ""
    log "=== SPDK's nvmf_tgt (pid $spdk_pid, port $port, CPU $TARGET_CPU), the same RAM runs"
    for entry in "${MATRIX[@]}"; do
        name=${entry%%|*}
        flags=${entry#*|}
        # shellcheck disable=SC2086 # flags is a list of flags
        run_perf "spdk-$name" --target "127.0.0.1:$port" --nqn nqn.2016-06.io.spdk:ref --ns 1 \
            --cpus "$CLIENT_CPU" --target-pid "$spdk_pid" $flags
        [[ -f "$WORK/spdk-$name.json" ]] && live+=(--spdk-live "$WORK/spdk-$name.json")
    done
    kill -INT "$spdk_pid" 2>/dev/null || true
    wait "$spdk_pid" 2>/dev/null || true
else
    log "(SPDK's tools not in $SPDK_DIR: the report compares with the stored reference only)"
fi

# The congestion control the target's connections used.
cc=$(sed -n 's/.*--tcp-congestion[ =]\([^ ]*\).*/\1/p' <<<"${TARGET_ARGS:-}")
cc=${cc:-$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo '?')}
ceiling=()
if [[ "${PERF_CEILING:-1}" == 1 ]]; then
    log ""
    log "=== this machine's bare loopback TCP and copy rates (perf/ceiling.rs)"
    if "$ROOT/target/release/examples/ceiling" --send-cpu "$TARGET_CPU" --recv-cpu "$CLIENT_CPU" \
        --time "$(( PERF_TIME < 3 ? PERF_TIME : 3 ))" --json "$WORK/ceiling.json"; then
        ceiling=(--ceiling "$WORK/ceiling.json" --cc "$cc")
    else
        log "*** bare rates FAILED"
        FAILED=$((FAILED + 1))
    fi
fi

if [[ ${#files[@]} -gt 0 ]]; then
    python3 "$ROOT/perf/report.py" latency --out "$OUT" \
        --title "nvmf-tpc latency, $(date '+%Y-%m-%d %H:%M'), target CPU $TARGET_CPU, client CPU $CLIENT_CPU, ${PERF_TIME} s per run${TARGET_ARGS:+ (target flags: $TARGET_ARGS)}${PERF_ARGS:+ (perf flags: $PERF_ARGS)}" \
        --note "$(machine_note)" --ns 1=RAM --ns 2=null "${ceiling[@]}" "${live[@]}" "${files[@]}"
fi
if [[ "${PERF_KEEP_RAW:-0}" == 1 ]]; then
    mkdir -p "$OUT.raw" && cp "$WORK"/*.json "$WORK"/*.log "$OUT.raw/"
    log "raw JSON and logs: $OUT.raw/"
fi
if [[ $FAILED -gt 0 ]]; then
    log "$FAILED run(s) failed"
    exit 1
fi
