#!/usr/bin/env python3
"""nvmf-tpc on a file and a block device, side by side with SPDK's target on
the same backing and with fio's bare rate on it.

    perf/storage.py [--quick] [--pairs N] [--time SECS] [--backings file,block,zram]
                    [--file PATH] [--rows qd1r,qd32r,qd32w,seq128r]

For each backing (a 1 GiB file of random data on this machine's disk, a loop
device with direct I/O over that file, and a 1 GiB zram device of random
data: a block device as fast as memory, where the targets' own cost per I/O
is what limits them) and each row, it runs, in pairs
whose order alternates (ABBA): nvmf-tpc and SPDK's nvmf_tgt (an AIO bdev,
../shared/spdk/nvmf-tgt), each alone on the target CPU, both driven by
spdk_nvme_perf on the client CPU; and twice per pair fio (io_uring, O_DIRECT;
libaio on zram, which io_uring hands to worker threads) on the backing from
the target CPU, the device's own rate: with the client
CPU idle, and with it held busy as spdk_nvme_perf holds it (on this VM a busy
second vCPU took 25-40% off the virtual disk's QD32 rate). Before each run it
waits for an idle machine. It prints medians over the pairs, their spread,
and the ratios to SPDK and to the bare rate, and writes the table to
perf/results/storage-<date>.md. Then it measures nvmf-tpc's CPU with one
connected, idle controller on the file.

Needs root (hugepages for SPDK, loop and zram devices), fio, and SPDK's runtime
packages (../shared/spdk/README.md). Environment: TARGET_CPU (1),
CLIENT_CPU (0), PERF_NO_BUILD=1.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from abba import idle_cpu as abba_idle_cpu
from abba import (CLIENT_CPU, TARGET_CPU, apt_install, build, header, log, med, prepare_spdk,
                  proc_ticks, spdk_perf, spread, start_nvmf_tpc, start_spdk, steal_ticks, stop,
                  wait_idle, write_result)


OURS_NQN = "nqn.2026-11.io.nvmf-tpc:storage"

# name: (spdk_nvme_perf pattern, I/O size, queue depth)
ROWS = {
    "qd1r": ("randread", 4096, 1),
    "qd32r": ("randread", 4096, 32),
    "qd32w": ("randwrite", 4096, 32),
    "seq128r": ("read", 131072, 8),
}
LABEL = {
    "qd1r": "4 KiB randread QD1",
    "qd32r": "4 KiB randread QD32",
    "qd32w": "4 KiB randwrite QD32",
    "seq128r": "128 KiB read QD8",
}


def start_ours(backing):
    return start_nvmf_tpc(OURS_NQN, f"{backing},bs=4096")


def start_aio(backing):
    return start_spdk(f"file:{backing}")


def row_args(row):
    pattern, size, qd = ROWS[row]
    return ["-q", str(qd), "-o", str(size), "-w", pattern]


def run_target(start, backing, row, secs):
    wait_idle()
    p, pid, port, nqn = start(backing)
    try:
        time.sleep(0.5)
        t0, s0 = proc_ticks(pid), steal_ticks()
        r = spdk_perf(port, nqn, row_args(row), secs)
        hz = os.sysconf("SC_CLK_TCK")
        r["cpu"] = (proc_ticks(pid) - t0) / hz / secs
        r["steal"] = (steal_ticks() - s0) / hz / secs
    finally:
        stop(p)
    return r


def fio_engine(backing):
    """io_uring, except on zram: io_uring hands every operation on a device
    that cannot take I/O without blocking to a worker thread (fio measured
    148k against libaio's 339k 4 KiB reads at QD1), and both targets use AIO
    there."""
    return "libaio" if is_zram(backing) else "io_uring"


def is_zram(backing):
    return os.path.basename(backing).startswith("zram")


def run_fio(backing, row, secs, busy_client=False):
    """fio's bare io_uring rate from the target CPU; with `busy_client`, while
    a spinning process holds the client CPU, as spdk_nvme_perf (which polls)
    holds it during the targets' runs."""
    pattern, size, qd = ROWS[row]
    wait_idle()
    spin = None
    if busy_client:
        spin = subprocess.Popen(["taskset", "-c", str(CLIENT_CPU), "sh", "-c", "while :; do :; done"])
    try:
        out = subprocess.run(
            ["fio", "--name=bare", f"--filename={backing}", f"--ioengine={fio_engine(backing)}",
             "--direct=1",
             # spdk_nvme_perf writes pages zram keeps as one repeated word
             # (after a write row its `mm_stat` counted every page so),
             # fio random data zram must compress: the same kind here.
             *(["--zero_buffers"] if is_zram(backing) else []),
             f"--rw={pattern}", f"--bs={size}", f"--iodepth={qd}", f"--runtime={secs}",
             "--time_based", f"--cpus_allowed={TARGET_CPU}", "--output-format=json"],
            capture_output=True, text=True, timeout=secs + 60)
    finally:
        if spin:
            stop(spin)
    if out.returncode != 0:
        raise RuntimeError("fio failed:\n" + out.stderr[-2000:])
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = job["write" if "write" in pattern else "read"]
    pct = side["clat_ns"].get("percentile", {})
    return {"iops": side["iops"], "mean": side["lat_ns"]["mean"] / 1000,
            "p50": pct.get("50.000000", float("nan")) / 1000,
            "p99": pct.get("99.000000", float("nan")) / 1000, "cpu": float("nan")}


def make_file(path, size=1 << 30):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log(f"writing {size >> 20} MiB of random data to {path}")
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={size >> 20}",
                    "oflag=direct", "status=none"], check=True)


def loop_device(path):
    return subprocess.run(["losetup", "--direct-io=on", "-f", "--show", path], check=True,
                          capture_output=True, text=True).stdout.strip()


ZRAM_CONTROL = "/sys/class/zram-control"


ZRAM_SIZE = 1 << 30


def zram_device():
    """A new zram device of `ZRAM_SIZE` bytes."""
    if not os.path.exists(ZRAM_CONTROL):
        subprocess.run(["modprobe", "zram", "num_devices=0"], check=False)
    with open(os.path.join(ZRAM_CONTROL, "hot_add")) as f:
        n = int(f.read())
    with open(f"/sys/block/zram{n}/disksize", "w") as f:
        f.write(str(ZRAM_SIZE))
    return f"/dev/zram{n}"


def fill_random(dev):
    """Random data all over `dev` (incompressible, so a read copies a whole
    page, as from a disk's cache): before each row, since a write row leaves
    pages zram stores as one word, which read back as a fill."""
    log(f"writing {ZRAM_SIZE >> 20} MiB of random data to {dev}")
    subprocess.run(["dd", "if=/dev/urandom", f"of={dev}", "bs=1M", f"count={ZRAM_SIZE >> 20}",
                    "oflag=direct", "status=none"], check=True)


def remove_zram(dev):
    with open(os.path.join(ZRAM_CONTROL, "hot_remove"), "w") as f:
        f.write(dev.removeprefix("/dev/zram"))


def idle_cpu(backing, secs=5):
    return abba_idle_cpu(start_ours(backing), secs)


def table(results, pairs, secs):
    lines = [
        "| backing | row | fio bare IOPS, client CPU idle / busy | SPDK IOPS | nvmf-tpc IOPS |"
        " **/ SPDK** (range) | / bare, idle / busy | p50 µs SPDK / ours | p99 µs SPDK / ours |"
        " mean over busy bare µs SPDK / ours | target CPU SPDK / ours |"
        " host steal ms/s SPDK / ours |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (backing, row), r in results.items():
        ours, spdk, fio, busy = r["ours"], r["spdk"], r["fio"], r["fio_busy"]
        if not ours or not spdk or not fio or not busy:
            continue
        ratios = [o["iops"] / s["iops"] for o, s in zip(ours, spdk)]
        keys = ("iops", "p50", "p99", "mean", "cpu", "steal")
        mo = {k: med([x[k] for x in ours]) for k in keys}
        ms = {k: med([x[k] for x in spdk]) for k in keys}
        mf = {k: med([x[k] for x in fio]) for k in ("iops", "mean")}
        mb = {k: med([x[k] for x in busy]) for k in ("iops", "mean")}
        lines.append(
            f"| {backing} | {LABEL[row]} | {mf['iops']:,.0f} / {mb['iops']:,.0f} |"
            f" {ms['iops']:,.0f} | {mo['iops']:,.0f} |"
            f" **{med(ratios):.2f}** ({spread(ratios)}) |"
            f" {mo['iops'] / mf['iops']:.2f} / {mo['iops'] / mb['iops']:.2f} |"
            f" {ms['p50']:.0f} / {mo['p50']:.0f} | {ms['p99']:.0f} / {mo['p99']:.0f} |"
            f" {ms['mean'] - mb['mean']:.1f} / {mo['mean'] - mb['mean']:.1f} |"
            f" {ms['cpu']:.0%} / {mo['cpu']:.0%} |"
            f" {ms['steal'] * 1000:.0f} / {mo['steal'] * 1000:.0f} |")
    lines.append("")
    lines.append(f"Medians of {pairs} alternated pairs of {secs} s (spdk_nvme_perf on CPU {CLIENT_CPU}, "
                 f"each target alone on CPU {TARGET_CPU}); the ratio column is the median of the "
                 "per-pair ratios and their range. fio: io_uring (libaio on zram), O_DIRECT, "
                 "on the target CPU, "
                 f"once with CPU {CLIENT_CPU} idle and once with it held by a spinning process, "
                 "as spdk_nvme_perf (which polls) holds it while the targets run: on a VM the "
                 "other vCPU's load can change the virtual disk's own rate. Host steal: "
                 "the time the host kept the VM's vCPUs from running during the run (both "
                 "CPUs, from /proc/stat), per second; it rises when the run uses more of "
                 "the VM's CPU allowance, the virtual disk's work included.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 pair of 3 s per row")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--time", type=int, default=6)
    ap.add_argument("--backings", default="file,block,zram")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--file", default="/var/tmp/nvmf-tpc-perf/backing.img")
    a = ap.parse_args()
    if a.quick:
        a.pairs, a.time = 1, 3
    build()
    prepare_spdk()
    if shutil.which("fio") is None:
        apt_install(["fio"])
    make_file(a.file)
    loops = []
    zrams = []
    backings = {}
    try:
        for b in a.backings.split(","):
            if b == "file":
                backings[b] = a.file
            elif b == "block":
                dev = loop_device(a.file)
                loops.append(dev)
                backings[b] = dev
            elif b == "zram":
                dev = zram_device()
                zrams.append(dev)
                backings[b] = dev
            else:
                sys.exit(f"unknown backing {b}")
        results = {}
        for b, path in backings.items():
            for row in a.rows.split(","):
                r = results[(b, row)] = {"ours": [], "spdk": [], "fio": [], "fio_busy": []}
                if b == "zram":
                    fill_random(path)
                for i in range(a.pairs):
                    order = [("ours", start_ours), ("spdk", start_aio)]
                    if i % 2:
                        order.reverse()
                    for name, start in order:
                        x = run_target(start, path, row, a.time)
                        r[name].append(x)
                        log(f"{b} {row} pair {i + 1} {name}: {x['iops']:,.0f} IOPS, "
                            f"p50 {x['p50']:.0f} µs, p99 {x['p99']:.0f} µs, CPU {x['cpu']:.0%}, "
                            f"steal {x['steal'] * 1000:.0f} ms/s")
                    for key, busy in (("fio", False), ("fio_busy", True)):
                        x = run_fio(path, row, a.time, busy)
                        r[key].append(x)
                        log(f"{b} {row} pair {i + 1} {key}: {x['iops']:,.0f} IOPS, "
                            f"mean {x['mean']:.0f} µs")
        idle = idle_cpu(a.file) if "file" in backings else "not measured"
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev])
        for dev in zrams:
            remove_zram(dev)
    out = table(results, a.pairs, a.time)
    out += f"\n\nnvmf-tpc with one connected, idle controller on the file: {idle}\n"
    head = header("nvmf-tpc and SPDK on a file and block devices")
    print(head + out)
    write_result("storage", head + out)

if __name__ == "__main__":
    main()
