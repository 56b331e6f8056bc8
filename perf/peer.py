#!/usr/bin/env python3
"""nvmf-tpc side by side with SPDK's target, driven by SPDK's own client.

    perf/peer.py [--quick] [--pairs N] [--time SECS] [--rows a,b,...]

Starts SPDK's nvmf_tgt (../shared/spdk/nvmf-tgt, a 1 GiB RAM bdev of 4 KiB
blocks) and nvmf-tpc (ram:1G) in turn, each alone on TARGET_CPU, and drives
each with spdk_nvme_perf on CLIENT_CPU, row by row, in pairs whose order
alternates (ABBA). Before each run it waits for an idle machine; a run during
which something else took more than a tenth of the target CPU is discarded
and run again. Prints, per row, the medians over the pairs (IOPS, p50, p99,
target CPU per I/O), the median of the per-pair IOPS ratio and its range,
the p99 ratio; then each target's CPU with one connected, idle controller.
Writes perf/results/peer-<date>.md and .svg.

Needs root (hugepages for SPDK) and SPDK's runtime packages
(../shared/spdk/README.md). Environment: TARGET_CPU (1), CLIENT_CPU (0),
SPDK_DIR, PERF_NO_BUILD=1.
"""

import argparse
import os
import time

from abba import idle_cpu as abba_idle_cpu
from abba import (CLIENT_CPU, TARGET_CPU, build, cpu_ticks, header, log, med, prepare_spdk,
                  proc_ticks, spdk_perf, spread, start_nvmf_tpc, start_spdk, steal_ticks, stop,
                  wait_idle, write_result)

NQN = "nqn.2026-11.io.nvmf-tpc:peer"
# name: (label, spdk_nvme_perf flags); the rows of issue #16's table.
ROWS = {
    "qd1r": ("4K randread QD1", "-w randread -o 4096 -q 1"),
    "qd32r": ("4K randread QD32", "-w randread -o 4096 -q 32"),
    "qd32w": ("4K randwrite QD32", "-w randwrite -o 4096 -q 32"),
    "seq128r": ("128K read QD8", "-w read -o 131072 -q 8"),
    "rw7030": ("4K randrw 70/30 QD32", "-w randrw -M 70 -o 4096 -q 32"),
    "qd32r_dig": ("4K randread QD32, digests", "-w randread -o 4096 -q 32 -H -I"),
    "qd32w_dig": ("4K randwrite QD32, digests", "-w randwrite -o 4096 -q 32 -H -I"),
    "p4": ("4K randread 4 qpairs x QD8", "-w randread -o 4096 -q 8 -P 4"),
    "seq128w": ("128K write QD8", "-w write -o 131072 -q 8"),
}
QUICK_ROWS = "qd1r,qd32r,qd32w,seq128r"
# A run is discarded when others took more than this share of the target CPU.
OTHERS_MAX = 0.10
RETRIES = 3


def start(name):
    if name == "spdk":
        return start_spdk(None)  # nvmf-tgt's default: a 1 GiB RAM bdev
    return start_nvmf_tpc(NQN, "ram:1G")


def run_once(name, row, secs):
    """One run; None when something else used the target CPU meanwhile."""
    wait_idle()
    p, pid, port, nqn = start(name)
    hz = os.sysconf("SC_CLK_TCK")
    try:
        time.sleep(0.5)
        t0, (b0, _), s0 = proc_ticks(pid), cpu_ticks(TARGET_CPU), steal_ticks()
        r = spdk_perf(port, nqn, ROWS[row][1].split(), secs)
        t1, (b1, _), s1 = proc_ticks(pid), cpu_ticks(TARGET_CPU), steal_ticks()
    finally:
        stop(p)
    own, busy = (t1 - t0) / hz, (b1 - b0) / hz
    # The run takes a little longer than secs (connect, teardown).
    if busy - own > OTHERS_MAX * secs:
        log(f"  discarded: others used {busy - own:.2f} s of CPU {TARGET_CPU}")
        return None
    r["cpu_us"] = own * 1e6 / max(1.0, r["iops"] * secs)
    r["cpu"] = own / secs
    r["steal"] = (s1 - s0) / hz / secs
    return r


def run(name, row, secs, discarded):
    for _ in range(RETRIES):
        r = run_once(name, row, secs)
        if r:
            return r
        discarded[row] = discarded.get(row, 0) + 1
    raise RuntimeError(f"{row}: the machine was never quiet for {name}")


def idle_cpu(name, secs=10):
    """Target CPU with one connected controller idle for `secs` (our host)."""
    wait_idle()
    return abba_idle_cpu(start(name), secs)


def table(results, discarded, pairs, secs):
    lines = [
        "| workload (spdk_nvme_perf) | SPDK IOPS | nvmf-tpc IOPS | **IOPS / SPDK** (range) |"
        " p50 µs SPDK / ours | p99 µs SPDK / ours | p99 / SPDK | target CPU µs per I/O SPDK / ours |"
        " host steal ms/s SPDK / ours | runs discarded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for row, r in results.items():
        ours, spdk = r["ours"], r["spdk"]
        ratios[row] = [o["iops"] / s["iops"] for o, s in zip(ours, spdk)]
        keys = ("iops", "p50", "p99", "cpu_us", "steal")
        mo = {k: med([x[k] for x in ours]) for k in keys}
        ms = {k: med([x[k] for x in spdk]) for k in keys}
        lines.append(
            f"| {ROWS[row][0]} | {ms['iops']:,.0f} | {mo['iops']:,.0f} |"
            f" **{med(ratios[row]):.2f}** ({spread(ratios[row])}) |"
            f" {ms['p50']:.0f} / {mo['p50']:.0f} | {ms['p99']:.0f} / {mo['p99']:.0f} |"
            f" {mo['p99'] / ms['p99']:.2f} | {ms['cpu_us']:.1f} / {mo['cpu_us']:.1f} |"
            f" {ms['steal'] * 1000:.0f} / {mo['steal'] * 1000:.0f} |"
            f" {discarded.get(row, 0)} |")
    lines.append("")
    lines.append(
        f"Medians of {pairs} alternated pairs of {secs} s: spdk_nvme_perf on CPU {CLIENT_CPU}, each "
        f"target alone on CPU {TARGET_CPU} with a 1 GiB RAM namespace of 4 KiB blocks. The ratio "
        "column is the median of the per-pair ratios and their range. SPDK's target polls its CPU "
        "at 100% whatever the load, so its CPU per I/O is its whole core divided by its rate. "
        "Host steal: the time the host kept the VM's vCPUs from running during the run (both "
        "CPUs, /proc/stat), per second.")
    return "\n".join(lines), ratios


def svg(ratios):
    """Bars: the median IOPS ratio per row, its range as a whisker, 1.0 marked."""
    rows = list(ratios)
    w, left, bar, top = 720, 230, 22, 30
    h = top + len(rows) * (bar + 8) + 30
    scale = (w - left - 30) / 2.0  # ratios 0..2
    x = lambda v: left + min(v, 2.0) * scale  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="18">nvmf-tpc IOPS / SPDK (median, range over pairs)</text>']
    for i, row in enumerate(rows):
        y = top + i * (bar + 8)
        rs = ratios[row]
        m = med(rs)
        color = "#2a7" if m >= 1.0 else "#c53"
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{ROWS[row][0]}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{x(m) - left:.1f}" height="{bar}" '
                   f'fill="{color}"/>')
        out.append(f'<line x1="{x(min(rs)):.1f}" x2="{x(max(rs)):.1f}" y1="{y + bar / 2}" '
                   f'y2="{y + bar / 2}" stroke="#000"/>')
        out.append(f'<text x="{x(m) + 4:.1f}" y="{y + 15}">{m:.2f}</text>')
    out.append(f'<line x1="{x(1.0)}" x2="{x(1.0)}" y1="{top - 4}" y2="{h - 24}" '
               'stroke="#000" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x(1.0)}" y="{h - 8}" text-anchor="middle">1.0</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"2 pairs of 3 s, rows {QUICK_ROWS}")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--time", type=int, default=6)
    ap.add_argument("--rows", help="comma-separated; default every row (--quick: " + QUICK_ROWS + ")")
    a = ap.parse_args()
    if a.quick:
        a.pairs, a.time = 2, 3
    a.rows = a.rows or (QUICK_ROWS if a.quick else ",".join(ROWS))
    build()
    prepare_spdk()
    results, discarded = {}, {}
    for row in a.rows.split(","):
        if row not in ROWS:
            raise SystemExit(f"unknown row {row}; rows: {', '.join(ROWS)}")
        r = results[row] = {"ours": [], "spdk": []}
        for i in range(a.pairs):
            order = ["ours", "spdk"] if i % 2 == 0 else ["spdk", "ours"]
            for name in order:
                x = run(name, row, a.time, discarded)
                r[name].append(x)
                log(f"{row} pair {i + 1} {name}: {x['iops']:,.0f} IOPS, p50 {x['p50']:.0f} µs, "
                    f"p99 {x['p99']:.0f} µs, CPU {x['cpu']:.0%}, "
                    f"steal {x['steal'] * 1000:.0f} ms/s")
    idle = {name: idle_cpu(name) for name in ("ours", "spdk")}
    text, ratios = table(results, discarded, a.pairs, a.time)
    text += (f"\n\nTarget CPU with one connected, idle controller (10 s): nvmf-tpc {idle['ours']}, "
             f"SPDK {idle['spdk']}.\n")
    head = header("nvmf-tpc and SPDK's nvmf_tgt, RAM namespaces, spdk_nvme_perf")
    print(head + text)
    md = write_result("peer", head + text)
    with open(md[:-3] + ".svg", "w") as f:
        f.write(svg(ratios))


if __name__ == "__main__":
    main()
