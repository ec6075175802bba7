"""The ``qmdctl eval`` harness: a set indexed in its own workspace, every mode run, beside plain baselines.

The set's documents are indexed with the normal ``update`` / ``embed`` path in a QMD
home of their own (``$QMD_HOME/eval/NAME``, reused by later runs; the user's index is
never touched) and queried with the normal search code and the served models on a
server of its own (free ports, stopped at the end), so the numbers measure what users get.

Example:
    >>> result = evaluate(load_set(Path("shared/datasets/msmarco")), base_settings, ["search", "vsearch"])
    >>> [r["mode"] for r in result["rows"]]
    ['search', 'baseline: rank_bm25 (BM25Okapi, plain tokens)', 'vsearch', ...]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qmd_triton.bench import baselines
from qmd_triton.bench.datasets import KNOWN_ITEM, EvalSet, write_collection
from qmd_triton.bench.scoring import first_relevant_rank, score_run
from qmd_triton.contracts import QUERY_PIPELINE, VSEARCH
from qmd_triton.index.collections import CollectionConfig
from qmd_triton.index.config import index_config
from qmd_triton.index.factory import open_index
from qmd_triton.index.update import update
from qmd_triton.progress import Progress, silent
from qmd_triton.search.lexical import search_bm25
from qmd_triton.search.options import SearchOptions
from qmd_triton.serving import server
from qmd_triton.serving.client import QmdClient, embed_index
from qmd_triton.settings import Settings
from qmd_triton.system import procs
from qmd_triton.system.files import atomic_write_text
from qmd_triton.system.net import free_ports

# A query mode is the served defaults with one setting changed: each ablation removes (or adds) one stage.
QUERY_OPTIONS: dict[str, dict[str, Any]] = {
    "query": {},
    "query-no-expand": {"expand": False},
    "query-expand": {"expand": True},
    "query-no-rerank": {"rerank": False},
    "query-no-vectors": {"vectors": False},
    "query-blend": {"fusion": "blend"},
}
MODES = ("search", "vsearch", *QUERY_OPTIONS)
DEFAULT_MODES = ("search", "vsearch")
ABLATIONS = ("query-no-expand", "query-expand", "query-no-rerank", "query-no-vectors", "query-blend")
# search and vsearch are asked for 100 hits (Recall@100); their first 10 are what `-n 10` returns. The query modes
# run as a CLI query does: n = 10 of the served candidate count (their Recall@100 is not measured).
DEPTH = 100
QUERY_N = 10
CONCURRENCY = 4
COLLECTION = "corpus"
BM25_BASELINE = "baseline: rank_bm25 (BM25Okapi, plain tokens)"
VECTOR_BASELINE = "baseline: in-process embedding (same ONNX, 200-word chunks)"
HYBRID_BASELINE = "baseline: in-process BM25 + embedding, RRF, top 20 reranked by the same cross-encoder"


def workspace(base: Settings, dataset: EvalSet) -> Settings:
    """A QMD home of the set's own under the user's home, with free ports for its server."""
    http, grpc, metrics = free_ports(3)
    return Settings.load(base.home / "eval" / dataset.name, model_repository=base.model_repository,
                         http_port=http, grpc_port=grpc, metrics_port=metrics)


def _index_of(settings: Settings) -> Any:
    """The set's index on the backend the environment or the set's home names; the home's Milvus Lite is
    started when that is where it lives."""
    from qmd_triton.serving import milvus_lite

    config = index_config(settings.home)
    milvus_lite.ensure_running(config)
    return config


def index_set(dataset: EvalSet, settings: Settings, progress: Progress = silent) -> dict[str, str]:
    """Indexes the set's documents; returns collection path -> the set's document id."""
    if dataset.kind == KNOWN_ITEM:
        assert dataset.corpus_dir is not None
        folder, masks = dataset.corpus_dir, ["**/*.md"]
        mapping = {rel: rel for rel in dataset.texts()}
    else:
        folder, masks = settings.home / COLLECTION, ["*.md"]
        mapping = write_collection(dataset, folder, progress=progress)
    config = CollectionConfig(settings.config_file)
    existing = {c.name: c for c in config.list()}
    if COLLECTION in existing and existing[COLLECTION].path != folder.resolve():
        config.remove(COLLECTION)
        existing.pop(COLLECTION)
    if COLLECTION not in existing:
        config.add(COLLECTION, folder, masks)
    with open_index(_index_of(settings), create=True) as index:
        report = update(index, [config.get(COLLECTION)], progress=progress)
    progress(f"{dataset.name}: {len(mapping)} documents ({report.added} added, {report.changed} changed)")
    return mapping


def search_run(dataset: EvalSet, settings: Settings, mapping: dict[str, str]) -> dict[str, list[str]]:
    run = {}
    with open_index(_index_of(settings)) as index:
        for q in dataset.judged_queries():
            hits = search_bm25(index, dataset.queries[q], SearchOptions(n=DEPTH))
            run[q] = [mapping[h.path] for h in hits]
    return run


def served_run(dataset: EvalSet, settings: Settings, mapping: dict[str, str], model: str,
               extra: dict[str, Any], n: int = DEPTH, progress: Progress = silent
               ) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """Every judged query through a served model, a few in flight (as several users would); returns the run and,
    for the query pipeline, how often each stage did what (``{"expansion": {"ok": 31, ...}, "rerank": {...}}``,
    from each query's ``explain``)."""
    options = json.dumps({**SearchOptions(n=n).to_dict(), **extra,
                          **({"explain": True} if model == QUERY_PIPELINE.name else {})})
    queries = dataset.judged_queries()
    outcomes: dict[str, dict[str, int]] = {}
    done = [0]

    def one(q: str) -> list[str]:
        with QmdClient(settings.url("grpc"), "grpc", 300.0) as client:
            hits = client.search(model, dataset.queries[q], options)
        if hits and "explain" in hits[0]:
            for stage, record in (hits[0]["explain"].get("stages") or {}).items():
                status = str(record.get("status") or "?")
                status = "error" if status.startswith("error") else status
                counts = outcomes.setdefault(stage, {})
                counts[status] = counts.get(status, 0) + 1
        done[0] += 1
        if done[0] % 10 == 0 and done[0] < len(queries):
            progress(f"{dataset.name}: {done[0]}/{len(queries)} queries")
        return [mapping[h["path"]] for h in hits]

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        run = dict(zip(queries, pool.map(one, queries)))
    return run, outcomes


def evaluate(dataset: EvalSet, base: Settings, modes: Sequence[str] = DEFAULT_MODES, *, baseline: bool = True,
             progress: Progress = silent) -> dict[str, Any]:
    """Scores each mode (and, with ``baseline``, the plain baselines) on the set.

    Returns ``{"set", "kind", "queries", "documents", "rows": [{"mode", metric...}], "per_query": {mode:
    {query id: rank of the first relevant document or None}}}``.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}; modes: {', '.join(MODES)}")
    settings = workspace(base, dataset)
    # the set's own Milvus Lite (and, inside, its own server) stop on SIGTERM too
    with procs.sigterm_as_exit(f"qmdctl: terminated (SIGTERM); stopping what the eval of {dataset.name} started"):
        try:
            result = _evaluate(dataset, settings, modes, baseline=baseline, progress=progress)
        finally:
            _stop_index(settings)
    record(base, result)
    return result


def _stop_index(settings: Settings) -> None:
    """The set's own Milvus Lite (milvus backend without a uri), started for this run, stops with it."""
    from qmd_triton.serving import milvus_lite

    config = index_config(settings.home)
    if config.local:
        milvus_lite.stop(config)


def _evaluate(dataset: EvalSet, settings: Settings, modes: Sequence[str], *, baseline: bool,
              progress: Progress) -> dict[str, Any]:
    mapping = index_set(dataset, settings, progress)
    chosen = [m for m in MODES if m in modes]
    rows: list[dict[str, Any]] = []
    per_query: dict[str, dict[str, int | None]] = {}

    def add(mode: str, run: dict[str, list[str]], started: float, outcomes: dict | None = None,
            depth: int = DEPTH) -> None:
        scores = score_run(dataset, run)
        if depth < 100 and "recall@100" in scores:
            scores["recall@100"] = None  # a mode that returns 10 hits cannot be scored at 100
        row = {"mode": mode, **scores, "seconds": round(time.monotonic() - started, 1)}
        if outcomes:
            row["stages"] = outcomes
        rows.append(row)
        per_query[mode] = {q: first_relevant_rank(run.get(q, []), dataset.qrels[q]) for q in dataset.judged_queries()}

    if "search" in chosen:
        started = time.monotonic()
        add("search", search_run(dataset, settings, mapping), started)
        if baseline:
            started = time.monotonic()
            add(BM25_BASELINE, baselines.bm25_run(dataset, DEPTH), started)
    served = [m for m in chosen if m != "search"]
    if served:
        with server.private(settings, progress=progress):
            embed_index(settings, progress=_every(progress, 10.0))
            for mode in served:
                progress(f"{dataset.name}: {mode} for {len(dataset.judged_queries())} queries")
                started = time.monotonic()
                if mode == "vsearch":
                    run, _ = served_run(dataset, settings, mapping, VSEARCH.name, {}, progress=progress)
                    add(mode, run, started)
                else:
                    run, outcomes = served_run(dataset, settings, mapping, QUERY_PIPELINE.name, QUERY_OPTIONS[mode],
                                               n=QUERY_N, progress=progress)
                    add(mode, run, started, outcomes, depth=QUERY_N)
        if baseline:
            vectors = None
            if "vsearch" in served:
                started = time.monotonic()
                vectors = baselines.VectorBaseline(dataset, settings.model_repository, settings.home, progress)
                add(VECTOR_BASELINE, vectors.run(DEPTH), started)
            if any(m.startswith("query") for m in served):
                started = time.monotonic()
                vectors = vectors or baselines.VectorBaseline(dataset, settings.model_repository, settings.home,
                                                              progress)
                add(HYBRID_BASELINE, baselines.hybrid_run(dataset, vectors, settings.model_repository, progress),
                    started)
    result = {"set": dataset.name, "kind": dataset.kind, "queries": len(dataset.judged_queries()),
              "documents": dataset.documents, "rows": rows, "per_query": per_query,
              "query_text": {q: dataset.queries[q] for q in dataset.judged_queries()}}
    result["index"] = index_config(settings.home).describe()  # where the scored index lived
    return result


def _every(progress: Progress, seconds: float):
    """A ``(done, total)`` callback that reports at most every ``seconds`` (and at the end)."""
    last = [0.0]

    def count(done: int, total: int) -> None:
        if time.monotonic() - last[0] > seconds or done == total:
            progress(f"embedding {done}/{total} chunks")
            last[0] = time.monotonic()

    return count


def record(settings: Settings, result: dict) -> None:
    """Keeps the latest scores of each set where the Prometheus exporter reads them."""
    path = settings.eval_results
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[result["set"]] = {"at": time.time(), "rows": result["rows"]}
    atomic_write_text(path, json.dumps(data, indent=2))

