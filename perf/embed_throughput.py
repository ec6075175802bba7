"""Bulk embedding through the served ``qmd_embed``, model against model, as ``qmdctl embed --force`` runs it.

For each model repository given (a label and a path: the project's, or a copy exported with
``qmdctl export --only embedding --embedding-model NAME``) and each set, the set is indexed in a home of its
own (``$QMD_HOME/embed-throughput/LABEL-SET``), a server starts on free ports, and every chunk is embedded
twice with ``embed --force`` (the first run warms the server; the second is timed). Repositories alternate
per set, so machine noise spreads over all of them; the load average is printed with the results.

Usage:
    QMD_HOME=... .venv/bin/python perf/embed_throughput.py --repo minilm=model_repository \\
        --repo bge=/tmp/bge_repo [--sets triton-docs msmarco]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qmd_triton.bench.datasets import load_set
from qmd_triton.bench.evaluation import index_set
from qmd_triton.bench.reports import machine, machine_line
from qmd_triton.index.fingerprint import embedding_setup
from qmd_triton.serving import server
from qmd_triton.serving.client import embed_index
from qmd_triton.settings import Settings, default_datasets
from qmd_triton.system.net import free_ports


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(label: str, repo: Path, name: str, base: Settings) -> dict:
    dataset = load_set(default_datasets() / name)
    http, grpc, metrics = free_ports(3)
    settings = Settings.load(base.home / "embed-throughput" / f"{label}-{name}", model_repository=repo,
                             http_port=http, grpc_port=grpc, metrics_port=metrics)
    index_set(dataset, settings, say)
    server.start(settings, progress=say)
    try:
        embed_index(settings, force=True)  # warm-up: the first requests load the sessions
        started = time.monotonic()
        report = embed_index(settings, force=True)
        seconds = time.monotonic() - started
    finally:
        server.stop(settings)
    setup = embedding_setup(repo)
    say(f"{label}/{name}: {report.embedded} chunks in {seconds:.1f} s")
    return {"model": label, "set": name, "chunks": report.embedded, "chunk_tokens": setup.chunk_tokens,
            "seconds": round(seconds, 1), "chunks_per_s": round(report.embedded / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", required=True, help="LABEL=PATH of a model repository")
    parser.add_argument("--sets", nargs="+", default=["triton-docs", "msmarco"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    repos = [(r.split("=", 1)[0], Path(r.split("=", 1)[1]).resolve()) for r in args.repo]
    base = Settings.load()
    start = machine()
    rows = []
    for k, name in enumerate(args.sets):
        for label, repo in (repos if k % 2 == 0 else repos[::-1]):
            rows.append(measure(label, repo, name, base))
    end = machine()
    print(f"Measured on {machine_line(start)}; load {start['load_avg_1m']:.1f} at the start, "
          f"{end['load_avg_1m']:.1f} at the end.\n")
    first = repos[0][0]
    print(f"| set | model | chunk tokens | chunks | seconds | chunks/s | corpus time ÷ {first}'s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if x["set"] == r["set"] and x["model"] == first)
        print(f"| {r['set']} | {r['model']} | {r['chunk_tokens']} | {r['chunks']} | {r['seconds']:.1f} | "
              f"{r['chunks_per_s']:.1f} | {r['seconds'] / ref['seconds']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": start, "machine_end": end, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
