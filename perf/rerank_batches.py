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

from qmd_triton.cli.evaluate import hybrid_candidates
from qmd_triton.evaluation import load_beir, score_run
from qmd_triton.settings import PROJECT_ROOT, Settings
from qmd_triton.tokenization import PairEncoder
from qmd_triton.triton_models.onnx_backend import make_session



class _Progress:
    def progress(self, message: str) -> None:
        print(message, file=sys.stderr)


SCHEMES = {"padded 40": 0, "each pair alone": 1, "sorted, batches of 4": 4, "sorted, batches of 8": 8}


def score(session, ids: np.ndarray, mask: np.ndarray, types: np.ndarray, size: int) -> np.ndarray:
    """Logits for every row; ``size`` 0 runs all rows as given, otherwise length-sorted trimmed batches."""
    if size == 0:
        return session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0].reshape(-1)
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros(len(ids), np.float32)
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        w = int(lengths[rows].max())
        out[rows] = session.run(None, {"input_ids": ids[rows, :w], "attention_mask": mask[rows, :w],
                                       "token_type_ids": types[rows, :w]})[0].reshape(-1)
    return out


def measure(name: str) -> None:
    beir = load_beir(PROJECT_ROOT.parent / "shared" / "datasets" / name)
    repo = PROJECT_ROOT / "model_repository"
    settings = Settings.load(PROJECT_ROOT / ".qmd" / "bench" / "eval" / name, model_repository=repo)
    candidates = hybrid_candidates(_Progress(), beir, settings)
    encoder = PairEncoder(repo / "qmd_rerank_model" / "1" / "tokenizer.json")
    session = make_session(repo / "qmd_rerank_model" / "1" / "model.onnx", intra_threads=2)
    runs: dict[str, dict[str, list[str]]] = {s: {} for s in SCHEMES}
    seconds = dict.fromkeys(SCHEMES, 0.0)
    max_diff = dict.fromkeys(SCHEMES, 0.0)
    for n, (q, (keys, texts)) in enumerate(candidates.items()):
        ids, mask, types = encoder.encode(beir.queries[q], texts)
        logits = {}
        for scheme in (list(SCHEMES) if n % 2 == 0 else list(SCHEMES)[::-1]):
            started = time.perf_counter()
            logits[scheme] = score(session, ids, mask, types, SCHEMES[scheme])
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
