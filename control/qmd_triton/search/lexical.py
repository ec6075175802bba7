"""BM25 full-text search over the index's FTS5 table, with the snippet a user reads.

The CLI's ``search`` and the server's ``qmd_search`` run this same code, so a query
answers the same with or without the server.

Example:
    >>> hits = search_bm25(index, "dynamic batching", SearchOptions(n=5))
    >>> hits[0].path
    'docs/architecture.md'
"""

from __future__ import annotations

from collections.abc import Sequence

from qmd_triton.errors import InputError
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.interface import Index
from qmd_triton.search.options import SNIPPET_LINES, Hit, SearchOptions, annotate, check_query, clip, hit_of
from qmd_triton.text.markdown import reader_view
from qmd_triton.text.terms import LexicalQuery, has_cjk, parse_query


def normalize_bm25(raw: float) -> float:
    """SQLite's bm25 (negative, unbounded) -> 0..1, monotone: |s| / (1 + |s|)."""
    s = abs(raw)
    return s / (1.0 + s)


def snippet_for(body: str, terms: Sequence[str], lines: int = SNIPPET_LINES) -> tuple[int, str]:
    """The 1-based line and the text of the window of lines holding most query terms."""
    all_lines = body.split("\n")
    if not all_lines:
        return 1, ""
    lowered = [ln.lower() for ln in all_lines]
    stems = [t[:5] if not has_cjk(t) and len(t) > 5 else t for t in terms]
    scores = [sum(1 for s in stems if s in ln) for ln in lowered]
    best, best_score = 0, -1
    window = [0] * len(all_lines)
    for i in range(len(all_lines)):
        window[i] = sum(scores[i : i + lines])
        if window[i] > best_score and all_lines[i].strip():
            best, best_score = i, window[i]
    text = "\n".join(all_lines[best : best + lines]).strip()
    return best + 1, clip(text)


def snippet_terms(parsed: LexicalQuery) -> list[str]:
    """The words a snippet looks for: every word of the terms and phrases."""
    return list(dict.fromkeys(w for t in parsed.terms for w in t.split()))


def known_collections(index: Index) -> list[str]:
    return index.collection_names()


def search_bm25(index: Index, query: str, options: SearchOptions = SearchOptions(),
                contexts: ContextMap | None = None) -> list[Hit]:
    """Full-text search: documents matching any query term, ranked by BM25."""
    q = check_query(query)
    if options.collections:
        options.check_collections(known_collections(index))
    parsed = parse_query(q)
    if not parsed.terms:
        raise InputError("the query only excludes (-word); give at least one word to search for" if parsed.exclude
                         else f"the query {q!r} has no word to search for (only punctuation or symbols; "
                         "`*` and `%` are not wildcards here); give at least one word")
    terms = snippet_terms(parsed)
    hits = []
    rows = [(doc, score) for doc, raw in index.bm25(parsed.terms, options.limit, options.collections or None,
                                                     parsed.exclude)
            if (score := normalize_bm25(raw)) >= options.min_score]
    bodies = index.bodies([d.hash for d, _ in rows])  # only the pages shown; milvus: in one round trip
    for doc, score in rows:
        body = bodies[doc.hash]
        line, snippet = snippet_for(reader_view(body), terms)
        hits.append(hit_of(doc, score, line, snippet, body if options.full else None))
    return annotate(hits, index, contexts)
