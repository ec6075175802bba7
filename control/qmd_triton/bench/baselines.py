"""What a user would run instead of the server, measured on the same texts in the same run.

Throughput (``qmdctl bench qmd_embed``):

* ``onnxruntime_best``: the same ONNX file in-process, same thread count, every batch size
  in corpus order and length-sorted; the best is the reference (the limit for qmd_embed).
* ``sentence_transformers``: the same model through sentence-transformers (PyTorch).
* ``without_dynamic_batching``: a repository copy whose embedding model has no dynamic
  batcher (and no ragged batching), for the server to be measured against itself.

Quality (``qmdctl eval``):

* ``bm25_run``: rank_bm25's BM25Okapi over title + text with plain tokens.
* ``VectorBaseline``: the embedding model in-process over plainly split chunks (200-word windows),
  a document ranked by its best chunk.
* ``notebook_hybrid_candidates`` / ``hybrid_run``: both of the above fused by plain RRF, the
  top 20 reranked on their best chunks by the same cross-encoder in-process: what one would build
  in a notebook.

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

HYBRID_CANDIDATES = 20  # what a CLI query reranks (search/options.py CANDIDATES)
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
    with server.private(other, progress=progress):
        row = pa.run_once(perf_analyzer, EMBED.name, other.url(protocol), protocol, input_data, concurrency,
                          measurement_ms, work)
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


SPLIT_WORDS = 200  # the plain splitter's window (a common notebook default of ~1,000 characters) ...
SPLIT_OVERLAP = 40  # ... and its overlap
SPLITTER = f"words-{SPLIT_WORDS}-{SPLIT_OVERLAP}"


def split_words(text: str, size: int = SPLIT_WORDS, overlap: int = SPLIT_OVERLAP) -> list[str]:
    """What a notebook splitter does: windows of ``size`` whitespace words, ``overlap`` words shared, markdown
    ignored (the baseline sees the file as written)."""
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)]
    step = size - overlap
    return [" ".join(words[i : i + size]) for i in range(0, len(words) - overlap, step)]


class VectorBaseline:
    """The embedding model in-process over plainly split chunks (``title. text`` for a BEIR passage, the file as
    written for a markdown page), a document ranked by its best chunk's cosine.

    Chunk vectors are cached per model fingerprint and splitter under ``cache_dir``.
    """

    def __init__(self, dataset: EvalSet, repo: Path, cache_dir: Path, progress: Progress = silent) -> None:
        setup = embedding_setup(repo)
        self.dataset = dataset
        self.embedder = InProcessEmbedder.from_repository(repo)
        corpus = dataset.texts()
        self.ids = list(corpus)
        self.chunks: list[str] = []
        owner: list[int] = []
        for i, (title, text) in enumerate(corpus.values()):
            for chunk in split_words(passage_text(title, text)):
                self.chunks.append(chunk)
                owner.append(i)
        self.owner = np.array(owner)
        cache = cache_dir / f"baseline-{setup.id}-{SPLITTER}.npy"
        if cache.exists() and len(np.load(cache, mmap_mode="r")) == len(self.chunks):
            self.matrix = np.load(cache)
        else:
            progress(f"baseline: embedding {len(self.chunks)} chunks of {len(self.ids)} documents in-process")
            started = time.monotonic()
            self.matrix = self._embed_all(progress)
            progress(f"baseline: embedded {len(self.chunks)} chunks at "
                     f"{len(self.chunks) / (time.monotonic() - started):.1f}/s (length-sorted batches of 16)")
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, self.matrix)

    def _embed_all(self, progress: Progress) -> np.ndarray:
        step = 1024
        parts = []
        for start in range(0, len(self.chunks), step):
            parts.append(self.embedder.embed_batched(self.chunks[start : start + step], KIND_DOCUMENT))
            if start + step < len(self.chunks):
                progress(f"baseline: embedded {start + step}/{len(self.chunks)} chunks")
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def ranked(self, query: str, depth: int) -> list[tuple[str, int]]:
        """The ``depth`` best documents for a query, each with the index of its best chunk."""
        scores = self.matrix @ self.embedder.embed([query], KIND_QUERY)[0]
        best: dict[int, int] = {}
        for row in np.argsort(-scores, kind="stable"):
            doc = int(self.owner[row])
            if doc not in best:
                best[doc] = int(row)
                if len(best) >= depth:
                    break
        return [(self.ids[d], r) for d, r in best.items()]

    def run(self, depth: int) -> dict[str, list[str]]:
        return {qid: [k for k, _ in self.ranked(self.dataset.queries[qid], depth)]
                for qid in self.dataset.judged_queries()}


def notebook_hybrid_candidates(dataset: EvalSet, vectors: VectorBaseline,
                               depth: int = HYBRID_CANDIDATES) -> dict[str, tuple[list[str], list[str]]]:
    """Per judged query, the plain hybrid's top ``depth`` (rank_bm25 top 20 + in-process vectors top 20, RRF):
    their ids and the passage a notebook would rerank, the document's best chunk by vector (its first chunk
    when only BM25 found it)."""
    bm25 = bm25_run(dataset, LIST_DEPTH)
    first = {vectors.ids[int(d)]: i for i, d in reversed(list(enumerate(vectors.owner)))}
    out = {}
    for q in dataset.judged_queries():
        ranked = vectors.ranked(dataset.queries[q], LIST_DEPTH)
        best_chunk = dict(ranked)
        keys = [f.key for f in rrf([RankedList("bm25", 1.0, bm25[q]),
                                    RankedList("vec", 1.0, [k for k, _ in ranked])])[:depth]]
        out[q] = (keys, [vectors.chunks[best_chunk.get(k, first[k])] for k in keys])
    return out


def hybrid_run(dataset: EvalSet, vectors: VectorBaseline, repo: Path, progress: Progress = silent,
               rerank: Callable[[str, list[str]], np.ndarray] | None = None) -> dict[str, list[str]]:
    """The notebook hybrid's candidates ordered by the same cross-encoder, in-process; progress every 10 queries."""
    candidates = notebook_hybrid_candidates(dataset, vectors)
    scores = rerank or InProcessReranker.from_repository(repo, threads=2).scores
    progress(f"baseline: reranking {HYBRID_CANDIDATES} candidates (each its best chunk) for {len(candidates)} "
             "queries in-process")
    run = {}
    for n, (q, (keys, texts)) in enumerate(candidates.items(), 1):
        logits = scores(dataset.queries[q], texts)
        run[q] = [keys[i] for i in sorted(range(len(keys)), key=lambda i: -logits[i])]
        if n % 10 == 0 and n < len(candidates):
            progress(f"baseline: reranked {n}/{len(candidates)} queries")
    return run
