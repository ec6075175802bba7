"""A long-lived reader of an index file that follows it when it is rebuilt, checkpointed or restored."""

from __future__ import annotations

import os
from pathlib import Path

from qmd_triton.errors import IndexMissing
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.sqlite.index import SqliteIndex


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
        self._store: SqliteIndex | None = None
        self._stamp: tuple[int, int, int, int] | None = None
        self._contexts = ContextMap.watch(Path(path).parent / "config.toml")

    def contexts(self) -> ContextMap:
        """The contexts of the config file beside the index (``$QMD_HOME/config.toml``), reread when it changes."""
        return self._contexts()

    def get(self) -> SqliteIndex:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            raise IndexMissing(f"no index at {self.path}; add a collection and run `qmdctl update`") from None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._store is None or stamp[:2] != (self._stamp or ())[:2]:
            self.close()
            self._store = SqliteIndex.open(self.path)  # type: ignore[arg-type]
        elif stamp != self._stamp or getattr(self._store.conn, "suspect", False):
            self._store.reconnect()
        self._stamp = stamp
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store = None
        self._stamp = None
