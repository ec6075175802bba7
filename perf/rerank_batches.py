"""Does the INT8 reranker want one padded batch per query, or length-sorted trimmed sub-batches?

For each judged query of a BEIR set: the in-process hybrid baseline's 40 candidates (rank_bm25 top 20 +
the embedding model's top 20, RRF), scored by the served INT8 cross-encoder (2 threads) four ways,
alternating the order per query: one batch of 40 padded to the longest pair (what `qmd_rerank_model`
gets from `qmd_retrieve`), each pair alone, and pairs sorted by length in trimmed sub-batches of 4 and 8.
Prints nDCG@10 of the cross-encoder order, total time and its ratio to the padded batch, and the largest
logit difference: onnxruntime's dynamic quantization scales activations over the whole input tensor, so
a pair's logit depends on what it is batched with.

Usage (after `qmdctl eval` has cached the baseline vectors under .qmd/bench/eval/NAME):
    .venv/bin/python perf/rerank_batches.py msmarco dbpedia
"""
from __future__ import annotations

import sys
import time

import numpy as np

from qmd_triton.bench.baselines import VectorBaseline, notebook_hybrid_candidates
from qmd_triton.bench.datasets import load_set
from qmd_triton.bench.scoring import score_run
from qmd_triton.runtime.onnx import InProcessReranker
from qmd_triton.settings import checkout_path, default_datasets

SCHEMES = {"padded 40": 0, "each pair alone": 1, "sorted, batches of 4": 4, "sorted, batches of 8": 8}


def score(reranker: InProcessReranker, ids: np.ndarray, mask: np.ndarray, types: np.ndarray,
          size: int) -> np.ndarray:
    """Logits for every row; ``size`` 0 runs all rows as given, otherwise length-sorted trimmed batches."""
    if size == 0:
        return reranker.run(ids, mask, types)
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros(len(ids), np.float32)
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        w = int(lengths[rows].max())
        out[rows] = reranker.run(ids[rows, :w], mask[rows, :w], types[rows, :w])
    return out


def measure(name: str) -> None:
    beir = load_set(default_datasets() / name)
    repo = checkout_path("model_repository")
    cache = checkout_path(".qmd", "bench", "eval", name)
    vectors = VectorBaseline(beir, repo, cache, progress=lambda m: print(m, file=sys.stderr))
    candidates = notebook_hybrid_candidates(beir, vectors)
    reranker = InProcessReranker.from_repository(repo, threads=2)
    encoder = reranker.pairs
    runs: dict[str, dict[str, list[str]]] = {s: {} for s in SCHEMES}
    seconds = dict.fromkeys(SCHEMES, 0.0)
    max_diff = dict.fromkeys(SCHEMES, 0.0)
    for n, (q, (keys, texts)) in enumerate(candidates.items()):
        ids, mask, types = encoder.encode(beir.queries[q], texts)
        logits = {}
        for scheme in (list(SCHEMES) if n % 2 == 0 else list(SCHEMES)[::-1]):
            started = time.perf_counter()
            logits[scheme] = score(reranker, ids, mask, types, SCHEMES[scheme])
            seconds[scheme] += time.perf_counter() - started
        for scheme, values in logits.items():
            max_diff[scheme] = max(max_diff[scheme], float(np.abs(values - logits["padded 40"]).max()))
            runs[scheme][q] = [keys[i] for i in np.argsort(-values, kind="stable")]
    print(f"| {name} | scheme | nDCG@10 | seconds | ÷ padded | max logit diff |")
    print("|---|---|---|---|---|---|")
    for scheme in SCHEMES:
        print(f"| | {scheme} | {score_run(beir, runs[scheme])['ndcg@10']:.4f} | {seconds[scheme]:.1f} | "
              f"{seconds[scheme] / seconds['padded 40']:.2f} | {max_diff[scheme]:.3f} |")


def main() -> None:
    for name in sys.argv[1:] or ["msmarco", "dbpedia"]:
        measure(name)


if __name__ == "__main__":
    main()
