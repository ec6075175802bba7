"""BM25 and vector search at 5k and 100k chunks: per-query latency, `qmdctl search` end to end, and
what the first vsearch after a one-file update costs.

Each size gets its own QMD home under ``$QMD_HOME/scale/N`` holding a collection of N markdown notes,
one chunk each, made from the shared msmarco and dbpedia passages (two passages per note, a seeded
pairing, so every note is distinct real English). BM25 needs nothing more. Vectors for the scale
runs are random unit vectors stored under the real embedding setup: what is measured is the cost of
holding, refreshing and scanning 100k rows, which does not depend on what the rows mean (quality is
measured by ``qmdctl eval``). Queries are the msmarco judged queries.

Measured, per size:
  search in-process   the BM25 path ``qmdctl search`` runs (parse, one FTS5 statement, snippets)
  qmd_search          the same through Triton (gRPC, one client)
  qmdctl search       the CLI end to end: interpreter start, imports, SQLite open, query, print
  vsearch             qmd_vsearch through Triton, warm
  vsearch after edit  the first vsearch after one note is edited, `qmdctl update` run and its chunk
                      embedded (the server notices the commit and refreshes its matrix)

Usage:
    QMD_HOME=/tmp/scale-home .venv/bin/python perf/scale.py [--chunks 5000 100000] [--queries 50]
        [--compare-cli /path/to/other/.venv/bin/qmdctl]

``--compare-cli`` times another install's ``qmdctl search`` side by side (alternating), e.g. the
previous release, so the start-up figure is a ratio from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qmd_triton.bench.datasets import load_set
from qmd_triton.bench.reports import machine, machine_line
from qmd_triton.index import embedders
from qmd_triton.index.collections import CollectionConfig
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.index.update import update
from qmd_triton.search.lexical import search_bm25 as bm25_search
from qmd_triton.search.options import SearchOptions
from qmd_triton.serving import server
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings, checkout_path, default_datasets
from qmd_triton.system.net import free_ports

COLLECTION = "notes"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def passages() -> list[tuple[str, str]]:
    out = []
    for name in ("msmarco", "dbpedia"):
        data = load_set(default_datasets() / name)
        out += list(data.texts().values())
    return out


def write_notes(folder: Path, n: int) -> None:
    """N distinct notes of two passages each (seeded); written once per size."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == str(n):
        return
    folder.mkdir(parents=True, exist_ok=True)
    pool = passages()
    rng = random.Random(n)
    for i in range(n):
        (t1, a), (_, b) = rng.sample(pool, 2)
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"note-{i:06d}.md").write_text(f"# {t1}\n\n{a}\n\n{b}\n", encoding="utf-8")
        if (i + 1) % 10000 == 0:
            say(f"wrote {i + 1}/{n} notes")
    marker.write_text(str(n))


def random_vectors(dim: int):
    rng = np.random.default_rng(0)

    def embed(texts):
        v = rng.standard_normal((len(texts), dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return embed


def prepare(base: Settings, n: int) -> Settings:
    home = base.home / "scale" / str(n)
    http, grpc, metrics = free_ports(3)
    settings = Settings.load(home, model_repository=base.model_repository, http_port=http, grpc_port=grpc,
                             metrics_port=metrics)
    folder = home / COLLECTION
    write_notes(folder, n)
    config = CollectionConfig(settings.config_file)
    if COLLECTION not in {c.name for c in config.list()}:
        config.add(COLLECTION, folder, ["**/*.md"])
    setup = embedders.load("onnxruntime", settings).setup()
    with SqliteIndex.open(settings.index_path, create=True) as store:
        started = time.perf_counter()
        report = update(store, [config.get(COLLECTION)])
        if report.added or report.changed:
            say(f"{n}: indexed {report.added + report.changed} notes in {time.perf_counter() - started:.1f} s")
        embedded = embed_pending(store, setup, lambda: random_vectors(setup.fingerprint["dim"]), batch_size=256,
                                 concurrency=1)
        if embedded.embedded:
            say(f"{n}: stored {embedded.embedded} random unit vectors")
        chunks = store.counts()["chunks"]
    say(f"{n}: {chunks} chunks")
    return settings


def timed(fn, repeat: list) -> list[float]:
    out = []
    for item in repeat:
        started = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "n": len(ms)}


def cli_runs(qmdctl: str, settings: Settings, queries: list[str]) -> list[float]:
    env = {**os.environ, "QMD_HOME": str(settings.home)}
    out = []
    for q in queries:
        started = time.perf_counter()
        subprocess.run([qmdctl, "search", q, "-n", "5"], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure(base: Settings, n: int, queries: list[str], compare_cli: str | None) -> dict:
    settings = prepare(base, n)
    result: dict = {"chunks": n}
    options = SearchOptions(n=10)
    with SqliteIndex.open(settings.index_path, readonly=True) as store:
        for q in queries:  # one untimed pass: the timed one reads pages the OS has cached, as a used index's are
            bm25_search(store, q, options)
        result["search in-process"] = summary(timed(lambda q: bm25_search(store, q, options), queries))
    own_cli = str(Path(sys.executable).with_name("qmdctl"))
    cli_queries = queries[:20]
    if compare_cli:
        mine, other = [], []
        for i, q in enumerate(cli_queries):  # alternated, so machine noise falls on both
            pair = [(mine, own_cli), (other, compare_cli)]
            for sink, exe in (pair if i % 2 == 0 else pair[::-1]):
                sink += cli_runs(exe, settings, [q])
        result["qmdctl search"] = summary(mine)
        result["qmdctl search (compared install)"] = summary(other)
    else:
        result["qmdctl search"] = summary(cli_runs(own_cli, settings, cli_queries))
    say(f"{n}: starting a server")
    server.start(settings)
    try:
        with QmdClient(settings.url("grpc"), "grpc", 300) as client:
            opts = json.dumps({"n": 10})
            client.search("qmd_search", queries[0], opts)
            result["qmd_search"] = summary(timed(lambda q: client.search("qmd_search", q, opts), queries))
            client.search("qmd_vsearch", queries[0], opts)
            result["vsearch"] = summary(timed(lambda q: client.search("qmd_vsearch", q, opts), queries))
            firsts = []
            folder = settings.home / COLLECTION
            setup = embedders.load("onnxruntime", settings).setup()
            config = CollectionConfig(settings.config_file)
            for k in range(5):
                note = folder / "000" / f"note-{k:06d}.md"
                note.write_text(note.read_text(encoding="utf-8") + f"\nEdited {time.time()}.\n", encoding="utf-8")
                with SqliteIndex.open(settings.index_path) as store:
                    update(store, [config.get(COLLECTION)])
                    embed_pending(store, setup, lambda: random_vectors(setup.fingerprint["dim"]), concurrency=1)
                q = queries[(k + 1) % len(queries)]
                started = time.perf_counter()
                client.search("qmd_vsearch", q, opts)
                firsts.append((time.perf_counter() - started) * 1000)
            result["vsearch after edit"] = summary(firsts)
    finally:
        server.stop(settings)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", nargs="+", type=int, default=[5000, 100000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--compare-cli", default=None)
    parser.add_argument("--out", type=Path, default=checkout_path("perf", "results", "scale.json"))
    args = parser.parse_args()
    base = Settings.load()
    msmarco = load_set(default_datasets() / "msmarco")
    queries = [msmarco.queries[q] for q in msmarco.judged_queries()][: args.queries]
    before = machine()
    results = [measure(base, n, queries, args.compare_cli) for n in args.chunks]
    after = machine()
    print(f"Measured on {machine_line(before)}; load {before['load_avg_1m']:.1f} at the start, "
          f"{after['load_avg_1m']:.1f} at the end.\n")
    rows = [k for k in results[0] if k != "chunks"]
    print("| | " + " | ".join(f"{r['chunks']:,} chunks p50 / p95 ms" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{r[row]['p50_ms']:.1f} / {r[row]['p95_ms']:.1f}" for r in results) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": before, "results": results}, indent=2))


if __name__ == "__main__":
    main()
