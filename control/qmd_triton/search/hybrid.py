"""The hybrid query: a plan (original query plus expansions), retrieval lists, RRF candidates.

The plan travels between Triton models as JSON: ``qmd_expand`` (or ``qmd_plan``)
writes it, ``qmd_retrieve`` reads it with the embeddings of ``plan.vec_texts()``
(same order), and builds the candidate list with each candidate's best chunk for
the reranker.

Example:
    >>> plan = Plan(query="dynamic batching", mode="query", lex=["triton batcher"], vec=[], hyde=[])
    >>> cands = hybrid_candidates(index, plan, embeddings)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from qmd_triton.errors import InputError, parse_json_input
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.interface import Index
from qmd_triton.index.rows import DocRow
from qmd_triton.search.coverage import ModelLanguages, stage
from qmd_triton.search.fusion import (
    EXPANSION_WEIGHT,
    MAX_CANDIDATES,
    ORIGINAL_WEIGHT,
    TOP_PER_LIST,
    RankedList,
    max_rrf,
    rrf,
)
from qmd_triton.search.lexical import known_collections, normalize_bm25, snippet_for, snippet_terms
from qmd_triton.search.options import Hit, SearchOptions, annotate
from qmd_triton.search.vectors import VectorSearch
from qmd_triton.text.markdown import reader_view
from qmd_triton.text.terms import has_cjk, parse_query, query_terms, without_exclusions

MODES = ("vsearch", "query")
PASSAGE_CHARS = 4000  # a best chunk longer than this is cut before pair tokenization


@dataclass
class Plan:
    """What to retrieve for one request."""

    query: str
    mode: str = "query"
    lex: list[str] = field(default_factory=list)
    vec: list[str] = field(default_factory=list)
    hyde: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    expansion: dict[str, Any] = field(default_factory=dict)
    # what ran and what was bypassed, and why: {"vectors": {"status": "ran"}, "rerank": {...}} (qmd_retrieve)
    stages: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"plan mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def search_options(self) -> SearchOptions:
        return SearchOptions.from_json(json.dumps(self.options))

    def rerank_query(self) -> str:
        """What the cross-encoder pairs with each passage: the query less its exclusions, and the caller's
        intent (what the words mean here) after it."""
        query = without_exclusions(self.query)
        intent = str(self.options.get("intent") or "").strip()
        return f"{query} ({intent})" if intent else query

    def terms(self) -> list[str]:
        """The words that pick a document's best chunk and its snippet: the query's and the lex lines'."""
        original = parse_query(self.query)
        return list(dict.fromkeys(snippet_terms(original) + [w for lex in self.lex for w in query_terms(lex)]))

    def vec_texts(self) -> list[str]:
        """Texts to embed with the query prompt: the query (less its exclusions), then vec, then hyde lines."""
        return [without_exclusions(self.query), *self.vec, *self.hyde]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Plan:
        """A plan as ``to_json`` wrote it; anything else is one ``InputError`` saying what is wrong."""
        data = parse_json_input(raw, "plan")
        if not isinstance(data, dict):
            raise InputError("malformed plan: must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"malformed plan: unknown key(s) {', '.join(unknown)}")
        if not isinstance(data.get("query"), str):
            raise InputError("malformed plan: query must be a string")
        if not isinstance(data.get("mode", "query"), str):
            raise InputError("malformed plan: mode must be a string")
        for key in ("lex", "vec", "hyde"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"malformed plan: {key} must be a list of strings")
        for key in ("options", "expansion", "stages"):
            if not isinstance(data.get(key, {}), dict):
                raise InputError(f"malformed plan: {key} must be a JSON object")
        plan = cls(**data)
        plan.search_options  # noqa: B018 - checks the options now, as one error
        return plan


@dataclass
class Candidate:
    """A document going to the reranker: its hit, its best chunk, why it is here, and how long it is (tokens of
    its chunks; 0 when not chunked yet), so the fusion knows how much of it the reranker read."""

    hit: Hit
    passage: str
    rrf: float
    rrf_rank: int
    ranks: dict[str, int]
    tokens: int = 0
    unread: float = 0.0  # the share of the document the reranker did not read (set with the passage it reads)

    def to_dict(self) -> dict[str, Any]:
        d = self.hit.to_dict()
        d["explain"] = {"lists": self.ranks, "rrf": round(self.rrf, 5), "rrf_rank": self.rrf_rank,
                        "unread": round(self.unread, 3)}
        return d


def clamp_candidates(options: SearchOptions) -> int:
    """-C is clamped to [n, 200]: fewer than n could not fill the page, more is never worth it."""
    return max(min(options.candidates, MAX_CANDIDATES), min(options.n, MAX_CANDIDATES))


def _best_chunk(index: Index, doc: DocRow, terms: Sequence[str], chunks: Sequence[Any] | None = None
                ) -> tuple[int, str, int]:
    """The chunk with the most query-term overlap (first on ties), or the start of what a reader sees of the body
    (not chunked yet); with the document's length in tokens (its chunks', 0 when unknown).

    Measured against a window chosen over all chunks by IDF-weighted terms, the chunk nearest the query's vector,
    and both with the page title and heading path before them (perf/quality_lab.py, docs/search.md "Quality"):
    none did better on every set."""
    chunks = index.chunks_of(doc.hash) if chunks is None else chunks
    if not chunks:
        body = reader_view(index.body(doc.hash))
        start = len(body) - len(body.lstrip())
        return 1 + body.count("\n", 0, start), body[start : start + PASSAGE_CHARS], 0
    stems = [t[:5] if not has_cjk(t) and len(t) > 5 else t for t in terms]

    def overlap(text: str) -> int:
        low = text.lower()
        return sum(1 for s in stems if s in low)

    best = max(chunks, key=lambda c: (overlap(c.text), -c.seq))
    return best.start_line, best.text[:PASSAGE_CHARS], sum(c.tokens for c in chunks)


def hybrid_candidates(index: Index, plan: Plan, embeddings: np.ndarray,
                      contexts: ContextMap | None = None, embedder: ModelLanguages | None = None) -> list[Candidate]:
    """BM25 and vector lists for every query of the plan, fused by RRF, best first.

    The vector list of a text the ``embedder`` does not read is left out (its vectors would be noise), and
    ``plan.stages["vectors"]`` says so.
    """
    options = plan.search_options
    if options.collections:
        options.check_collections(known_collections(index))
    texts = plan.vec_texts()
    if len(embeddings) != len(texts):
        raise InputError(f"{len(texts)} vector queries but {len(embeddings)} embeddings")
    cols = options.collections or None
    lists: list[RankedList] = []
    docs: dict[str, DocRow] = {}
    original = parse_query(plan.query)
    excluded = index.matching(original.exclude)
    for i, lex in enumerate([plan.query, *plan.lex]):
        parsed = original if i == 0 else parse_query(lex)
        rows = index.bm25(parsed.terms, TOP_PER_LIST, cols, original.exclude + parsed.exclude)
        for doc, _ in rows:
            docs[str(doc.id)] = doc
        source = "bm25:original" if i == 0 else f"bm25:lex{i}"
        lists.append(RankedList(source, ORIGINAL_WEIGHT if i == 0 else EXPANSION_WEIGHT, [str(d.id) for d, _ in rows]))
    names = ["vec:original"] + [f"vec:vec{i + 1}" for i in range(len(plan.vec))] + [
        f"vec:hyde{i + 1}" for i in range(len(plan.hyde))]
    unread = [name for name, text in zip(names, texts) if embedder is not None and not embedder.reads(text)]
    if not options.vectors:
        unread = list(names)
        plan.stages["vectors"] = stage("off", "vectors: false")
    elif not unread:
        plan.stages["vectors"] = stage("ran")
    else:
        why = embedder.why_not(texts[names.index(unread[0])]) if embedder else ""
        plan.stages["vectors"] = stage("bypassed" if len(unread) == len(names) else "partial",
                                       why if len(unread) == len(names) else f"left out {', '.join(unread)}: {why}")
    vectors = VectorSearch(index)
    for name, emb in zip(names, embeddings):
        if name in unread:
            continue
        keys = []
        for doc, _, _ in vectors.ranked_docs(emb, TOP_PER_LIST, options.collections, excluded):
            docs[str(doc.id)] = doc
            keys.append(str(doc.id))
        lists.append(RankedList(name, ORIGINAL_WEIGHT if name == "vec:original" else EXPANSION_WEIGHT, keys))
    fused = rrf(lists)[: clamp_candidates(options)]
    top = max_rrf(lists)
    terms = plan.terms()
    out = []
    prefetched = index.chunks_of_many([docs[f.key].hash for f in fused])  # milvus: in one round trip
    for rank, f in enumerate(fused, 1):
        doc = docs[f.key]
        line, passage, tokens = _best_chunk(index, doc, terms, prefetched.get(doc.hash))
        # The snippet is the best window of the passage the reranker reads.
        offset, snippet = snippet_for(passage, terms)
        hit = Hit(docid=doc.docid, collection=doc.collection, path=doc.path, title=doc.title,
                  score=min(1.0, f.score / top), line=line + offset - 1, snippet=snippet, hash=doc.hash,
                  body=index.body(doc.hash) if options.full else None)
        out.append(Candidate(hit, passage, f.score, rank, dict(f.ranks), tokens))
    annotate([c.hit for c in out], index, contexts)
    return out


def bm25_probe(index: Index, query: str, options: SearchOptions) -> list[float]:
    """Normalized scores of the top two BM25 hits (for the strong-signal shortcut)."""
    parsed = parse_query(query)
    rows = index.bm25(parsed.terms, 2, options.collections or None, parsed.exclude)
    return [normalize_bm25(raw) for _, raw in rows]
