"""Interactive searches while a full `qmdctl embed` runs, beside the same searches on an idle server.

One server on the set's eval index (``$QMD_HOME/eval/NAME``, built by ``qmdctl eval`` or by this script):
  idle     vsearch (every judged query) and query (the first 20, expansion off, reranked as configured)
  during   the same, while `qmdctl embed --force` re-embeds every chunk through the same server at bulk
           priority (its requests carry Triton priority 2; searches go at the default level 1)
The embed runs as a user would run it, in its own process; the phase ends when the searches do (the embed
is then stopped with Ctrl-C, which stores the batches in flight). Both phases run in one process, one
after the other, so the ratio during/idle is the figure to read; the load average is printed.

Usage:
    QMD_HOME=... .venv/bin/python perf/interactive.py [--set msmarco] [--out perf/results/interactive.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
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


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(client: QmdClient, model: str, queries: list[str], options: dict, alive=lambda: True) -> list[float]:
    out = []
    text = json.dumps(options)
    for q in queries:
        if not alive():
            break
        started = time.perf_counter()
        client.search(model, q, text)
        out.append((time.perf_counter() - started) * 1000)
    return out


def embedded(settings: Settings) -> int:
    with SqliteIndex.open(settings.index_path, readonly=True) as store:
        return int(store.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])


def stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="msmarco")
    parser.add_argument("--query-count", type=int, default=20)
    parser.add_argument("--out", type=Path, default=checkout_path("perf", "results", "interactive.json"))
    args = parser.parse_args()
    dataset = load_set(default_datasets() / args.set)
    settings = workspace(Settings.load(), dataset)
    index_set(dataset, settings, say)
    with SqliteIndex.open(settings.index_path) as store:  # vectors for the idle phase (in-process, same model)
        embedder = embedders.load("onnxruntime", settings)
        embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=16, concurrency=1)
        chunks = store.counts()["chunks"]
    queries = [dataset.queries[q] for q in dataset.judged_queries()]
    env = {**os.environ, "QMD_HOME": str(settings.home), "QMD_MODEL_REPOSITORY": str(settings.model_repository),
           "QMD_HTTP_PORT": str(settings.http_port), "QMD_GRPC_PORT": str(settings.grpc_port),
           "QMD_METRICS_PORT": str(settings.metrics_port)}
    qmdctl = str(Path(sys.executable).with_name("qmdctl"))
    result: dict = {"set": dataset.name, "chunks": chunks, "machine_start": machine()}
    say(f"{dataset.name}: starting a server ({chunks} chunks)")
    server.start(settings)
    try:
        with QmdClient(settings.url("grpc"), "grpc", 600) as client:
            run(client, "qmd_vsearch", queries[:3], {"n": 10})
            run(client, "qmd_query", queries[:2], {"n": 10, "expand": False})
            say("idle: vsearch and query, alternating")
            idle_v: list[float] = []
            idle_q: list[float] = []
            for i, q in enumerate(queries):
                idle_v += run(client, "qmd_vsearch", [q], {"n": 10})
                if i < args.query_count:
                    idle_q += run(client, "qmd_query", [q], {"n": 10, "expand": False})
            result["idle"] = {"vsearch": stats(idle_v), "query": stats(idle_q)}
            say("during: starting `qmdctl embed --force`")

            def alive() -> bool:
                return embed.poll() is None

            log = tempfile.TemporaryFile("w+")  # not a pipe: its progress lines must never block it
            embed = subprocess.Popen([qmdctl, "embed", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=log,
                                     text=True)
            started = time.monotonic()
            while alive() and embedded(settings) == 0:  # past chunking: vectors are being stored
                time.sleep(0.5)
            # vsearch and query alternate, so both meet the embed in the same state
            during_v: list[float] = []
            during_q: list[float] = []
            for i, q in enumerate(queries):
                if not alive():
                    break
                during_v += run(client, "qmd_vsearch", [q], {"n": 10})
                if i < args.query_count:
                    during_q += run(client, "qmd_query", [q], {"n": 10, "expand": False})
            still_running = alive()
            if still_running:
                embed.send_signal(signal.SIGINT)
            embed.wait(timeout=600)
            log.seek(0)
            err = log.read()
            result["during"] = {"vsearch": stats(during_v), "query": stats(during_q),
                                "embed_still_running_at_the_end": still_running,
                                "embed_seconds": round(time.monotonic() - started, 1),
                                "embed_last_line": (err.strip().splitlines() or [""])[-1][:200]}
    finally:
        server.stop(settings)
    result["machine_end"] = machine()
    print(f"{dataset.name}, {chunks} chunks; {machine_line(result['machine_start'])}; load "
          f"{result['machine_start']['load_avg_1m']:.1f} at the start, {result['machine_end']['load_avg_1m']:.1f} "
          "at the end\n")
    print("| | idle p50 / p95 ms | during a full embed p50 / p95 ms | p95 during ÷ idle |\n|---|---|---|---|")
    for kind in ("vsearch", "query"):
        i, d = result["idle"][kind], result["during"][kind]
        ratio = d["p95_ms"] / i["p95_ms"] if d.get("n") and i.get("n") else float("nan")
        print(f"| {kind} (n={i['n']} / {d['n']}) | {i.get('p50_ms')} / {i.get('p95_ms')} | "
              f"{d.get('p50_ms')} / {d.get('p95_ms')} | {ratio:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
