"""Soak runs: sustained perf_analyzer load of bounded length with the server's memory sampled.

The server's resident memory (tritonserver plus every python backend stub: its whole
process group) is sampled every few seconds while perf_analyzer holds a concurrency for
the whole duration. Memory is "flat" when, after the warm-up (the first quarter), it
grows by less than ``tolerance`` (5% by default) to the end.

Example:
    >>> report = soak(settings, perf_analyzer, "qmd_embed", inputs, seconds=120, concurrency=8)
    >>> report.flat, report.errors
    (True, 0)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qmd_triton.bench import perf_analyzer as pa
from qmd_triton.errors import ServerError
from qmd_triton.progress import Progress, silent
from qmd_triton.serving.server import read_state, server_pids
from qmd_triton.settings import Settings
from qmd_triton.system.procs import group_rss_bytes

WARM_UP_SHARE = 0.25


@dataclass
class SoakReport:
    model: str
    concurrency: int
    seconds: float
    throughput: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    warm_rss: int = 0
    end_rss: int = 0
    growth: float = 0.0
    flat: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def judge_memory(samples: Sequence[tuple[float, int]], tolerance: float = 0.05) -> tuple[int, int, float, bool]:
    """``(rss after warm-up, rss at the end, growth, flat)`` of memory samples ``(seconds, bytes)``.

    The warm-up is the first quarter of the run; memory is flat when it grows by less than
    ``tolerance`` from the first sample after the warm-up to the last one. Too few samples
    to tell is not flat.
    """
    if len(samples) < 2:
        return 0, 0, 0.0, False
    duration = samples[-1][0]
    warm = [b for t, b in samples if t >= duration * WARM_UP_SHARE]
    if len(warm) < 2 or warm[0] <= 0:
        return 0, 0, 0.0, False
    growth = (warm[-1] - warm[0]) / warm[0]
    return warm[0], warm[-1], growth, growth < tolerance


def run_soak(settings: Settings, perf_analyzer: str, model: str, input_data: Path, *, seconds: int = 120,
             concurrency: int = 8, sample_s: float = 2.0, tolerance: float = 0.05, protocol: str = "grpc",
             work: Path | None = None, progress: Progress = silent) -> SoakReport:
    state = read_state(settings)
    if state is None:
        raise ServerError("soak measures the server that `qmdctl up` started; start it first")
    report = SoakReport(model, concurrency, seconds)
    result: dict = {}

    def load() -> None:
        try:
            # perf_analyzer wants three windows; three windows of a third each fill the duration.
            result["row"] = pa.run_once(perf_analyzer, model, settings.url(protocol), protocol, input_data,
                                           concurrency, measurement_ms=seconds * 1000 // 3, work=work,
                                           extra=("--max-trials", "3"))
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=load, daemon=True)
    started = time.monotonic()
    thread.start()
    last_note = started
    while thread.is_alive():
        report.samples.append((round(time.monotonic() - started, 1), group_rss_bytes(server_pids(state))))
        if time.monotonic() - last_note > 15:
            progress(f"soak {model}: {time.monotonic() - started:.0f}s, RSS {report.samples[-1][1] / 1e6:.0f} MB")
            last_note = time.monotonic()
        thread.join(sample_s)
    if "error" in result:
        raise result["error"]
    row = result["row"]
    report.throughput, report.errors = row.throughput, row.errors
    report.p95_ms, report.p99_ms = row.p95_us / 1000, row.p99_us / 1000
    report.warm_rss, report.end_rss, report.growth, report.flat = judge_memory(report.samples, tolerance)
    return report
