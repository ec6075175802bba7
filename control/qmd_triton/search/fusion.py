"""Hybrid ranking: reciprocal rank fusion of the BM25 and vector lists, then the rerank blend.

The constants start from tobi/qmd's ``hybridQuery`` (see the design map): each list
keeps its top 20; a document scores ``sum(w / (60 + rank + 1))`` over the lists it is
in (rank 0-based, w = 2 for the original query's lists, 1 for expansions), plus 0.05
when it is first in some list or 0.02 when it is second or third; the first candidates
(``SearchOptions.candidates``) go to the reranker. ``prior`` (served) adds the retrieval evidence to the
reranker's logit, weighted by how much of the document the reranker did not read; ``blend`` mixes the RRF
position with the reranker's probability, trusting retrieval more at the top (w = 0.75 for ranks 1-3, 0.60 for
4-10, 0.40 after); ``rerank`` orders by the reranker alone. Which one serves is the ``fusion`` parameter of
``qmd_fuse``, chosen by ``qmdctl eval`` and ``perf/quality_lab.py`` (docs/search.md).

Example:
    >>> fused = rrf([RankedList("bm25:original", 2.0, ["a", "b"]), RankedList("vec:original", 2.0, ["b"])])
    >>> [f.key for f in fused]
    ['b', 'a']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

RRF_K = 60
TOP_PER_LIST = 20
ORIGINAL_WEIGHT = 2.0
EXPANSION_WEIGHT = 1.0
BONUS_FIRST = 0.05
BONUS_TOP3 = 0.02
MAX_CANDIDATES = 200
STRONG_SCORE = 0.85
STRONG_GAP = 0.15
FUSIONS = ("prior", "rerank", "blend")
# ``prior``: the cross-encoder's logit plus the retrieval evidence, in log-odds: PRIOR_WEIGHT x the candidate's RRF
# score relative to the first's x the share of its document the cross-encoder did not read. Chosen by
# perf/quality_lab.py on msmarco, dbpedia and triton-docs (docs/search.md, "Quality"): 2 to 6 all beat the
# reranker alone on every set; 3 and 4 best on triton-docs, 4 by a hair on MRR everywhere.
PRIOR_WEIGHT = 4.0


@dataclass(frozen=True)
class RankedList:
    """One retrieval list: where it came from, its RRF weight, and its keys best first."""

    source: str
    weight: float
    keys: Sequence[str]


@dataclass
class Fused:
    key: str
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # source -> 1-based rank


def rrf(lists: Sequence[RankedList], top: int = TOP_PER_LIST) -> list[Fused]:
    """Reciprocal rank fusion with the top-rank bonus; best first, ties by first appearance."""
    fused: dict[str, Fused] = {}
    for lst in lists:
        for rank, key in enumerate(lst.keys[:top]):
            f = fused.setdefault(key, Fused(key, 0.0))
            f.score += lst.weight / (RRF_K + rank + 1)
            f.ranks[lst.source] = rank + 1
    for f in fused.values():
        best = min(f.ranks.values())
        f.score += BONUS_FIRST if best == 1 else BONUS_TOP3 if best <= 3 else 0.0
    return sorted(fused.values(), key=lambda f: -f.score)


def max_rrf(lists: Sequence[RankedList]) -> float:
    """The score of a document first in every list: scales RRF into 0..1 for display."""
    return sum(lst.weight / (RRF_K + 1) for lst in lists) + BONUS_FIRST


def blend_weight(rrf_rank: int) -> float:
    """How much the retrieval position counts at a 1-based RRF rank."""
    if rrf_rank <= 3:
        return 0.75
    if rrf_rank <= 10:
        return 0.60
    return 0.40


TIER_ENDS = (3, 10)  # the last rank of each blend-weight tier but the last


def _raw_blend(rrf_rank: int, rerank_prob: float) -> float:
    w = blend_weight(rrf_rank)
    return w / rrf_rank + (1.0 - w) * rerank_prob


def blend(rrf_rank: int, rerank_prob: float) -> float:
    """tobi/qmd's ``w / rrf_rank + (1 - w) * p``, never above what a better-ranked candidate gets with the same
    ``p``: where the weight drops (after ranks 3 and 10) the reranker's share grows, and without this bound a
    candidate at rank 4 (or 11) would pass rank 3 (or 10) on an equal rerank score. So the blend is monotone in
    the fused rank for equal rerank scores, and a flat reranker leaves the fused order as it is."""
    return min([_raw_blend(rrf_rank, rerank_prob)]
               + [_raw_blend(end, rerank_prob) for end in TIER_ENDS if end < rrf_rank])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def strong_signal(scores: Sequence[float]) -> bool:
    """BM25 alone is convincing: top normalized score >= 0.85 and >= 0.15 ahead of #2."""
    if not scores:
        return False
    second = scores[1] if len(scores) > 1 else 0.0
    return scores[0] >= STRONG_SCORE and scores[0] - second >= STRONG_GAP


FLAT_LOGITS = 1e-4  # rerank logits that all lie this close carry no information about the order


def flat(logits: Sequence[float]) -> bool:
    """Scores that cannot order anything: at least two, all (nearly) equal."""
    return len(logits) >= 2 and max(logits) - min(logits) < FLAT_LOGITS


def prior(rrf_score: float, top_rrf: float, unread: float) -> float:
    """What retrieval says of a candidate beside the cross-encoder's logit: up to ``PRIOR_WEIGHT`` logits for the
    first fused candidate, scaled by its RRF score relative to the first's and by the share of its document the
    cross-encoder did not read (a passage read whole is judged by the cross-encoder alone: it has seen everything
    retrieval matched; a 128-token window of a 3,000-token page has not)."""
    if top_rrf <= 0:
        return 0.0
    return PRIOR_WEIGHT * min(1.0, max(0.0, unread)) * rrf_score / top_rrf


def final_order(rrf_ranks: Sequence[int], logits: Sequence[float | None] | None, fusion: str,
                priors: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Indices of candidates (given in RRF order) and their final scores, best first.

    ``rerank`` scores a candidate by the cross-encoder's probability, ``blend`` by tobi/qmd's position-aware mix,
    ``prior`` by the probability of its logit plus its :func:`prior` (``priors``, one per candidate). Without
    reranker scores the RRF order stands, scored 1/rank. A candidate whose logit is None (the reranker does not read
    its passage) keeps its place in the fused order and shows the score of the hit above it; the reranked
    candidates are ordered among the remaining places. Equal scores keep the fused order.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if logits is None or all(x is None for x in logits):
        return [(i, 1.0 / r) for i, r in enumerate(rrf_ranks)]
    if fusion == "prior" and (priors is None or len(priors) != len(logits)):
        raise ValueError("fusion prior needs one prior per candidate")

    def score(i: int, rank: int, x: float) -> float:
        if fusion == "rerank":
            return sigmoid(x)
        if fusion == "blend":
            return blend(rank, sigmoid(x))
        return sigmoid(x + priors[i])  # type: ignore[index]

    scored = [(i, score(i, r, x)) for i, (r, x) in enumerate(zip(rrf_ranks, logits)) if x is not None]
    ranked = iter(sorted(scored, key=lambda x: (-x[1], x[0])))
    placed = [next(ranked) if x is not None else (i, None) for i, x in enumerate(logits)]
    out: list[tuple[int, float]] = []
    above = max(s for _, s in scored)
    for i, value in placed:
        value = above if value is None else value
        out.append((i, value))
        above = value
    return out
