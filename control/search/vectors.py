"""Exact vector search: cosine similarity over every stored chunk vector (one BLAS matrix product).

Example:
    >>> vectors = VectorIndex(store)
    >>> vectors.search(query_embedding, SearchOptions(n=5))[0].path
    'guide/batching.md'
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from qmd_triton.errors import InputError
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.store import ChunkRow, DocRow, IndexStore
from qmd_triton.search.lexical import known_collections
from qmd_triton.search.options import SNIPPET_LINES, Hit, SearchOptions, annotate, clip, hit_of


class VectorIndex:
    """Exact cosine search over every stored chunk vector (BLAS matrix product).

    The matrix is loaded once and reloaded when the index changes: SQLite's
    ``data_version`` moves when another connection commits, and the file's inode
    changes when the index is rebuilt from scratch.
    """

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self._version: tuple[int, int] | None = None
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.chunks: list[ChunkRow] = []
        self.hashes: np.ndarray = np.zeros(0, dtype=object)

    def _stamp(self) -> tuple[int, int]:
        try:
            inode = os.stat(self.store.path).st_ino
        except OSError:
            inode = -1
        return inode, self.store.data_version()

    def refresh(self) -> bool:
        """Reloads when the index changed; True if it did."""
        stamp = self._stamp()
        if stamp == self._version:
            return False
        self.matrix, self.chunks = self.store.load_vectors()
        self.hashes = np.array([c.hash for c in self.chunks], dtype=object)
        self._version = stamp
        return True

    def top_chunks(self, query_vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Indices into ``self.chunks`` and cosine scores of the k best chunks."""
        if not len(self.chunks):
            return []
        if query_vec.shape[-1] != self.matrix.shape[1]:
            raise InputError(
                f"query vector has {query_vec.shape[-1]} dims but the index holds {self.matrix.shape[1]}-d vectors"
            )
        scores = self.matrix @ query_vec.astype(np.float32)
        k = min(k, len(scores))
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return [(int(i), float(scores[i])) for i in idx]

    def ranked_docs(self, query_vec: np.ndarray, n: int, collections: Sequence[str] = (),
                    exclude_ids: set[int] | frozenset[int] = frozenset()) -> list[tuple[DocRow, ChunkRow, float]]:
        """Up to n documents by their best chunk's cosine similarity, with that chunk."""
        self.refresh()
        k = n * 4
        while True:
            top = self.top_chunks(query_vec, k)
            best: dict[str, tuple[int, float]] = {}
            for i, score in top:
                best.setdefault(self.chunks[i].hash, (i, score))
            docs = self.store.documents_by_hash(list(best), collections or None)
            ranked = sorted(((doc, best[h]) for h, ds in docs.items() for doc in ds if doc.id not in exclude_ids),
                            key=lambda x: -x[1][1])
            if len(ranked) >= n or k >= len(self.chunks):
                break
            k *= 4
        return [(doc, self.chunks[i], score) for doc, (i, score) in ranked[:n]]

    def search(self, query_vec: np.ndarray, options: SearchOptions = SearchOptions(),
               contexts: ContextMap | None = None, exclude: Sequence[str] = ()) -> list[Hit]:
        """Documents by their best chunk's cosine similarity to the query, leaving out those that hold an
        excluded term (``-word``)."""
        if options.collections:
            options.check_collections(known_collections(self.store))
        hits = []
        excluded = self.store.matching(exclude)
        for doc, chunk, score in self.ranked_docs(query_vec, options.limit, options.collections, excluded):
            if score < options.min_score:
                continue
            body = self.store.body(doc.hash) if options.full else None
            lines = chunk.text.strip().split("\n")[:SNIPPET_LINES]
            hits.append(hit_of(doc, score, chunk.start_line, clip("\n".join(lines)), body))
        return annotate(hits, self.store, contexts)
