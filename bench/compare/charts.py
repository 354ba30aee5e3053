#!/usr/bin/python3
"""Draws the comparison charts of docs/BENCHMARKS.md from the harness's JSON.

    build/bench/shmbus-compare --json compare.json
    bench/compare/charts.py compare.json docs/

writes OUTDIR/compare-latency.png (one-way p50 and p99 by payload size, per system, for
busy-polling and blocking receivers) and OUTDIR/compare-throughput.png (deliveries per
second by workload). Bars and points are the median of the runs; whiskers span min to max.
Runs with Debian's /usr/bin/python3 and python3-matplotlib.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

COLOURS = {"shmbus": "#1b9e77", "iceoryx": "#7570b3", "redis": "#d95f02",
           "zeromq": "#e7298a", "uds": "#66a61e"}


def size_label(n):
    if n >= 1 << 20:
        return f"{n >> 20} MiB"
    if n >= 1024:
        return f"{n >> 10} KiB"
    return f"{n} B"


def summary(cell, system, metric):
    """(median, min, max) of a metric over a system's runs of a cell, or None."""
    s = cell["results"].get(system, {}).get("summary", {}).get(metric)
    return (s["median"], s["min"], s["max"]) if s else None


def systems_that_ran(doc):
    return [(s["id"], s["label"]) for s in doc["systems"] if s["ran"]]


def machine_line(doc):
    m = doc["machine"]
    runs = doc["settings"]["runs"]
    return (f"{m['cpu_model']}, {m['cpus_online']} CPUs, {m['virtualization']}, {m['kernel']}; "
            f"median of {runs} run{'s' if runs != 1 else ''}, whiskers min–max")


def draw_latency(doc, path):
    modes = [("busy", "busy-polling receiver"), ("blocking", "blocking receiver (ping-pong pace)")]
    fig, axes = plt.subplots(1, len(modes), figsize=(12, 5), sharey=True)
    for ax, (mode, title) in zip(axes, modes):
        cells = sorted((c for c in doc["cells"] if c["workload"] == "latency" and c["mode"] == mode),
                       key=lambda c: c["bytes"])
        for system, label in systems_that_ran(doc):
            for metric, style, suffix in (("p50_ns", "-o", "p50"), ("p99_ns", ":", "p99")):
                xs, ys, lo, hi = [], [], [], []
                for c in cells:
                    s = summary(c, system, metric)
                    if s:
                        xs.append(c["bytes"])
                        ys.append(s[0] / 1e3)
                        lo.append((s[0] - s[1]) / 1e3)
                        hi.append((s[2] - s[0]) / 1e3)
                if xs:
                    ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3,
                                color=COLOURS.get(system), label=f"{label} {suffix}",
                                alpha=1.0 if suffix == "p50" else 0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([c["bytes"] for c in cells], [size_label(c["bytes"]) for c in cells])
        ax.set_xlabel("payload")
        ax.set_title(f"One-way latency, {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("µs (log scale; lower is better)")
    axes[-1].legend(fontsize=8, ncol=2)
    fig.suptitle(machine_line(doc), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_throughput(doc, path):
    cells = [c for c in doc["cells"] if c["workload"] == "throughput"]
    systems = systems_that_ran(doc)
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / max(1, len(systems))
    for i, (system, label) in enumerate(systems):
        xs, ys, lo, hi = [], [], [], []
        for x, c in enumerate(cells):
            s = summary(c, system, "deliveries_per_s")
            if s:
                xs.append(x + (i - (len(systems) - 1) / 2) * width)
                ys.append(s[0] / 1e6)
                lo.append((s[0] - s[1]) / 1e6)
                hi.append((s[2] - s[0]) / 1e6)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=label, color=COLOURS.get(system))
    ax.set_xticks(range(len(cells)),
                  [f"{c['publishers']} → {c['subscribers']}\n{size_label(c['bytes'])}" for c in cells])
    ax.set_yscale("log")
    ax.set_ylabel("million deliveries per second (log scale)")
    ax.set_title("Throughput, every system lossless (publishers → subscribers, payload)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(machine_line(doc), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    out = argv[2] if len(argv) == 3 else "docs"
    os.makedirs(out, exist_ok=True)
    written = []
    if any(c["workload"] == "latency" for c in doc["cells"]):
        written.append(os.path.join(out, "compare-latency.png"))
        draw_latency(doc, written[-1])
    if any(c["workload"] == "throughput" for c in doc["cells"]):
        written.append(os.path.join(out, "compare-throughput.png"))
        draw_throughput(doc, written[-1])
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
