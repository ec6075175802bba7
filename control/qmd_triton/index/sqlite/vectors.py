"""Vectors in SQLite: the vector log that says which chunks' vectors changed, and exact search over
them (:class:`VectorMatrix`, one BLAS product)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from qmd_triton.errors import InputError
from qmd_triton.index.interface import Nearest
from qmd_triton.index.rows import ChunkRow

if TYPE_CHECKING:
    from qmd_triton.index.sqlite.index import SqliteIndex


class _VectorLog:
    """The vector log and the vectors it names, and exact search over them."""

    _matrix: VectorMatrix | None = None

    VECTOR_LOG_KEEP = 200_000  # changes a lagging reader can catch up on; beyond that it reads everything again

    def vector_log_position(self) -> int:
        """The last change of any chunk's vector, as a position in the vector log (0: none yet)."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'vector_log'").fetchone()
        return int(row[0]) if row else 0

    def vector_changes(self, after: int) -> tuple[list[int], int] | None:
        """Ids of the chunks whose vector may have come, gone or changed since log position ``after``, and
        the position now; None when the log no longer reaches back that far (read everything again)."""
        now = self.vector_log_position()
        if now == after:
            return [], now
        if now < after:  # the log went back: another copy of the index (a backup) was restored over this one
            return None
        oldest = self.conn.execute("SELECT MIN(seq) FROM vector_log").fetchone()[0]
        if oldest is None or oldest > after + 1:
            return None
        ids = [r[0] for r in self.conn.execute(
            "SELECT DISTINCT chunk_id FROM vector_log WHERE seq > ? AND seq <= ?", (after, now))]
        return ids, now

    def prune_vector_log(self, keep: int = VECTOR_LOG_KEEP) -> int:
        return self.conn.execute("DELETE FROM vector_log WHERE seq <= ?",
                                 (self.vector_log_position() - keep,)).rowcount

    def restart_vector_log(self, after: int) -> None:
        """Empties the vector log and moves its next position past ``after`` (and past its own): a reader
        at any position up to ``after`` finds the log no longer reaches back to it and reads every vector
        again (what a restore needs: the log it carries is another copy's history). Call in a transaction."""
        position = max(after, self.vector_log_position()) + 1
        self.conn.execute("DELETE FROM vector_log")
        if not self.conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'vector_log'",
                                 (position,)).rowcount:
            self.conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('vector_log', ?)", (position,))

    def vector_log_entry(self, position: int) -> tuple[int, str | None] | None:
        """The chunk the vector log names at ``position`` and the hash of its text (None when the entry is
        gone or never was; the hash None when the chunk is): with the position, what tells a reader the log
        is still the one it followed (a copy of another index restored over this one names other texts)."""
        row = self.conn.execute("SELECT v.chunk_id, c.text_hash FROM vector_log v LEFT JOIN chunks c "
                                "ON c.id = v.chunk_id WHERE v.seq = ?", (position,)).fetchone()
        return (int(row[0]), row[1]) if row else None

    def load_vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(matrix, chunk ids, content hashes)`` of every embedded chunk (or of ``ids``), by chunk id."""
        import numpy as np

        sql = ("SELECT c.id, c.hash, e.vec FROM chunks c JOIN embeddings e ON e.text_hash = c.text_hash")
        if ids is None:
            rows = self.conn.execute(sql + " ORDER BY c.id").fetchall()
        else:
            rows = []
            for start in range(0, len(ids), 900):  # SQLite's parameter limit
                part = list(ids[start : start + 900])
                rows += self.conn.execute(sql + f" WHERE c.id IN ({','.join('?' * len(part))})", part).fetchall()
            rows.sort(key=lambda r: r[0])
        if not rows:
            return (np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1).copy()
        return (matrix, np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                np.array([r[1] for r in rows], dtype=object))


    def nearest_chunks(self, query_vec: np.ndarray, k: int) -> Nearest:
        """The k chunks nearest the query by exact cosine over the vector matrix, which first catches up with
        the index (ids and content hashes only: :meth:`complete_chunks` reads the texts of those kept)."""
        if self._matrix is None:
            self._matrix = VectorMatrix(self)  # type: ignore[arg-type]
        matrix = self._matrix
        matrix.refresh()
        top = matrix.top_chunks(np.asarray(query_vec, dtype=np.float32), k)
        return Nearest([(ChunkRow(int(matrix.ids[i]), matrix.hashes[i], 0, 0, 0, 0, ""), score) for i, score in top],
                       exhausted=k >= len(matrix))

    @property
    def vector_matrix(self) -> VectorMatrix | None:
        """The matrix :meth:`nearest_chunks` searches (None before the first search)."""
        return self._matrix


class VectorMatrix:
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

    def __init__(self, index: SqliteIndex) -> None:
        self.index = index
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
            inode = os.stat(self.index.path).st_ino
        except OSError:
            inode = -1
        return inode, self.index.data_version()

    def refresh(self) -> bool:
        """Follows the index when it changed; True if it did."""
        stamp = self._stamp()
        if stamp == self._version:
            return False
        with self.index.snapshot():  # the log position and the rows read agree
            changes = None
            if self._version is not None and stamp[0] == self._version[0]:
                changes = self.index.vector_changes(self._log)
            if changes is not None and len(changes[0]) <= self.FULL_RELOAD_SHARE * max(1, len(self)):
                # The file was opened again (its log checkpointed, or a copy restored over it in place): the log
                # says what changed only if it is the log this matrix followed; the entry at the position the
                # matrix reflects tells (one lookup by key).
                reopened = self._version is not None and stamp[1][0] != self._version[1][0]
                if reopened and self._log and self.index.vector_log_entry(self._log) != self._anchor:
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
        self._log = self.index.vector_log_position()
        self._anchor = self.index.vector_log_entry(self._log)
        matrix, ids, hashes = self.index.load_vectors()
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
        matrix, ids, hashes = self.index.load_vectors(changed) if changed else (None, [], [])
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
        self._anchor = self.index.vector_log_entry(position)
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
