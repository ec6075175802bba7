"""One index interface, two backends: ``sqlite`` (one file, the default) and ``milvus`` (a Milvus server).

The backend is chosen per home in ``config.toml``::

    [index]
    backend = "milvus"                 # "sqlite" (default) or "milvus"
    uri = "http://milvus:19530"        # empty: the home's own Milvus Lite server, started by `qmdctl up`
    token = ""                         # optional: "user:password" or an API key
    prefix = "qmd"                     # the Milvus collections are PREFIX_docs, PREFIX_chunks, PREFIX_meta, PREFIX_keys
    port = 0                           # the local Milvus Lite server's port (0: any free port)

``QMD_INDEX_BACKEND``, ``QMD_MILVUS_URI``, ``QMD_MILVUS_TOKEN`` and ``QMD_MILVUS_PREFIX`` override the file
(containers and Kubernetes set them). Everything above this module — ``update``, ``embed``, the searches,
``get``, ``status``, the Triton models — talks to the :class:`Index` protocol and never to SQLite or Milvus
directly; how each backend keeps vectors current (SQLite's vector log, Milvus's own index) stays inside it.

Example:
    >>> with open_index(Path("~/.local/share/qmd-triton").expanduser()) as index:
    ...     index.counts()["documents"]
    42
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qmd_triton.errors import ConfigError, IndexCorrupt, IndexMissing, IndexUnavailable
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.milvus import ANALYZERS, VECTOR_INDEXES
from qmd_triton.index.store import INDEX_FILE, ChunkRow, DocRow, IndexHandle, IndexStore, header_problem
from qmd_triton.progress import Progress, silent
from qmd_triton.settings import config_table

if TYPE_CHECKING:
    import numpy as np

BACKENDS = ("sqlite", "milvus")
DEFAULT_PREFIX = "qmd"
LOCAL_STATE = "milvus.json"  # $QMD_HOME/run/milvus.json: the local Milvus Lite server (serving.milvus_lite)
LOCAL_DATA = "milvus"  # $QMD_HOME/milvus: its data directory
_KEYS = {"backend", "uri", "token", "prefix", "port", "vector_index", "analyzer"}
_ENV = {"QMD_INDEX_BACKEND": "backend", "QMD_MILVUS_URI": "uri", "QMD_MILVUS_TOKEN": "token",
        "QMD_MILVUS_PREFIX": "prefix", "QMD_MILVUS_VECTOR_INDEX": "vector_index", "QMD_MILVUS_ANALYZER": "analyzer"}


@dataclass(frozen=True)
class IndexConfig:
    """Where a home's index lives."""

    home: Path
    backend: str = "sqlite"
    uri: str = ""  # milvus: empty means the home's local Milvus Lite server
    token: str = ""
    prefix: str = DEFAULT_PREFIX
    port: int = 0
    vector_index: str = "HNSW"  # milvus: the chunk vectors' ANN index, fixed when the collections are created
    analyzer: str = "standard"  # milvus: the BM25 analyzer of English text, fixed when the collections are created
    file: Path | None = None  # sqlite: a file other than $home/index.sqlite (a model's index_path parameter)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"index.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not self.prefix or not self.prefix.replace("_", "").isalnum() or not self.prefix[0].isalpha():
            raise ConfigError(f"index.prefix must start with a letter and hold only letters, digits and _, "
                              f"got {self.prefix!r}")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ConfigError(f"index.port must be a port number (0: any free port), got {self.port!r}")
        if self.vector_index not in VECTOR_INDEXES:
            raise ConfigError(f"index.vector_index must be one of {', '.join(VECTOR_INDEXES)}, got "
                              f"{self.vector_index!r}")
        if self.analyzer not in ANALYZERS:
            raise ConfigError(f"index.analyzer must be one of {', '.join(ANALYZERS)}, got {self.analyzer!r}")

    @property
    def sqlite_path(self) -> Path:
        return self.file or self.home / INDEX_FILE

    @property
    def local(self) -> bool:
        """True for the milvus backend served by this home's own Milvus Lite (``qmdctl up`` starts it)."""
        return self.backend == "milvus" and not self.uri

    @property
    def local_state(self) -> Path:
        return self.home / "run" / LOCAL_STATE

    @property
    def local_data(self) -> Path:
        return self.home / LOCAL_DATA

    def resolved_uri(self) -> str:
        """The Milvus URI: the configured one, else the local server's from its state file."""
        if self.uri:
            return self.uri
        try:
            state = json.loads(self.local_state.read_text())
            return f"http://{state['host']}:{int(state['port'])}"
        except (OSError, ValueError, KeyError, TypeError):
            raise IndexUnavailable(f"the local Milvus Lite server of {self.home} is not running; `qmdctl up` "
                                   "starts it (index.backend = \"milvus\" with no index.uri)") from None

    def describe(self) -> str:
        """Where the index is, for messages and ``status``."""
        if self.backend == "sqlite":
            return str(self.sqlite_path)
        where = self.uri or f"local Milvus Lite ({self.local_data})"
        return f"milvus {where}, collections {self.prefix}_*"

    def with_(self, **changes: Any) -> IndexConfig:
        return replace(self, **changes)


def index_config(home: Path, **overrides: Any) -> IndexConfig:
    """The ``[index]`` table of ``$home/config.toml``, under the ``QMD_*`` variables and ``overrides``."""
    home = Path(home).expanduser()
    values: dict[str, Any] = dict(_read_table(home / "config.toml"))
    for var, key in _ENV.items():
        if os.environ.get(var):
            values[key] = os.environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return IndexConfig(home=home, **values)


def _read_table(path: Path) -> dict[str, Any]:
    table = config_table(path, "index", _KEYS)
    for key in ("backend", "uri", "token", "prefix", "vector_index", "analyzer"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{path}: index.{key} must be a string")
    return table


def write_index_table(home: Path, **values: Any) -> None:
    """Sets keys of the ``[index]`` table of ``$home/config.toml`` (comments and layout kept); an empty string
    removes a key."""
    import tomlkit

    from qmd_triton.system.files import atomic_write_text

    path = Path(home) / "config.toml"
    _read_table(path)  # a malformed file is one clear error
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        doc = tomlkit.document()
    table = doc.setdefault("index", tomlkit.table())
    for key, value in values.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown [index] key {key!r}")
        if value in ("", None):
            table.pop(key, None)
        else:
            table[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomlkit.dumps(doc))


class Index(Protocol):
    """What every layer above the index uses. :class:`~qmd_triton.index.store.IndexStore` (SQLite) and
    :class:`~qmd_triton.index.milvus.MilvusIndex` implement it.

    Documents are addressed by an integer id (stable while the document stays at its path), content by its
    SHA-256, chunks by an integer id; a chunk's vector belongs to its text (``text_hash``), so unchanged
    chunks keep their vectors across edits and renames on both backends.

    A backend whose every read is a network round trip adds batch reads that callers use when present:
    ``bodies(hashes)`` (a page of hits' texts) and ``chunks_of_many(hashes)`` (the candidates' chunks);
    where they are absent (SQLite, whose reads are local) the callers read one by one as before.
    """

    backend: str

    # lifetime and writes
    def close(self) -> None: ...
    def __enter__(self) -> Index: ...
    def __exit__(self, *exc: object) -> None: ...
    def transaction(self) -> AbstractContextManager[Any]: ...
    def describe(self) -> str: ...

    # meta, the expansion cache
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def fingerprint(self) -> dict | None: ...
    def last_updates(self) -> dict[str, float]: ...
    def mark_updated(self, collection: str, when: float | None = None) -> None: ...
    def cached_expansion(self, key: str) -> dict | None: ...
    def remember_expansion(self, key: str, value: dict) -> bool: ...
    def forget_expansions(self) -> int: ...

    # documents
    def collection_names(self) -> list[str]: ...
    def documents(self, collection: str | None = None) -> list[DocRow]: ...
    def document(self, collection: str, path: str) -> DocRow | None: ...
    def documents_by_docid(self, docid: str) -> list[DocRow]: ...
    def documents_by_id(self, ids: Sequence[int]) -> dict[int, DocRow]: ...
    def documents_by_hash(self, hashes: Sequence[str],
                          collections: Sequence[str] | None = None) -> dict[str, list[DocRow]]: ...
    def unique_docids(self, hashes: Sequence[str], minimum: int = 6) -> dict[str, str]: ...
    def body(self, content_hash: str) -> str: ...
    def upsert_document(self, collection: str, path: str, title: str, content_hash: str, body: str,
                        size: int, mtime_ns: int) -> int: ...
    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None: ...
    def delete_documents(self, ids: Iterable[int]) -> int: ...
    def delete_collection(self, collection: str) -> int: ...
    def rename_collection(self, old: str, new: str) -> None: ...
    def collect_garbage(self) -> int: ...
    def cleanup(self, keep_expansions: int = 10000) -> dict[str, int]: ...

    # full text
    def bm25(self, terms: Sequence[str], limit: int, collections: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> list[tuple[DocRow, float]]: ...
    def matching(self, terms: Sequence[str]) -> set[int]: ...

    # chunks and vectors
    def unchunked_hashes(self) -> list[str]: ...
    def still_indexed(self, hashes: Sequence[str]) -> list[str]: ...
    def add_chunks(self, content_hash: str, chunks: Sequence[Any]) -> None: ...
    def pending_chunks(self) -> list[ChunkRow]: ...
    def add_vectors(self, items: Sequence[tuple[str, np.ndarray]]) -> None: ...
    def drop_unused_vectors(self) -> int: ...
    def after_embed(self) -> None: ...
    def export_chunks(self) -> Iterator[tuple[ChunkRow, np.ndarray | None]]: ...
    def export_expansions(self) -> Iterator[tuple[str, dict]]: ...
    def import_chunks(self, rows: Sequence[tuple[ChunkRow, Any]]) -> None: ...
    def upsert_documents(self, items: Sequence[tuple[str, str, str, str, str, int, int]]) -> None: ...
    def clear_chunks(self) -> None: ...
    def clear_embeddings(self) -> None: ...
    def chunks_by_id(self, ids: Sequence[int]) -> dict[int, ChunkRow]: ...
    def chunks_of(self, content_hash: str) -> list[ChunkRow]: ...
    def counts(self) -> dict[str, Any]: ...


def exists(config: IndexConfig) -> bool:
    """Whether the index has been made (SQLite: the file; Milvus: its collections, asked of the server)."""
    if config.backend == "sqlite":
        return config.sqlite_path.exists()
    from qmd_triton.index.milvus import MilvusIndex

    return MilvusIndex.exists(config)


def open_index(config: IndexConfig | Path, *, create: bool = False, readonly: bool = False,
               progress: Progress = silent) -> Any:
    """Opens a home's index on its backend (``create`` makes an empty one); an :class:`Index`."""
    if not isinstance(config, IndexConfig):
        config = index_config(config)
    if config.backend == "sqlite":
        return IndexStore.open(config.sqlite_path, create=create, readonly=readonly, progress=progress)
    from qmd_triton.index.milvus import MilvusIndex

    return MilvusIndex.open(config, create=create)


def index_summary(config: IndexConfig) -> dict[str, Any] | None:
    """Collections, documents, chunks and the share embedded (``qmdctl status``, the doors' status); None when
    there is no index yet."""
    if not exists(config):
        return None
    if config.backend == "sqlite":
        problem = header_problem(config.sqlite_path)
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
        self._milvus: Any = None
        self._milvus_uri = ""
        self._contexts = self._sqlite.contexts if self._sqlite is not None else \
            ContextMap.watch(config.home / "config.toml")

    def contexts(self) -> ContextMap:
        return self._contexts()

    def get(self) -> Any:
        if self._sqlite is not None:
            return self._sqlite.get()
        from qmd_triton.index.milvus import MilvusIndex

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
