#!/usr/bin/env python3
"""Interop matrix: the Linux kernel's NVMe/TCP host (Debian 12's stock 6.1
kernel under QEMU/TCG, with nvme-cli, fio and e2fsprogs) against nvmf-tpc.

    tests/interop/matrix.py [path/to/nvmf-tpc]      # default target/release/nvmf-tpc
    tests/interop/matrix.py --list                  # the cells
    tests/interop/matrix.py --cells data,ext4 ...   # some cells only

Each cell is a pass/fail check. One VM boot runs the cells one after the
other (guest-matrix.sh); each cell connects, checks, and disconnects, so
they stay independent. The targets all start up front, on their own ports
on 127.0.0.1 (the guest's 10.0.2.2). A control channel on 127.0.0.1 lets a
cell ask this script to kill or restart a target. A cell that hangs makes
the guest power off; the cells after it then run in a new VM.

Environment: INTEROP_CACHE (setup.sh's cache), INTEROP_QUIET=1 (do not
stream the guest console), INTEROP_CELLS (like --cells), INTEROP_KEEP=1
(keep the data files, and the capture of a passing run), INTEROP_LIMITS
("cell=seconds,...": other time limits, for debugging).

Exits 0 only if every cell passed. Logs stay in /tmp/nvmf-tpc-matrix.*/.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("INTEROP_CACHE", "/var/cache/nvmf-tpc-interop")
PREFIX = "nqn.2026-11.io.nvmf-tpc"
NQN = {
    "main": f"{PREFIX}:interop",
    "ns512": f"{PREFIX}:ns512",
    "null": f"{PREFIX}:null",
    "file": f"{PREFIX}:file",
    "file512": f"{PREFIX}:file512",
    "multi": f"{PREFIX}:multi",
    "denied": f"{PREFIX}:denied",
    "qd": f"{PREFIX}:qd",
    "restart": f"{PREFIX}:restart",
    "pcap": f"{PREFIX}:pcap",
    "big": f"{PREFIX}:big",
}
DISC_NQN = "nqn.2014-08.org.nvmexpress.discovery"
# The only host --allow-host admits on the "denied" subsystem (not the guest).
OTHER_HOST = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001"
MiB = 1 << 20
FILES = {  # data files on the host's disk (sparse), bytes
    "file.img": 256 * MiB,
    "file512.img": 64 * MiB,
    "multi.img": 128 * MiB,
    "restart.img": 256 * MiB,
    "big.img": 128 * MiB,
}
KiB = 1 << 10
# The "big" target widens what the Linux host does: MDTS 1 MiB (one command
# carries 1 MiB), MAXH2CDATA 16 KiB (a 1 MiB write is one R2T answered by 64
# H2CData PDUs), in-capsule data 128 KiB (the target's maximum: Linux sends
# writes up to 128 KiB in the capsule). Reads above 128 KiB come back as
# several C2HData PDUs (the target's fixed cap).
BIG_MAX_IO, BIG_H2C, BIG_ICD, C2H_MAX = MiB, 16 * KiB, 128 * KiB, 128 * KiB

# name, time limit in the guest (s), targets it uses, what it checks.
# Order matters only for speed and for restart_late before restart (the
# immediate restart may leave the port unusable for a while).
CELLS = [
    ("discover", 30, ["main"], "nvme discover: an entry per allowed subsystem and listener, fields"),
    ("discover_keepalive", 120, ["main"], "persistent discovery controller, KATO 5 s, idle 3 KATO"),
    ("discovery_id", 30, ["main"], "id-ctrl of a discovery controller: sn, mn, fr set"),
    ("host_denied", 30, ["main"], "--allow-host another host: connect refused, not discovered"),
    ("bad_subnqn", 30, ["main"], "connect to an unknown NQN: Linux names the field"),
    ("queues_default", 60, ["main"], "nvme connect, default queue count (1 per CPU)"),
    ("queues_1", 60, ["main"], "--nr-io-queues=1"),
    ("queues_8", 90, ["main"], "8 I/O queues (4 default + 4 write) on a --cores 2 target"),
    ("qsize_16", 60, ["main"], "--queue-size=16"),
    ("qsize_128", 60, ["main"], "--queue-size=128 (the target's default depth)"),
    ("qsize_clamp", 90, ["main", "qd64"], "--queue-size above --queue-depth: clamped"),
    ("qdepth_16", 40, ["qd16"], "target --queue-depth 16: Linux can connect"),
    ("identify", 40, ["main"], "id-ctrl, id-ns, ns-descs, list, list-subsys values"),
    ("logs", 40, ["main"], "error, SMART, changed-ns, firmware, effects log pages"),
    ("features", 40, ["main"], "get-feature 1 2 4 5 6 7 0xb 0xf, 0x81 -c 1 = hostid"),
    ("feature_hostid_exhid0", 30, ["main"], "get-feature 0x81 without EXHID fails cleanly"),
    ("data", 90, ["main"], "O_DIRECT patterns, unaligned to MDTS, 1 block..4 MiB"),
    ("data_digest", 90, ["main"], "the same with header and data digests"),
    ("oncs", 60, ["main"], "flush, compare, deallocate, write zeroes"),
    ("fio_rand", 150, ["main"], "fio randwrite 4k-128k iodepth 16 verify crc32c"),
    ("fio_seq", 150, ["main"], "fio sequential 1 MiB writes verify crc32c"),
    ("fio_rand_digest", 150, ["main"], "fio randwrite verify, header and data digests"),
    ("large_io", 300, ["big"], "MDTS 1M, MAXH2CDATA 16K, in-capsule 128K: 1 MiB I/O, PDUs checked"),
    ("ext4", 150, ["main"], "mkfs.ext4 (discard), files, remount, sums, e2fsck"),
    ("ext4_digest", 150, ["main"], "the same with header and data digests"),
    ("ns_512", 180, ["main"], "512-byte blocks, RAM and file: data, fio"),
    ("ns_null", 60, ["main"], "null:1G: writes dropped, reads zero"),
    ("ns_file", 150, ["main"], "256 MiB file: data, fio, survives reconnect"),
    ("ns_multi", 150, ["main"], "one subsystem, ram + null + file namespaces"),
    ("keepalive", 120, ["main"], "KATO 5 s, idle 3 KATO, Keep Alives answered: live"),
    ("restart_late", 200, ["restart"], "SIGKILL under I/O, start after 62 s: reconnect"),
    ("restart", 150, ["restart"], "SIGKILL under I/O, restart at once on the port"),
    ("pcap", 150, ["pcap"], "session captured on lo, decoded by tshark"),
    ("kernel_log", 20, [], "no BUG, WARNING, Oops or hung task in the guest"),
]
HOST_CELLS = [("targets", ["main", "qd64", "qd16", "pcap", "restart", "big"],
               "targets alive at the end, no panic in their logs")]
MAX_BOOTS = 5
# The guest kernel's own reports of a stalled CPU.
STALL_RE = re.compile(r"soft lockup - CPU#|rcu: INFO: rcu_\w+ (self-detected )?stall|detected stalls on CPUs")
QUIET = os.environ.get("INTEROP_QUIET") == "1"

_print_lock = threading.Lock()


def log(msg):
    with _print_lock:
        print(f"interop: {msg}", flush=True)


def die(msg):
    print(f"interop: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def fs_type(path):
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                          text=True).stdout.strip()


def used_ports():
    """Local TCP ports in use in any state (TIME-WAIT included: a target
    could not start on a port its killed predecessor left sockets on)."""
    out = subprocess.run(["ss", "-Htan"], capture_output=True, text=True).stdout
    ports = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            ports.add(cols[3].rsplit(":", 1)[-1])
    return ports


def pick_ports(n):
    busy = used_ports()
    ports = [p for p in range(4420, 4700) if str(p) not in busy][:n]
    if len(ports) < n:
        die("not enough free ports in 4420..4699")
    return ports


def port_sockets(port):
    """"2 TIME-WAIT, 1 ESTAB": the sockets on local port `port`."""
    out = subprocess.run(["ss", "-Htan", f"sport = :{port}"], capture_output=True, text=True).stdout
    c = Counter(line.split()[0] for line in out.splitlines() if line.strip())
    return ", ".join(f"{n} {st}" for st, n in sorted(c.items())) or "none"


def listeners():
    """{port: set(pids)} of TCP listeners."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    res = defaultdict(set)
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        port = cols[3].rsplit(":", 1)[-1]
        for pid in re.findall(r"pid=(\d+)", line):
            res[port].add(int(pid))
    return res


class Target:
    """One target process, restartable (the control channel kills and starts
    it again with the same command line and appends to the same log)."""

    def __init__(self, name, binary, ports, args, logpath):
        self.name, self.binary, self.ports, self.args = name, binary, ports, args
        self.logpath = logpath
        self.proc = None
        self.lock = threading.Lock()
        self.starts = 0

    def cmdline(self):
        return [self.binary, "serve"] + self.args

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _note(self, text):
        with open(self.logpath, "ab") as f:
            f.write(f"==== matrix {time.strftime('%H:%M:%S')}: {text} ====\n".encode())

    def log_size(self):
        try:
            return os.path.getsize(self.logpath)
        except OSError:
            return 0

    def _start_once(self, limit=20.0):
        self.starts += 1
        self._note(f"starting {self.name} (start {self.starts}): {' '.join(self.cmdline())}")
        off = self.log_size()
        with open(self.logpath, "ab") as f:
            self.proc = subprocess.Popen(self.cmdline(), stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < limit:
            if self.proc.poll() is not None:
                with open(self.logpath, "rb") as f:
                    f.seek(off)
                    tail = f.read().decode(errors="replace").strip().splitlines()[-3:]
                return False, f"exited {self.proc.returncode}: {' | '.join(tail)}"
            ls = listeners()
            if all(self.proc.pid in ls.get(str(p), ()) for p in self.ports):
                return True, f"listening after {time.time() - t0:.1f}s"
            time.sleep(0.1)
        return False, f"not listening on {self.ports} after {limit:.0f}s"

    def start(self, retry_for=0.0):
        """Starts it unless it runs; retries for retry_for seconds."""
        with self.lock:
            if self.alive():
                return True, "already running"
            deadline = time.time() + retry_for
            while True:
                ok, msg = self._start_once()
                if ok or time.time() >= deadline:
                    return ok, msg
                time.sleep(1.0)

    def kill(self):
        with self.lock:
            if not self.alive():
                return "not running"
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self._note(f"{self.name} killed with SIGKILL")
            return "killed"

    def stop(self):
        with self.lock:
            if not self.alive():
                return
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Control(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The guest's control channel: one command line in, one reply line out."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, targets, logpath, on_mark):
        self.targets = targets
        self.logpath = logpath
        self.on_mark = on_mark
        super().__init__(("127.0.0.1", port), ControlHandler)

    def execute(self, line):
        words = line.split()
        if not words:
            return "error: empty command"
        cmd, args = words[0], words[1:]
        if cmd == "ping":
            return "ok pong"
        if cmd == "mark" and len(args) == 2 and args[0] in ("begin", "end"):
            # A cell begins or ends: cut the target logs here.
            self.on_mark(args[0], args[1])
            return "ok"
        if not args or args[0] not in self.targets:
            return f"error: no target {args[0] if args else '(none)'}"
        t = self.targets[args[0]]
        if cmd == "kill":
            return f"ok {t.kill()}"
        if cmd == "start":
            wait = float(args[1]) if len(args) > 1 else 5.0
            ok, msg = t.start(retry_for=wait)
            if not ok:
                msg += f" (sockets on port {t.ports[0]}: {port_sockets(t.ports[0])})"
            return f"{'ok' if ok else 'fail'} {t.name}: {msg}"
        if cmd == "restart":
            # SIGKILL, then at once the same command line on the same port
            # (retrying for 5 s while it exits).
            t0 = time.time()
            t.kill()
            before = port_sockets(t.ports[0])
            ok, msg = t.start(retry_for=5.0)
            if not ok:
                msg += (f" (sockets on port {t.ports[0]} right after the kill: {before}; "
                        f"after the last attempt: {port_sockets(t.ports[0])})")
            return f"{'ok' if ok else 'fail'} {t.name} restarted in {time.time() - t0:.1f}s: {msg}"
        return f"error: unknown command {cmd}"


class ControlHandler(socketserver.StreamRequestHandler):
    def handle(self):
        self.request.settimeout(30)
        try:
            line = self.rfile.readline(1024).decode(errors="replace").strip()
        except OSError:
            return
        reply = self.server.execute(line)
        with open(self.server.logpath, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line} -> {reply}\n")
        if not line.startswith("mark "):
            log(f"control: {line} -> {reply}")
        try:
            self.wfile.write((reply + "\n").encode())
        except OSError:
            pass


class CellResult:
    def __init__(self, name, what, targets):
        self.name, self.what, self.targets = name, what, targets
        self.status = "NOT RUN"
        self.secs = None
        self.vm = None
        self.lines = []          # the guest console during the cell
        self.log_from = {}       # target -> log offset at the start
        self.log_to = {}
        self.notes = []          # host-side findings (e.g. the capture's)
        self.marked = False      # log offsets came from the control channel
        self.stalled = None      # the guest kernel's stall report that ended a first try

    def verdict(self, status, secs):
        """A CELL-END line. The first one that is not PASS sticks: the guest's
        watchdog prints TIMEOUT, and the cell it could not stop may still
        finish and print PASS before the VM powers off."""
        if self.status in ("FAIL", "TIMEOUT"):
            if status != self.status:
                self.notes.append(f"a later CELL-END said {status} after {secs:.1f}s; "
                                  f"the earlier {self.status} stands")
            return
        self.status, self.secs = status, secs


def decode_capture(pcap, port, dumpcap_log):
    """Decodes a capture with tshark's NVMe/TCP dissector and runs the checks
    every capture must pass (complete, every byte in a decoded PDU, nothing
    malformed, ICReq/ICResp first, digests good). Returns (ok, report lines,
    tshark command prefix or None if tshark failed, streams)."""
    rep, ok = [], True
    try:
        with open(dumpcap_log) as f:
            m = re.search(r"received/dropped on interface [^:]*: (\d+)/(\d+)", f.read())
        if m and int(m.group(2)):
            ok = False
            rep.append(f"the capture is incomplete: dumpcap dropped {m.group(2)} of {m.group(1)} packets")
    except OSError:
        pass
    # Loopback can drop a segment under load; TCP retransmits it later, so
    # the capture holds it out of order: let tshark reassemble that too.
    base = ["tshark", "-n", "-r", pcap, "-d", f"tcp.port=={port},nvme-tcp",
            "-o", "tcp.reassemble_out_of_order:TRUE",
            "-o", "nvme-tcp.check_hdgst:TRUE", "-o", "nvme-tcp.check_ddgst:TRUE"]
    fields = ["tcp.stream", "tcp.srcport", "tcp.len", "tcp.seq",
              "nvme-tcp.type", "nvme-tcp.plen", "nvme-tcp.hdgst.status", "nvme-tcp.ddgst.status",
              "nvme-tcp.icreq.digest", "nvme-tcp.icresp.digest", "_ws.malformed",
              "_ws.expert.severity", "frame.number"]
    cmd = base + ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return False, [f"tshark exited {r.returncode}: {r.stderr.strip()[-500:]}"], None, {}
    tcp_bytes, pdu_bytes = Counter(), Counter()   # per (stream, sender)
    types = Counter()
    streams = defaultdict(lambda: {"types": [], "icreq": None, "icresp": None,
                                   "hd": Counter(), "dd": Counter()})
    malformed, errors = [], []
    npdu = 0
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if len(f) < len(fields):
            f += [""] * (len(fields) - len(f))
        st, sport, tlen, seq, ty, plen, hd, dd, icq, ics, mal, sev, frame = f
        key = (st, sport)
        # Bytes sent = the highest relative sequence number reached (a
        # retransmitted segment counts once).
        if tlen and int(tlen) > 0:
            tcp_bytes[key] = max(tcp_bytes[key], int(seq) + int(tlen) - 1)
        s = streams[st]
        for t in ty.split(",") if ty else []:
            types[t] += 1
            s["types"].append(t)
        for p in plen.split(",") if plen else []:
            pdu_bytes[key] += int(p)
            npdu += 1
        for v in hd.split(",") if hd else []:
            s["hd"][v] += 1
        for v in dd.split(",") if dd else []:
            s["dd"][v] += 1
        if icq:
            s["icreq"] = icq
        if ics:
            s["icresp"] = ics
        if mal:
            malformed.append(frame)
        if sev and any(int(x) >= 0x00800000 for x in sev.split(",")):
            errors.append(frame)
    names = {"0": "ICReq", "1": "ICResp", "2": "H2CTermReq", "3": "C2HTermReq",
             "4": "CapsuleCmd", "5": "CapsuleResp", "6": "H2CData", "7": "C2HData", "9": "R2T"}
    rep.append(f"{len(streams)} TCP connections, {npdu} NVMe/TCP PDUs: " +
               ", ".join(f"{names.get(t, t)} {n}" for t, n in sorted(types.items(), key=lambda x: int(x[0]))))
    if malformed:
        ok = False
        rep.append(f"malformed packets in frames {', '.join(malformed[:20])}")
    if errors:
        ok = False
        rep.append(f"expert errors in frames {', '.join(errors[:20])}")
    # Every byte of every connection belongs to a decoded PDU.
    for key in sorted(set(tcp_bytes) | set(pdu_bytes)):
        if tcp_bytes[key] != pdu_bytes[key]:
            ok = False
            rep.append(f"stream {key[0]} from port {key[1]}: {tcp_bytes[key]} TCP payload bytes, "
                       f"{pdu_bytes[key]} in decoded PDUs")
    if not errors and not malformed and all(tcp_bytes[k] == pdu_bytes[k] for k in tcp_bytes):
        rep.append("every TCP payload byte is in a decoded PDU; no malformed packet, no expert error")
    r4 = subprocess.run(base + ["-Y", "tcp.analysis.retransmission || tcp.analysis.lost_segment "
                                "|| tcp.analysis.out_of_order", "-T", "fields", "-e", "frame.number"],
                        capture_output=True, text=True)
    nre = len([ln for ln in r4.stdout.splitlines() if ln.strip()])
    if nre:
        rep.append(f"{nre} TCP segments lost on lo and retransmitted or out of order (reassembled)")
    # Expert warnings from the NVMe dissectors (TCP's own, e.g. zero window, are fine).
    ex = subprocess.run(base + ["-q", "-z", "expert,warn"], capture_output=True, text=True).stdout
    nvme_warn = [ln.strip() for ln in ex.splitlines() if re.search(r"\bNVMe", ln)]
    if nvme_warn:
        ok = False
        rep.append("NVMe expert warnings: " + " | ".join(nvme_warn[:10]))
    # Each connection starts with ICReq then ICResp; some negotiate digests.
    for st, s in sorted(streams.items(), key=lambda x: int(x[0])):
        if s["types"][:2] != ["0", "1"]:
            ok = False
            rep.append(f"stream {st} does not start with ICReq, ICResp: {s['types'][:4]}")
        s["digests"] = s["icreq"] == "3" and s["icresp"] == "3"
        if s["digests"]:
            if s["hd"].get("1", 0) == 0 or s["dd"].get("1", 0) == 0:
                ok = False
                rep.append(f"stream {st}: digests negotiated but none verified ({dict(s['hd'])}, {dict(s['dd'])})")
        for kind in ("hd", "dd"):
            bad = s[kind].get("0", 0)
            if bad:
                ok = False
                rep.append(f"stream {st}: {bad} bad {'header' if kind == 'hd' else 'data'} digests")
    return ok, rep, base, streams


def failed_completions(base):
    """Completions with an error status, for the record (the host's probes of
    optional features)."""
    r = subprocess.run(base + ["-Y", "nvme.cqe.status != 0", "-T", "fields", "-e", "tcp.stream",
                               "-e", "nvme.cqe.status", "-e", "nvme.cmd_pkt"],
                       capture_output=True, text=True)
    failed = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if not failed:
        return []
    return [f"{len(failed)} completions with an error status (stream, status, command frame): "
            + "; ".join(" ".join(ln.split("\t")) for ln in failed[:8])]


def analyze_pcap(pcap, port, dumpcap_log):
    """The pcap cell's capture: decodes, and has the connections, digests and
    Keep Alives the cell made. Returns (ok, report lines)."""
    ok, rep, base, streams = decode_capture(pcap, port, dumpcap_log)
    if base is None:
        return ok, rep
    digest_streams = sum(s["digests"] for s in streams.values())
    if len(streams) < 6:
        ok = False
        rep.append(f"only {len(streams)} connections captured, want 6 "
                   "(2 discovery, 2 x admin + I/O)")
    # Keep Alive on the idle persistent discovery controller: sent and
    # answered, all of them, and at the rate its KATO asks for. The rate is
    # judged over however long the connection lasted (a loaded machine makes
    # the cell idle longer), from the KATO in its Connect: a host must send
    # one at least every KATO (Linux sends one every KATO/2 or more often).
    r3 = subprocess.run(base + ["-Y", "nvme-tcp.cmd.qid == 0 && (nvme.cmd.opc == 0x18 || nvme.cqe.status)",
                                "-T", "fields", "-e", "frame.number", "-e", "nvme.cmd.opc",
                                "-e", "nvme.cqe.status", "-e", "nvme.cmd_pkt", "-e", "tcp.stream"],
                        capture_output=True, text=True)
    ka, answered = {}, {}
    for ln in r3.stdout.splitlines():
        fr, opc, status, cmd_pkt, st = (ln.split("\t") + [""] * 5)[:5]
        if opc == "0x18":
            ka[fr] = st
        elif cmd_pkt:
            answered[cmd_pkt] = status
    ka_ok = [f for f in ka if answered.get(f) in ("0x0000", "0")]
    if len(ka_ok) != len(ka):
        ok = False
        rep.append(f"Keep Alive: {len(ka)} commands, only {len(ka_ok)} answered with success")
    r5 = subprocess.run(base + ["-Y", "nvme.fabrics.cmd.connect.qid == 0", "-T", "fields",
                                "-e", "tcp.stream", "-e", "nvme.fabrics.cmd.connect.kato",
                                "-e", "nvme.fabrics.cmd.connect.data.subnqn"],
                        capture_output=True, text=True)
    span = stream_spans(base)
    idle = []
    for ln in r5.stdout.splitlines():
        st, kato, subnqn = (ln.split("\t") + ["", "", ""])[:3]
        if subnqn != DISC_NQN or not kato or int(kato, 0) == 0:
            continue
        kato_s = int(kato, 0) / 1000
        secs = span.get(st, 0.0)
        n = sum(1 for s in ka.values() if s == st)
        want = max(3, int(secs / kato_s) - 1)
        idle.append(st)
        if n < want:
            ok = False
            rep.append(f"Keep Alive: stream {st} (discovery, KATO {kato_s:g} s) lasted {secs:.1f} s "
                       f"and carried {n} Keep Alives, want >= {want} (one per KATO, less one)")
        else:
            rep.append(f"Keep Alive: stream {st} (discovery, KATO {kato_s:g} s): {n} in {secs:.1f} s, "
                       f"want >= {want}")
    if not idle:
        ok = False
        rep.append("no persistent discovery controller (Connect with a KATO) in the capture")
    elif len(ka_ok) == len(ka):
        rep.append(f"Keep Alive: {len(ka)} commands, all answered with success")
    if digest_streams < 2:
        ok = False
        rep.append(f"{digest_streams} connections with header and data digests, want 2")
    else:
        rep.append(f"{digest_streams} connections with header and data digests, all digests good")
    rep += failed_completions(base)
    return ok, rep


def stream_spans(base):
    """{tcp stream: seconds from its first to its last frame}."""
    r = subprocess.run(base + ["-T", "fields", "-e", "tcp.stream", "-e", "frame.time_relative"],
                       capture_output=True, text=True)
    first, last = {}, {}
    for ln in r.stdout.splitlines():
        st, t = (ln.split("\t") + ["", ""])[:2]
        if st and t:
            first.setdefault(st, float(t))
            last[st] = float(t)
    return {st: last[st] - first[st] for st in first}


def analyze_large(pcap, port, dumpcap_log):
    """The large_io cell's capture (the big target's first listener): decodes,
    and shows the paths the target's limits open were taken: R2Ts of a whole
    1 MiB answered by H2CData PDUs of at most MAXH2CDATA, 1 MiB reads split
    into C2HData PDUs of at most 128 KiB, and writes of the full in-capsule
    size in the capsule. Returns (ok, report lines)."""
    ok, rep, base, streams = decode_capture(pcap, port, dumpcap_log)
    if base is None:
        return ok, rep
    fields = ["frame.number", "tcp.dstport", "nvme-tcp.type", "nvme-tcp.plen", "nvme-tcp.pdo",
              "nvme-tcp.flags.pdu.ddgst", "nvme-tcp.data.offset", "nvme-tcp.data.length",
              "nvme-tcp.r2t.length", "nvme-tcp.icreq.hpda", "nvme-tcp.icresp.cpda"]
    cmd = base + ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return False, rep + [f"tshark exited {r.returncode}: {r.stderr.strip()[-500:]}"]
    h2c, c2h, r2t, icd, hpda, cpda, odd = [], [], [], [], set(), set(), []
    ints = lambda v: [int(x, 0) for x in v.split(",")] if v else []
    for line in r.stdout.splitlines():
        fr, dport, ty, plen, pdo, ddg, doff, dlen, r2tl, hp, cp = (line.split("\t") + [""] * 11)[:11]
        ty, plen, pdo, doff, dlen = ty.split(",") if ty else [], ints(plen), ints(pdo), ints(doff), ints(dlen)
        ddg = [x in ("1", "True") for x in ddg.split(",")] if ddg else []
        hpda.update(ints(hp))
        cpda.update(ints(cp))
        r2t += ints(r2tl)
        # A frame carries PDUs of one direction: from the host, CapsuleCmd and
        # H2CData; from the target, CapsuleResp, R2T and C2HData.
        ndata = sum(t in ("6", "7") for t in ty)
        if len(doff) != ndata or len(dlen) != ndata or len(plen) != len(ty) or len(pdo) != len(ty):
            odd.append(fr)
            continue
        data = list(zip(doff, dlen))
        (h2c if dport == str(port) else c2h).extend(data)
        if dport == str(port):
            # In-capsule data: from PDO to the end, less the data digest.
            for t, pl, po, dd in zip(ty, plen, pdo, ddg + [False] * len(ty)):
                if t == "4" and po:
                    icd.append(pl - po - (4 if dd else 0))
    if odd:
        ok = False
        rep.append(f"PDU fields that do not line up with the PDUs in frames {', '.join(odd[:10])}")
    rep.append(f"ICReq HPDA {sorted(hpda)} (Linux always asks 0), ICResp CPDA {sorted(cpda)}")
    # Writes: one R2T for a whole 1 MiB command, answered in H2CData PDUs of
    # at most MAXH2CDATA, the last of them ending the 1 MiB.
    big_r2t = sum(1 for x in r2t if x == BIG_MAX_IO)
    h2c_max = max((ln for _, ln in h2c), default=0)
    h2c_end = sum(1 for o, ln in h2c if o + ln == BIG_MAX_IO and o >= BIG_MAX_IO - BIG_H2C)
    if not big_r2t or h2c_max != BIG_H2C or not h2c_end or sum(r2t) != sum(ln for _, ln in h2c):
        ok = False
        rep.append(f"H2CData: {len(r2t)} R2Ts ({big_r2t} of {BIG_MAX_IO}), {len(h2c)} H2CData PDUs of at "
                   f"most {h2c_max} bytes ({h2c_end} end a {BIG_MAX_IO}-byte transfer), {sum(r2t)} bytes "
                   f"asked, {sum(ln for _, ln in h2c)} sent; want R2Ts of {BIG_MAX_IO} answered by "
                   f"H2CData of {BIG_H2C} (MAXH2CDATA), every byte asked sent")
    else:
        rep.append(f"H2CData: {big_r2t} R2Ts of {BIG_MAX_IO} bytes, each answered by "
                   f"{BIG_MAX_IO // BIG_H2C} H2CData PDUs of {BIG_H2C}; {len(r2t)} R2Ts, {len(h2c)} H2CData "
                   "in all, every byte asked sent")
    # Reads: 1 MiB comes back in C2HData PDUs of at most 128 KiB.
    c2h_max = max((ln for _, ln in c2h), default=0)
    c2h_end = sum(1 for o, ln in c2h if o + ln == BIG_MAX_IO and o > 0)
    if c2h_max > C2H_MAX or not c2h_end:
        ok = False
        rep.append(f"C2HData: {len(c2h)} PDUs of at most {c2h_max} bytes, {c2h_end} end a split "
                   f"{BIG_MAX_IO}-byte read; want reads of {BIG_MAX_IO} split into PDUs of at most {C2H_MAX}")
    else:
        rep.append(f"C2HData: {c2h_end} reads of {BIG_MAX_IO} bytes split into PDUs of at most {c2h_max}")
    # In-capsule writes up to the whole --in-capsule-data.
    icd_max = max(icd, default=0)
    if icd_max != BIG_ICD:
        ok = False
        rep.append(f"in-capsule data: at most {icd_max} bytes in a CapsuleCmd, want {BIG_ICD}")
    else:
        rep.append(f"in-capsule data: {len(icd)} CapsuleCmds with data, the largest {icd_max} bytes")
    digest_streams = sum(s["digests"] for s in streams.values())
    if digest_streams < 2:
        ok = False
        rep.append(f"{digest_streams} connections with header and data digests, want 2 (admin + I/O)")
    else:
        rep.append(f"{digest_streams} connections with header and data digests, all digests good")
    rep += failed_completions(base)
    return ok, rep


class Matrix:
    def __init__(self, binary, cells):
        self.src_binary = binary
        self.cells = cells
        self.work = tempfile.mkdtemp(prefix="nvmf-tpc-matrix.", dir="/tmp")
        self.targets = {}
        self.results = {}
        self.control = None
        self.captures = {}       # cell -> (port, pcap file, dumpcap log, dumpcap process)
        self.qemu = None
        self.data_dir = None
        self.boots = []

    # --- setup -------------------------------------------------------------
    def setup(self):
        subprocess.run([os.path.join(HERE, "setup.sh")], check=True)
        env = {}
        with open(os.path.join(CACHE, "current.env")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                env[k] = v.strip("'")
        self.kernel, self.initrd_base, self.kver = env["KERNEL"], env["INITRD_BASE"], env["KVER"]
        # A private copy: the original may be rebuilt during the run, and the
        # restart cells start the binary again.
        self.binary = os.path.join(self.work, "nvmf-tpc")
        shutil.copy2(self.src_binary, self.binary)
        # Data files on a disk file system (the target opens them O_DIRECT).
        if fs_type(self.work) in ("tmpfs", "ramfs"):
            self.data_dir = tempfile.mkdtemp(prefix="nvmf-tpc-matrix-data.", dir="/var/tmp")
        else:
            self.data_dir = os.path.join(self.work, "data")
            os.mkdir(self.data_dir)
        for name, size in FILES.items():
            subprocess.run(["truncate", "-s", str(size), os.path.join(self.data_dir, name)], check=True)
        log(f"data files in {self.data_dir} ({fs_type(self.data_dir)})")

    def start_targets(self):
        p = pick_ports(9)
        self.ports = dict(main=p[0], main2=p[1], qd64=p[2], qd16=p[3], restart=p[4], pcap=p[5],
                          big=p[6], big2=p[7], ctl=p[8])
        d = self.data_dir
        lst = lambda port: ["--listen", f"127.0.0.1:{port}"]
        specs = {
            "main": ([p[0], p[1]], lst(p[0]) + lst(p[1]) + [
                "--cores", "2",
                "--subsystem", NQN["main"], "--namespace", "ram:512M",
                "--subsystem", NQN["ns512"], "--namespace", "ram:64M,bs=512",
                "--subsystem", NQN["null"], "--namespace", "null:1G",
                "--subsystem", NQN["file"], "--namespace", f"{d}/file.img",
                "--subsystem", NQN["file512"], "--namespace", f"{d}/file512.img,bs=512",
                "--subsystem", NQN["multi"], "--namespace", "ram:64M", "--namespace", "null:64M",
                "--namespace", f"{d}/multi.img",
                "--subsystem", NQN["denied"], "--namespace", "ram:16M", "--allow-host", OTHER_HOST]),
            "qd64": ([p[2]], lst(p[2]) + ["--cores", "1", "--queue-depth", "64",
                                          "--subsystem", NQN["qd"], "--namespace", "ram:64M"]),
            "qd16": ([p[3]], lst(p[3]) + ["--cores", "1", "--queue-depth", "16",
                                          "--subsystem", NQN["qd"], "--namespace", "ram:64M"]),
            "restart": ([p[4]], lst(p[4]) + ["--cores", "2", "--subsystem", NQN["restart"],
                                             "--namespace", f"{d}/restart.img"]),
            "pcap": ([p[5]], lst(p[5]) + ["--cores", "2", "--subsystem", NQN["pcap"],
                                          "--namespace", "ram:64M"]),
            # Its first listener is captured (large_io's wire checks), the
            # second carries the bulk of the cell's I/O, uncaptured.
            "big": ([p[6], p[7]], lst(p[6]) + lst(p[7]) + [
                "--cores", "2", "--max-io-size", f"{BIG_MAX_IO // KiB}K",
                "--max-h2c-data", f"{BIG_H2C // KiB}K", "--in-capsule-data", f"{BIG_ICD // KiB}K",
                "--subsystem", NQN["big"], "--namespace", "ram:128M", "--namespace", f"{d}/big.img"]),
        }
        for name, (ports, args) in specs.items():
            t = Target(name, self.binary, ports, args, os.path.join(self.work, f"target-{name}.log"))
            self.targets[name] = t
            ok, msg = t.start()
            log(f"target {name} on {','.join(map(str, ports))}: {msg}")
            if not ok:
                with open(t.logpath) as f:
                    sys.stdout.write(f.read()[-3000:])
                die(f"target {name} did not start")
        self.control = Control(self.ports["ctl"], self.targets, os.path.join(self.work, "control.log"),
                               self.on_mark)
        threading.Thread(target=self.control.serve_forever, daemon=True).start()
        log(f"control channel on 127.0.0.1:{self.ports['ctl']}")

    def on_mark(self, kind, name):
        """The guest's "mark begin|end CELL" (sent before CELL-BEGIN is printed
        and before CELL-END is): cuts the target logs exactly, whereas the
        console can lag seconds behind when the kernel logs a lot."""
        r = self.results.get(name)
        if r is None:
            return
        if kind == "begin":
            r.log_from = {k: t.log_size() for k, t in self.targets.items()}
            r.marked = True
        for k in r.targets:
            self.targets[k]._note(f"cell {name} {'begins' if kind == 'begin' else 'ends'}")
        if kind == "end":
            r.log_to = {k: t.log_size() for k, t in self.targets.items()}

    def start_capture(self, cell, port):
        """Captures tcp port `port` on lo for `cell`, into <cell>.pcapng."""
        pcap = os.path.join(self.work, f"{cell}.pcapng")
        errlog = open(os.path.join(self.work, f"dumpcap-{cell}.log"), "w")
        proc = subprocess.Popen(
            ["dumpcap", "-q", "-i", "lo", "-B", "64", "-f", f"tcp port {port}", "-w", pcap],
            stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
        self.captures[cell] = (port, pcap, errlog.name, proc)
        for _ in range(100):
            if proc.poll() is not None:
                break
            with open(errlog.name) as f:
                if "Capturing on" in f.read():
                    log(f"capturing tcp port {port} on lo into {pcap}")
                    return
            time.sleep(0.1)
        log(f"WARNING: dumpcap did not start: {open(errlog.name).read().strip()}")

    def stop_capture(self):
        for _, _, _, proc in self.captures.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    # --- the VM --------------------------------------------------------------
    def initrd(self, cells, n):
        ov = os.path.join(self.work, "overlay")
        shutil.rmtree(ov, ignore_errors=True)
        os.makedirs(os.path.join(ov, "etc"))
        shutil.copy(os.path.join(HERE, "init.sh"), os.path.join(ov, "init"))
        shutil.copy(os.path.join(HERE, "guest-matrix.sh"), os.path.join(ov, "test.sh"))
        os.chmod(os.path.join(ov, "init"), 0o755)
        os.chmod(os.path.join(ov, "test.sh"), 0o755)
        allowed = " ".join(NQN[k] for k in ("main", "ns512", "null", "file", "file512", "multi"))
        env = {
            "MODE": "matrix", "TARGET": "10.0.2.2", "CTL_PORT": self.ports["ctl"],
            "MAIN_PORT": self.ports["main"], "MAIN_PORT2": self.ports["main2"],
            "QD64_PORT": self.ports["qd64"], "QD16_PORT": self.ports["qd16"],
            "RESTART_PORT": self.ports["restart"], "PCAP_PORT": self.ports["pcap"],
            "BIG_PORT": self.ports["big"], "BIG_PORT2": self.ports["big2"], "NQN_BIG": NQN["big"],
            "BIG_MAX_IO": BIG_MAX_IO, "BIG_H2C": BIG_H2C, "BIG_ICD": BIG_ICD,
            "BIG_FILE_BYTES": FILES["big.img"],
            "NQN_PREFIX": PREFIX, "NQN_MAIN": NQN["main"], "NQN_512": NQN["ns512"],
            "NQN_NULL": NQN["null"], "NQN_FILE": NQN["file"], "NQN_FILE512": NQN["file512"],
            "NQN_MULTI": NQN["multi"], "NQN_DENIED": NQN["denied"], "NQN_QD": NQN["qd"],
            "NQN_RESTART": NQN["restart"], "NQN_PCAP": NQN["pcap"],
            "ALLOWED_NQNS": allowed, "MAIN_NS_BYTES": 512 * MiB, "MAX_IO_BYTES": 128 * 1024,
            "FILE_NS_BYTES": FILES["file.img"], "MULTI_FILE_BYTES": FILES["multi.img"],
            "CELLS": " ".join(f"{c}:{self.limit[c]}" for c in cells),
        }
        with open(os.path.join(ov, "etc", "interop.env"), "w") as f:
            for k, v in env.items():
                f.write(f"{k}='{v}'\n")
        img = os.path.join(self.work, "initrd.img")
        with open(img, "wb") as out:
            with open(self.initrd_base, "rb") as b:
                shutil.copyfileobj(b, out)
            out.flush()
            p1 = subprocess.Popen("find . -mindepth 1 | cpio -o -H newc --quiet -R 0:0 | gzip -1",
                                  shell=True, cwd=ov, stdout=out)
            if p1.wait() != 0:
                die("packing the initramfs overlay failed")
        return img

    def boot(self, cells, n):
        """Boots one VM running `cells`; returns (cells started, console tail)."""
        img = self.initrd(cells, n)
        serial = os.path.join(self.work, f"serial-{n}.log")
        open(serial, "w").close()
        limit = sum(self.limit[c] for c in cells) + 120
        # TCG (KVM does not boot a stock kernel here). 4 vCPUs of which 2 come
        # up (maxcpus=2): queues_8 brings the other two online. User-mode
        # network: 10.0.2.2 is this machine's 127.0.0.1; the guest has no
        # default route, so it can reach nothing else.
        cmd = ["timeout", "--kill-after=10", str(limit), "qemu-system-x86_64",
               "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
               "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "4", "-m", "1024",
               "-kernel", self.kernel, "-initrd", img,
               "-append", "console=ttyS0 panic=-1 quiet maxcpus=2",
               "-serial", f"file:{serial}",
               "-netdev", "user,id=n0,ipv6=off", "-device", "virtio-net-pci,netdev=n0,romfile="]
        log(f"boot {n}: {len(cells)} cells, {self.kver} under QEMU/TCG (limit {limit}s)")
        t0 = time.time()
        with open(os.path.join(self.work, f"qemu-{n}.log"), "w") as ql:
            self.qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=ql, stderr=subprocess.STDOUT)
        started = []
        cur = None
        cur_t0 = t0          # host time the current cell (or the boot) began
        killed = ""
        pos = 0
        partial = b""
        all_lines = []
        begin_re = re.compile(r"CELL-BEGIN (\S+)")
        end_re = re.compile(r"CELL-END (\S+) (PASS|FAIL|TIMEOUT) ([0-9.]+)")
        while True:
            running = self.qemu.poll() is None
            with open(serial, "rb") as f:
                f.seek(pos)
                data = f.read()
            pos += len(data)
            chunks = (partial + data).split(b"\n")
            partial = chunks.pop()
            for raw in chunks:
                line = raw.decode(errors="replace").rstrip("\r")
                all_lines.append(line)
                if not QUIET:
                    with _print_lock:
                        print(line, flush=True)
                m = begin_re.search(line)
                if m and m.group(1) in self.results:
                    cur = self.results[m.group(1)]
                    cur.vm = n
                    cur.status = "RUNNING"
                    cur_t0 = time.time()
                    if not cur.marked:
                        cur.log_from = {k: t.log_size() for k, t in self.targets.items()}
                    started.append(cur.name)
                    continue
                m = end_re.search(line)
                if m and m.group(1) in self.results:
                    r = self.results[m.group(1)]
                    r.verdict(m.group(2), float(m.group(3)))
                    if not r.log_to:
                        r.log_to = {k: t.log_size() for k, t in self.targets.items()}
                    if r is cur:
                        cur.lines.append(line)
                    cur = None
                    cur_t0 = time.time()
                    continue
                if cur is not None:
                    cur.lines.append(line)
            if not running:
                if partial:
                    all_lines.append(partial.decode(errors="replace"))
                break
            # The host's own watchdog, for a guest whose watchdog cannot act
            # (a hung kernel): a cell's limit plus a margin (the console may
            # lag), 150 s for the boot, 90 s between cells.
            allowed = (self.limit[cur.name] + 60) if cur else (150 if not started else 90)
            if not killed and time.time() - cur_t0 > allowed:
                killed = (f"the host stopped the VM: no progress for {allowed}s "
                          f"({'in ' + cur.name if cur else 'outside a cell'})")
                log(killed)
                self.qemu.terminate()
            time.sleep(0.2)
        rc = self.qemu.returncode
        self.qemu = None
        secs = time.time() - t0
        boot_s = next((m.group(1) for m in (re.search(r"GUEST: init at ([0-9.]+)s", l) for l in all_lines) if m), "?")
        self.boots.append((n, len(cells), secs, boot_s, rc))
        log(f"boot {n}: VM ran {secs:.0f}s (qemu exit {rc}; /init at {boot_s}s of guest uptime)")
        if cur is not None and cur.status == "RUNNING":
            cur.status = "FAIL"
            cur.log_to = {k: t.log_size() for k, t in self.targets.items()}
            reason = "the VM ended during the cell" if rc == 0 else f"the VM ended during the cell (qemu exit {rc})"
            cur.notes.append(killed or reason)
        return started, all_lines

    # --- the run -----------------------------------------------------------------
    def run(self):
        t0 = time.time()
        self.limit = {name: secs for name, secs, _, _ in CELLS}
        # INTEROP_LIMITS="cell=seconds,...": other time limits (for debugging).
        for kv in re.split(r"[,\s]+", os.environ.get("INTEROP_LIMITS", "").strip()):
            if "=" in kv:
                k, v = kv.split("=", 1)
                if k not in self.limit:
                    die(f"INTEROP_LIMITS: unknown cell {k}")
                self.limit[k] = int(v)
        for name, secs, tg, what in CELLS:
            if name in self.cells:
                self.results[name] = CellResult(name, what, tg)
        self.setup()
        self.start_targets()
        for cell, port in (("pcap", "pcap"), ("large_io", "big")):
            if cell in self.results:
                self.start_capture(cell, self.ports[port])
        pending = [c for c in self.cells if c in self.results]
        n = 0
        while pending and n < MAX_BOOTS:
            n += 1
            started, lines = self.boot(pending, n)
            if not started:
                for c in pending:
                    r = self.results[c]
                    r.status = "FAIL"
                    r.notes.append(f"boot {n} ran no cell; console tail:\n" + "\n".join(lines[-40:]))
                pending = []
                break
            for c in started:
                self.retry_after_stall(self.results[c], n)
            pending = [c for c in pending if self.results[c].status == "NOT RUN"]
            if pending:
                log(f"boot {n} ended early; {len(pending)} cells left: {' '.join(pending)}")
        for c in pending:
            self.results[c].notes.append(f"not run: {MAX_BOOTS} boots used")
            self.results[c].status = "FAIL"
        self.stop_capture()
        for cell, analyze in (("pcap", analyze_pcap), ("large_io", analyze_large)):
            if cell not in self.captures:
                continue
            r = self.results[cell]
            ts = time.time()
            port, pcap, errlog, _ = self.captures[cell]
            ok, rep = analyze(pcap, port, errlog)
            r.notes += ["tshark: " + x for x in rep]
            for x in rep:
                log(f"{cell}: {x}")
            if r.status == "PASS" and not ok:
                r.status = "FAIL"
            if r.secs is not None:
                r.secs += time.time() - ts
        self.host_cells()
        self.report(time.time() - t0)
        return all(r.status == "PASS" for r in self.results.values())

    def retry_after_stall(self, r, n):
        """A cell the VM died in because the guest kernel stalled (a soft
        lockup or an RCU stall on the console: under TCG a vCPU can stop
        answering IPIs and timers) runs once more in a fresh boot. Only once,
        and only when the kernel itself reported the stall: a second stall, or
        a cell that failed any other way, stays a failure. The report keeps
        the first try's console."""
        if r.status == "PASS" or r.stalled is not None:
            return
        stall = next((l for l in r.lines if STALL_RE.search(l)), None)
        if stall is None:
            return
        r.stalled = (f"boot {n}: the guest kernel stalled in this cell ({stall.strip()}); "
                     f"it ran again in a fresh boot. First try's console, last 40 lines:\n"
                     + "\n".join(r.lines[-40:]))
        log(f"{r.name}: the guest kernel stalled in boot {n}; the cell runs again in a fresh boot")
        r.status, r.secs, r.lines, r.notes, r.vm = "NOT RUN", None, [], [], None
        r.log_from, r.log_to, r.marked = {}, {}, False
        if r.name in self.captures:
            # The capture is judged whole: it starts again with the cell.
            port, _, _, proc = self.captures.pop(r.name)
            proc.terminate()
            proc.wait(timeout=10)
            self.start_capture(r.name, port)

    def host_cells(self):
        for name, tg, what in HOST_CELLS:
            r = CellResult(name, what, tg)
            ts = time.time()
            r.log_from = {k: 0 for k in self.targets}
            problems = []
            for k in tg:
                t = self.targets[k]
                # The restart cells judge the restarted target themselves.
                if k != "restart" and not t.alive():
                    problems.append(f"target {k} is not running (exit {t.proc.returncode})")
                with open(t.logpath, errors="replace") as f:
                    text = f.read()
                if "panicked" in text:
                    problems.append(f"target {k} panicked: " +
                                    next(l for l in text.splitlines() if "panicked" in l))
            r.notes += problems
            r.status = "FAIL" if problems else "PASS"
            r.secs = time.time() - ts
            r.log_to = {k: t.log_size() for k, t in self.targets.items()}
            self.results[name] = r

    def target_slice(self, r, k, nlines=60):
        t = self.targets[k]
        a, b = r.log_from.get(k, 0), r.log_to.get(k, t.log_size())
        with open(t.logpath, "rb") as f:
            f.seek(a)
            text = f.read(max(0, b - a)).decode(errors="replace")
        lines = text.splitlines()
        return lines[-nlines:], len(lines)

    def report(self, total):
        failed = [r for r in self.results.values() if r.status != "PASS"]
        for r in failed:
            print()
            print(f"===== FAIL: {r.name} ({r.what}) =====")
            for note in r.notes:
                print(f"  {note}")
            if r.lines:
                print(f"----- guest console during {r.name} (boot {r.vm}, last 80 lines) -----")
                print("\n".join(r.lines[-80:]))
            for k in r.targets:
                lines, n = self.target_slice(r, k)
                print(f"----- target {k} log during {r.name} ({n} lines, last {len(lines)}): "
                      f"{self.targets[k].logpath} -----")
                print("\n".join(lines))
        print()
        print(f"{'cell':<24}{'result':<9}{'seconds':>8}  what")
        print("-" * 100)
        for name in [c for c, *_ in CELLS] + [c for c, *_ in HOST_CELLS]:
            r = self.results.get(name)
            if r is None:
                continue
            secs = f"{r.secs:.1f}" if r.secs is not None else "-"
            status = r.status + ("*" if r.stalled else "")
            print(f"{r.name:<24}{status:<9}{secs:>8}  {r.what}")
        print("-" * 100)
        boots = ", ".join(f"boot {n}: {c} cells in {s:.0f}s" for n, c, s, _, _ in self.boots)
        npass = sum(r.status == "PASS" for r in self.results.values())
        for r in (r for r in self.results.values() if r.stalled):
            print(f"* {r.name}, {r.stalled}")
        print(f"{npass}/{len(self.results)} cells passed in {total:.0f}s ({boots}); logs in {self.work}")

    def cleanup(self):
        if self.qemu and self.qemu.poll() is None:
            self.qemu.terminate()
            try:
                self.qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
        self.stop_capture()
        if self.control:
            self.control.shutdown()
            self.control.server_close()
        for t in self.targets.values():
            t.stop()
        for f in ("initrd.img",):
            p = os.path.join(self.work, f)
            if os.path.exists(p):
                os.remove(p)
        shutil.rmtree(os.path.join(self.work, "overlay"), ignore_errors=True)
        if os.path.exists(os.path.join(self.work, "nvmf-tpc")):
            os.remove(os.path.join(self.work, "nvmf-tpc"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", nargs="?", default=os.path.join(REPO, "target/release/nvmf-tpc"))
    ap.add_argument("--cells", default=os.environ.get("INTEROP_CELLS", ""),
                    help="comma-separated cells to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the cells and exit")
    a = ap.parse_args()
    if a.list:
        for name, secs, tg, what in CELLS:
            print(f"{name:<24}{','.join(tg) or '-':<14}{what}")
        for name, tg, what in HOST_CELLS:
            print(f"{name:<24}{'(host)':<14}{what}")
        return 0
    names = [c for c, *_ in CELLS]
    cells = names
    if a.cells:
        cells = [c for c in re.split(r"[,\s]+", a.cells) if c]
        bad = [c for c in cells if c not in names]
        if bad:
            die(f"unknown cells: {' '.join(bad)} (see --list)")
        cells = [c for c in names if c in cells]
    if os.geteuid() != 0:
        die("must run as root (setup.sh installs packages; dumpcap captures on lo)")
    if not os.access(a.binary, os.X_OK):
        die(f"no target binary at {a.binary} (cargo build --release first, or pass its path)")
    m = Matrix(os.path.abspath(a.binary), cells)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = False
    try:
        ok = m.run()
    except KeyboardInterrupt:
        print("interop: interrupted", file=sys.stderr)
    finally:
        m.cleanup()
        if os.environ.get("INTEROP_KEEP") != "1":
            if m.data_dir:
                shutil.rmtree(m.data_dir, ignore_errors=True)
            for _, pcap, _, _ in m.captures.values():
                if ok and os.path.exists(pcap):
                    os.remove(pcap)
    print(f"interop: {'PASS' if ok else 'FAIL'} (logs in {m.work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
