"""Vector search: documents ranked by their best chunk's cosine similarity to the query, over whatever finds
the nearest chunks on the index's backend (:meth:`qmd_triton.index.interface.Index.nearest_chunks`: exact
BLAS over every vector on sqlite, Milvus's HNSW index on milvus).

Example:
    >>> VectorSearch(index).search(query_embedding, SearchOptions(n=5))[0].path
    'guide/batching.md'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qmd_triton.index.collections import ContextMap
from qmd_triton.index.interface import Index
from qmd_triton.index.rows import ChunkRow, DocRow
from qmd_triton.search.lexical import known_collections
from qmd_triton.search.options import SNIPPET_LINES, Hit, SearchOptions, annotate, clip, hit_of


class VectorSearch:
    """Documents by their best chunk, on one index."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def ranked_docs(self, query_vec: np.ndarray, n: int, collections: Sequence[str] = (),
                    exclude_ids: set[int] | frozenset[int] = frozenset()) -> list[tuple[DocRow, ChunkRow, float]]:
        """Up to n documents by their best chunk's cosine similarity, with that chunk."""
        k = n * 4
        while True:
            nearest = self.index.nearest_chunks(query_vec, k)
            top = nearest.chunks
            best: dict[str, tuple[ChunkRow, float]] = {}
            for chunk, score in top:
                best.setdefault(chunk.hash, (chunk, score))
            docs = self.index.documents_by_hash(list(best), collections or None)
            ranked = sorted(((doc, best[h]) for h, ds in docs.items() for doc in ds if doc.id not in exclude_ids),
                            key=lambda x: -x[1][1])
            if len(ranked) >= n or nearest.exhausted:
                break
            k *= 4
        ranked = ranked[:n]
        chunks = self.index.complete_chunks([chunk for _, (chunk, _) in ranked])
        return [(doc, chunk, score) for (doc, (_, score)), chunk in zip(ranked, chunks)]

    def search(self, query_vec: np.ndarray, options: SearchOptions = SearchOptions(),
               contexts: ContextMap | None = None, exclude: Sequence[str] = ()) -> list[Hit]:
        """Documents by their best chunk's cosine similarity to the query, leaving out those that hold an
        excluded term (``-word``)."""
        if options.collections:
            options.check_collections(known_collections(self.index))
        hits = []
        excluded = self.index.matching(exclude)
        for doc, chunk, score in self.ranked_docs(query_vec, options.limit, options.collections, excluded):
            if score < options.min_score:
                continue
            body = self.index.body(doc.hash) if options.full else None
            lines = chunk.text.strip().split("\n")[:SNIPPET_LINES]
            hits.append(hit_of(doc, score, chunk.start_line, clip("\n".join(lines)), body))
        return annotate(hits, self.index, contexts)
