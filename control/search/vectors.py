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

    The matrix holds one row per embedded chunk, with the chunk's id and its content hash beside it
    (the chunks' texts stay in SQLite and are read only for the hits). It follows the index: when SQLite's
    ``data_version`` moves (another connection committed), only the rows of chunks that came or went are
    read or dropped; when the file is replaced (a new inode) or most of it changed, it is read whole.
    """

    FULL_RELOAD_SHARE = 0.5  # more new rows than this share of the matrix: reading it whole is cheaper

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self._version: tuple[int, int] | None = None
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.ids = np.zeros(0, dtype=np.int64)
        self.hashes: np.ndarray = np.zeros(0, dtype=object)
        self.text_hashes: np.ndarray = np.zeros(0, dtype=object)  # what each row's vector is of
        self.reloads = {"full": 0, "incremental": 0}

    def __len__(self) -> int:
        return len(self.ids)

    def _stamp(self) -> tuple[int, int]:
        try:
            inode = os.stat(self.store.path).st_ino
        except OSError:
            inode = -1
        return inode, self.store.data_version()

    def refresh(self) -> bool:
        """Follows the index when it changed; True if it did."""
        stamp = self._stamp()
        if stamp == self._version:
            return False
        current, current_text = self.store.embedded_chunks()
        same_file = self._version is not None and stamp[0] == self._version[0]
        # a row stays only while its chunk id still holds the same text (SQLite reuses the ids of deleted rows)
        position = np.searchsorted(current, self.ids)
        found = (position < len(current)) & (current[np.minimum(position, max(len(current) - 1, 0))] == self.ids) \
            if len(current) else np.zeros(len(self.ids), dtype=bool)
        keep = found.copy()
        keep[found] = current_text[position[found]] == self.text_hashes[found]
        added = np.setdiff1d(current, self.ids[keep], assume_unique=True)
        if not same_file or len(self.ids) == 0 or len(added) > self.FULL_RELOAD_SHARE * max(1, len(self.ids)):
            self.matrix, self.ids, self.hashes, self.text_hashes = self._load()
            self.reloads["full"] += 1
        else:
            matrix, ids, hashes = self.matrix[keep], self.ids[keep], self.hashes[keep]
            text_hashes = self.text_hashes[keep]
            if len(added):
                new_matrix, new_ids, new_hashes, new_text = self._load(added.tolist())
                if len(ids) == 0:
                    matrix = new_matrix
                else:
                    matrix = np.concatenate([matrix, new_matrix])
                ids, hashes = np.concatenate([ids, new_ids]), np.concatenate([hashes, new_hashes])
                text_hashes = np.concatenate([text_hashes, new_text])
            self.matrix, self.ids, self.hashes, self.text_hashes = matrix, ids, hashes, text_hashes
            self.reloads["incremental"] += 1
        self._version = stamp
        return True

    def _load(self, ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectors, chunk ids, content hashes and the text hash of each row."""
        return self.store.load_vector_rows(ids)

    def top_chunks(self, query_vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Rows of the matrix and cosine scores of the k best chunks."""
        if not len(self.ids):
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
                best.setdefault(self.hashes[i], (i, score))
            docs = self.store.documents_by_hash(list(best), collections or None)
            ranked = sorted(((doc, best[h]) for h, ds in docs.items() for doc in ds if doc.id not in exclude_ids),
                            key=lambda x: -x[1][1])
            if len(ranked) >= n or k >= len(self.ids):
                break
            k *= 4
        ranked = ranked[:n]
        chunks = self.store.chunks_by_id([int(self.ids[i]) for _, (i, _) in ranked])
        return [(doc, chunks[int(self.ids[i])], score) for doc, (i, score) in ranked]

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
