#!/usr/bin/env python3
"""Where one read's time goes, segment by segment, in nvmf-tpc and in SPDK's
target: randread at QD1 (4 KiB unless --size says), so that each event
belongs to the one command in flight.

    perf/segments.py [--runs N] [--time SECS] [--backing file|block|ram]
                     [--file PATH] [--size BYTES]

Each target runs alone on TARGET_CPU (nvmf-tpc on the backing, SPDK's
nvmf_tgt with an AIO bdev on it, or a 1 GiB RAM namespace/bdev), driven by
spdk_nvme_perf on CLIENT_CPU, in runs whose order alternates. During each run
`perf record` takes, on both CPUs, the block layer's issue and completion,
interrupt entries, and the socket and submission system calls (filtered in
the kernel, so that a polling target is not slowed by tracing the rest). The
command's cycle is cut at those events:

    host send -> target recv -> device issue -> device done -> target send
    -> host recv -> host send

It prints, per target, the median over the runs of each segment's median
and each segment's mean over every command (µs; the mean is what the rate
follows), and writes perf/results/segments-<date>.md. Tracing costs both targets
some of their rate; the segments are what to compare, not the IOPS.

Needs root, `perf` (Debian's linux-perf) and what perf/storage.py needs.
Environment: TARGET_CPU (1), CLIENT_CPU (0), PERF_NO_BUILD=1.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from abba import (CLIENT_CPU, TARGET_CPU, build, header, log, med, prepare_spdk, spdk_perf,
                  start_nvmf_tpc, start_spdk, stop, wait_idle, write_result)
from storage import OURS_NQN, loop_device, make_file

# x86-64 system call numbers: the target's and the host's socket traffic,
# and the storage submissions (io_uring_enter, io_submit).
SYS_SEND = {20: "writev", 44: "sendto", 46: "sendmsg", 307: "sendmmsg"}
SYS_RECV = {0: "read", 19: "readv", 45: "recvfrom", 47: "recvmsg"}
SYS_SUBMIT = {426: "io_uring_enter", 209: "io_submit"}
SEGMENTS = [
    ("to_target", "host send → target recv"),
    ("submit", "target recv → device issue"),
    ("device", "device issue → done"),
    ("irq", "interrupt → device done"),
    ("reply", "device done → target send"),
    ("in_target", "target recv → target send"),
    ("send", "target send (system call)"),
    ("to_host", "target send → host recv"),
    ("host", "host recv → host send"),
]


def trace_filter():
    ids = sorted(SYS_SEND) + sorted(SYS_RECV) + sorted(SYS_SUBMIT)
    return "||".join(f"id=={i}" for i in ids)


def record(out, secs):
    f = trace_filter()
    return subprocess.Popen(
        ["perf", "record", "-a", "-m", "1024", "-o", out,
         "-e", "block:block_rq_issue", "-e", "block:block_rq_complete",
         "-e", "irq:irq_handler_entry",
         "-e", "raw_syscalls:sys_enter", "--filter", f,
         "-e", "raw_syscalls:sys_exit", "--filter", f,
         "--", "sleep", str(secs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


EVENT = re.compile(r"\s*(.+?)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def events(data):
    """(µs, who, kind) in time order: who is "host" or "target"; kind is
    send, recv (with data), issue, done or irq."""
    text = subprocess.run(["perf", "script", "--ns", "-i", data, "-F", "comm,cpu,time,event,trace"],
                          capture_output=True, text=True).stdout
    out = []
    for line in text.splitlines():
        m = EVENT.match(line)
        if not m:
            continue
        comm, cpu, t, ev, args = m.groups()
        cpu, t = int(cpu), float(t) * 1e6
        who = "host" if cpu == CLIENT_CPU else "target" if cpu == TARGET_CPU else None
        if who is None:
            continue
        if ev.startswith("block:") or ev.startswith("irq:"):
            if who == "target":
                out.append((t, who, {"block:block_rq_issue": "issue",
                                     "block:block_rq_complete": "done"}.get(ev, "irq")))
            continue
        if comm.startswith("perf"):
            continue
        if "sys_enter" in ev:
            nr = int(re.search(r"NR (\d+)", args).group(1))
            if nr in SYS_SEND:
                out.append((t, who, "send"))
        else:
            m2 = re.search(r"NR (\d+) = (-?\d+)", args)
            if m2 and int(m2.group(1)) in SYS_RECV and int(m2.group(2)) > 0:
                out.append((t, who, "recv"))
    return out


def cut(evs):
    """Each segment's durations over the commands of one trace."""
    seg = {k: [] for k, _ in SEGMENTS}
    last = {}
    for t, who, kind in evs:
        key = (who, kind)
        if key == ("host", "send"):
            if ("host", "recv") in last:
                seg["host"].append(t - last.pop(("host", "recv")))
        elif key == ("target", "recv"):
            if ("host", "send") in last:
                seg["to_target"].append(t - last.pop(("host", "send")))
            else:
                continue  # a second recv of the same command
        elif key == ("target", "issue"):
            if ("target", "recv") in last:
                seg["submit"].append(t - last[("target", "recv")])
        elif key == ("target", "done"):
            if ("target", "issue") in last:
                seg["device"].append(t - last.pop(("target", "issue")))
            if ("target", "irq") in last:
                seg["irq"].append(t - last.pop(("target", "irq")))
        elif key == ("target", "send"):
            if ("target", "done") in last:
                seg["reply"].append(t - last.pop(("target", "done")))
            if ("target", "recv") in last:
                seg["in_target"].append(t - last.pop(("target", "recv")))
        elif key == ("host", "recv"):
            if ("target", "send") in last:
                seg["to_host"].append(t - last.pop(("target", "send")))
            else:
                continue
        last[key] = t
    return seg


def send_durations(data):
    """The target's send system calls, entry to exit (µs)."""
    text = subprocess.run(["perf", "script", "--ns", "-i", data, "-F", "cpu,time,trace"],
                          capture_output=True, text=True).stdout
    out, start = [], None
    for line in text.splitlines():
        m = re.match(r"\s*\[(\d+)\]\s+([\d.]+):\s+NR (\d+)( = )?", line)
        if not m or int(m.group(1)) != TARGET_CPU or int(m.group(3)) not in SYS_SEND:
            continue
        t = float(m.group(2)) * 1e6
        if m.group(4) is None:
            start = t
        elif start is not None:
            out.append(t - start)
            start = None
    return out


def run(name, backing, secs, size, tmp):
    wait_idle()
    if name == "ours":
        started = start_nvmf_tpc(OURS_NQN, "ram:1G" if backing == "ram" else f"{backing},bs=4096")
    else:
        started = start_spdk(None if backing == "ram" else f"file:{backing}")
    p, pid, port, nqn = started
    data = os.path.join(tmp, f"{name}.data")
    try:
        time.sleep(0.5)
        rec = record(data, max(1, secs - 1))
        r = spdk_perf(port, nqn, ["-w", "randread", "-o", str(size), "-q", "1"], secs)
        rec.wait()
    finally:
        stop(p)
    seg = cut(events(data))
    seg["send"] = send_durations(data)
    r["n"] = len(seg["in_target"])
    # A segment seen for few commands is someone else's (on RAM, the
    # block events of a log write): left out.
    kept = {k: v for k, v in seg.items() if v and len(v) >= r["n"] / 2}
    r["seg"] = {k: statistics.median(v) for k, v in kept.items()}
    # Sums, for means over every command of every run: the whole cycle
    # (1 / IOPS) is a sum of segment means, not of medians.
    r["sum"] = {k: (sum(v), len(v)) for k, v in kept.items()}
    return r


def table(results, backing, size):
    lines = [f"{size // 1024} KiB randread QD1, {backing} backing: µs per command; median: the median over "
             "the runs of each run's median; mean: over every command of every run", "",
             "| segment | median SPDK | median nvmf-tpc | − | mean SPDK | mean nvmf-tpc | − |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in SEGMENTS:
        xs = {n: [r["seg"][key] for r in results[n] if key in r["seg"]] for n in results}
        if not xs["ours"] or not xs["spdk"]:
            continue
        a, b = med(xs["spdk"]), med(xs["ours"])
        m = {}
        for n in results:
            sums = [r["sum"][key] for r in results[n] if key in r["sum"]]
            m[n] = sum(x for x, _ in sums) / sum(c for _, c in sums)
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {m['spdk']:.2f} | "
                     f"{m['ours']:.2f} | {m['ours'] - m['spdk']:+.2f} |")
    cyc = {n: med([1e6 / r["iops"] for r in results[n]]) for n in results}
    lines.append(f"| whole cycle (1 / IOPS under tracing; median of runs) | {cyc['spdk']:.1f} | "
                 f"{cyc['ours']:.1f} | {cyc['ours'] - cyc['spdk']:+.1f} | | | |")
    n = {k: sum(r["n"] for r in v) for k, v in results.items()}
    lines += ["", f"Commands traced: SPDK {n['spdk']:,}, nvmf-tpc {n['ours']:,}; "
              f"{len(results['ours'])} runs each, alternated. spdk_nvme_perf on CPU {CLIENT_CPU}, "
              f"each target alone on CPU {TARGET_CPU}."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of each target")
    ap.add_argument("--time", type=int, default=3)
    ap.add_argument("--backing", default="file", choices=["file", "block", "ram"])
    ap.add_argument("--file", default="/var/tmp/nvmf-tpc-perf/backing.img")
    ap.add_argument("--size", type=int, default=4096, help="bytes a read")
    a = ap.parse_args()
    if a.size < 4096 or a.size % 4096:
        sys.exit("--size: a multiple of the 4096-byte block")
    if subprocess.run(["perf", "--version"], capture_output=True).returncode != 0:
        sys.exit("needs perf (Debian: apt-get install linux-perf)")
    build()
    prepare_spdk()
    dev = None
    path = "ram"
    if a.backing != "ram":
        make_file(a.file)
        path = a.file
        if a.backing == "block":
            dev = path = loop_device(a.file)
    results = {"ours": [], "spdk": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(a.runs):
                for name in (["ours", "spdk"] if i % 2 == 0 else ["spdk", "ours"]):
                    r = run(name, path, a.time, a.size, tmp)
                    results[name].append(r)
                    log(f"run {i + 1} {name}: {r['iops']:,.0f} IOPS traced, {r['n']:,} commands, "
                        + ", ".join(f"{k} {v:.1f}" for k, v in r["seg"].items()))
    finally:
        if dev:
            subprocess.run(["losetup", "-d", dev])
    out = table(results, a.backing, a.size)
    head = header("Where a QD1 read's time goes: nvmf-tpc and SPDK's nvmf_tgt")
    print(head + out)
    write_result("segments", head + out)


if __name__ == "__main__":
    main()
