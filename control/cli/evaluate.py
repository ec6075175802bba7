"""``qmdctl eval SET``: retrieval quality on a BEIR-format set, beside plain baselines."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np

from .. import server
from ..client import QmdClient
from ..collections import CollectionConfig
from ..evaluation import METRICS, BeirSet, bm25_baseline, load_beir, score_run, top_ids, write_collection
from ..fusion import RankedList, rrf
from ..metrics import record_eval
from ..indexer import embed_pending, embedding_setup, update
from ..search import SearchOptions, search_bm25
from ..settings import Settings
from ..store import IndexStore
from .common import State, emit_json, pass_state

MODES = ("search", "vsearch", "query", "query-no-expand", "query-no-rerank", "query-blend")
DEFAULT_MODES = ("search", "vsearch")
QUERY_OPTIONS = {
    "query": {},
    "query-no-expand": {"expand": False},
    "query-no-rerank": {"rerank": False},
    "query-blend": {"fusion": "blend"},
}
DEPTH = 100
CONCURRENCY = 4


def _workspace(state: State, beir: BeirSet) -> tuple[Settings, Path]:
    """A QMD home of the set's own under the user's home: the user's index is never touched."""
    base = state.settings()
    home = base.home / "eval" / beir.name
    http, grpc, metrics = server.free_ports(3)
    return Settings.load(home, model_repository=base.model_repository, http_port=http, grpc_port=grpc,
                         metrics_port=metrics), home / "corpus"


def _index(state: State, beir: BeirSet, settings: Settings, docs: Path) -> dict[str, str]:
    mapping = write_collection(beir, docs, progress=state.progress)
    config = CollectionConfig(settings.config_file)
    if not any(c.name == "corpus" for c in config.list()):
        config.add("corpus", docs, ["*.md"])
    with IndexStore.open(settings.index_path, create=True) as store:
        report = update(store, [config.get("corpus")], progress=state.progress)
    state.progress(f"{beir.name}: {len(mapping)} documents ({report.added} added, {report.changed} changed)")
    return mapping


def _run_search(beir: BeirSet, settings: Settings, mapping: dict[str, str]) -> dict[str, list[str]]:
    run = {}
    with IndexStore.open(settings.index_path) as store:
        for q in beir.judged_queries():
            hits = search_bm25(store, beir.queries[q], SearchOptions(n=DEPTH))
            run[q] = [mapping[h.path] for h in hits]
    return run


def _embed_served(state: State, settings: Settings) -> None:
    setup = embedding_setup(settings.model_repository)
    with IndexStore.open(settings.index_path) as store:
        def make():
            client = QmdClient(settings.url("grpc"), "grpc", settings.request_timeout_s)
            return lambda texts: client.embed(list(texts))

        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] > 10 or done == total:
                state.progress(f"embedding {done}/{total} chunks")
                last[0] = time.monotonic()

        report = embed_pending(store, setup, make, progress=progress)
        if report.embedded:
            state.progress(f"embedded {report.embedded} chunks at {report.per_second:.1f}/s")


def _run_served(beir: BeirSet, settings: Settings, mapping: dict[str, str], model: str,
                extra: dict[str, Any]) -> dict[str, list[str]]:
    """Every judged query through a served model, a few in flight (as several users would)."""
    options = json.dumps({**SearchOptions(n=DEPTH).to_dict(), **extra})
    queries = beir.judged_queries()

    def one(q: str) -> list[str]:
        with QmdClient(settings.url("grpc"), "grpc", 300.0) as client:
            return [mapping[h["path"]] for h in client.search(model, beir.queries[q], options)]

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return dict(zip(queries, pool.map(one, queries)))


def _vector_baseline(state: State, beir: BeirSet, settings: Settings) -> dict[str, list[str]]:
    """The same ONNX model in-process: one embedding per document (title + text), cosine."""
    return _baseline_vectors(state, beir, settings)(DEPTH)


def _baseline_vectors(state: State, beir: BeirSet, settings: Settings):
    """In-process document embeddings (cached per model) and a ranking function over them."""
    from ..tokenization import TextEncoder
    from ..triton_models.onnx_backend import make_session

    setup = embedding_setup(settings.model_repository)
    repo = settings.model_repository
    encoder: TextEncoder = setup.encoder
    session = make_session(repo / "qmd_embed_model" / "1" / "model.onnx")
    ids = list(beir.corpus)
    cache = settings.home / f"baseline-{setup.id}.npy"

    def embed(texts: list[str], kind: str) -> np.ndarray:
        ids_, mask = encoder.encode(texts, kind=kind)
        return session.run(["embedding"], {"input_ids": ids_, "attention_mask": mask})[0]

    if cache.exists():
        matrix = np.load(cache)
    else:
        state.progress(f"baseline: embedding {len(ids)} documents in-process")
        texts = [f"{t}. {x}" if t else x for t, x in beir.corpus.values()]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        matrix = np.zeros((len(texts), setup.fingerprint["dim"]), dtype=np.float32)
        started = time.monotonic()
        for start in range(0, len(order), 16):
            batch = order[start : start + 16]
            matrix[batch] = embed([texts[i] for i in batch], "document")
        state.progress(f"baseline: embedded {len(texts)} documents at {len(texts) / (time.monotonic() - started):.1f}/s "
                       "(length-sorted batches of 16)")
        np.save(cache, matrix)
    def rank(depth: int) -> dict[str, list[str]]:
        return {q: top_ids(matrix @ embed([beir.queries[q]], "query")[0], ids, depth) for q in beir.judged_queries()}

    return rank


def hybrid_candidates(state: State, beir: BeirSet, settings: Settings) -> dict[str, tuple[list[str], list[str]]]:
    """Per judged query, the plain hybrid's top 40 (rank_bm25 top 20 + in-process vectors top 20, RRF):
    their ids and texts (title. text), ready for a cross-encoder."""
    bm25 = bm25_baseline(beir, 20)
    vec = _baseline_vectors(state, beir, settings)(20)
    out = {}
    for q in beir.judged_queries():
        keys = [f.key for f in rrf([RankedList("bm25", 1.0, bm25[q]), RankedList("vec", 1.0, vec[q])])[:40]]
        out[q] = (keys, [f"{beir.corpus[k][0]}. {beir.corpus[k][1]}" if beir.corpus[k][0] else beir.corpus[k][1]
                         for k in keys])
    return out


def _hybrid_baseline(state: State, beir: BeirSet, settings: Settings) -> dict[str, list[str]]:
    """rank_bm25 + the embedding model in-process, plain RRF (k=60), top 40 reranked by the same
    cross-encoder in-process, ordered by its score: what one would build in a notebook."""
    from ..tokenization import PairEncoder
    from ..triton_models.onnx_backend import make_session

    repo = settings.model_repository
    candidates = hybrid_candidates(state, beir, settings)
    encoder = PairEncoder(repo / "qmd_rerank_model" / "1" / "tokenizer.json")
    session = make_session(repo / "qmd_rerank_model" / "1" / "model.onnx")
    state.progress(f"baseline: reranking 40 candidates for {len(candidates)} queries in-process")
    run = {}
    for q, (keys, texts) in candidates.items():
        ids, mask, types = encoder.encode(beir.queries[q], texts)
        logits = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0].reshape(-1)
        run[q] = [keys[i] for i in sorted(range(len(keys)), key=lambda i: -logits[i])]
    return run


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--mode", "modes", type=click.Choice(MODES + ("all",)), multiple=True,
              help="Modes to score (repeatable; `all` for every one). [default: search and vsearch]")
@click.option("--no-expand", is_flag=True, help="With --mode query: score query-no-expand instead.")
@click.option("--no-rerank", is_flag=True, help="With --mode query: score query-no-rerank instead.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the plain baselines: rank_bm25, and the embedding model in-process.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@pass_state
def evaluate(state: State, dataset: Path, modes: tuple[str, ...], no_expand: bool, no_rerank: bool, baseline: bool,
             as_json: bool) -> None:
    """Score search modes on a BEIR-format DATASET: nDCG@10, Recall@10, Recall@100, MRR@10.

    The set is indexed as markdown in its own workspace ($QMD_HOME/eval/NAME, reused
    by later runs); served modes (vsearch, query*) start a server of its own on free
    ports for the run. Modes: search, vsearch, query (expansion + hybrid + rerank),
    query-no-expand, query-no-rerank, query-blend (the position-aware blend fusion).
    """
    if "all" in modes:
        modes = MODES
    if "query" in modes and (no_expand or no_rerank):
        swapped = "query-no-expand" if no_expand else "query-no-rerank"
        modes = tuple(swapped if m == "query" else m for m in modes)
    beir = load_beir(dataset)
    settings, docs = _workspace(state, beir)
    mapping = _index(state, beir, settings, docs)
    chosen = [m for m in MODES if m in modes] if modes else list(DEFAULT_MODES)
    rows: list[dict[str, Any]] = []

    def add(mode: str, run: dict[str, list[str]], started: float) -> None:
        rows.append({"mode": mode, **score_run(beir, run), "seconds": round(time.monotonic() - started, 1)})

    if "search" in chosen:
        started = time.monotonic()
        add("search", _run_search(beir, settings, mapping), started)
        if baseline:
            started = time.monotonic()
            add("baseline: rank_bm25 (BM25Okapi, plain tokens)", bm25_baseline(beir, DEPTH), started)
    served = [m for m in chosen if m != "search"]
    if served:
        server.start(settings, progress=state.progress)
        try:
            _embed_served(state, settings)
            for mode in served:
                state.progress(f"{beir.name}: {mode} for {len(beir.judged_queries())} queries")
                started = time.monotonic()
                if mode == "vsearch":
                    add(mode, _run_served(beir, settings, mapping, "qmd_vsearch", {}), started)
                else:
                    add(mode, _run_served(beir, settings, mapping, "qmd_query", QUERY_OPTIONS[mode]), started)
        finally:
            server.stop(settings)
        if baseline and "vsearch" in served:
            started = time.monotonic()
            add("baseline: in-process embedding (same ONNX, whole document)",
                _vector_baseline(state, beir, settings), started)
        if baseline and any(m.startswith("query") for m in served):
            started = time.monotonic()
            add("baseline: in-process BM25 + embedding, RRF, same cross-encoder", _hybrid_baseline(state, beir, settings),
                started)
    result = {"set": beir.name, "queries": len(beir.judged_queries()), "documents": len(beir.corpus), "rows": rows}
    record_eval(state.settings(), result)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{beir.name}: {result['documents']} documents, {result['queries']} judged queries")
    click.echo(f"| mode | {' | '.join(METRICS)} |\n|---|{'---|' * len(METRICS)}")
    for r in rows:
        click.echo(f"| {r['mode']} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |")
