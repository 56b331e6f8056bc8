#!/usr/bin/env python3
"""Turns the JSON written by `nvmf-tpc perf --json` into markdown tables and
SVG plots (standard library only; the SVG is written by hand).

  report.py latency --out PREFIX [--title T] [--note N] [--ns 1=RAM ...]
                    [--ceiling CEILING.json --cc NAME] FILE.json...
      PREFIX.md, PREFIX-percentiles.svg, PREFIX-histograms.svg
  report.py scaling --out PREFIX [--title T] [--note N] CORES=FILE.json...
      PREFIX.md, PREFIX.svg
  report.py compare --out PREFIX --a NAME --b NAME [--spdk FILE.tsv]
                    --pair LABEL A.json B.json ...
      PREFIX.md, PREFIX.svg

Each command also prints its table (and, for latency, the histograms) to stdout.
"""

import argparse
import html
import json
import math
import os
import sys

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


# ---------------------------------------------------------------- helpers


def load(path):
    with open(path) as f:
        return json.load(f)


def human_bytes(n):
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


def rw_words(cfg):
    return {
        "read": "seq read",
        "write": "seq write",
        "randread": "rand read",
        "randwrite": "rand write",
        "randrw": f"rand {cfg['mix']}/{100 - cfg['mix']} r/w",
    }[cfg["rw"]]


def workload(cfg):
    return f"{human_bytes(cfg['bs'])} {rw_words(cfg)} QD{cfg['qd']}"


def workload_queues(cfg):
    """The workload, with the queue count when there are several."""
    queues = cfg.get("queues", 1)
    return workload(cfg) + (f" x {queues} queues" if queues > 1 else "")


def grouped(v):
    return f"{round(v):,}"


def num(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def trim(v):
    return f"{v:.0f}" if v >= 100 or v == int(v) else f"{v:.1f}"


def text_histogram(rows, width=40):
    """The same rows `nvmf-tpc perf` prints: one per power of two of µs."""
    total = sum(r["count"] for r in rows)
    top = max((r["count"] for r in rows), default=0)
    if total == 0:
        return "    (no I/O recorded)\n"
    labels = [
        "< 1 µs" if r["from_us"] == 0 else f"{trim(r['from_us'])}-{trim(r['to_us'])} µs"
        for r in rows
    ]
    lw = max(len(label) for label in labels)
    out = []
    for r, label in zip(rows, labels):
        bar = -(-r["count"] * width // top) if r["count"] else 0
        pct = r["count"] * 100.0 / total
        pct_s = "<0.01%" if r["count"] and pct < 0.01 else f"{pct:.2f}%"
        out.append(f"    {label:>{lw}} | {'#' * bar:<{width}} {pct_s:>7}  ({r['count']:,})")
    return "\n".join(out) + "\n"


def md_table(header, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class Svg:
    """Just enough SVG: lines, rectangles, text, markers."""

    def __init__(self, width, height):
        self.w, self.h, self.items = width, height, []
        self.rect(0, 0, width, height, "#ffffff")

    def line(self, x1, y1, x2, y2, stroke="#999", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}" stroke-width="{width}"{d}/>'
        )

    def rect(self, x, y, w, h, fill, title=None):
        t = f"<title>{html.escape(title)}</title>" if title else ""
        self.items.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
            f'fill="{fill}">{t}</rect>'
        )

    def text(self, x, y, s, size=12, anchor="start", fill="#222", weight="normal"):
        self.items.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}" font-weight="{weight}">{html.escape(str(s))}</text>'
        )

    def marker(self, shape, x, y, color, r=5, title=None):
        t = f"<title>{html.escape(title)}</title>" if title else ""
        if shape == "circle":
            self.items.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}">{t}</circle>')
            return
        if shape == "square":
            pts = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
        elif shape == "triangle":
            pts = [(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)]
        else:  # diamond
            pts = [(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)]
        p = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        self.items.append(f'<polygon points="{p}" fill="{color}">{t}</polygon>')

    def save(self, path):
        with open(path, "w") as f:
            f.write(
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="sans-serif">\n'
            )
            f.write("\n".join(self.items))
            f.write("\n</svg>\n")


class LogAxis:
    """Maps values in [lo, hi] (powers of ten) to [x0, x1] on a log scale."""

    def __init__(self, values, x0, x1):
        vals = [v for v in values if v and v > 0]
        lo = min(vals) if vals else 1
        hi = max(vals) if vals else 10
        self.lo = 10 ** math.floor(math.log10(lo))
        self.hi = 10 ** math.ceil(math.log10(hi * 1.0001))
        if self.hi <= self.lo:
            self.hi = self.lo * 10
        self.x0, self.x1 = x0, x1

    def __call__(self, v):
        v = min(max(v, self.lo), self.hi)
        f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return self.x0 + f * (self.x1 - self.x0)

    def ticks(self):
        v = self.lo
        while v <= self.hi * 1.0001:
            yield v
            v *= 10

    @staticmethod
    def label(v):
        return f"{v / 1000:g} ms" if v >= 1000 else f"{v:g} µs"


def nice_step(raw):
    """The smallest 1, 2, 2.5 or 5 × 10^n at least `raw`."""
    if raw <= 0:
        return 1
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def note_lines(args):
    out = []
    if args.note:
        out.append(f"Machine: {args.note}\n\n")
    return out


# ---------------------------------------------------------------- latency


PCTS = [
    ("p50", "p50", "circle"),
    ("p90", "p90", "circle"),
    ("p99", "p99", "square"),
    ("p99_9", "p99.9", "triangle"),
    ("p99_99", "p99.99", "diamond"),
]


# perf-reference.md: SPDK v24.01 nvmf_tgt driven by spdk_nvme_perf, both
# polling, 2 vCPUs (AMD EPYC), loopback, median of three 10 s runs.
# (namespace, rw, block size, QD) -> (IOPS, MiB/s, p50 µs)
SPDK_REFERENCE = {
    ("RAM", "randread", 4096, 1): (94844, 370, 9.9),
    ("RAM", "randread", 4096, 32): (754791, 2948, 40.4),
    ("RAM", "randwrite", 4096, 32): (572837, 2238, 55.5),
    ("RAM", "read", 131072, 8): (51345, 6418, 130.8),
    ("null", "randread", 4096, 32): (1018129, 3977, 30.1),
}


def live_spdk_lines(runs, ns_names, live_files):
    """nvmf-tpc's RAM runs beside the same runs against SPDK's nvmf_tgt,
    measured in this sitting by the same client on the same CPUs."""
    live = {}
    for path in live_files:
        d = load(path)
        c = d["config"]
        live[(c["rw"], c["bs"], c["qd"], c.get("queues", 1), c.get("mix"))] = d
    rows = []
    for d in runs:
        c = d["config"]
        if ns_names.get(str(c["nsid"])) != "RAM":
            continue
        o = live.get((c["rw"], c["bs"], c["qd"], c.get("queues", 1), c.get("mix")))
        if not o:
            continue
        r, q = d["result"], o["result"]
        rows.append([d["label"], grouped(r["iops"]), grouped(q["iops"]),
                     f"**{r['iops'] / q['iops']:.2f}**", num(r["latency_us"]["p50"]),
                     num(q["latency_us"]["p50"]), num(r["latency_us"]["p99"]),
                     num(q["latency_us"]["p99"]), num(r.get("target_cpu_us_per_io"), 2),
                     num(q.get("target_cpu_us_per_io"), 2)])
    if not rows:
        return []
    header = ["workload", "nvmf-tpc IOPS", "SPDK IOPS", "ratio", "p50 µs ours", "p50 µs SPDK",
              "p99 µs ours", "p99 µs SPDK", "target CPU µs/IO ours", "SPDK"]
    return [
        "## Against SPDK, measured now\n\n",
        "SPDK v24.01 `nvmf_tgt` (`../shared/spdk/nvmf-tgt`, a 1 GiB RAM bdev) on the same target "
        "CPU, driven by the same `nvmf-tpc perf` runs right after nvmf-tpc's. One run each, not "
        "alternated pairs: `perf/peer.py` gives medians of alternated pairs with SPDK's own "
        "client. SPDK polls its core at 100% whatever the load.\n\n",
        md_table(header, rows), "\n",
    ]


def reference_lines(runs, ns_names):
    """The runs that perf-reference.md has a figure for, with the ratio."""
    rows = []
    for d in runs:
        c = d["config"]
        if c.get("queues", 1) != 1:
            continue
        key = (ns_names.get(str(c["nsid"])), c["rw"], c["bs"], c["qd"])
        ref = SPDK_REFERENCE.get(key)
        if not ref:
            continue
        r = d["result"]
        rows.append([d["label"], grouped(r["iops"]), grouped(ref[0]), f"{r['iops'] / ref[0]:.2f}",
                     num(r["latency_us"]["p50"]), num(ref[2])])
    if not rows:
        return []
    header = ["workload", "nvmf-tpc IOPS", "SPDK IOPS", "ratio", "nvmf-tpc p50 µs", "SPDK p50 µs"]
    return [
        "## Against a stored SPDK reference (only a reference)\n\n",
        "SPDK v24.01 `nvmf_tgt` driven by `spdk_nvme_perf`, both polling, measured on another day "
        "on 2 vCPUs of an AMD EPYC (perf-reference.md). Another CPU, another client, another "
        "hour of a noisy shared machine: these ratios say little about nvmf-tpc. SPDK's tools "
        "were not found (../shared/spdk or SPDK_DIR), so no live comparison ran.\n\n",
        md_table(header, rows), "\n",
    ]


def ceiling_lines(path, cc, runs, ns_names):
    """This machine's bare rates (perf/ceiling.rs), and the 128 KiB read
    against the bare 128 KiB stream of the same congestion control."""
    rates = load(path)["ceiling"]
    rows = [[x["name"], num(x["mib_per_s"], 0), grouped(x["blocks_per_s"]),
             f"{100 * x['sender_busy']:.0f}%"] for x in rates]
    out = [
        "## This machine's bare rates\n\n",
        "`perf/ceiling.rs`, no NVMe/TCP: one core copying out of a 1 GiB RAM region, and one core "
        "sending a 24-byte header plus a block of that region per iovec pair to a reader on the "
        "client's core, both polling non-blocking sockets. One way and always full, so a bound "
        "for large reads; for 4 KiB blocks it is no bound under BBR, which paces a saturated "
        "stream below what request-driven traffic reaches.\n\n",
        md_table(["measurement", "MiB/s", "blocks/s", "sender core busy"], rows), "\n",
    ]
    stream = next((x for x in rates if x["kind"] == "stream" and x["block"] == 131072
                   and x["cc"] == cc), None)
    for d in runs:
        c = d["config"]
        if stream and c["rw"] == "read" and c["bs"] == 131072 and \
                ns_names.get(str(c["nsid"])) == "RAM" and c.get("queues", 1) == 1:
            mib = d["result"]["mib_s"]
            out.append(f"{d['label']}: {mib:,.0f} MiB/s = **{mib / stream['mib_per_s']:.2f}** of the "
                       f"bare 128 KiB stream with {cc} ({stream['mib_per_s']:,.0f} MiB/s).\n\n")
    return out


def latency(args):
    ns_names = dict(s.split("=", 1) for s in args.ns)
    runs, idle = [], None
    for path in args.files:
        d = load(path)
        if d.get("mode") == "idle":
            idle = d
            continue
        c = d["config"]
        d["label"] = f"{ns_names.get(str(c['nsid']), 'ns ' + str(c['nsid']))}, {workload_queues(c)}"
        runs.append(d)

    header = ["namespace, workload", "IOPS", "MiB/s", "p50 µs", "p99 µs", "p99.9 µs",
              "target CPU µs/IO", "client CPU µs/IO", "errors"]
    rows = []
    for d in runs:
        r = d["result"]
        lat = r["latency_us"]
        rows.append([
            d["label"], grouped(r["iops"]), num(r["mib_s"]), num(lat["p50"]), num(lat["p99"]),
            num(lat["p99_9"]), num(r.get("target_cpu_us_per_io"), 2),
            num(r.get("client_cpu_us_per_io"), 2),
            r["errors"] if d.get("ok", True) else f"{r['errors']} (FAILED)",
        ])
    table = md_table(header, rows)
    idle_line = ""
    if idle:
        ir = idle["result"]
        pct = ir.get("target_cpu_pct")
        idle_line = (
            f"Idle: with {ir['controllers']} controller(s) and {ir['io_queues_per_controller']} "
            f"I/O queue(s) each connected and no I/O for {ir['seconds']:.1f} s, the target used "
            + (f"**{pct:.2f}% of one core**" if pct is not None else "an unmeasured share of a core")
            + " (utime+stime from /proc/PID/stat, 10 ms ticks).\n"
        )

    base = os.path.basename(args.out)
    percentiles_svg = args.out + "-percentiles.svg"
    histograms_svg = args.out + "-histograms.svg"
    plot_percentiles(runs, percentiles_svg, args.title)
    plot_histograms(runs, histograms_svg, args.title)

    md = [f"# {args.title}\n\n"] + note_lines(args)
    md.append(
        "Each run: `nvmf-tpc perf` (host library, one pinned client core) against `nvmf-tpc serve` "
        "(one pinned core), loopback TCP. Latency percentiles from the merged histogram (≤0.8% "
        "bucket error); CPU per I/O is user+sys time over the measured window divided by I/Os "
        "(both sides poll while traffic flows, so at full load it is about 1 / IOPS).\n\n"
    )
    md += [table, "\n", idle_line, "\n"]
    if args.spdk_live:
        extra = live_spdk_lines(runs, ns_names, args.spdk_live)
    else:
        extra = reference_lines(runs, ns_names)
    if args.ceiling:
        extra += ceiling_lines(args.ceiling, args.cc, runs, ns_names)
    md += extra
    md += [
           f"![latency percentiles]({os.path.basename(percentiles_svg)})\n\n",
           f"![latency histograms]({os.path.basename(histograms_svg)})\n\n",
           "## Histograms\n\n"]
    for d in runs:
        md.append(f"### {d['label']}\n\n```\n{text_histogram(d['result']['histogram'])}```\n\n")
    with open(args.out + ".md", "w") as f:
        f.write("".join(md))

    print()
    print(table)
    if idle_line:
        print(idle_line)
    for d in runs:
        print(f"{d['label']}:")
        print(text_histogram(d["result"]["histogram"]))
    print("".join(extra))
    print(f"written: {args.out}.md, {base}-percentiles.svg, {base}-histograms.svg")


def plot_percentiles(runs, path, title):
    left, right, top, row_h = 250, 40, 70, 28
    width = 980
    height = top + row_h * max(len(runs), 1) + 60
    s = Svg(width, height)
    s.text(width / 2, 24, title, 15, "middle", weight="bold")
    s.text(width / 2, 44, "latency percentiles per workload (log scale)", 12, "middle", "#555")
    values = [d["result"]["latency_us"][k] for d in runs for k, _, _ in PCTS]
    ax = LogAxis(values, left, width - right)
    bottom = top + row_h * len(runs)
    for t in ax.ticks():
        x = ax(t)
        s.line(x, top - 8, x, bottom, "#ddd")
        s.text(x, bottom + 16, LogAxis.label(t), 11, "middle", "#555")
        for m in (2, 5):
            if t * m < ax.hi:
                s.line(ax(t * m), top - 8, ax(t * m), bottom, "#f0f0f0")
    for i, d in enumerate(runs):
        y = top + row_h * i + row_h / 2
        lat = d["result"]["latency_us"]
        s.text(left - 10, y + 4, d["label"], 12, "end")
        s.line(ax(lat["min"] or lat["p50"]), y, ax(lat["max"]), y, "#bbb", 2)
        for j, (k, name, shape) in enumerate(PCTS):
            s.marker(shape, ax(lat[k]), y, COLORS[j], 5, f"{name}: {lat[k]:.1f} µs")
    # Legend.
    x = left
    for j, (_, name, shape) in enumerate(PCTS):
        s.marker(shape, x, height - 22, COLORS[j])
        s.text(x + 10, height - 18, name, 12)
        x += 80
    s.line(x, height - 22, x + 24, height - 22, "#bbb", 2)
    s.text(x + 30, height - 18, "min to max", 12)
    s.save(path)


def plot_histograms(runs, path, title):
    cols = 2
    pw, ph = 460, 130
    top = 60
    nrows = max(1, math.ceil(len(runs) / cols))
    width = cols * pw + 40
    height = top + nrows * (ph + 50) + 10
    s = Svg(width, height)
    s.text(width / 2, 24, title, 15, "middle", weight="bold")
    s.text(width / 2, 44, "latency histograms: % of I/Os per 1/8 octave (log scale, up to p99.99)", 12, "middle", "#555")
    # From the fastest I/O to the slowest p99.99: the few slower ones would
    # squeeze every distribution into a corner.
    vals = []
    for d in runs:
        lat = d["result"]["latency_us"]
        vals += [max(lat["min"], 0.5), lat["p99_99"] * 1.2]
    for i, d in enumerate(runs):
        cx = 30 + (i % cols) * pw
        cy = top + (i // cols) * (ph + 50)
        ax = LogAxis(vals, cx + 10, cx + pw - 30)
        base = cy + ph
        s.text(cx + 10, cy + 12, d["label"], 12, weight="bold")
        s.line(cx + 10, base, cx + pw - 30, base, "#999")
        rows = d["result"]["histogram_fine"]
        peak = max((r["percent"] for r in rows), default=0) or 1
        for r in rows:
            if not r["count"] or r["from_us"] >= ax.hi:
                continue
            x0, x1 = ax(max(r["from_us"], ax.lo)), ax(r["to_us"])
            h = (ph - 25) * r["percent"] / peak
            s.rect(x0, base - h, max(x1 - x0 - 0.5, 0.8), h, COLORS[0],
                   f"{r['from_us']:.1f}-{r['to_us']:.1f} µs: {r['percent']:.3f}%")
        for t in ax.ticks():
            s.line(ax(t), base, ax(t), base + 4, "#999")
            s.text(ax(t), base + 16, LogAxis.label(t), 10, "middle", "#555")
        lat = d["result"]["latency_us"]
        xp = ax(lat["p99"])
        s.line(xp, cy + 18, xp, base, COLORS[3], 1, "3,2")
        if xp > cx + pw - 110:
            s.text(xp - 3, cy + 28, f"p99 {lat['p99']:.0f} µs", 10, "end", COLORS[3])
        else:
            s.text(xp + 3, cy + 28, f"p99 {lat['p99']:.0f} µs", 10, fill=COLORS[3])
        s.text(cx + pw - 30, cy + 12, f"peak {peak:.1f}%", 10, "end", "#555")
    s.save(path)


# ---------------------------------------------------------------- scaling


def scaling(args):
    runs = []
    for spec in args.files:
        k, path = spec.split("=", 1)
        runs.append((int(k), load(path)))
    runs.sort()
    base = next((d["result"]["iops"] / k for k, d in runs if k == 1), None)
    header = ["target cores", "IOPS", "IOPS per core", "scaling efficiency", "MiB/s",
              "p50 µs", "p99 µs", "target CPU µs/IO", "client CPU µs/IO"]
    rows = []
    for k, d in runs:
        r = d["result"]
        eff = f"{100 * r['iops'] / (k * base):.0f}%" if base else "–"
        rows.append([k, grouped(r["iops"]), grouped(r["iops"] / k), eff, num(r["mib_s"]),
                     num(r["latency_us"]["p50"]), num(r["latency_us"]["p99"]),
                     num(r.get("target_cpu_us_per_io"), 2), num(r.get("client_cpu_us_per_io"), 2)])
    table = md_table(header, rows)
    svg = args.out + ".svg"
    plot_scaling(runs, base, svg, args.title)
    cfg = runs[0][1]["config"] if runs else {}
    md = [f"# {args.title}\n\n"] + note_lines(args)
    if cfg:
        md.append(
            f"Load: {workload(cfg)} per queue, {cfg['queues']} queue(s) on each of {cfg['cores']} "
            f"client core(s) (CPU {','.join(map(str, cfg['cpus']))}); the target serves on CPU 0..k-1. "
            "Efficiency = IOPS(k) / (k × IOPS(1)). Client and target share the CPUs when k reaches "
            "the machine's CPU count, so efficiency here is a floor.\n\n"
        )
    md += [table, "\n", f"![scaling]({os.path.basename(svg)})\n"]
    with open(args.out + ".md", "w") as f:
        f.write("".join(md))
    print()
    print(table)
    print(f"written: {args.out}.md, {os.path.basename(svg)}")


def plot_scaling(runs, base, path, title):
    width, height = 640, 380
    left, right, top, bottom = 90, 30, 60, 60
    s = Svg(width, height)
    s.text(width / 2, 24, title, 14, "middle", weight="bold")
    s.text(width / 2, 44, "IOPS by target cores (bars), linear scaling from 1 core (dashed)", 12, "middle", "#555")
    if not runs:
        s.save(path)
        return
    kmax = max(k for k, _ in runs)
    step = nice_step(max([d["result"]["iops"] for _, d in runs] + [(base or 0) * kmax]) * 1.05 / 4)
    ymax = step * 4
    plot_h = height - top - bottom
    slot = (width - left - right) / len(runs)

    def y(v):
        return top + plot_h * (1 - v / ymax)

    for i in range(5):
        v = step * i
        s.line(left, y(v), width - right, y(v), "#eee")
        s.text(left - 8, y(v) + 4, f"{v / 1000:,.0f}k", 11, "end", "#555")
    for i, (k, d) in enumerate(runs):
        x = left + slot * i + slot * 0.2
        v = d["result"]["iops"]
        s.rect(x, y(v), slot * 0.6, y(0) - y(v), COLORS[0], f"{k} cores: {v:,.0f} IOPS")
        s.text(x + slot * 0.3, y(v) - 6, f"{v / 1000:,.0f}k", 11, "middle")
        s.text(x + slot * 0.3, height - bottom + 18, f"{k} core{'s' if k > 1 else ''}", 12, "middle")
        if base:
            s.line(x - 4, y(base * k), x + slot * 0.6 + 4, y(base * k), COLORS[3], 2, "5,3")
    s.save(path)


# ---------------------------------------------------------------- compare


def compare(args):
    header = ["workload", f"{args.a} IOPS", f"{args.b} IOPS", "IOPS ratio",
              f"{args.a} p50 µs", f"{args.b} p50 µs", f"{args.a} p99 µs", f"{args.b} p99 µs",
              "p99 ratio", f"{args.a} target µs/IO", f"{args.b} target µs/IO"]
    rows, pairs = [], []
    for label, pa, pb in args.pair:
        a = load(pa) if os.path.exists(pa) else None
        b = load(pb) if os.path.exists(pb) else None
        if a or b:
            label = workload_queues((a or b)["config"])
        pairs.append((label, a, b))

        def g(d, *keys):
            v = d["result"] if d else None
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            return v

        ia, ib = g(a, "iops"), g(b, "iops")
        la, lb = g(a, "latency_us", "p99"), g(b, "latency_us", "p99")
        rows.append([
            label, grouped(ia) if ia else "–", grouped(ib) if ib else "–",
            f"{ia / ib:.2f}×" if ia and ib else "–",
            num(g(a, "latency_us", "p50")), num(g(b, "latency_us", "p50")), num(la), num(lb),
            f"{la / lb:.2f}×" if la and lb else "–",
            num(g(a, "target_cpu_us_per_io"), 2), num(g(b, "target_cpu_us_per_io"), 2),
        ])
    table = md_table(header, rows)
    spdk_table = ""
    if args.spdk and os.path.exists(args.spdk):
        srows = []
        with open(args.spdk) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 4:
                    srows.append(parts[:4])
        if srows:
            spdk_table = "\n### spdk_nvme_perf as a second client\n\n" + md_table(
                ["workload", "target", "IOPS", "mean latency µs"], srows)
    svg = args.out + ".svg"
    plot_compare(pairs, args.a, args.b, svg, args.title)
    md = [f"# {args.title}\n\n"] + note_lines(args)
    md.append(f"Ratios are {args.a} / {args.b} (IOPS: above 1 is better for {args.a}; "
              f"p99: below 1 is better for {args.a}). Runs alternate between the targets.\n\n")
    md += [table, spdk_table, "\n", f"![comparison]({os.path.basename(svg)})\n"]
    with open(args.out + ".md", "w") as f:
        f.write("".join(md))
    print()
    print(table)
    if spdk_table:
        print(spdk_table)
    print(f"written: {args.out}.md, {os.path.basename(svg)}")


def plot_compare(pairs, name_a, name_b, path, title):
    row_h, left, right, top = 44, 240, 90, 70
    width = 900
    height = top + row_h * max(len(pairs), 1) + 50
    s = Svg(width, height)
    s.text(width / 2, 24, title, 14, "middle", weight="bold")
    s.text(width / 2, 44, "IOPS per workload", 12, "middle", "#555")
    vmax = max([d["result"]["iops"] for _, a, b in pairs for d in (a, b) if d] + [1])
    scale = (width - left - right) / vmax
    for i, (label, a, b) in enumerate(pairs):
        y = top + row_h * i
        s.text(left - 10, y + row_h / 2 + 4, label, 12, "end")
        for j, d in enumerate((a, b)):
            v = d["result"]["iops"] if d else 0
            s.rect(left, y + 4 + j * 17, v * scale, 15, COLORS[j])
            s.text(left + v * scale + 5, y + 16 + j * 17, f"{v:,.0f}" if d else "no data", 11)
    for j, name in enumerate((name_a, name_b)):
        s.rect(left + j * 200, height - 30, 14, 14, COLORS[j])
        s.text(left + j * 200 + 20, height - 18, name, 12)
    s.save(path)


# ---------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("latency", "scaling", "compare"):
        q = sub.add_parser(name)
        q.add_argument("--out", required=True, help="output path without extension")
        q.add_argument("--title", default=f"nvmf-tpc {name}")
        q.add_argument("--note", default="")
        if name == "latency":
            q.add_argument("--ns", action="append", default=[], help="NSID=NAME")
            q.add_argument("--ceiling", help="JSON from perf/ceiling.rs")
            q.add_argument("--cc", default="", help="the target's TCP congestion control")
            q.add_argument("--spdk-live", action="append", default=[],
                           help="JSON of the same run against SPDK's nvmf_tgt, measured now")
            q.add_argument("files", nargs="+")
        elif name == "scaling":
            q.add_argument("files", nargs="+", help="CORES=FILE.json")
        else:
            q.add_argument("--a", default="nvmf-tpc")
            q.add_argument("--b", default="other")
            q.add_argument("--spdk", help="TSV: workload, target, IOPS, mean µs")
            q.add_argument("--pair", nargs=3, action="append", default=[],
                           metavar=("LABEL", "A_JSON", "B_JSON"))
    args = p.parse_args()
    {"latency": latency, "scaling": scaling, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
