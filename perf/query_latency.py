"""`query` latency through Triton on real notes and on short passages: cold and warm expansion, one client
and four, and where the server's time goes.

For each set (default: triton-docs, 60 long markdown pages, and msmarco-5k), the set is indexed as
``qmdctl eval`` indexes it (``$QMD_HOME/eval/NAME``; vectors made in-process by the same model), a
fresh server starts, and the judged queries (at most --queries) run through ``qmd_query`` over gRPC:
  cold      expansion on, the index's expansion cache emptied first: every expansion runs the LLM
  warm      the same queries again: expansions come from the cache (the usual case for repeated queries)
  no-expand expansion off
  warm c=4  four clients at once, each running the warm queries: queries/s and p50/p95
  cold c=4  four clients sharing the queries out (each asked once), the cache emptied again
plus each model's share of the server's time (queue + compute) during the cold phase, from Triton's
statistics. The load average is printed with the results: on a shared machine, read ratios.

Usage:
    QMD_HOME=... .venv/bin/python perf/query_latency.py [--sets triton-docs msmarco] [--queries 50]
        [--out perf/results/query_latency.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from qmd_triton.bench.datasets import load_set
from qmd_triton.bench.evaluation import index_set, workspace
from qmd_triton.bench.reports import machine, machine_line
from qmd_triton.index import embedders
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.serving import server
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings, checkout_path, default_datasets

MODELS = ("qmd_plan", "qmd_expand", "qmd_tokenize", "qmd_embed_model", "qmd_retrieve", "qmd_rerank_model",
          "qmd_fuse")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def server_ns(client: QmdClient) -> dict[str, int]:
    out = {}
    for m in MODELS:
        s = client.statistics(m)["model_stats"][0]["inference_stats"]
        out[m] = sum(int(s.get(k, {}).get("ns", 0))
                     for k in ("queue", "compute_input", "compute_infer", "compute_output"))
    return out


def one_client(url: str, queries: list[str], options: dict, sink: list[float]) -> None:
    text = json.dumps(options)
    with QmdClient(url, "grpc", 600) as client:
        for q in queries:
            started = time.perf_counter()
            client.search("qmd_query", q, text)
            sink.append((time.perf_counter() - started) * 1000)


def phase(url: str, queries: list[str], options: dict, clients: int = 1, split: bool = False) -> dict:
    """``clients`` threads; each runs every query starting at its own place in the list (so they do not ask
    the same query at once), or with ``split`` its own share of the list (every query asked once)."""
    sinks: list[list[float]] = [[] for _ in range(clients)]
    shifts = [k * len(queries) // clients for k in range(clients)] + [len(queries)]
    work = [queries[shifts[k]:shifts[k + 1]] if split else queries[shifts[k]:] + queries[:shifts[k]]
            for k in range(clients)]
    threads = [threading.Thread(target=one_client, args=(url, work[k], options, sinks[k])) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = [x for s in sinks for x in s]
    return {"clients": clients, "queries": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "per_second": round(len(ms) / wall, 2)}


def forget_expansions(settings: Settings) -> None:
    with SqliteIndex.open(settings.index_path) as store, store.transaction():
        store.forget_expansions()


def measure(name: str, base: Settings, limit: int) -> dict:
    dataset = load_set(default_datasets() / name)
    settings = workspace(base, dataset)
    index_set(dataset, settings, say)
    with SqliteIndex.open(settings.index_path) as store:
        embedder = embedders.load("onnxruntime", settings)
        embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=16, concurrency=1)
        chunks = store.counts()["chunks"]
    queries = [dataset.queries[q] for q in dataset.judged_queries()][:limit]
    forget_expansions(settings)
    say(f"{name}: starting a server ({chunks} chunks, {len(queries)} queries)")
    server.start(settings)
    url = settings.url("grpc")
    try:
        with QmdClient(url, "grpc", 600) as client:
            client.search("qmd_query", "warm up the models", json.dumps({"n": 10}))
            forget_expansions(settings)
            before = server_ns(client)
            say(f"{name}: cold")
            phases = {"cold": phase(url, queries, {"n": 10})}
            after = server_ns(client)
            say(f"{name}: warm")
            phases["warm"] = phase(url, queries, {"n": 10})
            say(f"{name}: no-expand")
            phases["no-expand"] = phase(url, queries, {"n": 10, "expand": False})
            say(f"{name}: warm, 4 clients")
            phases["warm c=4"] = phase(url, queries, {"n": 10}, clients=4)
            forget_expansions(settings)
            say(f"{name}: cold, 4 clients")
            phases["cold c=4"] = phase(url, queries, {"n": 10}, clients=4, split=True)
    finally:
        server.stop(settings)
    spent = {m: after[m] - before[m] for m in MODELS}
    total = sum(spent.values()) or 1
    return {"set": name, "chunks": chunks, "queries": len(queries), "phases": phases,
            "cold_share": {m: round(spent[m] / total, 3) for m in MODELS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["triton-docs", "msmarco"])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", type=Path, default=checkout_path("perf", "results", "query_latency.json"))
    args = parser.parse_args()
    base = Settings.load()
    start = machine()
    results = [measure(name, base, args.queries) for name in args.sets]
    end = machine()
    print(f"Measured on {machine_line(start)}; load {start['load_avg_1m']:.1f} at the start, "
          f"{end['load_avg_1m']:.1f} at the end.\n")
    print("| set | phase | clients | p50 ms | p95 ms | queries/s |\n|---|---|---|---|---|---|")
    for r in results:
        for name, p in r["phases"].items():
            print(f"| {r['set']} ({r['chunks']} chunks) | {name} | {p['clients']} | {p['p50_ms']:.0f} | "
                  f"{p['p95_ms']:.0f} | {p['per_second']:.2f} |")
    print("\n| model | " + " | ".join(f"{r['set']} share of server time, cold" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for m in MODELS:
        print(f"| {m} | " + " | ".join(f"{r['cold_share'][m]:.1%}" for r in results) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": start, "machine_end": end, "results": results}, indent=2))


if __name__ == "__main__":
    main()
