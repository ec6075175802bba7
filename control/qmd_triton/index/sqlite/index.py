"""The sqlite backend's :class:`SqliteIndex`: one SQLite file with documents, content, chunks, FTS5 and vectors.

Writers change the index inside one transaction per operation (WAL mode), so a
reader — the CLI or the server's ``qmd_search`` / ``qmd_retrieve`` — sees either
the state before an update or after it, never half of it. Content is stored once
per hash; chunks and vectors hang off the content hash, so identical files share
them and a rename costs nothing to re-embed.

Example:
    >>> index = SqliteIndex.open(Path("~/.local/share/qmd-triton/index.sqlite").expanduser())
    >>> index.counts()["documents"]
    42
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qmd_triton.errors import IndexCorrupt, IndexMissing, IndexReadOnly, IndexUnavailable, QmdError
from qmd_triton.index.interface import Index
from qmd_triton.index.rows import FINGERPRINT_KEY, LAST_UPDATE_KEY, ChunkRow, DocRow, text_hash
from qmd_triton.index.sqlite import migrations
from qmd_triton.index.sqlite.connection import _connect, _Connection, _is_empty, _read_only_place, sqlite_error
from qmd_triton.index.sqlite.fulltext import _FullText
from qmd_triton.index.sqlite.vectors import _VectorLog
from qmd_triton.progress import Progress, silent
from qmd_triton.text.terms import for_index

if TYPE_CHECKING:
    import numpy as np


class SqliteIndex(_FullText, _VectorLog, Index):
    """A connection to one index file: the sqlite backend of :class:`Index`."""

    backend = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.epoch = 0  # connections this object has had before this one (reconnect)

    def describe(self) -> str:
        return str(self.path)

    def collection_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT collection FROM documents ORDER BY 1")]

    def upsert_documents(self, items: Sequence[tuple[str, str, str, str, str, int, int]]) -> None:
        """Many documents at once (``update``); call inside a transaction."""
        for item in items:
            self.upsert_document(*item)

    def export_chunks(self) -> Iterator[tuple[ChunkRow, np.ndarray | None]]:
        """Every chunk of an indexed document with its vector (None while it has none), by id."""
        import numpy as np

        cur = self.conn.execute(
            "SELECT c.id, c.hash, c.seq, c.start_line, c.end_line, c.tokens, c.text, c.text_hash, e.vec FROM chunks c "
            "LEFT JOIN embeddings e ON e.text_hash = c.text_hash WHERE c.hash IN (SELECT hash FROM documents) "
            "ORDER BY c.id")
        for r in cur:
            yield ChunkRow(*r[:8]), (np.frombuffer(r[8], dtype=np.float32).copy() if r[8] is not None else None)

    def export_expansions(self) -> Iterator[tuple[str, dict]]:
        for key, value in self.conn.execute("SELECT key, value FROM expansions ORDER BY created"):
            yield key, json.loads(value)

    def import_chunks(self, rows: Sequence[tuple[ChunkRow, Any]]) -> None:
        """Chunks with their vectors (``index migrate``); call inside a transaction."""
        by_hash: dict[str, list[ChunkRow]] = {}
        for chunk, _ in rows:
            by_hash.setdefault(chunk.hash, []).append(chunk)
        for h, chunks in by_hash.items():
            self.add_chunks(h, chunks)
        self.add_vectors([(c.text_hash or text_hash(c.text), v) for c, v in rows if v is not None])

    def after_embed(self) -> None:
        """What an ``embed`` run leaves tidy: the vector log pruned to what a lagging reader may need."""
        self.prune_vector_log()

    @classmethod
    def open(cls, path: Path, *, create: bool = False, readonly: bool = False,
             progress: Progress = silent) -> SqliteIndex:
        """Opens an index; ``create`` makes a new one when the file does not exist.

        An index of an older schema is migrated when opened for writing; read-only it must be current.
        """
        path = Path(path)
        if not path.exists():
            if not create:
                raise IndexMissing(f"no index at {path}; add a collection and run `qmdctl update`")
            path.parent.mkdir(parents=True, exist_ok=True)
        conn: _Connection | None = None
        try:
            try:
                conn = _connect(path, readonly)
            except (IndexUnavailable, IndexReadOnly):
                # A read-only folder (or file system): SQLite cannot make the -shm file a WAL reader needs.
                # A cleanly closed index (no -wal left) can still be read as an immutable file; writing to
                # it then fails with the read-only error.
                if not _read_only_place(path) or os.path.exists(f"{path}-wal"):
                    raise
                conn = _connect(path, readonly, immutable=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            store = cls(conn, path)
            if not readonly and _is_empty(conn):
                migrations.create(conn)
            found = migrations.version(conn, str(path))
            migrations.check_supported(found, str(path))
            if found < migrations.SCHEMA_VERSION:
                if readonly:
                    raise IndexCorrupt(f"{path} has index schema {found}; open it for writing once "
                                       f"(`qmdctl update`) to migrate it to schema {migrations.SCHEMA_VERSION}")
                migrations.migrate(conn, str(path), progress)
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            raise sqlite_error(e, path) or IndexCorrupt(
                f"{path} is not a readable qmd-triton index ({e}); move it aside and run `qmdctl update` to rebuild"
            ) from None
        except QmdError:
            if conn is not None:
                conn.close()
            raise
        return store

    def close(self) -> None:
        if self.conn.total_changes:
            self.checkpoint()
        self.conn.close()

    def checkpoint(self) -> None:
        """Copies what this connection wrote from the write-ahead log into the index file, as far as readers
        allow, without waiting for them. A writer leaves the file whole on its own, so a copy of it (``cp``,
        a volume snapshot) is a good backup and a copy restored over it is read as written."""
        with suppress(sqlite3.Error, QmdError):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def reconnect(self) -> None:
        """Opens the file again on a new connection (the old one is closed), keeping this object and what
        readers built on it. A file rewritten in place (a backup copied over it) is read afresh: SQLite's page
        cache of a WAL reader notices only changes that went through the WAL."""
        fresh = SqliteIndex.open(self.path)
        self.conn.close()
        self.conn = fresh.conn
        self.epoch += 1

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls everything back."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself after some errors (a full disk): a ROLLBACK then would fail with
            # "cannot rollback - no transaction is active" and hide the real error.
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except (sqlite3.Error, QmdError):
                    pass
            raise

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the index as of its first read (WAL keeps that
        version while a writer commits), so a search made of several statements never mixes two states.
        Inside a transaction already, that transaction is the snapshot."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def data_version(self) -> tuple[int, int, int]:
        """Changes whenever a connection commits: another one (SQLite's ``data_version``, how servers notice a
        re-index), this one (its count of changed rows), or the file was opened again (:meth:`reconnect`)."""
        other = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        return self.epoch, other, self.conn.total_changes

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                          (key, value))

    def last_updates(self) -> dict[str, float]:
        """When each collection was last scanned by ``update`` (epoch seconds)."""
        out = {}
        prefix = LAST_UPDATE_KEY + ":"
        for key, value in self.conn.execute("SELECT key, value FROM meta WHERE key LIKE ?", (prefix + "%",)):
            out[key[len(prefix):]] = float(value)
        legacy = self.meta(LAST_UPDATE_KEY)  # an index updated before updates were recorded per collection
        if legacy:
            for (name,) in self.conn.execute("SELECT DISTINCT collection FROM documents"):
                out.setdefault(name, float(legacy))
        return out

    def mark_updated(self, collection: str, when: float | None = None) -> None:
        when = time.time() if when is None else when
        self.set_meta(f"{LAST_UPDATE_KEY}:{collection}", str(when))
        self.set_meta(LAST_UPDATE_KEY, str(when))

    def cached_expansion(self, key: str) -> dict | None:
        row = self.conn.execute("SELECT value FROM expansions WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def forget_expansions(self) -> int:
        """Empties the expansion cache (every query's next expansion runs the model); returns how many."""
        return self.conn.execute("DELETE FROM expansions").rowcount

    def remember_expansion(self, key: str, value: dict) -> bool:
        """Stores an expansion; False when the index is busy or read-only (the cache is best effort)."""
        try:
            self.conn.execute("INSERT OR REPLACE INTO expansions VALUES (?, ?, ?)",
                              (key, json.dumps(value, ensure_ascii=False), time.time()))
            if not self.conn.in_transaction:  # a server's write: the file stays whole for a copy
                self.checkpoint()
            return True
        except (sqlite3.OperationalError, QmdError):
            return False

    def fingerprint(self) -> dict | None:
        raw = self.meta(FINGERPRINT_KEY)
        return json.loads(raw) if raw else None

    def documents(self, collection: str | None = None) -> list[DocRow]:
        sql = "SELECT id, collection, path, title, hash, size, mtime_ns FROM documents"
        args: tuple = ()
        if collection is not None:
            sql += " WHERE collection = ?"
            args = (collection,)
        return [DocRow(*r) for r in self.conn.execute(sql + " ORDER BY collection, path", args)]

    def document(self, collection: str, path: str) -> DocRow | None:
        r = self.conn.execute(
            "SELECT id, collection, path, title, hash, size, mtime_ns FROM documents WHERE collection = ? AND path = ?",
            (collection, path),
        ).fetchone()
        return DocRow(*r) if r else None

    def documents_by_docid(self, docid: str) -> list[DocRow]:
        prefix = docid.lower().lstrip("#")
        rows = self.conn.execute(
            "SELECT id, collection, path, title, hash, size, mtime_ns FROM documents "
            "WHERE hash >= ? AND hash < ? ORDER BY collection, path",
            (prefix, prefix + "g"),
        )
        return [DocRow(*r) for r in rows]

    def unique_docids(self, hashes: Sequence[str], minimum: int = 6) -> dict[str, str]:
        """The shortest prefix (at least ``minimum`` hex digits) of each content hash that no other indexed
        content shares, git-style: what a hit prints as its ``#docid``."""
        out = {}
        for h in set(hashes):
            longest = 0
            for op, order in (("<", "DESC"), (">", "ASC")):
                row = self.conn.execute(f"SELECT hash FROM content WHERE hash {op} ? ORDER BY hash {order} LIMIT 1",
                                        (h,)).fetchone()
                if row:
                    longest = max(longest, len(os.path.commonprefix([h, row[0]])))
            out[h] = h[: max(minimum, longest + 1)]
        return out

    def documents_by_id(self, ids: Sequence[int]) -> dict[int, DocRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(
            f"SELECT id, collection, path, title, hash, size, mtime_ns FROM documents WHERE id IN ({marks})", list(ids)
        )
        return {r[0]: DocRow(*r) for r in rows}

    def documents_by_hash(self, hashes: Sequence[str],
                          collections: Sequence[str] | None = None) -> dict[str, list[DocRow]]:
        if not hashes:
            return {}
        marks = ",".join("?" * len(hashes))
        sql = f"SELECT id, collection, path, title, hash, size, mtime_ns FROM documents WHERE hash IN ({marks})"
        args = list(hashes)
        if collections:
            sql += f" AND collection IN ({','.join('?' * len(collections))})"
            args += list(collections)
        out: dict[str, list[DocRow]] = {}
        for r in self.conn.execute(sql + " ORDER BY collection, path", args):
            out.setdefault(r[4], []).append(DocRow(*r))
        return out

    def body(self, content_hash: str) -> str:
        row = self.conn.execute("SELECT body FROM content WHERE hash = ?", (content_hash,)).fetchone()
        if row is None:
            raise IndexCorrupt(f"{self.path}: content {content_hash[:12]} is missing")
        return row[0]

    def upsert_document(self, collection: str, path: str, title: str, content_hash: str, body: str,
                        size: int, mtime_ns: int) -> int:
        """Inserts or replaces one document; call inside a transaction."""
        c = self.conn
        c.execute("INSERT OR IGNORE INTO content (hash, body) VALUES (?, ?)", (content_hash, body))
        existing = c.execute("SELECT id FROM documents WHERE collection = ? AND path = ?",
                             (collection, path)).fetchone()
        now = time.time()
        if existing:
            doc_id = int(existing[0])
            c.execute(
                "UPDATE documents SET title = ?, hash = ?, size = ?, mtime_ns = ?, indexed_at = ? WHERE id = ?",
                (title, content_hash, size, mtime_ns, now, doc_id),
            )
            c.execute("DELETE FROM fts WHERE rowid = ?", (doc_id,))
        else:
            cur = c.execute(
                "INSERT INTO documents (collection, path, title, hash, size, mtime_ns, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (collection, path, title, content_hash, size, mtime_ns, now),
            )
            doc_id = int(cur.lastrowid)
        c.execute("INSERT INTO fts (rowid, title, body) VALUES (?, ?, ?)", (doc_id, for_index(title), for_index(body)))
        return doc_id

    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None:
        self.conn.execute("UPDATE documents SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, doc_id))

    def delete_documents(self, ids: Iterable[int]) -> int:
        n = 0
        for doc_id in ids:
            self.conn.execute("DELETE FROM fts WHERE rowid = ?", (doc_id,))
            n += self.conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,)).rowcount
        return n

    def delete_collection(self, collection: str) -> int:
        self.conn.execute("DELETE FROM meta WHERE key = ?", (f"{LAST_UPDATE_KEY}:{collection}",))
        return self.delete_documents([d.id for d in self.documents(collection)])

    def rename_collection(self, old: str, new: str) -> None:
        self.conn.execute("UPDATE documents SET collection = ? WHERE collection = ?", (new, old))
        self.conn.execute("UPDATE meta SET key = ? WHERE key = ?",
                          (f"{LAST_UPDATE_KEY}:{new}", f"{LAST_UPDATE_KEY}:{old}"))

    def cleanup(self, keep_expansions: int = 10000) -> dict[str, int]:
        """Removes what no document needs, prunes the expansion cache to its newest ``keep_expansions``,
        merges the FTS index and compacts the file (VACUUM); returns what it removed and the bytes reclaimed."""
        before = self.size_on_disk()
        with self.transaction():
            report = {
                "contents": self.collect_garbage(),
                "vectors": self.drop_unused_vectors(),
                "expansions": self.conn.execute(
                    "DELETE FROM expansions WHERE key NOT IN (SELECT key FROM expansions ORDER BY created DESC "
                    "LIMIT ?)", (keep_expansions,)).rowcount,
            }
            self.conn.execute("INSERT INTO fts(fts) VALUES ('optimize')")
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        report["bytes_before"] = before
        report["bytes_after"] = self.size_on_disk()
        report["bytes_reclaimed"] = max(0, before - report["bytes_after"])
        return report

    def size_on_disk(self) -> int:
        """The index file and its write-ahead log, in bytes."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total

    def collect_garbage(self) -> int:
        """Drops content (with its chunks and vectors) that no document uses any more."""
        return self.conn.execute(
            "DELETE FROM content WHERE hash NOT IN (SELECT DISTINCT hash FROM documents)"
        ).rowcount

    def unchunked_hashes(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT d.hash FROM documents d LEFT JOIN chunked c ON c.hash = d.hash WHERE c.hash IS NULL"
        )]

    def still_indexed(self, hashes: Sequence[str]) -> list[str]:
        """Those of ``hashes`` whose content a document still uses (an update may have removed the rest)."""
        if not hashes:
            return []
        marks = ",".join("?" * len(hashes))
        keep = {r[0] for r in self.conn.execute(
            f"SELECT DISTINCT hash FROM documents WHERE hash IN ({marks}) AND hash IN (SELECT hash FROM content)",
            list(hashes))}
        return [h for h in hashes if h in keep]

    def add_chunks(self, content_hash: str, chunks: Sequence[Any]) -> None:
        """Stores a content hash's chunks (objects with seq, start_line, end_line, tokens, text)."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO chunks (hash, seq, start_line, end_line, tokens, text, text_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(content_hash, c.seq, c.start_line, c.end_line, c.tokens, c.text, text_hash(c.text)) for c in chunks],
        )
        self.conn.execute("INSERT OR IGNORE INTO chunked (hash) VALUES (?)", (content_hash,))

    def pending_chunks(self) -> list[ChunkRow]:
        """One chunk per distinct text of the indexed documents that has no vector yet."""
        rows = self.conn.execute(
            "SELECT c.id, c.hash, c.seq, c.start_line, c.end_line, c.tokens, c.text, c.text_hash FROM chunks c "
            "WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.text_hash = c.text_hash) "
            "AND c.hash IN (SELECT hash FROM documents) GROUP BY c.text_hash"
        )
        return [ChunkRow(*r) for r in rows]

    def add_vectors(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Stores vectors by chunk text hash (every chunk with that text shares the vector)."""
        import numpy as np

        self.conn.executemany(
            "INSERT OR REPLACE INTO embeddings (text_hash, vec) VALUES (?, ?)",
            [(h, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in items],
        )

    def drop_unused_vectors(self) -> int:
        """Forgets vectors no chunk uses any more; returns how many."""
        return self.conn.execute(
            "DELETE FROM embeddings WHERE text_hash NOT IN (SELECT text_hash FROM chunks)").rowcount

    def clear_chunks(self) -> None:
        """Forgets every chunk (the next embed chunks again); vectors stay, keyed by chunk text."""
        self.conn.execute("DELETE FROM chunks")
        self.conn.execute("DELETE FROM chunked")
        self.conn.execute("DELETE FROM vector_log")  # everything changed: readers read everything again

    def clear_embeddings(self) -> None:
        """Forgets every chunk and vector (a new model or chunking needs them all again)."""
        self.conn.execute("DELETE FROM embeddings")
        self.conn.execute("DELETE FROM chunks")
        self.conn.execute("DELETE FROM chunked")
        self.conn.execute("DELETE FROM vector_log")  # everything changed: readers read everything again
        self.conn.execute("DELETE FROM meta WHERE key = ?", (FINGERPRINT_KEY,))

    def chunks_by_id(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r[0]: ChunkRow(*r) for r in self.conn.execute(
            f"SELECT id, hash, seq, start_line, end_line, tokens, text, text_hash FROM chunks WHERE id IN ({marks})",
            list(ids))}

    def chunks_of(self, content_hash: str) -> list[ChunkRow]:
        return [ChunkRow(*r) for r in self.conn.execute(
            "SELECT id, hash, seq, start_line, end_line, tokens, text, text_hash FROM chunks WHERE hash = ? "
            "ORDER BY seq",
            (content_hash,),
        )]

    def counts(self) -> dict[str, Any]:
        c = self.conn
        per = {}
        for name, docs, chunks, embedded in c.execute(
            "SELECT d.collection, COUNT(DISTINCT d.id), "
            "(SELECT COUNT(*) FROM chunks k "
            " WHERE k.hash IN (SELECT hash FROM documents WHERE collection = d.collection)), "
            "(SELECT COUNT(*) FROM chunks k JOIN embeddings e ON e.text_hash = k.text_hash "
            " WHERE k.hash IN (SELECT hash FROM documents WHERE collection = d.collection)) "
            "FROM documents d GROUP BY d.collection"
        ):
            per[name] = {"documents": docs, "chunks": chunks, "embedded": embedded}
        unchunked = c.execute(
            "SELECT COUNT(DISTINCT d.hash) FROM documents d LEFT JOIN chunked k ON k.hash = d.hash WHERE k.hash IS NULL"
        ).fetchone()[0]
        chunks = c.execute("SELECT COUNT(*) FROM chunks WHERE hash IN (SELECT hash FROM documents)").fetchone()[0]
        embedded = c.execute(
            "SELECT COUNT(*) FROM chunks k JOIN embeddings e ON e.text_hash = k.text_hash "
            "WHERE k.hash IN (SELECT hash FROM documents)"
        ).fetchone()[0]
        last = c.execute("SELECT MAX(indexed_at) FROM documents").fetchone()[0]
        return {
            "documents": c.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
            "chunks": chunks,
            "embedded": embedded,
            "unchunked_documents": unchunked,
            "collections": per,
            "last_update": last,
            "fingerprint": self.fingerprint(),
            "bytes": os.path.getsize(self.path) if self.path.exists() else 0,
        }
