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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qmd_triton.bench.datasets import passages, queries, require_passage_sets
from qmd_triton.errors import InputError, QmdError
from qmd_triton.progress import Progress, silent
from qmd_triton.settings import checkout_path

SEARCH_MODELS = ("qmd_query", "qmd_vsearch", "qmd_search")


class PerfAnalyzerMissing(QmdError):
    """perf_analyzer is not installed (or only PyPI's placeholder is)."""


class BenchError(QmdError):
    """A benchmark run failed."""


def find_perf_analyzer() -> str:
    """``QMD_PERF_ANALYZER``, the project's ``.tools`` install, or a real one on PATH."""
    tools = checkout_path(".tools", "perf_analyzer", "perf_analyzer")
    candidates = [os.environ.get("QMD_PERF_ANALYZER"), str(tools) if tools else None, shutil.which("perf_analyzer")]
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


def make_inputs(model: str, datasets: Path, out_dir: Path, count: int = 256,
                options: dict | None = None) -> Path:
    """perf_analyzer input data for a model, drawn from the shared BEIR sets (written, not committed).

    ``qmd_embed``: one passage per request (msmarco then dbpedia). Search models: the sets'
    queries with ``options``.
    """
    require_passage_sets(datasets)
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
              progress: Progress = silent) -> list[Row]:
    rows = []
    for c in concurrencies:
        progress(f"{model}: concurrency {c} ({protocol})")
        rows.append(run_once(perf_analyzer, model, url, protocol, input_data, c, measurement_ms, work))
        r = rows[-1]
        progress(f"  {r.throughput:.1f}/s  p50 {r.p50_us / 1000:.1f} ms  p95 {r.p95_us / 1000:.1f} ms  "
                 f"p99 {r.p99_us / 1000:.1f} ms")
    return rows
