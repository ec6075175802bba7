"""Benchmarks with perf_analyzer: inputs, runs per concurrency, parsing, the server-side split.

perf_analyzer is the load generator Triton users already trust. ``run_model`` runs it
once per concurrency level and parses both its CSV (throughput, p50/p90/p95/p99, the
client/server split) and its report of an ensemble's composing models (queue,
compute input, compute infer, compute output per model).

Example:
    >>> pa = find_perf_analyzer()
    >>> rows = run_model(pa, "qmd_embed", "127.0.0.1:8001", inputs, [1, 8])
    >>> rows[1].throughput
    90.1
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import InputError, QmdError
from .settings import PROJECT_ROOT

TOOLS = PROJECT_ROOT / ".tools" / "perf_analyzer" / "perf_analyzer"
INPUTS = PROJECT_ROOT / "perf" / "inputs"
SEARCH_MODELS = ("qmd_query", "qmd_vsearch", "qmd_search")

Progress = Callable[[str], None]


class PerfAnalyzerMissing(QmdError):
    """perf_analyzer is not installed (or only PyPI's placeholder is)."""


class BenchError(QmdError):
    """A benchmark run failed."""


def find_perf_analyzer() -> str:
    """``QMD_PERF_ANALYZER``, the project's ``.tools`` install, or a real one on PATH."""
    candidates = [os.environ.get("QMD_PERF_ANALYZER"), str(TOOLS), shutil.which("perf_analyzer")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            try:
                out = subprocess.run([c, "--version"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "Perf Analyzer" in out.stdout + out.stderr:
                return c
    raise PerfAnalyzerMissing("perf_analyzer is not installed; run `make perf-tools` "
                              "(scripts/install-perf-analyzer.sh) or set QMD_PERF_ANALYZER")


def parse_concurrency(spec: str) -> list[int]:
    """``"1:8:2"`` -> [1, 3, 5, 7]; ``"8"`` -> [8]; ``"1,8,32"`` -> [1, 8, 32]."""
    try:
        if "," in spec:
            values = [int(v) for v in spec.split(",")]
        else:
            parts = [int(v) for v in spec.split(":")]
            if len(parts) == 1:
                values = parts
            else:
                start, end = parts[0], parts[1]
                step = parts[2] if len(parts) > 2 else 1
                if step < 1 or end < start:
                    raise ValueError
                values = list(range(start, end + 1, step))
    except ValueError:
        raise InputError(f"--concurrency must be N, A:B[:STEP] or a list like 1,8,32, got {spec!r}") from None
    if not values or any(v < 1 for v in values):
        raise InputError(f"concurrency must be positive, got {spec!r}")
    return values


# -- inputs ---------------------------------------------------------------------------------------


def _jsonl(path: Path, limit: int) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if len(rows) >= limit:
                    break
    return rows


def passages(datasets: Path, count: int) -> list[str]:
    """The first ``count`` passages (title. text) of msmarco, then dbpedia."""
    texts: list[str] = []
    for name in ("msmarco", "dbpedia"):
        if len(texts) < count:
            texts += [(r.get("title", "") + ". " + r["text"]).strip(". ")
                      for r in _jsonl(datasets / name / "corpus.jsonl", count - len(texts))]
    return texts


def queries(datasets: Path, count: int) -> list[str]:
    """Up to ``count`` queries of msmarco, then dbpedia."""
    return [r["text"] for name in ("msmarco", "dbpedia") for r in _jsonl(datasets / name / "queries.jsonl", count)][:count]


def make_inputs(model: str, datasets: Path, out_dir: Path = INPUTS, count: int = 256,
                options: dict | None = None) -> Path:
    """perf_analyzer input data for a model, drawn from the shared BEIR sets (written, not committed).

    ``qmd_embed``: one passage per request (msmarco then dbpedia). Search models: the sets'
    queries with ``options``.
    """
    sets = [datasets / "msmarco", datasets / "dbpedia"]
    missing = [str(s) for s in sets if not (s / "corpus.jsonl").is_file() or not (s / "queries.jsonl").is_file()]
    if missing:
        raise InputError(f"no BEIR set at {', '.join(missing)}: pass --datasets DIR (holding msmarco/ and "
                         "dbpedia/) or --input-data FILE")
    out_dir.mkdir(parents=True, exist_ok=True)
    if model in ("qmd_embed",):
        data = [{"text": {"content": [t], "shape": [1]}} for t in passages(datasets, count)]
        name = "passages.json"
    elif model in SEARCH_MODELS:
        opts = json.dumps(options or {"n": 10})
        data = [{"query": {"content": [q], "shape": [1]}, "options": {"content": [opts], "shape": [1]}}
                for q in queries(datasets, count)]
        name = f"queries-{model}.json"
    else:
        raise InputError(f"no input generator for {model}; pass --input-data FILE (perf_analyzer's JSON format)")
    path = out_dir / name
    path.write_text(json.dumps({"data": data}, ensure_ascii=False))
    return path


# -- runs -----------------------------------------------------------------------------------------


@dataclass
class Split:
    """Server-side microseconds per request of one model (perf_analyzer's breakdown)."""

    model: str
    requests: int = 0
    executions: int = 0
    cache_hits: int = 0
    queue_us: float = 0.0
    compute_input_us: float = 0.0
    compute_infer_us: float = 0.0
    compute_output_us: float = 0.0

    @property
    def total_us(self) -> float:
        return self.queue_us + self.compute_input_us + self.compute_infer_us + self.compute_output_us


@dataclass
class Row:
    model: str
    protocol: str
    concurrency: int
    throughput: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float
    server_queue_us: float
    server_compute_us: float
    errors: int = 0
    composing: list[Split] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


_MODEL_LINE = re.compile(r"^\s*(\S+), version: \S+\s*$")
_NUM = r"(\d+(?:\.\d+)?)"


def parse_composing(stdout: str) -> list[Split]:
    """The "Composing models:" section of perf_analyzer's report (the last one if several)."""
    text = stdout.rsplit("Composing models:", 1)
    if len(text) < 2:
        return []
    splits: list[Split] = []
    current: Split | None = None
    for line in text[1].splitlines():
        m = _MODEL_LINE.match(line)
        if m:
            current = Split(m.group(1))
            splits.append(current)
            continue
        if current is None:
            continue
        if "Successful request count:" in line:  # requests, not batch rows (a rerank request carries many pairs)
            current.requests = int(re.search(r"\d+", line.split(":", 1)[1]).group())
        elif "Execution count:" in line:
            current.executions = int(re.search(r"\d+", line.split(":", 1)[1]).group())
        elif "Cache hit count:" in line:
            current.cache_hits = int(re.search(r"\d+", line.split(":", 1)[1]).group())
        elif "Avg request latency:" in line or "Cache Miss Latency:" in line:
            # Where the server has a response cache, the compute parts move to the cache-miss line.
            for key, attr in (("queue", "queue_us"), ("compute input", "compute_input_us"),
                              ("compute infer", "compute_infer_us"), ("compute output", "compute_output_us")):
                m2 = re.search(rf"(?<![/\w]){key} {_NUM} usec", line)
                if m2:
                    setattr(current, attr, float(m2.group(1)))
        elif not line.strip() or line.startswith("Inferences/Second"):
            if line.startswith("Inferences/Second"):
                break
    return splits


def parse_csv(text: str) -> list[dict[str, float]]:
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        rows.append({k.strip(): float(v) for k, v in r.items() if k and v not in (None, "")})
    return rows


def run_once(perf_analyzer: str, model: str, url: str, protocol: str, input_data: Path, concurrency: int,
             measurement_ms: int = 4000, work: Path | None = None, extra: Sequence[str] = ()) -> Row:
    """One perf_analyzer measurement at one concurrency."""
    work = work or Path(os.environ.get("TMPDIR", "/tmp"))
    out_csv = work / f"pa-{model}-{protocol}-c{concurrency}.csv"
    base = [perf_analyzer, "-m", model, "-u", url, "-i", protocol, "--input-data", str(input_data),
            "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(measurement_ms),
            "-f", str(out_csv), "--verbose-csv", *extra]
    # A noisy shared CPU can keep three windows from agreeing within 50%; then accept a wider spread
    # once rather than report nothing (the rows say how many windows were measured either way).
    attempts = [("50", "6"), ("100", "4")] if "--max-trials" not in extra else [("999", "")]
    for stability, trials in attempts:
        flags = ["--stability-percentage", stability] + (["--max-trials", trials] if trials else [])
        try:
            proc = subprocess.run(base + flags,
                                  capture_output=True, text=True, timeout=max(120, measurement_ms * 12 // 1000 + 60))
        except subprocess.TimeoutExpired:
            raise BenchError(f"perf_analyzer did not finish for {model} at concurrency {concurrency}") from None
        if proc.returncode == 0 or "stable" not in (proc.stdout + proc.stderr).lower():
            break
    if proc.returncode != 0 or not out_csv.is_file():
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        raise BenchError(f"perf_analyzer failed for {model} at concurrency {concurrency}: "
                         f"{lines[-1] if lines else 'exit status ' + str(proc.returncode)}")
    [r] = parse_csv(out_csv.read_text())[-1:]
    errors = 0
    m = re.search(r"Failed request count: (\d+)|(\d+) failed", proc.stdout)
    if m:
        errors = int(m.group(1) or m.group(2))
    return Row(
        model=model, protocol=protocol, concurrency=int(r["Concurrency"]), throughput=r["Inferences/Second"],
        p50_us=r["p50 latency"], p90_us=r["p90 latency"], p95_us=r["p95 latency"], p99_us=r["p99 latency"],
        avg_us=r["Avg latency"], server_queue_us=r.get("Server Queue", 0.0),
        server_compute_us=r.get("Server Compute Input", 0.0) + r.get("Server Compute Infer", 0.0)
        + r.get("Server Compute Output", 0.0),
        errors=errors, composing=parse_composing(proc.stdout),
    )


def run_model(perf_analyzer: str, model: str, url: str, protocol: str, input_data: Path,
              concurrencies: Iterable[int], measurement_ms: int = 4000, work: Path | None = None,
              progress: Progress = lambda _m: None) -> list[Row]:
    rows = []
    for c in concurrencies:
        progress(f"{model}: concurrency {c} ({protocol})")
        rows.append(run_once(perf_analyzer, model, url, protocol, input_data, c, measurement_ms, work))
        r = rows[-1]
        progress(f"  {r.throughput:.1f}/s  p50 {r.p50_us / 1000:.1f} ms  p95 {r.p95_us / 1000:.1f} ms  "
                 f"p99 {r.p99_us / 1000:.1f} ms")
    return rows


# -- reports --------------------------------------------------------------------------------------


def write_results(rows: Sequence[Row], baselines: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """CSV and JSON of the rows, a markdown summary and a PNG of p95 latency against throughput."""
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
    paths["json"].write_text(json.dumps({"rows": [r.as_dict() for r in rows], "baselines": baselines}, indent=2))
    paths["md"].write_text(summary(rows, baselines))
    plot(rows, paths["png"])
    return paths


def summary(rows: Sequence[Row], baselines: dict) -> str:
    out = ["| model | protocol | concurrency | infer/s | p50 ms | p95 ms | p99 ms | errors |",
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


def plot(rows: Sequence[Row], path: Path) -> None:
    """p95 latency against throughput, one line per (model, protocol)."""
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
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title("qmd-triton: latency against throughput (perf_analyzer)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
