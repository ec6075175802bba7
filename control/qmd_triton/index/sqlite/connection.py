"""A connection to an index file: SQLite's errors as one-line qmd errors (damaged, locked, full,
read-only), and the header check that finds a file cut short without reading its pages."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from qmd_triton.errors import DiskFull, IndexCorrupt, IndexReadOnly, IndexUnavailable, QmdError

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
