"""What does Triton's dynamic batcher buy on this CPU, by text length and by layer?

Two servers side by side on free ports: the shipped repository, and a copy with dynamic (and ragged)
batching off (``qmd_triton.bench.baselines.without_dynamic_batching``). perf_analyzer measures, at one
concurrency, alternating between the two servers for ``--rounds`` rounds:

* ``qmd_embed`` (the ensemble: gRPC, tokenizer stub, model) with msmarco passages and with the
  shared sets' queries;
* ``qmd_embed_model`` alone, fed the same texts already tokenized (no tokenizer stub, no ensemble),
  which isolates what batching saves inside the model from the per-request costs around it.

Usage:
    .venv/bin/python perf/batching_by_length.py [--concurrency 8] [--measurement-ms 5000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from qmd_triton.bench import baselines
from qmd_triton.bench import perf_analyzer as pa
from qmd_triton.bench.datasets import passages, queries
from qmd_triton.contracts import KIND_DOCUMENT, KIND_QUERY
from qmd_triton.serving import server
from qmd_triton.settings import Settings, checkout_path, default_datasets
from qmd_triton.system.net import free_ports
from qmd_triton.text.tokenization import TextEncoder

REPO = checkout_path("model_repository")
DATASETS = default_datasets()


def texts(count: int) -> dict[str, list[str]]:
    return {"passages": passages(DATASETS, count), "queries": queries(DATASETS, count)}


def input_files(sets: dict[str, list[str]], work: Path) -> dict[tuple[str, str], Path]:
    """perf_analyzer JSON: raw text for the ensemble, token ids (as qmd_tokenize makes them) for the model."""
    encoder = TextEncoder.from_dir(REPO / "qmd_tokenize" / "1")
    files = {}
    for name, items in sets.items():
        kind = KIND_QUERY if name == "queries" else KIND_DOCUMENT
        ensemble = {"data": [{"text": {"content": [t], "shape": [1]}} for t in items]}
        rows = encoder.token_ids(items, [kind] * len(items))
        model = {"data": [{"input_ids": {"content": r, "shape": [len(r)]},
                           "attention_mask": {"content": [1] * len(r), "shape": [len(r)]}} for r in rows]}
        for model_name, data in (("qmd_embed", ensemble), ("qmd_embed_model", model)):
            path = work / f"{model_name}-{name}.json"
            path.write_text(json.dumps(data))
            files[(model_name, name)] = path
        print(f"{name}: {len(items)} texts, {statistics.mean(map(len, rows)):.1f} tokens on average",
              file=sys.stderr)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--measurement-ms", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=100)
    args = parser.parse_args()
    tool = pa.find_perf_analyzer()
    with tempfile.TemporaryDirectory(prefix="qmd-batching-") as tmp:
        work = Path(tmp)
        files = input_files(texts(args.texts), work)
        servers = {}
        repos = {"on": REPO, "off": baselines.without_dynamic_batching(REPO, work / "off-repo")}
        try:
            for label, repo in repos.items():
                http, grpc, metrics = free_ports(3)
                servers[label] = Settings.load(work / f"home-{label}", model_repository=repo, http_port=http,
                                               grpc_port=grpc, metrics_port=metrics)
                server.start(servers[label])
            results: dict[tuple[str, str, str], list[float]] = {}
            for rnd in range(args.rounds):
                for (model, inputs), path in files.items():
                    for label in ("on", "off"):
                        s = servers[label]
                        row = pa.run_once(tool, model, s.url("grpc"), "grpc", path, args.concurrency,
                                             args.measurement_ms, work)
                        results.setdefault((model, inputs, label), []).append(row.throughput)
                        print(f"round {rnd + 1} {model} {inputs} batching {label}: {row.throughput:.1f}/s "
                              f"p95 {row.p95_us / 1000:.1f} ms, {row.errors} failed", file=sys.stderr)
        finally:
            for s in servers.values():
                server.stop(s)
    print("| layer | texts | batching on, per s | batching off, per s | on ÷ off (per round) |")
    print("|---|---|---|---|---|")
    for (model, inputs) in files:
        on, off = results[(model, inputs, "on")], results[(model, inputs, "off")]
        ratios = " / ".join(f"{a / b:.2f}" for a, b in zip(on, off))
        print(f"| {model} | {inputs} | {' / '.join(f'{x:.1f}' for x in on)} | "
              f"{' / '.join(f'{x:.1f}' for x in off)} | {ratios} |")


if __name__ == "__main__":
    main()
