"""What the side-by-side perf scripts share (perf/storage.py, perf/peer.py):
starting and stopping targets on loopback, waiting for an idle machine,
SPDK's load generator and its summary, medians and spreads. Runs are
compared only in alternated pairs: these machines are noisy.
"""

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPDK = os.environ.get("SPDK_DIR", os.path.join(os.path.dirname(ROOT), "shared", "spdk"))
BIN = os.path.join(ROOT, "target", "release", "nvmf-tpc")
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e766d66-7470-6300-0000-000000000001"
SPDK_NQN = "nqn.2016-06.io.spdk:ref"
TARGET_CPU = int(os.environ.get("TARGET_CPU", "1"))
CLIENT_CPU = int(os.environ.get("CLIENT_CPU", "0"))
# Most a CPU may be busy (share of a second) before a run starts.
IDLE_BUSY = 0.10
IDLE_WAIT = 60
# As tests/common/spdk.rs: the libraries SPDK's binaries link.
SPDK_RUNTIME = ["libnuma1", "libuuid1", "libssl3", "libaio1", "libfuse3-3"]
# nvmf_tgt and spdk_nvme_perf at the same time.
SPDK_HUGEPAGES_MIB = 2048


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


def steal_ticks():
    """Jiffies the host kept this VM's vCPUs from running, all CPUs so far
    (/proc/stat's steal). On this VM the host caps the VM's CPU per 100 ms
    period: while a run uses more, every vCPU stops until the next period
    (a busy loop saw 1.5-23 ms gaps at the period's edges), so a run's steal
    says how much of it the host took away."""
    for line in open("/proc/stat"):
        f = line.split()
        if f[0] == "cpu":
            return int(f[8])
    raise RuntimeError("no cpu line in /proc/stat")


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return int(v[11]) + int(v[12])


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs):
    return f"{min(xs):.2f}–{max(xs):.2f}" if xs else "—"


def spdk_perf(port, nqn, args, secs):
    """spdk_nvme_perf on CLIENT_CPU for `secs` with extra `args`: IOPS, mean,
    p50 and p99 in µs (from its -LL histogram)."""
    mask = hex(1 << CLIENT_CPU)
    trid = (f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn} "
            f"hostnqn:{HOSTNQN}")
    out = subprocess.run(
        [os.path.join(SPDK, "bin", "spdk_nvme_perf"), "-c", mask, "-t", str(secs), "-LL",
         "-r", trid] + list(args),
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


def start_spdk(bdev, block_size=4096, shm_id=17):
    """SPDK's nvmf_tgt on TARGET_CPU (../shared/spdk/nvmf-tgt) serving `bdev`
    ("malloc:SIZE_MB" or "file:PATH")."""
    port = free_port()
    args = [os.path.join(SPDK, "nvmf-tgt"), "--port", str(port), "--cpu", str(TARGET_CPU),
            "--block-size", str(block_size), "--shm-id", str(shm_id)]
    if bdev:
        args += ["--bdev", bdev]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    wait_port(port, p, 60)
    # The script execs nvmf_tgt: same pid.
    return p, p.pid, port, SPDK_NQN


def start_nvmf_tpc(nqn, namespace, extra=()):
    """nvmf-tpc on TARGET_CPU serving one namespace."""
    port = free_port()
    args = [BIN, "serve", "--cpus", str(TARGET_CPU), "--listen", f"127.0.0.1:{port}",
            "--log-level", "warn", "--subsystem", nqn, "--namespace", namespace] + list(extra)
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port, p)
    return p, p.pid, port, nqn


def cpu_ticks(cpu):
    """(busy, total) jiffies of one CPU so far."""
    for line in open("/proc/stat"):
        f = line.split()
        if f[0] == f"cpu{cpu}":
            v = [int(x) for x in f[1:]]
            return sum(v) - v[3] - v[4], sum(v)
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def build():
    if os.environ.get("PERF_NO_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "nvmf-tpc"], cwd=ROOT,
                       check=True)


def apt_install(packages):
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def prepare_spdk():
    """What SPDK's binaries need on a fresh machine, as the tests do it
    (tests/common/spdk.rs): their runtime packages, and hugepages for a
    target and a client at once (the script only ever raises the count)."""
    ldd = subprocess.run(["ldd", os.path.join(SPDK, "bin", "spdk_nvme_perf")],
                         capture_output=True, text=True).stdout
    if "not found" in ldd:
        apt_install(SPDK_RUNTIME)
    subprocess.run([os.path.join(SPDK, "hugepages"), str(SPDK_HUGEPAGES_MIB)], check=True,
                   stdout=subprocess.DEVNULL)


def header(title):
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    return (f"# {title}, {time.strftime('%Y-%m-%d %H:%M')}\n\n"
            f"{os.cpu_count()} CPUs, {os.uname().release}, git {rev}\n\n")


def write_result(prefix, text, ext="md"):
    os.makedirs(os.path.join(ROOT, "perf", "results"), exist_ok=True)
    path = os.path.join(ROOT, "perf", "results", f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.{ext}")
    with open(path, "w") as f:
        f.write(text)
    log(f"written to {path}")
    return path


def idle_cpu(started, secs):
    """The target's CPU with one connected controller idle for `secs`, as
    `nvmf-tpc perf --idle` measures it; `started` is a start_* result."""
    p, pid, port, nqn = started
    try:
        out = subprocess.run(
            [BIN, "perf", "--target", f"127.0.0.1:{port}", "--nqn", nqn, "--idle", str(secs),
             "--target-pid", str(pid), "--cpus", str(CLIENT_CPU), "--quiet"],
            capture_output=True, text=True, timeout=secs + 30)
    finally:
        stop(p)
    m = re.search(r"target CPU:.*= ([\d.]+% of one core)", out.stdout)
    return m.group(1) if m else (out.stdout + out.stderr).strip()[-200:]
