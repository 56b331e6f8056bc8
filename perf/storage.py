#!/usr/bin/env python3
"""nvmf-tpc on a file and a block device, side by side with SPDK's target on
the same backing and with fio's bare io_uring rate on it.

    perf/storage.py [--quick] [--pairs N] [--time SECS] [--backings file,block]
                    [--file PATH] [--rows qd1r,qd32r,qd32w,seq128r]

For each backing (a 1 GiB file of random data on this machine's disk, and a
loop device with direct I/O over that file) and each row, it runs, in pairs
whose order alternates (ABBA): nvmf-tpc and SPDK's nvmf_tgt (an AIO bdev,
../shared/spdk/nvmf-tgt), each alone on the target CPU, both driven by
spdk_nvme_perf on the client CPU; and once per pair fio (io_uring, O_DIRECT)
on the backing from the target CPU, the device's own rate. Before each run it
waits for an idle machine. It prints medians over the pairs, their spread,
and the ratios to SPDK and to the bare rate, and writes the table to
perf/results/storage-<date>.md. Then it measures nvmf-tpc's CPU with one
connected, idle controller on the file.

Needs root (hugepages for SPDK, loop devices), fio, and SPDK's runtime
packages (../shared/spdk/README.md). Environment: TARGET_CPU (1),
CLIENT_CPU (0), PERF_NO_BUILD=1.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPDK = os.path.join(os.path.dirname(ROOT), "shared", "spdk")
BIN = os.path.join(ROOT, "target", "release", "nvmf-tpc")
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e766d66-7470-6300-0000-000000000001"
OURS_NQN = "nqn.2026-11.io.nvmf-tpc:storage"
SPDK_NQN = "nqn.2016-06.io.spdk:ref"
TARGET_CPU = int(os.environ.get("TARGET_CPU", "1"))
CLIENT_CPU = int(os.environ.get("CLIENT_CPU", "0"))

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
# Most a CPU may be busy (share of a second) before a run starts.
IDLE_BUSY = 0.10
IDLE_WAIT = 60


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, secs=30):
    end = time.time() + secs
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"target exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("target did not listen")


def cpu_busy(secs=0.5):
    """Busy share of each CPU over `secs`."""

    def sample():
        out = {}
        for line in open("/proc/stat"):
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                out[int(m.group(1))] = (sum(v), v[3] + v[4])
        return out

    a = sample()
    time.sleep(secs)
    b = sample()
    return {c: 1 - (b[c][1] - a[c][1]) / max(1, b[c][0] - a[c][0]) for c in a}


def wait_idle():
    end = time.time() + IDLE_WAIT
    while True:
        busy = cpu_busy()
        if max(busy[TARGET_CPU], busy[CLIENT_CPU]) < IDLE_BUSY or time.time() > end:
            return
        log(f"  waiting for an idle machine ({busy})")


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return int(v[11]) + int(v[12])


def start_ours(backing):
    port = free_port()
    args = [BIN, "serve", "--cpus", str(TARGET_CPU), "--listen", f"127.0.0.1:{port}",
            "--log-level", "warn", "--subsystem", OURS_NQN, "--namespace", f"{backing},bs=4096"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port, p)
    return p, p.pid, port, OURS_NQN


def start_spdk(backing):
    port = free_port()
    args = [os.path.join(SPDK, "nvmf-tgt"), "--port", str(port), "--cpu", str(TARGET_CPU),
            "--bdev", f"file:{backing}", "--block-size", "4096", "--shm-id", "17"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    wait_port(port, p, 60)
    # The script execs nvmf_tgt: same pid.
    return p, p.pid, port, SPDK_NQN


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spdk_perf(port, nqn, row, secs):
    pattern, size, qd = ROWS[row]
    mask = hex(1 << CLIENT_CPU)
    trid = (f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn} "
            f"hostnqn:{HOSTNQN}")
    out = subprocess.run(
        [os.path.join(SPDK, "bin", "spdk_nvme_perf"), "-c", mask, "-q", str(qd), "-o", str(size),
         "-w", pattern, "-t", str(secs), "-LL", "-r", trid],
        capture_output=True, text=True, timeout=secs + 60)
    text = out.stdout + out.stderr
    m = re.search(r"^Total\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)", text, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError("spdk_nvme_perf failed:\n" + text[-2000:])
    r = {"iops": float(m.group(1)), "mean": float(m.group(3))}
    for q, key in (("50.00000", "p50"), ("99.00000", "p99")):
        m = re.search(rf"^\s*{q}%\s*:\s*([\d.]+)us", text, re.M)
        r[key] = float(m.group(1)) if m else float("nan")
    return r


def run_target(start, backing, row, secs):
    wait_idle()
    p, pid, port, nqn = start(backing)
    try:
        time.sleep(0.5)
        t0 = proc_ticks(pid)
        r = spdk_perf(port, nqn, row, secs)
        r["cpu"] = (proc_ticks(pid) - t0) / os.sysconf("SC_CLK_TCK") / secs
    finally:
        stop(p)
    return r


def run_fio(backing, row, secs):
    pattern, size, qd = ROWS[row]
    wait_idle()
    out = subprocess.run(
        ["fio", "--name=bare", f"--filename={backing}", "--ioengine=io_uring", "--direct=1",
         f"--rw={pattern}", f"--bs={size}", f"--iodepth={qd}", f"--runtime={secs}",
         "--time_based", f"--cpus_allowed={TARGET_CPU}", "--output-format=json"],
        capture_output=True, text=True, timeout=secs + 60)
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


def idle_cpu(backing, secs=5):
    p, pid, port, nqn = start_ours(backing)
    try:
        out = subprocess.run(
            [BIN, "perf", "--target", f"127.0.0.1:{port}", "--nqn", nqn, "--idle", str(secs),
             "--target-pid", str(pid), "--cpus", str(CLIENT_CPU), "--quiet"],
            capture_output=True, text=True, timeout=secs + 30)
    finally:
        stop(p)
    m = re.search(r"target CPU:.*= ([\d.]+% of one core)", out.stdout)
    return m.group(1) if m else (out.stdout + out.stderr).strip()[-200:]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs):
    return f"{min(xs):.2f}–{max(xs):.2f}" if xs else "—"


def table(results, pairs, secs):
    lines = [
        "| backing | row | fio bare IOPS | SPDK IOPS | nvmf-tpc IOPS | **/ SPDK** (range) | / bare |"
        " p50 µs SPDK / ours | p99 µs SPDK / ours | mean over bare µs SPDK / ours |"
        " target CPU SPDK / ours |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (backing, row), r in results.items():
        ours, spdk, fio = r["ours"], r["spdk"], r["fio"]
        if not ours or not spdk:
            continue
        ratios = [o["iops"] / s["iops"] for o, s in zip(ours, spdk)]
        mo = {k: med([x[k] for x in ours]) for k in ("iops", "p50", "p99", "mean", "cpu")}
        ms = {k: med([x[k] for x in spdk]) for k in ("iops", "p50", "p99", "mean", "cpu")}
        mf = {k: med([x[k] for x in fio]) for k in ("iops", "mean")}
        bare = mo["iops"] / mf["iops"] if fio else float("nan")
        lines.append(
            f"| {backing} | {LABEL[row]} | {mf['iops']:,.0f} | {ms['iops']:,.0f} | {mo['iops']:,.0f} |"
            f" **{med(ratios):.2f}** ({spread(ratios)}) | {bare:.2f} |"
            f" {ms['p50']:.0f} / {mo['p50']:.0f} | {ms['p99']:.0f} / {mo['p99']:.0f} |"
            f" {ms['mean'] - mf['mean']:.1f} / {mo['mean'] - mf['mean']:.1f} |"
            f" {ms['cpu']:.0%} / {mo['cpu']:.0%} |")
    lines.append("")
    lines.append(f"Medians of {pairs} alternated pairs of {secs} s (spdk_nvme_perf on CPU {CLIENT_CPU}, "
                 f"each target alone on CPU {TARGET_CPU}); the ratio column is the median of the "
                 "per-pair ratios and their range. fio: io_uring, O_DIRECT, on the target CPU.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 pair of 3 s per row")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--time", type=int, default=6)
    ap.add_argument("--backings", default="file,block")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--file", default="/var/tmp/nvmf-tpc-perf/backing.img")
    a = ap.parse_args()
    if a.quick:
        a.pairs, a.time = 1, 3
    if os.environ.get("PERF_NO_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "nvmf-tpc"], cwd=ROOT,
                       check=True)
    make_file(a.file)
    loops = []
    backings = {}
    try:
        for b in a.backings.split(","):
            if b == "file":
                backings[b] = a.file
            elif b == "block":
                dev = loop_device(a.file)
                loops.append(dev)
                backings[b] = dev
            else:
                sys.exit(f"unknown backing {b}")
        results = {}
        for b, path in backings.items():
            for row in a.rows.split(","):
                r = results[(b, row)] = {"ours": [], "spdk": [], "fio": []}
                for i in range(a.pairs):
                    order = [("ours", start_ours), ("spdk", start_spdk)]
                    if i % 2:
                        order.reverse()
                    for name, start in order:
                        x = run_target(start, path, row, a.time)
                        r[name].append(x)
                        log(f"{b} {row} pair {i + 1} {name}: {x['iops']:,.0f} IOPS, "
                            f"p50 {x['p50']:.0f} µs, p99 {x['p99']:.0f} µs, CPU {x['cpu']:.0%}")
                    x = run_fio(path, row, a.time)
                    r["fio"].append(x)
                    log(f"{b} {row} pair {i + 1} fio: {x['iops']:,.0f} IOPS, mean {x['mean']:.0f} µs")
        idle = idle_cpu(a.file) if "file" in backings else "not measured"
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev])
    out = table(results, a.pairs, a.time)
    out += f"\n\nnvmf-tpc with one connected, idle controller on the file: {idle}\n"
    head = (f"# nvmf-tpc and SPDK on a file and a block device, {time.strftime('%Y-%m-%d %H:%M')}\n\n"
            f"{os.cpu_count()} CPUs, {os.uname().release}, git "
            + subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip() + "\n\n")
    print(head + out)
    os.makedirs(os.path.join(ROOT, "perf", "results"), exist_ok=True)
    path = os.path.join(ROOT, "perf", "results", f"storage-{time.strftime('%Y%m%d-%H%M%S')}.md")
    with open(path, "w") as f:
        f.write(head + out)
    log(f"written to {path}")


if __name__ == "__main__":
    main()
