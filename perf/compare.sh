#!/usr/bin/env bash
# nvmf-tpc side by side with another NVMe/TCP target.
#
#   perf/compare.sh [--quick] [peer.py flags]   SPDK's nvmf_tgt, started here
#   perf/compare.sh ADDR:PORT NQN               a target already running
#
# Without an address it runs perf/peer.py: SPDK's own target and client from
# ../shared/spdk, started and stopped by the script, alternated pair by pair
# (see its --help). With an address:
#
# Starts nvmf-tpc (pinned to TARGET_CPU, a 1 GiB RAM namespace) and runs the
# standard matrix (see lib.sh) with `nvmf-tpc perf` on CLIENT_CPU against it
# and against the other target, alternating run by run so both see the same
# machine weather. Prints a table with the ratios (ours / other) and writes
# perf/results/compare-<date>.md and .svg. If `spdk_nvme_perf` is on PATH it
# runs the same matrix with it as a second, independent client.
#
# The other target must already serve NQN on ADDR:PORT; pin it to the same
# CPU as ours (TARGET_CPU, default 0) for a fair comparison, and know that a
# polling target (SPDK) holds its CPU at 100% even while ours runs.
#
# Environment: OTHER_NS (the other target's namespace ID, 1), OTHER_PID
# (its process ID, for its CPU time per I/O), OTHER_NAME (label, "other"),
# PERF_TIME (10), PERF_WARMUP (1), TARGET_CPU (0), CLIENT_CPU (1),
# PERF_ARGS (extra `perf` flags), PERF_NO_BUILD=1, PERF_KEEP_RAW=1.

if [[ $# -eq 0 || $1 == --* ]]; then
    exec python3 "$(dirname "$0")/peer.py" "$@"
fi
if [[ $# -ne 2 ]]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"
OTHER_ADDR=$1
OTHER_NQN=$2
OTHER_NS=${OTHER_NS:-1}
OTHER_PID=${OTHER_PID:-}
OTHER_NAME=${OTHER_NAME:-other}
OUT=$RESULTS/compare-$STAMP

build_release
mkdir -p "$RESULTS"
start_target --cpus "$TARGET_CPU" --subsystem "$NQN" --namespace ram:1G

pairs=()
for entry in "${MATRIX[@]}"; do
    name=${entry%%|*}
    flags=${entry#*|}
    # shellcheck disable=SC2086 # flags is a list of flags
    run_perf "ours-$name" --target "$TARGET_ADDR" --nqn "$NQN" --ns 1 \
        --cpus "$CLIENT_CPU" --target-pid "$TARGET_PID" $flags
    # shellcheck disable=SC2086
    run_perf "other-$name" --target "$OTHER_ADDR" --nqn "$OTHER_NQN" --ns "$OTHER_NS" \
        --cpus "$CLIENT_CPU" ${OTHER_PID:+--target-pid "$OTHER_PID"} $flags
    pairs+=(--pair "$name" "$WORK/ours-$name.json" "$WORK/other-$name.json")
done

# spdk_nvme_perf as a second client: the same workloads, its "Total" line.
spdk_args=()
if command -v spdk_nvme_perf >/dev/null; then
    mask=$(printf '0x%x' $((1 << CLIENT_CPU)))
    for entry in "${MATRIX[@]}"; do
        name=${entry%%|*}
        read -r -a f <<<"${entry#*|}"
        # f: --rw RW [--mix N] --bs SIZE --qd N
        rw=${f[1]} mix=100 bs='' qd=''
        for ((i = 0; i < ${#f[@]}; i++)); do
            case ${f[i]} in
                --mix) mix=${f[i + 1]} ;;
                --bs) bs=${f[i + 1]} ;;
                --qd) qd=${f[i + 1]} ;;
            esac
        done
        bytes=$(( ${bs%K} * 1024 ))
        mixarg=()
        [[ $rw == randrw ]] && mixarg=(-M "$mix")
        for side in ours other; do
            if [[ $side == ours ]]; then
                addr=$TARGET_ADDR nqn=$NQN ns=1
            else
                addr=$OTHER_ADDR nqn=$OTHER_NQN ns=$OTHER_NS
            fi
            trid="trtype:TCP adrfam:IPv4 traddr:${addr%:*} trsvcid:${addr##*:} subnqn:$nqn ns:$ns"
            log "=== spdk_nvme_perf $name on $side"
            if spdk_nvme_perf -q "$qd" -o "$bytes" -w "$rw" "${mixarg[@]}" -t "$PERF_TIME" -c "$mask" \
                -r "$trid" >"$WORK/spdk-$side-$name.log" 2>&1; then
                awk -v n="$name" -v s="$side" '/^Total/ { printf "%s\t%s\t%.0f\t%.1f\n", n, s, $3, $5 }' \
                    "$WORK/spdk-$side-$name.log" >>"$WORK/spdk.tsv"
            else
                log "*** spdk_nvme_perf $name on $side failed:"
                tail -5 "$WORK/spdk-$side-$name.log" >&2
            fi
        done
    done
    [[ -f "$WORK/spdk.tsv" ]] && spdk_args=(--spdk "$WORK/spdk.tsv")
else
    log "(spdk_nvme_perf not on PATH: nvmf-tpc perf is the only client)"
fi
stop_target

python3 "$ROOT/perf/report.py" compare --out "$OUT" --a nvmf-tpc --b "$OTHER_NAME" \
    --title "nvmf-tpc vs $OTHER_NAME ($OTHER_ADDR), $(date '+%Y-%m-%d %H:%M'), ${PERF_TIME} s per run" \
    --note "$(machine_note)" "${spdk_args[@]}" "${pairs[@]}"
if [[ "${PERF_KEEP_RAW:-0}" == 1 ]]; then
    mkdir -p "$OUT.raw" && cp "$WORK"/*.json "$WORK"/*.log "$OUT.raw/"
fi
if [[ $FAILED -gt 0 ]]; then
    log "$FAILED run(s) failed"
    exit 1
fi
