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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import bench
from .errors import ServerError
from .server import group_rss_bytes, read_state
from .settings import Settings

Progress = Callable[[str], None]


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


def soak(settings: Settings, perf_analyzer: str, model: str, input_data: Path, *, seconds: int = 120,
         concurrency: int = 8, sample_s: float = 2.0, tolerance: float = 0.05, protocol: str = "grpc",
         work: Path | None = None, progress: Progress = lambda _m: None) -> SoakReport:
    state = read_state(settings)
    if state is None:
        raise ServerError("soak measures the server that `qmdctl up` started; start it first")
    report = SoakReport(model, concurrency, seconds)
    result: dict = {}

    def load() -> None:
        try:
            # perf_analyzer wants three windows; three windows of a third each fill the duration.
            result["row"] = bench.run_once(perf_analyzer, model, settings.url(protocol), protocol, input_data,
                                           concurrency, measurement_ms=seconds * 1000 // 3, work=work,
                                           extra=("--max-trials", "3"))
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=load, daemon=True)
    started = time.monotonic()
    thread.start()
    last_note = started
    while thread.is_alive():
        report.samples.append((round(time.monotonic() - started, 1), group_rss_bytes(state.pgid)))
        if time.monotonic() - last_note > 15:
            progress(f"soak {model}: {time.monotonic() - started:.0f}s, RSS {report.samples[-1][1] / 1e6:.0f} MB")
            last_note = time.monotonic()
        thread.join(sample_s)
    if "error" in result:
        raise result["error"]
    row = result["row"]
    report.throughput, report.errors = row.throughput, row.errors
    report.p95_ms, report.p99_ms = row.p95_us / 1000, row.p99_us / 1000
    duration = report.samples[-1][0] if report.samples else 0
    warm = [b for t, b in report.samples if t >= duration * 0.25]
    if warm:
        report.warm_rss, report.end_rss = warm[0], warm[-1]
        report.growth = (report.end_rss - report.warm_rss) / report.warm_rss if report.warm_rss else 0.0
        report.flat = report.growth < tolerance
    return report
