"""Both index backends side by side at 100k and 1M chunks: vsearch, search and the retrieval step of query
(p50, p95), build time, memory, and the recall@10 of the milvus backend's ANN index against exact search.

Data. Real vectors from the shared sets, replicated with small noise (said in every report): the 10,000
msmarco and dbpedia passages are embedded once in-process with the repository's embedding model (the ONNX
file qmd_embed_model serves; cached under ``$QMD_HOME/milvus-scale``); chunk i is passage ``i mod 10000`` with
a line ``ref i`` added (so every chunk text, and its vector key, is distinct) and the vector
``normalize(v + sigma * g)``, g standard normal per dimension (``--noise``, default 0.01: cosine to the
original ~0.98). One document per chunk. Queries: the 100 judged msmarco and dbpedia queries, embedded the
same way.

Measured per backend and size (one process, one client, nothing else running):
  build        writing every document, chunk and vector through the backend's bulk calls (sqlite: one
               transaction; milvus: batched inserts, then flush and index build until the first search answers)
  vsearch      ``VectorSearch.search`` (what qmd_retrieve runs for qmd_vsearch, the
               query vector given): documents by best chunk, snippets, docids
  search       ``search_bm25`` (qmd_search): BM25 over the same texts
  query        ``hybrid_candidates`` for the original query (BM25 list + vector list, RRF, best chunk per
               candidate): qmd_retrieve's share of qmd_query; expansion and rerank cost the same on both backends
  recall@10    milvus: the ANN's 10 nearest chunks against the exact 10 (numpy over the same matrix), at each
               ``--ef`` (HNSW's search list)
  status       ``counts()``, what ``qmdctl status`` and every metrics-exporter scrape read
  memory       the searching process's RSS growth after its first vsearch (what a qmd_retrieve instance holds:
               sqlite loads the vector matrix, milvus nothing) and the Milvus Lite server's RSS

Usage:
    QMD_HOME=/tmp/scale-home .venv/bin/python perf/milvus_scale.py --chunks 100000 [--chunks 1000000]
        [--backends sqlite milvus] [--queries 100] [--ef 32 64 128 256] [--json out.json]
        [--build-only] [--reuse]    # build now (under other load), measure later alone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qmd_triton.bench.datasets import load_set, passage_text
from qmd_triton.bench.reports import machine_line
from qmd_triton.contracts import KIND_DOCUMENT, KIND_QUERY
from qmd_triton.index.config import IndexConfig
from qmd_triton.index.fingerprint import embedding_setup
from qmd_triton.index.milvus.index import MilvusIndex
from qmd_triton.index.milvus.schema import chunk_id_of
from qmd_triton.index.rows import FINGERPRINT_KEY, ChunkRow
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.runtime.onnx import InProcessEmbedder
from qmd_triton.search.hybrid import Plan, hybrid_candidates
from qmd_triton.search.lexical import search_bm25
from qmd_triton.search.options import SearchOptions
from qmd_triton.search.vectors import VectorSearch
from qmd_triton.serving import milvus_lite
from qmd_triton.settings import Settings, default_datasets

COLLECTION = "scale"
BATCH = 2000


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def base_data(settings: Settings, cache: Path, limit: int = 0) -> tuple[list[tuple[str, str]], np.ndarray, list[str],
                                                                      np.ndarray]:
    """The shared passages (title, text) with their vectors, and the judged queries with theirs. A set's
    passage vectors come from ``qmdctl eval``'s baseline cache in this home when it holds them (the same
    model, the same ``title. text``), else they are embedded here."""
    repo = settings.model_repository
    setup = embedding_setup(repo)
    passages: list[tuple[str, str]] = []
    queries: list[str] = []
    blocks: list[np.ndarray] = []
    embedder = None
    for name in ("msmarco", "dbpedia"):
        data = load_set(default_datasets() / name)
        texts = list(data.texts().values())
        queries += [data.queries[q] for q in data.judged_queries()]
        if limit:
            texts = texts[: max(0, limit - len(passages))]
        passages += texts
        if not texts:
            continue
        cached = settings.home / "eval" / name / f"baseline-{setup.id}.npy"
        mine = cache / f"base-{setup.id}-{name}-{len(texts)}.npy"
        for path in (mine, cached):  # an earlier run's own vectors first: a reused index holds exactly those
            if path.exists() and len(matrix := np.load(path)) >= len(texts):
                blocks.append(matrix[: len(texts)])
                say(f"{name}: {len(texts)} passage vectors from {path}")
                break
        else:
            embedder = embedder or InProcessEmbedder.from_repository(repo)
            say(f"{name}: embedding {len(texts)} passages in-process (cached in {mine})")
            started = time.monotonic()
            blocks.append(embedder.embed_batched([passage_text(t, x) for t, x in texts], KIND_DOCUMENT))
            say(f"embedded in {time.monotonic() - started:.0f}s")
            cache.mkdir(parents=True, exist_ok=True)
            np.save(mine, blocks[-1])
    embedder = embedder or InProcessEmbedder.from_repository(repo)
    qs = embedder.embed_batched(queries, KIND_QUERY)
    return passages, np.concatenate(blocks), queries, qs


def replicate(base: np.ndarray, n: int, noise: float, seed: int = 7) -> np.ndarray:
    """n unit vectors: base row i mod len(base) plus N(0, noise^2) per dimension, normalized."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        block = base[np.arange(start, stop) % len(base)] + rng.standard_normal((stop - start, base.shape[1]),
                                                                                dtype=np.float32) * noise
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def document(i: int, n: int, passages: list[tuple[str, str]]) -> tuple[tuple, ChunkRow]:
    title, text = passages[i % len(passages)]
    body = f"# {title or 'Passage'}\n\n{text}\n\nref {i}\n"
    h = hashlib.sha256(f"{n}:{i}:{body}".encode()).hexdigest()
    lines = body.count("\n")
    item = (COLLECTION, f"{i // 1000:04d}/{i}.md", title or "Passage", h, body, len(body), 0)
    chunk = ChunkRow(chunk_id_of(h, 0), h, 0, 1, lines, len(body.split()), body, "")
    return item, chunk


def build_sqlite(path: Path, n: int, passages, vectors: np.ndarray, fingerprint: dict) -> float:
    from qmd_triton.index.rows import text_hash

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.monotonic()
    with SqliteIndex.open(path, create=True) as store, store.transaction():
        store.set_meta(FINGERPRINT_KEY, json.dumps(fingerprint, sort_keys=True))
        for start in range(0, n, BATCH):
            rows = [document(i, n, passages) for i in range(start, min(n, start + BATCH))]
            store.upsert_documents([item for item, _ in rows])
            for _, chunk in rows:
                store.add_chunks(chunk.hash, [chunk])
            store.add_vectors([(text_hash(c.text), vectors[start + j]) for j, (_, c) in enumerate(rows)])
        store.mark_updated(COLLECTION)
    return time.monotonic() - started


def build_milvus(config: IndexConfig, n: int, passages, vectors: np.ndarray, fingerprint: dict,
                 batch: int = BATCH) -> float:
    started = time.monotonic()
    with MilvusIndex.open(config, create=True) as index, index.bulk_load():  # as `index migrate` writes
        index.set_meta(FINGERPRINT_KEY, json.dumps(fingerprint, sort_keys=True))
        for start in range(0, n, batch):
            rows = [document(i, n, passages) for i in range(start, min(n, start + batch))]
            index.upsert_documents([item for item, _ in rows])
            index.insert_chunks([(c, vectors[start + j]) for j, (_, c) in enumerate(rows)])
            if start and start % (batch * 25) == 0:
                say(f"  milvus: {start}/{n} in {time.monotonic() - started:.0f}s")
        index.mark_updated(COLLECTION)
        index.client.flush(index.docs)
        index.after_embed()  # flush the chunks: Milvus builds the index on sealed segments
        index.nearest_chunks(vectors[0], 10)  # the first search answers once the index is loaded
    return time.monotonic() - started


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def timed(fn, items) -> list[float]:
    out = []
    for x in items:
        t = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(pct(ms, 95), 2), "n": len(ms)}


def measure(store, vectors_search, queries: list[str], qvecs: np.ndarray, with_status: bool = True) -> dict:
    rss0 = rss_bytes()
    vectors_search.search(qvecs[0], SearchOptions(n=10))  # warm: sqlite loads its matrix here
    grown = rss_bytes() - rss0
    idx = list(range(len(queries)))
    out = {
        "vsearch": summary(timed(lambda i: vectors_search.search(qvecs[i], SearchOptions(n=10)), idx)),
        "search": summary(timed(lambda i: search_bm25(store, queries[i], SearchOptions(n=10)), idx)),
        "query_retrieve": summary(timed(lambda i: hybrid_candidates(
            store, Plan(queries[i], options={"n": 10}), qvecs[i : i + 1]), idx)),
        "searcher_rss_growth_mb": round(grown / 2**20, 1),
    }
    say(f"    {json.dumps(out)}")
    if with_status:
        started = time.perf_counter()
        store.counts()  # what `qmdctl status` and the metrics exporter read
        out["status_s"] = round(time.perf_counter() - started, 2)
    return out


def recall(index: MilvusIndex, matrix: np.ndarray, qvecs: np.ndarray, ids: np.ndarray, efs: list[int]) -> dict:
    """recall@10 of Milvus's ANN against exact inner product over the same rows, and its latency, per ef."""
    exact = []
    for q in qvecs:
        scores = matrix @ q
        top = np.argpartition(-scores, 10)[:10]
        exact.append(set(ids[top].tolist()))
    out = {}
    for ef in efs:
        got, ms = [], []
        for q in qvecs:
            t = time.perf_counter()
            hits = index.client.search(index.chunks, data=[q.tolist()], anns_field="embedding", limit=10,
                                       output_fields=["id"],
                                       search_params={"metric_type": "IP", "params": {"ef": ef}})[0]
            ms.append((time.perf_counter() - t) * 1000)
            got.append({int(h["id"]) for h in hits})
        r = float(np.mean([len(g & e) / 10 for g, e in zip(got, exact)]))
        out[str(ef)] = {"recall_at_10": round(r, 4), "ann_p50_ms": round(statistics.median(ms), 2),
                        "ann_p95_ms": round(pct(ms, 95), 2)}
        say(f"  ef={ef}: recall@10 {r:.4f}, ANN p50 {statistics.median(ms):.1f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, action="append", help="sizes (repeat); default 100000")
    ap.add_argument("--backends", nargs="+", default=["sqlite", "milvus"], choices=["sqlite", "milvus"])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--base", type=int, default=0, help="use only the first N passages (a quick trial)")
    ap.add_argument("--build-only", action="store_true", help="build the indexes and stop (measure later)")
    ap.add_argument("--reuse", action="store_true",
                    help="measure an index an earlier run built completely (its build time is reported)")
    ap.add_argument("--no-status", action="store_true", help="skip timing counts() (minutes on Milvus Lite at 100k)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--uri", default="", help="measure on this Milvus (e.g. perf/milvus_lite_cpp.py's) instead of "
                    "a Milvus Lite started here; its collections scale_* are replaced unless --reuse")
    ap.add_argument("--server-pid", type=int, default=0, help="with --uri: the Milvus process, for its RSS")
    ap.add_argument("--vector-index", default="HNSW", help="the chunks' ANN index ([index] vector_index)")
    ap.add_argument("--batch", type=int, default=BATCH, help="rows per insert call")
    args = ap.parse_args()
    settings = Settings.load()
    work = settings.home / "milvus-scale"
    passages, base, queries, qvecs = base_data(settings, work, args.base)
    queries, qvecs = queries[: args.queries], qvecs[: args.queries]
    fingerprint = embedding_setup(settings.model_repository).fingerprint
    results = {"machine": machine_line(), "load_before": os.getloadavg(), "noise_sigma": args.noise,
               "base_vectors": len(base), "queries": len(queries), "sizes": {}}
    for n in args.chunks or [100000]:
        say(f"{n} chunks: replicating {len(base)} real vectors with noise sigma={args.noise}")
        matrix = replicate(base, n, args.noise)
        row: dict = {}
        if "sqlite" in args.backends:
            path = work / f"sqlite-{n}.sqlite"
            built = _built(work / f"sqlite-{n}.built", args.reuse)
            if built is None:
                say(f"  sqlite: building {path}")
                built = _record(work / f"sqlite-{n}.built", build_sqlite(path, n, passages, matrix, fingerprint))
            row["sqlite"] = {"build_s": built, "file_mb": round(path.stat().st_size / 2**20, 1)}
            if not args.build_only:
                with SqliteIndex.open(path) as store:
                    row["sqlite"].update(measure(store, VectorSearch(store), queries, qvecs, not args.no_status))
            say(f"  sqlite: {json.dumps(row['sqlite'])}")
        if "milvus" in args.backends:
            row["milvus"] = measure_milvus(args, work, n, passages, matrix, fingerprint, queries, qvecs)
        row["load_after"] = os.getloadavg()
        results["sizes"][str(n)] = row
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def measure_milvus(args, work: Path, n: int, passages, matrix: np.ndarray, fingerprint: dict, queries, qvecs) -> dict:
    """Builds (or reuses) the scale index on Milvus Lite started here, or on the Milvus at ``--uri``, and
    measures it."""
    home = work / f"milvus-{n}" if not args.uri else work / f"milvus-uri-{n}"
    config = IndexConfig(home=home, backend="milvus", prefix="scale", uri=args.uri, vector_index=args.vector_index)
    marker = home.with_suffix(".built")
    built = _built(marker, args.reuse)
    pid = args.server_pid
    if not args.uri:
        milvus_lite.stop(config, timeout_s=30)
        if built is None:
            import shutil

            shutil.rmtree(home / "milvus", ignore_errors=True)
        state = milvus_lite.ensure_running(config)
        assert state is not None
        pid = state.pid
    elif built is None:
        client = MilvusIndex._client(config)
        try:
            for name in MilvusIndex.TABLES:
                client.drop_collection(f"{config.prefix}_{name}")
        finally:
            client.close()
    try:
        if built is None:
            say(f"  milvus: building in {config.describe()} (server pid {pid or '?'})")
            built = _record(marker, build_milvus(config, n, passages, matrix, fingerprint, args.batch))
        else:
            started = time.monotonic()
            with MilvusIndex.open(config) as index:
                index.nearest_chunks(matrix[0], 10)
            say(f"  milvus: reopened the built index in {time.monotonic() - started:.0f}s")
        out: dict = {"build_s": built, "where": config.describe(), "vector_index": args.vector_index}
        if not args.build_only:
            ids = np.array([document(i, n, passages)[1].id for i in range(n)], dtype=np.int64)
            with MilvusIndex.open(config) as index:
                out.update(measure(index, VectorSearch(index), queries, qvecs, not args.no_status))
                out["recall"] = recall(index, matrix, qvecs, ids, args.ef)
        if pid:
            out["server_rss_mb"] = round(rss_bytes(pid) / 2**20, 1)
        say(f"  milvus: {json.dumps(out)}")
        return out
    finally:
        if not args.uri:
            milvus_lite.stop(config, timeout_s=120)


def _built(marker: Path, reuse: bool) -> float | None:
    """The build time an earlier complete build recorded, when reusing it."""
    if reuse and marker.exists():
        return float(json.loads(marker.read_text())["build_s"])
    marker.unlink(missing_ok=True)
    return None


def _record(marker: Path, seconds: float) -> float:
    marker.write_text(json.dumps({"build_s": round(seconds, 1), "at": time.time()}))
    return round(seconds, 1)


if __name__ == "__main__":
    main()
