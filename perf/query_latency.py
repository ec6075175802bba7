"""Latency of ``qmd_query`` through Triton, one query at a time, and where the time goes.

For each BEIR set (indexed by ``qmdctl eval`` into ``$QMD_HOME/eval/NAME``), a fresh
server answers every judged query three ways, in this order:
  cold      expansion on, the response cache empty (every query is new to the server)
  warm      the same queries again: qmd_expand answers from Triton's response cache
  no-expand expansion off
and reports p50 / p95 per phase plus each composing model's share of the server-side
time (queue + compute, from Triton's statistics) during the cold phase.

Usage:
    QMD_HOME=... .venv/bin/python perf/query_latency.py ../shared/datasets/msmarco ../shared/datasets/dbpedia

Writes ``perf/results/query_latency.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from qmd_triton.bench.datasets import load_set
from qmd_triton.serving import server
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings, checkout_path
from qmd_triton.system.net import free_ports

MODELS = ("qmd_expand", "qmd_tokenize", "qmd_embed_model", "qmd_retrieve", "qmd_rerank_model", "qmd_fuse")


def server_ns(client: QmdClient) -> dict[str, int]:
    out = {}
    for m in MODELS:
        s = client.statistics(m)["model_stats"][0]["inference_stats"]
        out[m] = sum(int(s.get(k, {}).get("ns", 0))
                     for k in ("queue", "compute_input", "compute_infer", "compute_output"))
    return out


def phase(client: QmdClient, queries: list[str], options: dict) -> list[float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        client.search("qmd_query", q, json.dumps(options))
        times.append((time.perf_counter() - started) * 1000)
    return times


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=checkout_path("perf", "results", "query_latency.json"))
    args = ap.parse_args()
    results = {}
    for dataset in args.datasets:
        beir = load_set(dataset)
        home = Settings.load().home / "eval" / beir.name
        if not (home / "index.sqlite").exists():
            sys.exit(f"{home} has no index: run `qmdctl eval {dataset} --mode vsearch` first")
        http, grpc, metrics = free_ports(3)
        settings = Settings.load(home, http_port=http, grpc_port=grpc, metrics_port=metrics)
        queries = [beir.queries[q] for q in beir.judged_queries()]
        print(f"{beir.name}: starting a fresh server (empty response cache)", file=sys.stderr)
        server.start(settings)
        try:
            with QmdClient(settings.url("grpc"), "grpc", 300) as client:
                before = server_ns(client)
                print(f"{beir.name}: cold ({len(queries)} queries)", file=sys.stderr)
                cold = phase(client, queries, {"n": 10})
                after = server_ns(client)
                print(f"{beir.name}: warm", file=sys.stderr)
                warm = phase(client, queries, {"n": 10})
                print(f"{beir.name}: no-expand", file=sys.stderr)
                plain = phase(client, queries, {"n": 10, "expand": False})
        finally:
            server.stop(settings)
        spent = {m: after[m] - before[m] for m in MODELS}
        total = sum(spent.values())
        results[beir.name] = {
            "queries": len(queries),
            "phases": {name: {"p50_ms": pct(t, 50), "p95_ms": pct(t, 95), "mean_ms": float(np.mean(t))}
                       for name, t in (("cold", cold), ("warm", warm), ("no-expand", plain))},
            "cold_share": {m: spent[m] / total for m in MODELS},
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(f"\n{name} ({r['queries']} queries, one at a time)\n\n| phase | p50 ms | p95 ms |\n|---|---|---|")
        for phase_name, p in r["phases"].items():
            print(f"| {phase_name} | {p['p50_ms']:.0f} | {p['p95_ms']:.0f} |")
        print("\n| model | share of server time (cold) |\n|---|---|")
        for m, share in r["cold_share"].items():
            print(f"| {m} | {share:.1%} |")


if __name__ == "__main__":
    main()
