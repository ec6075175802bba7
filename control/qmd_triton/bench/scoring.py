"""Retrieval quality: nDCG@10 (graded), Recall@k and MRR@10 for BEIR sets; hit@k and MRR@10 for known items.

Example:
    >>> ndcg_at_k(["d1", "d7"], {"d1": 2, "d3": 1}, 10)
    0.63
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from qmd_triton.bench.datasets import KNOWN_ITEM, EvalSet

BEIR_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
KNOWN_ITEM_METRICS = ("hit@1", "hit@3", "mrr@10", "recall@10")


def metrics_for(kind: str) -> tuple[str, ...]:
    return KNOWN_ITEM_METRICS if kind == KNOWN_ITEM else BEIR_METRICS


def ndcg_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int = 10) -> float:
    """Graded nDCG with linear gains (as pytrec_eval / BEIR compute it)."""
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in grades.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if grades.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def hit_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    return 1.0 if any(grades.get(d, 0) > 0 for d in ranked[:k]) else 0.0


def score_one(metric: str, ranked: Sequence[str], grades: Mapping[str, int]) -> float:
    name, k = metric.split("@")
    fn = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k, "hit": hit_at_k}[name]
    return fn(ranked, grades, int(k))


def score_run(dataset: EvalSet, run: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean of each metric of the set's kind over the judged queries (a query with no results scores 0)."""
    qs = dataset.judged_queries()
    names = metrics_for(dataset.kind)
    totals = dict.fromkeys(names, 0.0)
    for q in qs:
        for m in names:
            totals[m] += score_one(m, run.get(q, []), dataset.qrels[q])
    return {m: round(v / len(qs), 4) if qs else 0.0 for m, v in totals.items()}


def first_relevant_rank(ranked: Sequence[str], grades: Mapping[str, int]) -> int | None:
    """1-based rank of the first relevant document, None when it is not in the list."""
    for i, d in enumerate(ranked):
        if grades.get(d, 0) > 0:
            return i + 1
    return None
