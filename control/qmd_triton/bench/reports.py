"""Benchmark reports: CSV, JSON, a markdown summary and a plot of p95 latency against throughput.

Every report names the machine (CPU model, cores, load average) it was measured on.

Example:
    >>> paths = write_results(rows, baselines, Path("perf/results"), "20261130-qmd_embed")
    >>> paths["md"].read_text().splitlines()[0]
    '| model | protocol | concurrency | infer/s | p50 ms | p95 ms | p99 ms | errors |'
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

from qmd_triton.bench.perf_analyzer import Row


def machine() -> dict:
    """The hardware and load a measurement ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "load_avg_1m": round(load[0], 2)}


def machine_line(m: dict | None = None) -> str:
    m = m or machine()
    return f"{m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m']:.1f}"


def write_results(rows: Sequence[Row], baselines: dict, out_dir: Path, stem: str,
                  hardware: dict | None = None) -> dict[str, Path]:
    """CSV and JSON of the rows, a markdown summary and a PNG of p95 latency against throughput."""
    hardware = hardware or machine()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{stem}.csv", "json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md",
             "png": out_dir / f"{stem}.png"}
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "protocol", "concurrency", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                    "avg_ms", "server_queue_ms", "server_compute_ms", "errors"])
        for r in rows:
            w.writerow([r.model, r.protocol, r.concurrency, f"{r.throughput:.2f}", f"{r.p50_us / 1000:.2f}",
                        f"{r.p90_us / 1000:.2f}", f"{r.p95_us / 1000:.2f}", f"{r.p99_us / 1000:.2f}",
                        f"{r.avg_us / 1000:.2f}", f"{r.server_queue_us / 1000:.2f}",
                        f"{r.server_compute_us / 1000:.2f}", r.errors])
    paths["json"].write_text(json.dumps({"machine": hardware, "rows": [r.as_dict() for r in rows],
                                         "baselines": baselines}, indent=2))
    paths["md"].write_text(summary(rows, baselines, hardware))
    plot(rows, paths["png"], baselines, hardware)
    return paths


def summary(rows: Sequence[Row], baselines: dict, hardware: dict | None = None) -> str:
    out = [f"Measured on {machine_line(hardware)}.", "",
           "| model | protocol | concurrency | infer/s | p50 ms | p95 ms | p99 ms | errors |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.model} | {r.protocol} | {r.concurrency} | {r.throughput:.1f} | {r.p50_us / 1000:.1f} | "
                   f"{r.p95_us / 1000:.1f} | {r.p99_us / 1000:.1f} | {r.errors} |")
    splits = [(r, s) for r in rows for s in r.composing]
    if splits:
        out += ["", "Server-side time per request of each composing model (ms):", "",
                "| model | concurrency | composing model | queue | compute input | compute infer | compute output | "
                "requests/execution | cache hits |", "|---|---|---|---|---|---|---|---|---|"]
        for r, s in splits:
            per = (s.requests - s.cache_hits) / s.executions if s.executions else 0
            out.append(f"| {r.model} | {r.concurrency} | {s.model} | {s.queue_us / 1000:.1f} | "
                       f"{s.compute_input_us / 1000:.2f} | {s.compute_infer_us / 1000:.1f} | "
                       f"{s.compute_output_us / 1000:.2f} | {per:.1f} | {s.cache_hits} |")
    if baselines:
        ref = next((b["reference"] for b in baselines.values() if b.get("reference")), None)
        if ref:
            out += ["", f"Baselines on the same texts, against {ref['model']} at concurrency {ref['concurrency']} "
                        f"({ref['per_s']:.1f}/s):"]
        out += ["", "| baseline | texts/s | Triton ÷ baseline |", "|---|---|---|"]
        for name, b in baselines.items():
            out.append(f"| {name} | {b['per_s']:.1f} | {b.get('ratio', float('nan')):.2f} |")
    return "\n".join(out) + "\n"


def plot(rows: Sequence[Row], path: Path, baselines: dict | None = None, hardware: dict | None = None) -> None:
    """p95 latency against throughput, one line per (model, protocol); baselines as vertical lines.

    Both axes start at zero, so ratios between points read off the picture as they are.
    """
    import matplotlib.pyplot as plt

    fig = figure(rows, baselines, hardware)
    fig.savefig(path)
    plt.close(fig)


def figure(rows: Sequence[Row], baselines: dict | None = None, hardware: dict | None = None):
    """The plot as a matplotlib figure (see :func:`plot`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    series: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        series.setdefault((r.model, r.protocol), []).append(r)
    for (model, protocol), rs in series.items():
        rs = sorted(rs, key=lambda r: r.concurrency)
        ax.plot([r.throughput for r in rs], [r.p95_us / 1000 for r in rs], marker="o", label=f"{model} ({protocol})")
        for r in rs:
            ax.annotate(f"c={r.concurrency}", (r.throughput, r.p95_us / 1000), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    for i, (name, b) in enumerate((baselines or {}).items()):
        ax.axvline(b["per_s"], linestyle="--", linewidth=1, color=f"C{(i + len(series)) % 10}",
                   label=f"baseline: {name} ({b['per_s']:.1f}/s)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title(f"qmd-triton: latency against throughput (perf_analyzer)\n{machine_line(hardware)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
