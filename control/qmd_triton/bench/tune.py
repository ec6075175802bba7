"""``qmdctl tune``: sweep batching and instance settings of a model under a p95 latency budget.

For every combination of ``max_batch_size``, instance count, ``max_queue_delay_microseconds``
and length handling (ragged batching, or padding to length buckets), a copy of the
repository with that config is served on free ports and measured with perf_analyzer
through the ensemble that exercises the model. The winner is the highest throughput
whose p95 stays within the budget (the lowest p95 when none does).

Example:
    >>> trials = sweep(settings, Grid(max_batch=(16, 64)), "qmd_embed_model", budget_ms=500)
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qmd_triton.bench import perf_analyzer as pa
from qmd_triton.contracts import EMBED, EMBED_MODEL, MAX_BATCH, QUERY_PIPELINE, RERANK_MODEL, TOKENIZE
from qmd_triton.errors import InputError
from qmd_triton.model_config import parse_config, write_config
from qmd_triton.progress import Progress, silent
from qmd_triton.search.fusion import MAX_CANDIDATES
from qmd_triton.serving import server
from qmd_triton.settings import Settings
from qmd_triton.system.files import copy_tree_linked
from qmd_triton.system.net import free_ports

# The ensemble each tunable model is measured through.
ENTRY = {EMBED_MODEL.name: EMBED.name, RERANK_MODEL.name: QUERY_PIPELINE.name, TOKENIZE.name: EMBED.name}
RAGGED = "ragged"


def min_batch(model: str) -> int:
    """The largest batch one request may carry to ``model``; a smaller ``max_batch_size`` would refuse it.

    ``QmdClient.embed`` (and so ``qmdctl embed``) sends up to ``contracts.MAX_BATCH`` texts per request;
    ``qmd_retrieve`` sends up to ``fusion.MAX_CANDIDATES`` reranker pairs per query.
    """
    return MAX_CANDIDATES if model == RERANK_MODEL.name else MAX_BATCH


def default_max_batch(model: str) -> tuple[int, ...]:
    """The ``max_batch_size`` values swept by default: at and above what one request carries."""
    return (256, 512) if model == RERANK_MODEL.name else Grid.max_batch


@dataclass(frozen=True)
class Grid:
    max_batch: Sequence[int] = (64, 128)
    instances: Sequence[int] = (1, 2)
    queue_delay_us: Sequence[int] = (500, 2000)
    lengths: Sequence[str] = (RAGGED, "16,32,64,128,256")

    def points(self) -> list[dict]:
        keys = ("max_batch", "instances", "queue_delay_us", "lengths")
        return [dict(zip(keys, combo)) for combo in
                itertools.product(self.max_batch, self.instances, self.queue_delay_us, self.lengths)]


@dataclass
class Trial:
    point: dict
    throughput: float = 0.0
    p95_ms: float = 0.0
    errors: int = 0
    failure: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def choose(trials: Sequence[Trial], budget_ms: float, smallest_batch: int = 0) -> Trial | None:
    """Highest throughput within the budget; else the lowest p95; failed trials, and points whose
    ``max_batch`` is below ``smallest_batch`` (requests would be refused), never win."""
    ok = [t for t in trials if not t.failure and t.errors == 0 and int(t.point.get("max_batch", 0)) >= smallest_batch]
    if not ok:
        return None
    within = [t for t in ok if t.p95_ms <= budget_ms]
    if within:
        return max(within, key=lambda t: (t.throughput, -t.p95_ms))
    return min(ok, key=lambda t: t.p95_ms)


def configure(repo: Path, model: str, point: dict) -> None:
    """Writes one grid point into ``repo`` (a copy): the model's batching and instances, the tokenizer's lengths."""
    path = repo / model / "config.pbtxt"
    cfg = parse_config(path)
    if cfg.max_batch_size == 0:
        raise InputError(f"{model} does not batch (max_batch_size 0): nothing to tune")
    cfg.max_batch_size = int(point["max_batch"])
    del cfg.dynamic_batching.preferred_batch_size[:]
    cfg.dynamic_batching.max_queue_delay_microseconds = int(point["queue_delay_us"])
    for g in cfg.instance_group:
        g.count = int(point["instances"])
    ragged = point["lengths"] == RAGGED
    for t in cfg.input:
        t.allow_ragged_batch = ragged and t.data_type != 13  # never on BYTES inputs
    write_config(path, cfg)
    tok = repo / TOKENIZE.name / "config.pbtxt"
    if tok.is_file() and model in (EMBED_MODEL.name, TOKENIZE.name):
        tcfg = parse_config(tok)
        tcfg.parameters["length_buckets"].string_value = "" if ragged else point["lengths"]
        write_config(tok, tcfg)
    ensemble = ENTRY.get(model)
    if ensemble and (repo / ensemble / "config.pbtxt").is_file():
        ecfg = parse_config(repo / ensemble / "config.pbtxt")
        if ecfg.max_batch_size > cfg.max_batch_size:
            ecfg.max_batch_size = cfg.max_batch_size
            write_config(repo / ensemble / "config.pbtxt", ecfg)


def sweep(settings: Settings, grid: Grid, model: str, input_data: Path, work: Path, *, perf_analyzer: str,
          concurrency: int = 8, measurement_ms: int = 2000, protocol: str = "grpc",
          progress: Progress = silent) -> list[Trial]:
    entry = ENTRY.get(model)
    if entry is None:
        raise InputError(f"tune knows {', '.join(ENTRY)}; {model!r} is not one of them")
    trials = []
    points = grid.points()
    for i, point in enumerate(points, 1):
        progress(f"[{i}/{len(points)}] {model}: " + ", ".join(f"{k}={v}" for k, v in point.items()))
        trial = Trial(point)
        repo = copy_tree_linked(settings.model_repository, work / f"repo-{i}")
        try:
            configure(repo, model, point)
            http, grpc, metrics = free_ports(3)
            s = Settings.load(work / f"home-{i}", model_repository=repo, http_port=http, grpc_port=grpc,
                              metrics_port=metrics, startup_timeout_s=120)
            _share_index(settings, s.home)  # the search pipelines read the same index
            with server.private(s):
                row = pa.run_once(perf_analyzer, entry, s.url(protocol), protocol, input_data, concurrency,
                                  measurement_ms, work)
                trial.throughput, trial.p95_ms, trial.errors = row.throughput, row.p95_us / 1000, row.errors
        except Exception as e:  # noqa: BLE001 - a point that cannot run is a finding, not the end of the sweep
            trial.failure = str(e).splitlines()[0][:200]
        finally:
            shutil.rmtree(repo, ignore_errors=True)
        progress(f"    failed: {trial.failure}" if trial.failure
                 else f"    {trial.throughput:.1f}/s  p95 {trial.p95_ms:.1f} ms")
        trials.append(trial)
    return trials


def apply(repo: Path, model: str, point: dict) -> list[Path]:
    """Writes the chosen point into the real repository's configs; returns what changed."""
    before = {p: p.read_text() for p in (repo / model / "config.pbtxt", repo / TOKENIZE.name / "config.pbtxt",
                                         repo / (ENTRY.get(model) or model) / "config.pbtxt") if p.is_file()}
    configure(repo, model, point)
    return [p for p, text in before.items() if p.read_text() != text]


def _share_index(settings: Settings, home: Path) -> None:
    """Points a trial's home at the user's index: the SQLite file (linked), or the same Milvus (its URI; the
    home's own Milvus Lite is started when that is where the index lives)."""
    from qmd_triton.index.config import index_config
    from qmd_triton.serving import milvus_lite

    config = index_config(settings.home)
    if config.local:
        milvus_lite.ensure_running(config)
    config.share_with(home)
