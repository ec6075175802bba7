"""``qmdctl index backup`` and ``qmdctl index restore``: a whole index in one file, taken and put back while a
server reads it.

A backup is always a SQLite index file, whatever the backend: SQLite's backup API copies a SQLite index as one
consistent snapshot (writers and readers go on meanwhile); a Milvus index is copied into a new SQLite file by
the same transfer as ``index migrate``, vectors included. So any backup restores into either backend.

Restoring into SQLite goes through the backup API too: the restored pages are written as one transaction under
SQLite's own locks, so a running server's readers see the old index or the restored one, never a mix; the
vector log is then moved past every position a reader has seen, so each reader reads the vectors again rather
than catching up on a log that belongs to another copy. Restoring into Milvus replaces what its collections
hold (searches meanwhile see a partly restored index).

Example:
    >>> backup(config, Path("/backups/qmd-2026-12-06.sqlite"))
    BackupReport(path='/backups/qmd-2026-12-06.sqlite', documents=60, chunks=796, vectors=796, bytes=10530816)
    >>> restore(config, Path("/backups/qmd-2026-12-06.sqlite"))
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qmd_triton.errors import IndexCorrupt, InputError, QmdError
from qmd_triton.index.config import IndexConfig
from qmd_triton.index.factory import exists, open_index
from qmd_triton.index.sqlite import migrations
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.index.transfer import transfer
from qmd_triton.progress import Count, Progress, silent, uncounted

# The vector log's next position after restoring over an index too damaged to say where its readers are.
DAMAGED_LOG_START = 1 << 40


@dataclass
class BackupReport:
    path: str
    documents: int
    chunks: int
    vectors: int
    bytes: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _partial(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial")


def _drop_sidecars(path: Path, *, main: bool) -> None:
    """Removes SQLite's -wal, -shm and -journal files of ``path`` (and the file itself when ``main``); call
    with no connection open. A write-ahead log that still holds frames is kept unless the file goes too."""
    wal = Path(f"{path}-wal")
    if main or not wal.exists() or wal.stat().st_size == 0:
        wal.unlink(missing_ok=True)
    for extra in (Path(f"{path}-shm"), Path(f"{path}-journal")) + ((path,) if main else ()):
        extra.unlink(missing_ok=True)


def _check_file(path: Path, what: str) -> None:
    """Refuses a file that is not a whole SQLite index, in one line."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
            found = migrations.version(conn, str(path))
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise IndexCorrupt(f"{what} {path} is not a readable qmd-triton index ({e}); nothing was changed") from None
    if rows != ["ok"]:
        raise IndexCorrupt(f"{what} {path} is damaged (SQLite's quick_check: {'; '.join(rows[:3])}); nothing was "
                           "changed")
    migrations.check_supported(found, str(path))


def backup(config: IndexConfig, dest: Path, *, force: bool = False, progress: Progress = silent,
           count: Count = uncounted) -> BackupReport:
    """Copies the home's index into ``dest`` (a new SQLite index file), checked before it takes the name."""
    started = time.monotonic()
    dest = Path(dest)
    if not exists(config):
        raise InputError(f"no index in {config.describe()} to back up; run `qmdctl update` first")
    if config.backend == "sqlite" and dest.resolve() == config.sqlite_path.resolve():
        raise InputError(f"{dest} is the index itself; name another file")
    if dest.exists() and not force:
        raise InputError(f"{dest} exists; name a new file or pass --force to replace it")
    if not dest.parent.is_dir():
        raise InputError(f"{dest.parent} is not a folder")
    partial = _partial(dest)
    _drop_sidecars(partial, main=True)
    try:
        if config.backend == "sqlite":
            progress(f"copying {config.sqlite_path} ({config.sqlite_path.stat().st_size / 1e6:.1f} MB) as one "
                     "snapshot")
            _snapshot(config.sqlite_path, partial)
        else:
            with open_index(config) as source, SqliteIndex.open(partial, create=True) as target:
                transfer(source, target, progress=progress, count=count)
        _check_file(partial, "the backup")
        with SqliteIndex.open(partial, readonly=True) as done:
            counts = done.counts()
        _drop_sidecars(partial, main=False)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, dest)
        _drop_sidecars(dest, main=False)  # a replaced file's own
    except BaseException:
        _drop_sidecars(partial, main=True)
        raise
    return BackupReport(str(dest), counts["documents"], counts["chunks"], counts["embedded"], dest.stat().st_size,
                        round(time.monotonic() - started, 2))


def restore(config: IndexConfig, source: Path, *, progress: Progress = silent,
            count: Count = uncounted) -> BackupReport:
    """Puts the backup ``source`` in place of the home's index (created when there is none), safe while a
    server reads it."""
    started = time.monotonic()
    source = Path(source)
    if not source.is_file():
        raise InputError(f"no backup at {source}")
    if config.backend == "sqlite" and config.sqlite_path.exists() and source.resolve() == config.sqlite_path.resolve():
        raise InputError(f"{source} is the index itself; name a backup")
    _check_file(source, "the backup")
    if config.backend == "sqlite":
        counts = _restore_sqlite(source, config.sqlite_path, progress)
    else:
        progress(f"restoring {source} into {config.describe()} (searches meanwhile see a partial index)")
        with SqliteIndex.open(source, readonly=True) as backup_index, open_index(config, create=True) as target:
            counts = backup_index.counts()
            transfer(backup_index, target, progress=progress, count=count, replace=True)
    return BackupReport(str(source), counts["documents"], counts["chunks"], counts["embedded"],
                        source.stat().st_size, round(time.monotonic() - started, 2))


def _restore_sqlite(source: Path, path: Path, progress: Progress) -> dict[str, Any]:
    """The backup, brought to this schema in a staging copy beside the index, then written over the index
    in one transaction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _partial(path)
    _drop_sidecars(staging, main=True)
    try:
        _snapshot(source, staging)
        try:
            with SqliteIndex.open(path, create=True) as live:
                seen = live.vector_log_position()
        except QmdError:  # a damaged index: no reader's position can be known, so start past any
            seen = DAMAGED_LOG_START
        progress(f"restoring {source} into {path} as one transaction")
        with SqliteIndex.open(staging) as staged:  # an older backup's schema is migrated here
            counts = staged.counts()
            # Each reader's log position is at most `seen`: the backup's log is another copy's history.
            with staged.transaction():
                staged.restart_vector_log(after=seen)
            try:
                _copy_over(staged.conn, path)  # readers see the old index or the restored one, never a mix
            except sqlite3.DatabaseError:  # the index being replaced is too damaged to be written through
                _empty(path)
                _copy_over(staged.conn, path)
    finally:
        _drop_sidecars(staging, main=True)
    return counts


def _snapshot(source: Path, dest: Path) -> None:
    """Copies the index ``source`` into the new file ``dest`` in one step: one consistent snapshot, writers go
    on meanwhile. The copy keeps the index's WAL mode (a copy put back with `cp` is the same kind of file its
    readers have open); closing its only connection leaves it one self-contained file."""
    with SqliteIndex.open(source, readonly=True) as index:
        target = sqlite3.connect(dest)
        try:
            index.conn.backup(target)
        finally:
            target.close()


def _copy_over(source: sqlite3.Connection, path: Path) -> None:
    live = sqlite3.connect(path, timeout=30)  # not an SqliteIndex: the index it replaces may be unreadable
    try:
        source.backup(live)
        live.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        live.close()


def _empty(path: Path) -> None:
    """Empties a damaged index in place (its readers keep the inode): what its log still holds is written into
    the file first, so no reader applies the old log to the new content."""
    live = sqlite3.connect(path, timeout=30)
    try:
        with suppress(sqlite3.Error):
            live.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        live.close()
    os.truncate(path, 0)
    wal = Path(f"{path}-wal")
    if wal.exists():
        os.truncate(wal, 0)
