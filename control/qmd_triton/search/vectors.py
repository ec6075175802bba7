"""Vector search: on the sqlite backend exact cosine over every stored chunk vector (one BLAS matrix
product, :class:`VectorIndex`); on the milvus backend Milvus's HNSW index (:class:`MilvusVectors`). Both rank
documents by their best chunk, and :func:`vectors_for` picks the one an index needs.

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
from qmd_triton.index.backend import Index
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.milvus import QUERY_LIMIT
from qmd_triton.index.store import ChunkRow, DocRow, IndexStore
from qmd_triton.search.lexical import known_collections
from qmd_triton.search.options import SNIPPET_LINES, Hit, SearchOptions, annotate, clip, hit_of


def vectors_for(store: Index) -> VectorIndex | MilvusVectors:
    """The vector search of an index's backend."""
    return VectorIndex(store) if isinstance(store, IndexStore) else MilvusVectors(store)


class _DocumentRanking:
    """Documents by their best chunk, whatever finds the chunks (``_top``: chunk rows and scores, best first)."""

    store: Index

    def refresh(self) -> bool:
        return False

    def _top(self, query_vec: np.ndarray, k: int) -> list[tuple[ChunkRow, float]]:
        raise NotImplementedError

    def _exhausted(self, k: int, found: int) -> bool:
        """Whether asking for more than ``k`` chunks (``found`` came back) could find more."""
        raise NotImplementedError

    def ranked_docs(self, query_vec: np.ndarray, n: int, collections: Sequence[str] = (),
                    exclude_ids: set[int] | frozenset[int] = frozenset()) -> list[tuple[DocRow, ChunkRow, float]]:
        """Up to n documents by their best chunk's cosine similarity, with that chunk."""
        self.refresh()
        k = n * 4
        while True:
            top = self._top(query_vec, k)
            best: dict[str, tuple[ChunkRow, float]] = {}
            for chunk, score in top:
                best.setdefault(chunk.hash, (chunk, score))
            docs = self.store.documents_by_hash(list(best), collections or None)
            ranked = sorted(((doc, best[h]) for h, ds in docs.items() for doc in ds if doc.id not in exclude_ids),
                            key=lambda x: -x[1][1])
            if len(ranked) >= n or self._exhausted(k, len(top)):
                break
            k *= 4
        ranked = ranked[:n]
        chunks = self._complete([chunk for _, (chunk, _) in ranked])
        return [(doc, chunk, score) for (doc, (_, score)), chunk in zip(ranked, chunks)]

    def _complete(self, chunks: list[ChunkRow]) -> list[ChunkRow]:
        """The chunks' rows with their texts (those ``_top`` found may carry only id and hash)."""
        return chunks

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


class MilvusVectors(_DocumentRanking):
    """Vector search in Milvus: its HNSW index over the chunks' vectors (inner product of normalized
    vectors: cosine). Nothing is held in this process: a server model's memory does not grow with the corpus.
    """

    def __init__(self, store: Index) -> None:
        self.store = store
        self._raw = 0

    def _exhausted(self, k: int, found: int) -> bool:
        # Milvus answered fewer than asked (chunks without a vector yet are dropped from what it returns, so
        # the raw count decides), or k reached its cap for one search. No count(*): that scans every row.
        return self._raw < k or k >= QUERY_LIMIT

    def _top(self, query_vec: np.ndarray, k: int) -> list[tuple[ChunkRow, float]]:
        if not hasattr(self, "_dim"):
            self._dim = int((self.store.fingerprint() or {}).get("dim") or 0)
        if self._dim and query_vec.shape[-1] != self._dim:
            raise InputError(f"query vector has {query_vec.shape[-1]} dims but the index holds {self._dim}-d vectors")
        top, self._raw = self.store.nearest_chunks(np.asarray(query_vec, dtype=np.float32), k,  # type: ignore[attr-defined]
                                                   raw=True)
        return top


class VectorIndex(_DocumentRanking):
    """Exact cosine search over every stored chunk vector (BLAS matrix product).

    The matrix holds one row per embedded chunk, with the chunk's id and its content hash beside it
    (the chunks' texts stay in SQLite and are read only for the hits). It follows the index: when
    SQLite's ``data_version`` moves (a connection committed), the index's vector log names the chunks
    whose vectors came, went or changed since the last look, and only their rows are read, overwritten
    or dropped (rows are appended into spare capacity; dropped rows are masked, and compacted away once
    they are a quarter of the matrix). The matrix is read whole at the start, when the file was replaced
    (a new inode), when the log no longer reaches back far enough, or when most of it changed.
    """

    FULL_RELOAD_SHARE = 0.5  # more changed rows than this share of the matrix: reading it whole is cheaper
    COMPACT_SHARE = 0.25  # masked rows beyond this share of the matrix are compacted away

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self._version: tuple[int, tuple[int, int, int]] | None = None
        self._log = 0  # the vector log position the matrix reflects
        self._anchor: tuple[int, str | None] | None = None  # the chunk (and its text's hash) the log names there
        self._buf = np.zeros((0, 0), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)  # -1 for a dropped row
        self._hashes: np.ndarray = np.zeros(0, dtype=object)
        self._rows = 0  # rows in use (live and dropped) at the start of the buffers
        self._row_of: dict[int, int] = {}
        self.reloads = {"full": 0, "incremental": 0}

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def matrix(self) -> np.ndarray:
        return self._buf[: self._rows]

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._rows]

    @property
    def hashes(self) -> np.ndarray:
        return self._hashes[: self._rows]

    def _stamp(self) -> tuple[int, tuple[int, int, int]]:
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
        with self.store.snapshot():  # the log position and the rows read agree
            changes = None
            if self._version is not None and stamp[0] == self._version[0]:
                changes = self.store.vector_changes(self._log)
            if changes is not None and len(changes[0]) <= self.FULL_RELOAD_SHARE * max(1, len(self)):
                # The file was opened again (its log checkpointed, or a copy restored over it in place): the log
                # says what changed only if it is the log this matrix followed; the entry at the position the
                # matrix reflects tells (one lookup by key).
                reopened = self._version is not None and stamp[1][0] != self._version[1][0]
                if reopened and self._log and self.store.vector_log_entry(self._log) != self._anchor:
                    self._load_all()
                    self.reloads["full"] += 1
                else:
                    self._apply(*changes)
                    self.reloads["incremental"] += 1
            else:
                self._load_all()
                self.reloads["full"] += 1
        self._version = stamp
        return True

    def _load_all(self) -> None:
        self._log = self.store.vector_log_position()
        self._anchor = self.store.vector_log_entry(self._log)
        matrix, ids, hashes = self.store.load_vectors()
        n = len(ids)
        cap = n + max(1024, n // 8)  # room for what the next updates add, so an append never copies the matrix
        self._buf = np.zeros((cap, matrix.shape[1] if n else 0), dtype=np.float32)
        self._buf[:n] = matrix
        self._ids = np.full(cap, -1, dtype=np.int64)
        self._ids[:n] = ids
        self._hashes = np.empty(cap, dtype=object)
        self._hashes[:n] = hashes
        self._rows = n
        self._row_of = {int(i): r for r, i in enumerate(ids)}

    def _apply(self, changed: list[int], position: int) -> None:
        matrix, ids, hashes = self.store.load_vectors(changed) if changed else (None, [], [])
        present = set()
        for k, chunk_id in enumerate(int(i) for i in ids):
            present.add(chunk_id)
            row = self._row_of.get(chunk_id)
            if row is None:
                row = self._append(matrix.shape[1])
                self._row_of[chunk_id] = row
                self._ids[row] = chunk_id
            self._buf[row] = matrix[k]
            self._hashes[row] = hashes[k]
        for chunk_id in set(changed) - present:  # no vector any more (chunk or vector removed)
            row = self._row_of.pop(chunk_id, None)
            if row is not None:
                self._ids[row] = -1
                self._buf[row] = 0.0
                self._hashes[row] = None
        self._log = position
        self._anchor = self.store.vector_log_entry(position)
        if self._rows - len(self._row_of) > self.COMPACT_SHARE * max(1, self._rows):
            self._compact()

    def _append(self, dim: int) -> int:
        if self._buf.shape[1:] != (dim,) and self._rows == 0:  # the first vectors of an empty index
            self._buf, self._ids, self._hashes = (np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.int64),
                                                  np.zeros(0, dtype=object))
        if self._rows == len(self._buf):  # grow by half (amortized: an append does not copy the matrix)
            cap = max(16, int(self._rows * 1.5))
            buf = np.zeros((cap, dim), dtype=np.float32)
            buf[: self._rows] = self._buf[: self._rows]
            ids = np.full(cap, -1, dtype=np.int64)
            ids[: self._rows] = self._ids[: self._rows]
            hashes = np.empty(cap, dtype=object)
            hashes[: self._rows] = self._hashes[: self._rows]
            self._buf, self._ids, self._hashes = buf, ids, hashes
        self._rows += 1
        return self._rows - 1

    def _compact(self) -> None:
        live = self._ids[: self._rows] >= 0
        self._buf = self._buf[: self._rows][live]
        self._ids = self._ids[: self._rows][live]
        self._hashes = self._hashes[: self._rows][live]
        self._rows = len(self._ids)
        self._row_of = {int(i): r for r, i in enumerate(self._ids)}

    def top_chunks(self, query_vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Rows of the matrix and cosine scores of the k best chunks."""
        if not self._row_of:
            return []
        if query_vec.shape[-1] != self._buf.shape[1]:
            raise InputError(
                f"query vector has {query_vec.shape[-1]} dims but the index holds {self._buf.shape[1]}-d vectors"
            )
        scores = self.matrix @ query_vec.astype(np.float32)
        if len(self._row_of) < self._rows:
            scores[self.ids < 0] = -np.inf  # dropped rows
        k = min(k, len(self._row_of))
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return [(int(i), float(scores[i])) for i in idx]

    def _exhausted(self, k: int, found: int) -> bool:
        return k >= len(self)

    def _top(self, query_vec: np.ndarray, k: int) -> list[tuple[ChunkRow, float]]:
        """The matrix's best rows as chunk ids and content hashes only: texts are read for the final hits."""
        return [(ChunkRow(int(self.ids[i]), self.hashes[i], 0, 0, 0, 0, ""), score)
                for i, score in self.top_chunks(query_vec, k)]

    def _complete(self, chunks: list[ChunkRow]) -> list[ChunkRow]:
        full = self.store.chunks_by_id([c.id for c in chunks])
        return [full[c.id] for c in chunks]
