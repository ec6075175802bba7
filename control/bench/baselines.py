"""What a user would run instead of the server, measured on the same texts in the same run.

Throughput (``qmdctl bench qmd_embed``):

* ``onnxruntime_best``: the same ONNX file in-process, same thread count, every batch size
  in corpus order and length-sorted; the best is the reference (the limit for qmd_embed).
* ``sentence_transformers``: the same model through sentence-transformers (PyTorch).
* ``without_dynamic_batching``: a repository copy whose embedding model has no dynamic
  batcher (and no ragged batching), for the server to be measured against itself.

Quality (``qmdctl eval``):

* ``bm25_run``: rank_bm25's BM25Okapi over title + text with plain tokens.
* ``VectorBaseline``: the embedding model in-process, one vector per whole document.
* ``notebook_hybrid_candidates`` / ``hybrid_run``: both of the above fused by plain RRF, the
  top 40 reranked by the same cross-encoder in-process: what one would build in a notebook.

Example:
    >>> onnxruntime_best(Path("model_repository"), texts, threads=2)["per_s"]
    100.2
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qmd_triton.bench import perf_analyzer as pa
from qmd_triton.bench.datasets import EvalSet, passage_text
from qmd_triton.bench.scoring import top_ids
from qmd_triton.contracts import EMBED, EMBED_MODEL, KIND_DOCUMENT, KIND_QUERY, TOKENIZE
from qmd_triton.index.fingerprint import embedding_setup
from qmd_triton.model_config import parse_config, write_config
from qmd_triton.progress import Progress, silent
from qmd_triton.runtime.onnx import InProcessEmbedder, InProcessReranker
from qmd_triton.search.fusion import RankedList, rrf
from qmd_triton.serving import server
from qmd_triton.settings import Settings
from qmd_triton.system.files import copy_tree_linked
from qmd_triton.system.net import free_ports

HYBRID_CANDIDATES = 40
LIST_DEPTH = 20


# -- throughput ---------------------------------------------------------------------------------


def onnxruntime_best(repo: Path, texts: Sequence[str], threads: int = 2,
                     batch_sizes: Sequence[int] = (1, 8, 16, 32, 64)) -> dict:
    embedder = InProcessEmbedder.from_repository(repo, threads=threads)
    runs = []
    for order in ("corpus", "length-sorted"):
        items = sorted(texts, key=len) if order == "length-sorted" else list(texts)
        for b in batch_sizes:
            embedder.embed(items[:b])  # warm-up
            started = time.perf_counter()
            for i in range(0, len(items), b):
                embedder.embed(items[i : i + b])
            runs.append({"batch": b, "order": order, "per_s": len(items) / (time.perf_counter() - started)})
    best = max(runs, key=lambda r: r["per_s"])
    return {"per_s": best["per_s"], "best": best, "runs": runs, "threads": threads}


def sentence_transformers(source: Path, texts: Sequence[str], threads: int = 2, batch_size: int = 32) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(source), device="cpu")
    model.encode(list(texts[:batch_size]), batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(list(texts), batch_size=batch_size)
    return {"per_s": len(texts) / (time.perf_counter() - started), "batch": batch_size, "threads": threads}


def without_dynamic_batching(repo: Path, target: Path) -> Path:
    """A copy of ``repo`` (large files hard-linked) whose embedding path does not batch across requests."""
    copy_tree_linked(repo, target, names=(TOKENIZE.name, EMBED_MODEL.name, EMBED.name),
                     ignore=("__pycache__", "configs"))
    for name in (TOKENIZE.name, EMBED_MODEL.name):
        path = target / name / "config.pbtxt"
        cfg = parse_config(path)
        cfg.ClearField("dynamic_batching")
        for t in cfg.input:
            t.allow_ragged_batch = False
        write_config(path, cfg, header="# dynamic batching off: the baseline the batcher is measured against\n")
    return target


def embed_baselines(settings: Settings, perf_analyzer: str, protocol: str, input_data: Path, texts: Sequence[str],
                    triton_per_s: float, concurrency: int, measurement_ms: int, work: Path,
                    source: Path | None = None, progress: Progress = silent) -> dict[str, Any]:
    """In-process onnxruntime (best batch), sentence-transformers, and Triton without dynamic batching,
    each with its ratio to ``triton_per_s`` (the server's best row under load)."""
    out: dict[str, Any] = {}
    progress(f"baseline: in-process onnxruntime on {len(texts)} passages (batch sizes 1-64, two orders)")
    ort = onnxruntime_best(settings.model_repository, texts)
    out[f"in-process onnxruntime, best batch ({ort['best']['batch']}, {ort['best']['order']})"] = ort
    if source is not None:
        try:
            progress("baseline: sentence-transformers on the same model")
            out["sentence-transformers (PyTorch, batch 32)"] = sentence_transformers(source, texts)
        except ImportError as e:
            progress(f"baseline: sentence-transformers skipped ({e})")
    progress("baseline: the same Triton models with dynamic batching off")
    repo = without_dynamic_batching(settings.model_repository, work / "no-batching-repo")
    http, grpc, metrics = free_ports(3)
    other = Settings.load(work / "no-batching-home", model_repository=repo, http_port=http, grpc_port=grpc,
                          metrics_port=metrics)
    server.start(other, progress=progress)
    try:
        row = pa.run_once(perf_analyzer, EMBED.name, other.url(protocol), protocol, input_data, concurrency,
                          measurement_ms, work)
    finally:
        server.stop(other)
    out[f"Triton, dynamic batching off (c={concurrency})"] = {"per_s": row.throughput, "p95_us": row.p95_us}
    for v in out.values():
        v["ratio"] = triton_per_s / v["per_s"]
        v["reference"] = {"model": EMBED.name, "concurrency": concurrency, "per_s": triton_per_s}
    return out


# -- quality ------------------------------------------------------------------------------------


def tokenize_plain(text: str) -> list[str]:
    """The plain baseline's analyzer: lower-cased alphanumeric runs."""
    return re.findall(r"\w+", text.lower())


def bm25_run(dataset: EvalSet, k: int = 100) -> dict[str, list[str]]:
    """rank_bm25's BM25Okapi over title + text: what a user would try first."""
    from rank_bm25 import BM25Okapi

    corpus = dataset.texts()
    ids = list(corpus)
    bm25 = BM25Okapi([tokenize_plain(f"{t} {x}") for t, x in corpus.values()])
    run = {}
    for q in dataset.judged_queries():
        scores = bm25.get_scores(tokenize_plain(dataset.queries[q]))
        top = sorted(range(len(ids)), key=lambda i: -scores[i])[:k]
        run[q] = [ids[i] for i in top]
    return run


class VectorBaseline:
    """The embedding model in-process: one vector per whole document (``title. text``), cosine ranking.

    Document vectors are cached per model fingerprint under ``cache_dir``.
    """

    def __init__(self, dataset: EvalSet, repo: Path, cache_dir: Path, progress: Progress = silent) -> None:
        setup = embedding_setup(repo)
        self.dataset = dataset
        self.embedder = InProcessEmbedder.from_repository(repo)
        corpus = dataset.texts()
        self.ids = list(corpus)
        cache = cache_dir / f"baseline-{setup.id}.npy"
        if cache.exists():
            self.matrix = np.load(cache)
        else:
            progress(f"baseline: embedding {len(self.ids)} documents in-process")
            started = time.monotonic()
            self.matrix = self.embedder.embed_batched([passage_text(t, x) for t, x in corpus.values()],
                                                      KIND_DOCUMENT)
            progress(f"baseline: embedded {len(self.ids)} documents at "
                     f"{len(self.ids) / (time.monotonic() - started):.1f}/s (length-sorted batches of 16)")
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, self.matrix)

    def run(self, depth: int) -> dict[str, list[str]]:
        q = self.dataset.judged_queries()
        return {qid: top_ids(self.matrix @ self.embedder.embed([self.dataset.queries[qid]], KIND_QUERY)[0],
                             self.ids, depth) for qid in q}


def notebook_hybrid_candidates(dataset: EvalSet, vectors: VectorBaseline,
                               depth: int = HYBRID_CANDIDATES) -> dict[str, tuple[list[str], list[str]]]:
    """Per judged query, the plain hybrid's top ``depth`` (rank_bm25 top 20 + in-process vectors top 20, RRF):
    their ids and texts (``title. text``), ready for a cross-encoder."""
    bm25 = bm25_run(dataset, LIST_DEPTH)
    vec = vectors.run(LIST_DEPTH)
    corpus = dataset.texts()
    out = {}
    for q in dataset.judged_queries():
        keys = [f.key for f in rrf([RankedList("bm25", 1.0, bm25[q]), RankedList("vec", 1.0, vec[q])])[:depth]]
        out[q] = (keys, [passage_text(*corpus[k]) for k in keys])
    return out


def hybrid_run(dataset: EvalSet, vectors: VectorBaseline, repo: Path, progress: Progress = silent,
               rerank: Callable[[str, list[str]], np.ndarray] | None = None) -> dict[str, list[str]]:
    """The notebook hybrid's candidates ordered by the same cross-encoder, in-process."""
    candidates = notebook_hybrid_candidates(dataset, vectors)
    scores = rerank or InProcessReranker.from_repository(repo).scores
    progress(f"baseline: reranking {HYBRID_CANDIDATES} candidates for {len(candidates)} queries in-process")
    run = {}
    for q, (keys, texts) in candidates.items():
        logits = scores(dataset.queries[q], texts)
        run[q] = [keys[i] for i in sorted(range(len(keys)), key=lambda i: -logits[i])]
    return run
