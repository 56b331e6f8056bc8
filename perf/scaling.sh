#!/usr/bin/env bash
# How nvmf-tpc scales with target cores: the same load (4 KiB random reads,
# QD32, RAM namespace) against `nvmf-tpc serve --cpus 0..k-1` for k = 1 up to
# the machine's CPU count, the client on every CPU (one controller and
# SCALE_QUEUES I/O queues per client core). Prints IOPS per target core and
# the scaling efficiency IOPS(k) / (k × IOPS(1)); writes
# perf/results/scaling-<date>.md and .svg.
#
# On a 2-CPU machine the client shares the CPUs with the target, so the
# efficiency measured is a floor, not the design's: one target core already
# takes both client cores' load there, and two target cores add little
# because the client needs the same CPUs. Connections are placed on the
# target core with the fewest I/O queues (src/balance.rs), so each target
# core serves its share; SCALE_QUEUES=4 SCALE_QD=8 spreads the load over
# more of them.
#
# Environment: PERF_TIME (10), PERF_WARMUP (1), SCALE_QUEUES (I/O queues per
# client core, 1), SCALE_QD (32), PERF_ARGS (extra `perf` flags),
# PERF_NO_BUILD=1, PERF_KEEP_RAW=1.

# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

SCALE_QUEUES=${SCALE_QUEUES:-1}
SCALE_QD=${SCALE_QD:-32}
OUT=$RESULTS/scaling-$STAMP
ALL_CPUS=0-$((NCPU - 1))

build_release
mkdir -p "$RESULTS"
specs=()
for k in $(seq 1 "$NCPU"); do
    start_target --cpus "0-$((k - 1))" --subsystem "$NQN" --namespace ram:1G
    run_perf "cores-$k" --target "$TARGET_ADDR" --nqn "$NQN" --ns 1 --cpus "$ALL_CPUS" \
        --queues "$SCALE_QUEUES" --rw randread --bs 4K --qd "$SCALE_QD" --target-pid "$TARGET_PID"
    stop_target
    [[ -f "$WORK/cores-$k.json" ]] && specs+=("$k=$WORK/cores-$k.json")
done

if [[ ${#specs[@]} -gt 0 ]]; then
    python3 "$ROOT/perf/report.py" scaling --out "$OUT" \
        --title "nvmf-tpc scaling, $(date '+%Y-%m-%d %H:%M'), ${PERF_TIME} s per run" \
        --note "$(machine_note)" "${specs[@]}"
fi
if [[ "${PERF_KEEP_RAW:-0}" == 1 ]]; then
    mkdir -p "$OUT.raw" && cp "$WORK"/*.json "$WORK"/*.log "$OUT.raw/"
fi
if [[ $FAILED -gt 0 ]]; then
    log "$FAILED run(s) failed"
    exit 1
fi
