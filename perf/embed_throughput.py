"""Embeddings per second: ``qmd_embed`` through Triton vs in-process onnxruntime, in one run.

Both sides use the same ONNX file, the same tokenizer and the same onnxruntime
thread count. The server side is driven by N concurrent gRPC clients sending one
passage per request (what an indexer or many users look like); the in-process
side runs batches of every size in ``--batch-sizes``, in corpus order and sorted
by length, and the best of them is the reference.

Usage:
    .venv/bin/python perf/embed_throughput.py --texts 512 --concurrency 8

Starts its own server on free loopback ports and stops it afterwards. Writes
``perf/results/embed_throughput.json`` and prints a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from qmd_triton import server
from qmd_triton.settings import PROJECT_ROOT, Settings
from qmd_triton.tokenization import TextEncoder
from qmd_triton.triton_models.onnx_backend import make_session

CORPUS = PROJECT_ROOT.parent / "shared" / "datasets" / "msmarco" / "corpus.jsonl"


def load_texts(n: int) -> list[str]:
    texts = []
    with CORPUS.open(encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def in_process(repo: Path, texts: list[str], batch: int, sort: bool, threads: int) -> float:
    encoder = TextEncoder.from_dir(repo / "qmd_tokenize" / "1", buckets="")
    session = make_session(repo / "qmd_embed_model" / "1" / "model.onnx", intra_threads=threads)
    items = sorted(texts, key=len) if sort else list(texts)
    session.run(None, dict(zip(("input_ids", "attention_mask"), encoder.encode(items[:batch]))))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        ids, mask = encoder.encode(items[i : i + batch])
        session.run(None, {"input_ids": ids, "attention_mask": mask})
    return len(items) / (time.perf_counter() - start)


def through_triton(settings: Settings, texts: list[str], concurrency: int) -> tuple[float, dict]:
    import tritonclient.grpc as grpc

    def worker(offset: int, errors: list) -> None:
        client = grpc.InferenceServerClient(settings.grpc_url)
        for i in range(offset, len(texts), concurrency):
            t = grpc.InferInput("text", [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[texts[i].encode()]], dtype=object))
            try:
                client.infer("qmd_embed", [t])
            except Exception as e:  # noqa: BLE001 - counted, reported
                errors.append(str(e))
        client.close()

    warm = grpc.InferenceServerClient(settings.grpc_url)
    t = grpc.InferInput("text", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[b"warm up"]], dtype=object))
    warm.infer("qmd_embed", [t])
    before = warm.get_inference_statistics("qmd_embed_model", as_json=True)["model_stats"][0]
    errors: list[str] = []
    threads = [threading.Thread(target=worker, args=(k, errors)) for k in range(concurrency)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rate = len(texts) / (time.perf_counter() - start)
    after = warm.get_inference_statistics("qmd_embed_model", as_json=True)["model_stats"][0]
    stats = {
        "requests": int(after["inference_count"]) - int(before["inference_count"]),
        "executions": int(after["execution_count"]) - int(before["execution_count"]),
        "errors": len(errors),
    }
    return rate, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (as in the config)")
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "perf" / "results" / "embed_throughput.json")
    args = ap.parse_args()

    repo = PROJECT_ROOT / "model_repository"
    texts = load_texts(args.texts)
    http, grpc_port, metrics = server.free_ports(3)
    home = Path(tempfile.mkdtemp(prefix="qmd-bench-"))
    settings = Settings.load(home, http_port=http, grpc_port=grpc_port, metrics_port=metrics)
    print(f"starting server ({home})", file=sys.stderr)
    server.start(settings)
    try:
        print(f"qmd_embed at concurrency {args.concurrency} ...", file=sys.stderr)
        triton_rate, stats = through_triton(settings, texts, args.concurrency)
    finally:
        server.stop(settings)
    rows = []
    for sort in (False, True):
        for b in (int(x) for x in args.batch_sizes.split(",")):
            print(f"in-process batch {b} {'sorted' if sort else 'corpus order'} ...", file=sys.stderr)
            rows.append({"batch": b, "sorted": sort, "per_s": in_process(repo, texts, b, sort, args.threads)})
    best = max(rows, key=lambda r: r["per_s"])
    same_order = max((r for r in rows if not r["sorted"]), key=lambda r: r["per_s"])
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "texts": len(texts),
        "concurrency": args.concurrency,
        "onnxruntime_threads": args.threads,
        "triton_per_s": triton_rate,
        "triton_stats": stats,
        "in_process": rows,
        "ratio_vs_best_in_process": triton_rate / best["per_s"],
        "ratio_vs_best_in_process_corpus_order": triton_rate / same_order["per_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| path | texts/s | ratio |\n|---|---|---|")
    print(f"| qmd_embed via Triton, c={args.concurrency}, 1 text/request | {triton_rate:.1f} | 1.00 |")
    for r in rows:
        order = "length-sorted" if r["sorted"] else "corpus order"
        print(f"| in-process ORT, batch {r['batch']}, {order} | {r['per_s']:.1f} | {triton_rate / r['per_s']:.2f} |")
    print(f"\nTriton merged {stats['requests']} requests into {stats['executions']} model executions; "
          f"{stats['errors']} errors.")


if __name__ == "__main__":
    main()
