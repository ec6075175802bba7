"""Opens a home's index on its backend: the one module that imports the backends (an import-linter contract
in pyproject.toml keeps it so).

Example:
    >>> with open_index(Path("~/.local/share/qmd-triton").expanduser()) as index:
    ...     index.counts()["documents"]
    42
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qmd_triton.errors import IndexCorrupt, IndexMissing
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.config import IndexConfig, index_config
from qmd_triton.index.interface import Index
from qmd_triton.index.milvus.index import MilvusIndex
from qmd_triton.index.sqlite.connection import header_problem
from qmd_triton.index.sqlite.handle import IndexHandle
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.progress import Progress, silent


def exists(config: IndexConfig) -> bool:
    """Whether the index has been made (SQLite: the file; Milvus: its collections, asked of the server)."""
    if config.backend == "sqlite":
        return config.sqlite_path.exists()
    return MilvusIndex.exists(config)


def open_index(config: IndexConfig | Path, *, create: bool = False, readonly: bool = False,
               progress: Progress = silent) -> Index:
    """Opens a home's index on its backend (``create`` makes an empty one)."""
    if not isinstance(config, IndexConfig):
        config = index_config(config)
    if config.backend == "sqlite":
        return SqliteIndex.open(config.sqlite_path, create=create, readonly=readonly, progress=progress)
    return MilvusIndex.open(config, create=create)


def index_problem(config: IndexConfig) -> str | None:
    """Why the index cannot be trusted, from what can be checked without reading it (SQLite: a file shorter
    than its header counts), or None (Milvus checks its own storage)."""
    return header_problem(config.sqlite_path) if config.backend == "sqlite" else None


def index_summary(config: IndexConfig) -> dict[str, Any] | None:
    """Collections, documents, chunks and the share embedded (``qmdctl status``, the doors' status); None when
    there is no index yet."""
    if not exists(config):
        return None
    problem = index_problem(config)
    if problem:
        raise IndexCorrupt(problem)
    with open_index(config) as index:
        counts = index.counts()
    counts["backend"] = config.backend
    counts["path"] = config.describe()
    counts["embedded_share"] = round(counts["embedded"] / counts["chunks"], 4) if counts["chunks"] else 0.0
    return counts


class ServedIndex:
    """A long-lived reader (a server model) of a home's index on either backend.

    SQLite: the file is reopened when it is replaced (:class:`IndexHandle`). Milvus: one client, reconnected
    after the server went away; a Milvus that is down fails the request with one line, never the model.
    """

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self._sqlite = IndexHandle(config.sqlite_path) if config.backend == "sqlite" else None
        self._milvus: MilvusIndex | None = None
        self._milvus_uri = ""
        self._contexts = self._sqlite.contexts if self._sqlite is not None else \
            ContextMap.watch(config.home / "config.toml")

    def contexts(self) -> ContextMap:
        return self._contexts()

    def get(self) -> Index:
        if self._sqlite is not None:
            return self._sqlite.get()
        # No ping per request: a Milvus that is down fails the request with one line, and the request after a
        # failed one connects again, as does one that finds a new address (the home's Milvus Lite restarted
        # on another port).
        uri = self.config.resolved_uri()
        if self._milvus is not None and (self._milvus_uri != uri or self._milvus.broken):
            self._milvus.close()
            self._milvus = None
        if self._milvus is None:
            if not MilvusIndex.exists(self.config):
                raise IndexMissing(f"no index in {self.config.describe()}; add a collection and run `qmdctl update`")
            self._milvus = MilvusIndex.open(self.config)
            self._milvus_uri = uri
        return self._milvus

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._milvus is not None:
            self._milvus.close()
            self._milvus = None
