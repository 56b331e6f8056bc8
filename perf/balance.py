#!/usr/bin/env python3
"""Where connections land, and what that does to throughput.

    perf/balance.py [--reps N] [--time SECS] [--old BIN]

A target on two cores (`--cpus 0,1`, a null namespace) is driven by one
client with 8 I/O queues, then by two clients with 4 each (run at the same
time), all `nvmf-tpc perf` on CPU 0 at QD8 per queue, sleeping when idle
(`--idle-poll 0`) so that clients sharing a CPU take turns instead of
spinning against each other. For each run it prints the total IOPS and how
many I/O queues each target core served (from the target's log). With
`--old BIN` (a build from before connection placement, where the kernel's
SO_REUSEPORT hash decides) the same runs alternate with that binary.
Writes perf/results/balance-<date>.md.

On a 2-CPU machine the clients share a CPU with one target core, so totals
say less than placement: read both.
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

from abba import BIN, build, free_port, header, log, med, stop, wait_idle, wait_port, write_result

NQN = "nqn.2026-12.io.nvmf-tpc:balance"


def start(binary, logfile):
    port = free_port()
    p = subprocess.Popen([binary, "serve", "--cpus", "0,1", "--listen", f"127.0.0.1:{port}",
                          "--subsystem", NQN, "--namespace", "null:1G", "--max-io-queues", "8",
                          "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=logfile)
    wait_port(port, p)
    return p, port


def placement(path, cores=2):
    n = [0] * cores
    for line in open(path, errors="replace"):
        if ": I/O queue " in line and " connected on core " in line:
            n[int(line.split(" connected on core ")[1].split()[0])] += 1
    return n


def clients(port, queues_each, secs, work):
    """Run len(queues_each) clients at once; total IOPS."""
    procs, outs = [], []
    for i, q in enumerate(queues_each):
        out = os.path.join(work, f"c{i}.json")
        outs.append(out)
        procs.append(subprocess.Popen(
            [BIN, "perf", "--target", f"127.0.0.1:{port}", "--nqn", NQN, "--cpus", "0",
             "--queues", str(q), "--qd", "8", "--rw", "randread", "--bs", "4K",
             "--time", str(secs), "--warmup", "1", "--idle-poll", "0", "--quiet",
             "--hostnqn", f"nqn.2026-12.io.nvmf-tpc:client-{i}", "--json", out],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    total = 0.0
    for p, out in zip(procs, outs):
        _, err = p.communicate(timeout=secs + 60)
        if p.returncode != 0:
            raise RuntimeError(f"perf failed: {err[-1000:]}")
        total += json.load(open(out))["result"]["iops"]
    return total


def run(binary, shape, secs):
    with tempfile.TemporaryDirectory() as work:
        logpath = os.path.join(work, "target.log")
        wait_idle()
        with open(logpath, "w") as lf:
            p, port = start(binary, lf)
            try:
                iops = clients(port, shape, secs, work)
            finally:
                stop(p)
        return iops, placement(logpath)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--old", help="a binary from before connection placement")
    a = ap.parse_args()
    build()
    binaries = [("now", BIN)] + ([("old", a.old)] if a.old else [])
    shapes = [("one client, 8 queues", [8]), ("two clients, 4 queues each", [4, 4])]
    res = {}
    for rep in range(a.reps):
        order = binaries if rep % 2 == 0 else list(reversed(binaries))
        for name, binary in order:
            for label, shape in shapes:
                iops, where = run(binary, shape, a.time)
                res.setdefault((name, label), []).append((iops, where))
                log(f"{name} {label} rep {rep + 1}: {iops:,.0f} IOPS, I/O queues per core {where}")
    out = ("| binary | clients | IOPS, median (runs) | I/O queues per target core, each run |\n"
           "|---|---|---:|---|\n")
    for name, _ in binaries:
        for label, _ in shapes:
            rs = res[(name, label)]
            runs = ", ".join(f"{x:,.0f}" for x, _ in rs)
            out += (f"| {name} | {label} | {med([x for x, _ in rs]):,.0f} ({runs}) | "
                    f"{' '.join('/'.join(map(str, w)) for _, w in rs)} |\n")
    out += (f"\nTarget `--cpus 0,1`, null namespace; clients `nvmf-tpc perf` on CPU 0, 4 KiB randread, "
            f"QD8 per queue, `--idle-poll 0`, {a.time} s per run, {a.reps} runs.\n")
    write_result("balance", header("Connection placement over target cores") + out)


if __name__ == "__main__":
    main()
