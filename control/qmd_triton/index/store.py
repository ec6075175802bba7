"""The index: one SQLite file with documents, content, chunks, FTS5 and vectors.

Writers change the index inside one transaction per operation (WAL mode), so a
reader — the CLI or the server's ``qmd_search`` / ``qmd_retrieve`` — sees either
the state before an update or after it, never half of it. Content is stored once
per hash; chunks and vectors hang off the content hash, so identical files share
them and a rename costs nothing to re-embed.

Example:
    >>> store = IndexStore.open(Path("~/.local/share/qmd-triton/index.sqlite").expanduser())
    >>> store.counts()["documents"]
    42
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


from qmd_triton.errors import DiskFull, IndexCorrupt, IndexMissing, IndexReadOnly, IndexUnavailable, QmdError
from qmd_triton.index import migrations
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.migrations import text_hash
from qmd_triton.progress import Progress, silent
from qmd_triton.text.terms import for_index, fts_match

INDEX_FILE = "index.sqlite"
FINGERPRINT_KEY = "embedding_fingerprint"
LAST_UPDATE_KEY = "last_update"
# Column weights of bm25(fts, title, body): a title match counts this many body matches.
TITLE_WEIGHT = 2.0
ANCHOR_SHARE = 0.01  # terms in at most 1% of the rows join the first anchor (fewest second passes, measured)
BM25_TF_MAX = 2.2  # k1 + 1: FTS5's bm25() bounds a term's saturated frequency by it (k1 = 1.2)


@dataclass(frozen=True)
class DocRow:
    id: int
    collection: str
    path: str
    title: str
    hash: str
    size: int
    mtime_ns: int

    @property
    def docid(self) -> str:
        return docid_of(self.hash)

    @property
    def display_path(self) -> str:
        return f"{self.collection}/{self.path}"


@dataclass(frozen=True)
class ChunkRow:
    id: int
    hash: str
    seq: int
    start_line: int
    end_line: int
    tokens: int
    text: str
    text_hash: str = ""


def docid_of(content_hash: str) -> str:
    """The short id users type: the first 6 hex digits of the content hash."""
    return content_hash[:6]


# SQLite's primary result codes that say something about the file rather than about a statement.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26


def damaged(path: os.PathLike[str] | str, why: str) -> str:
    """The one line for an index file that cannot be trusted: what is wrong and the two ways back."""
    return (f"{path} is damaged ({why}); restore a backup (`qmdctl index restore BACKUP`), or move it aside "
            f"(mv {path} {path}.damaged) and rebuild it with `qmdctl update` and `qmdctl embed`")


def sqlite_error(e: sqlite3.Error, path: os.PathLike[str] | str) -> QmdError | None:
    """The error a person can act on for a SQLite error about the index file itself (read-only, disk full,
    damaged, cannot be opened), or None for an error of one statement (a bug, a missing table)."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(e)
    if code in (_SQLITE_READONLY, _SQLITE_PERM) or "readonly database" in text:
        return IndexReadOnly(f"{path} is read-only ({text}): it can be searched but not changed; give this user write "
                             f"access to it and to its folder, or point QMD_HOME at a writable copy")
    if code == _SQLITE_FULL or "disk is full" in text:
        return DiskFull(f"the disk holding {path} is full ({text}); nothing was changed: free some space and run "
                        "the command again")
    if code == _SQLITE_NOTADB:
        return IndexCorrupt(f"{path} is not a readable qmd-triton index ({text}); move it aside and run "
                            "`qmdctl update` to rebuild")
    if code == _SQLITE_CORRUPT or "malformed" in text:
        return IndexCorrupt(damaged(path, text))
    if code == _SQLITE_CANTOPEN:
        return IndexUnavailable(f"cannot open {path} ({text}): its folder must exist and be writable (SQLite keeps "
                                "its -wal and -shm files there)")
    if code == _SQLITE_IOERR:
        return _io_error(text, path)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return IndexUnavailable(f"{path} stayed locked by another writer ({text}); run the command again")
    return None


def _io_error(text: str, path: os.PathLike[str] | str) -> QmdError:
    """SQLite says only "disk I/O error" when a write fails for want of space: look at the disk and at
    this process's file size limit (``ulimit -f``) to say which."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        try:
            near = max(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))
        except (OSError, ValueError):
            near = 0
        if near >= soft * 0.5:
            return DiskFull(f"{path} reached this process's file size limit (ulimit -f: {soft} bytes) ({text}); "
                            "nothing was changed: raise the limit and run the command again")
    try:
        st = os.statvfs(Path(path).parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = -1
    if 0 <= free < 1 << 20:
        return DiskFull(f"the disk holding {path} is full ({text}: {free} bytes free); nothing was changed: free "
                        "some space and run the command again")
    return IndexUnavailable(f"cannot read or write {path} ({text}); check the disk")


class _Cursor(sqlite3.Cursor):
    """Turns SQLite's errors about the file into the errors of :func:`sqlite_error`, wherever they surface
    (executing a statement or fetching its rows)."""

    def _mapped(self, e: sqlite3.Error) -> BaseException:
        mapped = sqlite_error(e, getattr(self.connection, "qmd_path", "the index")) or e
        if isinstance(mapped, (IndexCorrupt, IndexUnavailable)):
            # What this connection read may be stale pages of a file replaced under it (a restore by cp):
            # a long-lived reader opens the file afresh before its next request (IndexHandle.get).
            self.connection.suspect = True
        return mapped

    def execute(self, *args: Any) -> _Cursor:
        try:
            return super().execute(*args)
        except sqlite3.Error as e:
            raise self._mapped(e) from None

    def executemany(self, *args: Any) -> _Cursor:
        try:
            return super().executemany(*args)
        except sqlite3.Error as e:
            raise self._mapped(e) from None

    def executescript(self, *args: Any) -> _Cursor:
        try:
            return super().executescript(*args)
        except sqlite3.Error as e:
            raise self._mapped(e) from None

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as e:
            raise self._mapped(e) from None

    def fetchmany(self, *args: Any) -> list:
        try:
            return super().fetchmany(*args)
        except sqlite3.Error as e:
            raise self._mapped(e) from None

    def fetchall(self) -> list:
        try:
            return super().fetchall()
        except sqlite3.Error as e:
            raise self._mapped(e) from None

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as e:
            raise self._mapped(e) from None


class _Connection(sqlite3.Connection):
    """A connection whose statements run on :class:`_Cursor` (``Connection.execute`` would bypass it)."""

    qmd_path = "the index"
    suspect = False  # an error said the file may be damaged: reopen before trusting it again

    def cursor(self, factory: Any = _Cursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, *args: Any) -> Any:  # type: ignore[override]
        return self.cursor().execute(*args)

    def executemany(self, *args: Any) -> Any:  # type: ignore[override]
        return self.cursor().executemany(*args)

    def executescript(self, *args: Any) -> Any:  # type: ignore[override]
        return self.cursor().executescript(*args)


class IndexStore:
    """A connection to one index file: the ``sqlite`` backend of :class:`qmd_triton.index.backend.Index`."""

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

    # -- opening -------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, create: bool = False, readonly: bool = False,
             progress: Progress = silent) -> IndexStore:
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
        fresh = IndexStore.open(self.path)
        self.conn.close()
        self.conn = fresh.conn
        self.epoch += 1

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    # -- meta ------------------------------------------------------------------------

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

    # -- documents -------------------------------------------------------------------

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

    # -- BM25 ------------------------------------------------------------------------

    def bm25(self, terms: Sequence[str], limit: int, collections: Sequence[str] | None = None,
             exclude: Sequence[str] = (), *, exhaustive: bool = False) -> list[tuple[DocRow, float]]:
        """The ``limit`` best documents matching any term (a term with spaces is a phrase) and none of
        ``exclude``, with their BM25 score (negative, lower is better, as SQLite's).

        Scoring: SQLite's bm25() weighs a term by log((N - n + 0.5) / (n + 0.5)) and floors that at 1e-6,
        so a term found in half the rows or more counts for nothing: in a small collection about one
        topic, the topic's own words score 0 and the order is arbitrary. Each term is therefore scored
        alone, and its bm25() (a saturated, length-normalized frequency, title weighted, times SQLite's
        weight) is rescaled to Lucene's weight log(1 + (N - n + 0.5) / (n + 0.5)), positive for every
        term and within log(2) of SQLite's for rare ones.

        Cost: scoring a row costs a few microseconds, and common words match most rows ("a" is in 93% of
        msmarco's passages), so scoring every match of every term grows with the collection. A term's
        contribution is at most (k1 + 1) = 2.2 times its weight, so the exact top ``limit`` is found from
        the rarest terms (the anchor) alone whenever the ``limit``-th anchored score beats what the other
        terms could add up to: those terms are scored only on documents that hold an anchor term.
        The anchor starts as the rarest terms: enough to match ``limit`` documents, and every term in at
        most 1% of the rows (measured: fewest second passes for the time); if the bound is not
        met, it grows once to the terms the bound requires (at most two statements per query).
        ``exhaustive=True`` scores every match of every term: the reference the pruned search equals.
        """
        terms = list(dict.fromkeys(t for t in terms if t.strip()))
        if not terms:
            return []
        with self.snapshot():  # the counts and the scoring statements see one state of the index
            return self._bm25(terms, limit, collections, exclude, exhaustive)

    def _bm25(self, terms: list[str], limit: int, collections: Sequence[str] | None, exclude: Sequence[str],
              exhaustive: bool) -> list[tuple[DocRow, float]]:
        rows_total = self._row_count()
        counts = {i: self._match_count(t) for i, t in enumerate(terms)}
        live = sorted((i for i, n in counts.items() if n), key=lambda i: (counts[i], i))
        if not live:
            return []
        weight = {i: math.log1p((rows_total - counts[i] + 0.5) / (counts[i] + 0.5)) for i in live}
        anchor = len(live) if exhaustive else 1
        while anchor < len(live) and (sum(counts[i] for i in live[:anchor]) < limit
                                      or counts[live[anchor]] <= ANCHOR_SHARE * rows_total):
            anchor += 1
        while True:
            rows = self._bm25_rows(terms, live[:anchor], live[anchor:], counts, rows_total, limit,
                                   collections, exclude)
            kth = -rows[-1][1] if len(rows) >= limit else 0.0
            if anchor == len(live) or BM25_TF_MAX * sum(weight[i] for i in live[anchor:]) <= kth:
                return rows
            while anchor < len(live) and BM25_TF_MAX * sum(weight[i] for i in live[anchor:]) > kth:
                anchor += 1

    def _match_count(self, term: str) -> int:
        """Rows holding a term or phrase: FTS5 counts a doclist without reading positions (cheap)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM fts WHERE fts MATCH ?", (fts_match([term]),))
                   .fetchone()[0])

    def _bm25_rows(self, terms: list[str], anchor: list[int], rest: list[int], counts: dict[int, int],
                   rows_total: int, limit: int, collections: Sequence[str] | None,
                   exclude: Sequence[str]) -> list[tuple[DocRow, float]]:
        """Anchor terms scored on all their matches; the rest only on documents holding an anchor term.

        A rest term is matched as ``term AND (anchor terms)``, whose bm25() is the sum of every present
        phrase's own part (each phrase's weight comes from the whole table): the term's part is that sum
        less the anchor terms' parts in the same document. Restricting by rowid instead would run the
        MATCH once per document (measured 4x slower than scoring every match).
        """
        anchored = fts_match([terms[i] for i in anchor])
        arm = f"SELECT ? AS t, rowid AS id, bm25(fts, {TITLE_WEIGHT}, 1.0) AS s FROM fts WHERE fts MATCH ?"
        args: list[Any] = []
        for i in anchor:
            args += [i, fts_match([terms[i]])]
        for i in rest:
            args += [i, f"({fts_match([terms[i]])}) AND ({anchored})"]
        live = anchor + rest
        args += [x for i in live for x in (i, _lucene_weight(counts[i], rows_total))]
        # MATERIALIZED: a flattened arm would put bm25() in a join, where SQLite refuses it
        sql = (f"WITH a(t, id, s) AS MATERIALIZED ({' UNION ALL '.join([arm] * len(anchor))}), "
               + (f"r(t, id, s) AS MATERIALIZED ({' UNION ALL '.join([arm] * len(rest))}), " if rest else "")
               + f"w(t, m) AS (VALUES {', '.join(['(?, ?)'] * len(live))}), "
               "scored(id, s) AS (SELECT a.id, a.s * w.m FROM a JOIN w ON w.t = a.t"
               + (" UNION ALL SELECT r.id, (r.s - x.s) * w.m FROM r JOIN w ON w.t = r.t "
                  "JOIN (SELECT id, SUM(s) AS s FROM a GROUP BY id) x ON x.id = r.id" if rest else "")
               + ") SELECT d.id, d.collection, d.path, d.title, d.hash, d.size, d.mtime_ns, t.score FROM "
               "(SELECT id, SUM(s) AS score FROM scored GROUP BY id) t JOIN documents d ON d.id = t.id")
        where = []
        if collections:
            where.append(f"d.collection IN ({','.join('?' * len(collections))})")
            args += list(collections)
        excluded = [e for e in exclude if e.strip()]
        if excluded:
            where.append("d.id NOT IN (SELECT rowid FROM fts WHERE fts MATCH ?)")
            args.append(fts_match(excluded))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t.score, d.id LIMIT ?"
        args.append(limit)
        return [(DocRow(*r[:7]), float(r[7])) for r in self.conn.execute(sql, args)]

    def matching(self, terms: Sequence[str]) -> set[int]:
        """Ids of the documents that hold any of the terms (for excluding them from vector lists)."""
        terms = [t for t in terms if t.strip()]
        if not terms:
            return set()
        return {int(r[0]) for r in self.conn.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (fts_match(terms),))}

    def _row_count(self) -> int:
        """Rows of the FTS table (one per document), cached until the index changes."""
        version = self.data_version()
        if getattr(self, "_rows", None) is None or self._rows[0] != version:
            self._rows = (version, int(self.conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]))
        return self._rows[1]

    # -- chunks and vectors ----------------------------------------------------------

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

    # -- status ----------------------------------------------------------------------

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


def _connect(path: Path, readonly: bool, immutable: bool = False) -> _Connection:
    uri = None
    if immutable:
        uri = f"file:{path}?immutable=1"
    elif readonly:
        uri = f"file:{path}?mode=ro"
    conn = sqlite3.connect(uri or path, uri=uri is not None, timeout=30, isolation_level=None,
                           check_same_thread=False, factory=_Connection)
    conn.qmd_path = str(path)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file now, not at first use
    except BaseException:
        conn.close()
        raise
    return conn


def _read_only_place(path: Path) -> bool:
    """True when this process cannot write the index's folder (a read-only home or file system)."""
    return path.exists() and not os.access(path.parent, os.W_OK)


def _lucene_weight(n: int, rows_total: int) -> float:
    """Lucene's IDF over SQLite's (floored) one: multiplies a term's bm25() into Lucene's BM25."""
    ratio = (rows_total - n + 0.5) / (n + 0.5)
    return math.log1p(ratio) / max(1e-6, math.log(ratio)) if ratio > 0 else 0.0


def _is_empty(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0


def header_problem(path: os.PathLike[str] | str, settle_s: float = 0.2) -> str | None:
    """Why the index file cannot be whole, from its 100-byte header and its size (no page is read), or None.

    A file shorter than the pages its header counts was truncated (a half-finished copy, a full disk, a
    restore gone wrong). A checkpoint growing the file writes the header first, so a short file is looked at
    again after ``settle_s`` before it is called damaged.
    """
    for attempt in range(2):
        try:
            with open(path, "rb") as f:
                head = f.read(100)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"{path} cannot be read ({e.strerror or e})"
        if not head:
            return None  # an empty file is a new index SQLite has not written yet
        if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
            return f"{path} is not a readable qmd-triton index (no SQLite header)"
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        pages = int.from_bytes(head[28:32], "big")
        counted = pages and head[24:28] == head[92:96]  # the header's page count is valid only then
        if not counted or size >= pages * page:
            return None
        if attempt == 0:
            time.sleep(settle_s)
    return damaged(path, f"the file has {size} bytes where its header counts {pages * page}: it was cut short")


class IndexHandle:
    """A long-lived reader (a server model) of an index that may be created, updated, rebuilt or restored.

    Each request looks at the file (one ``stat``): a new inode (deleted and rebuilt, or replaced by a rename)
    opens a new store; the same inode with another size or modification time (SQLite checkpointed its log,
    or a backup was copied over the file in place: ``cp``, rsync, a volume snapshot), or an error that said
    the file is damaged, opens the file again on a fresh connection. So a server never keeps answering from
    a replaced index, nor from stale pages of one restored in place.
    """

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = path
        self._store: IndexStore | None = None
        self._stamp: tuple[int, int, int, int] | None = None
        self._contexts = ContextMap.watch(Path(path).parent / "config.toml")

    def contexts(self) -> ContextMap:
        """The contexts of the config file beside the index (``$QMD_HOME/config.toml``), reread when it changes."""
        return self._contexts()

    def get(self) -> IndexStore:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            raise IndexMissing(f"no index at {self.path}; add a collection and run `qmdctl update`") from None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._store is None or stamp[:2] != (self._stamp or ())[:2]:
            self.close()
            self._store = IndexStore.open(self.path)  # type: ignore[arg-type]
        elif stamp != self._stamp or getattr(self._store.conn, "suspect", False):
            self._store.reconnect()
        self._stamp = stamp
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store = None
        self._stamp = None
