"""``qmdctl eval SET``: retrieval quality on a BEIR-format set, beside plain baselines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from .. import server
from ..client import QmdClient
from ..collections import CollectionConfig
from ..evaluation import METRICS, BeirSet, bm25_baseline, load_beir, score_run, top_ids, write_collection
from ..indexer import embed_pending, embedding_setup, update
from ..search import SearchOptions, search_bm25
from ..settings import Settings
from ..store import IndexStore
from .common import State, emit_json, pass_state

MODES = ("search", "vsearch")
DEPTH = 100


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


def _run_vsearch(state: State, beir: BeirSet, settings: Settings, mapping: dict[str, str]) -> dict[str, list[str]]:
    setup = embedding_setup(settings.model_repository)
    server.start(settings, progress=state.progress)
    try:
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
        run = {}
        options = SearchOptions(n=DEPTH).to_json()
        with QmdClient(settings.url("grpc"), "grpc", settings.request_timeout_s) as client:
            for q in beir.judged_queries():
                run[q] = [mapping[h["path"]] for h in client.search("qmd_vsearch", beir.queries[q], options)]
        return run
    finally:
        server.stop(settings)


def _vector_baseline(state: State, beir: BeirSet, settings: Settings) -> dict[str, list[str]]:
    """The same ONNX model in-process: one embedding per document (title + text), cosine."""
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
    run = {}
    for q in beir.judged_queries():
        scores = matrix @ embed([beir.queries[q]], "query")[0]
        run[q] = top_ids(scores, ids, DEPTH)
    return run


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--mode", "modes", type=click.Choice(MODES), multiple=True,
              help="Modes to score (repeatable). [default: search and vsearch]")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the plain baselines: rank_bm25, and the embedding model in-process.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@pass_state
def evaluate(state: State, dataset: Path, modes: tuple[str, ...], baseline: bool, as_json: bool) -> None:
    """Score search modes on a BEIR-format DATASET: nDCG@10, Recall@10, Recall@100, MRR@10.

    The set is indexed as markdown in its own workspace ($QMD_HOME/eval/NAME, reused
    by later runs); vsearch starts a server of its own on free ports for the run.
    """
    beir = load_beir(dataset)
    settings, docs = _workspace(state, beir)
    mapping = _index(state, beir, settings, docs)
    rows: list[dict[str, Any]] = []
    for mode in modes or MODES:
        started = time.monotonic()
        if mode == "search":
            run = _run_search(beir, settings, mapping)
            base_name, base = "rank_bm25 (BM25Okapi, plain tokens)", (lambda: bm25_baseline(beir, DEPTH))
        else:
            run = _run_vsearch(state, beir, settings, mapping)
            base_name, base = "in-process embedding (same ONNX, whole document)", (
                lambda: _vector_baseline(state, beir, settings))
        rows.append({"mode": mode, **score_run(beir, run), "seconds": round(time.monotonic() - started, 1)})
        if baseline:
            started = time.monotonic()
            rows.append({"mode": f"baseline: {base_name}", **score_run(beir, base()),
                         "seconds": round(time.monotonic() - started, 1)})
    result = {"set": beir.name, "queries": len(beir.judged_queries()), "documents": len(beir.corpus), "rows": rows}
    if as_json:
        emit_json(result)
        return
    click.echo(f"{beir.name}: {result['documents']} documents, {result['queries']} judged queries")
    click.echo(f"| mode | {' | '.join(METRICS)} |\n|---|{'---|' * len(METRICS)}")
    for r in rows:
        click.echo(f"| {r['mode']} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |")
