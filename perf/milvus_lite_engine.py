"""Where a Milvus Lite search spends its time: the whole ``search`` call against the ANN probe alone, at N rows.

Milvus Lite (the ``milvus-lite`` 3.x wheel) is a Python engine over FAISS. This script opens its engine in this
process (no gRPC, no qmd code), writes N random unit 384-d vectors into a minimal collection (``id``,
``embedding``), builds an ANN index (IVF_FLAT nlist 1024 by default: fast to build at 1M rows on 2 cores; the
per-row work it exposes does not depend on the index type), and times, per query, Milvus Lite's
``Collection.search`` (what a ``vsearch`` on the milvus backend waits for at least) and the FAISS index probes of
every segment alone. The difference is the engine's own work around the index.

Usage:
    .venv/bin/python perf/milvus_lite_engine.py --rows 100000 [--rows 1000000] [--index HNSW] [--dir /tmp/x]

Needs about 7 GB of memory and 10+ minutes at 1M rows on 2 cores. Prints one line per size (stdout) and
progress on stderr; removes its data directory unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DIM = 384
BATCH = 20_000
QUERIES = 30


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def measure(rows: int, index: str, where: Path, keep: bool) -> dict:
    from milvus_lite.db import MilvusLite
    from milvus_lite.schema.types import CollectionSchema, DataType, FieldSchema

    shutil.rmtree(where, ignore_errors=True)
    db = MilvusLite(str(where))
    try:
        schema = CollectionSchema(fields=[FieldSchema("id", DataType.INT64, is_primary=True),
                                          FieldSchema("embedding", DataType.FLOAT_VECTOR, dim=DIM)])
        collection = db.create_collection("vectors", schema)
        rng = np.random.default_rng(1)
        centres = rng.standard_normal((BATCH, DIM)).astype(np.float32)
        started = time.perf_counter()
        for first in range(0, rows, BATCH):
            block = centres + 0.3 * rng.standard_normal(centres.shape).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            count = min(BATCH, rows - first)
            collection.insert([{"id": first + i, "embedding": v} for i, v in enumerate(block[:count].tolist())])
            say(f"inserted {first + count}/{rows} rows")
        collection.flush()
        insert_s = time.perf_counter() - started
        started = time.perf_counter()
        params = {"nlist": 1024} if index == "IVF_FLAT" else {"M": 16, "efConstruction": 200}
        collection.create_index("embedding", {"index_type": index, "metric_type": "IP", "params": params})
        collection.load()
        index_s = time.perf_counter() - started
        say(f"index {index} built and loaded in {index_s:.1f} s")
        search_params = {"nprobe": 16} if index == "IVF_FLAT" else {"ef": 64}
        segments, _ = collection._read_snapshot()  # the engine's own view: what its executor searches
        queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for q in queries[:3]:
            collection.search([q.tolist()], top_k=10, anns_field="embedding", search_params=search_params)
        whole, probe = [], []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            collection.search([q.tolist()], top_k=10, anns_field="embedding", search_params=search_params)
            whole.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for segment in segments:
                segment.indexes["embedding"].search(queries[i:i + 1], 10, valid_mask=None, params=search_params)
            probe.append(time.perf_counter() - t0)
        return {
            "rows": rows, "index": index, "segments": len(segments), "insert_s": round(insert_s, 1),
            "index_s": round(index_s, 1),
            "search_p50_ms": round(1000 * statistics.median(whole), 1),
            "search_p95_ms": round(1000 * percentile(whole, 0.95), 1),
            "probe_p50_ms": round(1000 * statistics.median(probe), 2),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "load": round(os.getloadavg()[0], 1),
        }
    finally:
        db.close()
        if not keep:
            shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="collection size (repeatable; default 100000)")
    parser.add_argument("--index", choices=["IVF_FLAT", "HNSW"], default="IVF_FLAT")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/milvus-lite-engine"))
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    import milvus_lite

    say(f"Milvus Lite {getattr(milvus_lite, '__version__', '?')}, {os.cpu_count()} CPUs")
    for rows in args.rows or [100_000]:
        r = measure(rows, args.index, args.dir / str(rows), args.keep)
        print(f"{r['rows']:>9} rows {r['index']} ({r['segments']} segments): search p50 {r['search_p50_ms']} ms "
              f"p95 {r['search_p95_ms']} ms | index probes alone p50 {r['probe_p50_ms']} ms | insert "
              f"{r['insert_s']} s, index {r['index_s']} s | max RSS {r['max_rss_mb']} MB | load {r['load']}",
              flush=True)


if __name__ == "__main__":
    main()
