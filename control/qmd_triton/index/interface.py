"""The one index interface every backend implements: :class:`Index`.

Everything above ``qmd_triton.index`` (update, embed, the searches, ``get``, status, the Triton models) talks to
an :class:`Index` from :func:`qmd_triton.index.factory.open_index` and never to SQLite or Milvus; the factory is
the only module that imports a backend (an import-linter contract in pyproject.toml). Abstract methods are what
every backend must do; the methods with a body are capabilities a backend may do better (a batch read where each
read is a network round trip) and that work, one by one, everywhere.

Documents are addressed by an integer id (stable while the document stays at its path), content by its SHA-256,
chunks by an integer id; a chunk's vector belongs to its text (``text_hash``), so unchanged chunks keep their
vectors across edits and renames on both backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from qmd_triton.index.rows import ChunkRow, DocRow

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Nearest:
    """What :meth:`Index.nearest_chunks` found: chunks best first with their cosine similarity, and whether
    asking for more could find more. A chunk may carry only its id and content hash (``text`` empty): the
    caller reads the texts of those it keeps with :meth:`Index.complete_chunks`."""

    chunks: list[tuple[ChunkRow, float]]
    exhausted: bool


class Index(ABC):
    """An open index on one backend (``sqlite``: :class:`qmd_triton.index.sqlite.index.SqliteIndex`,
    ``milvus``: :class:`qmd_triton.index.milvus.index.MilvusIndex`)."""

    backend: ClassVar[str]  # the backend's name in config.toml's [index] table
    # whether counts() is cheap enough to call on every metrics scrape (Milvus counts every chunk row)
    cheap_counts: ClassVar[bool] = True

    # lifetime and writes
    @abstractmethod
    def close(self) -> None: ...
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]: ...
    @abstractmethod
    def describe(self) -> str: ...

    # meta, the expansion cache
    @abstractmethod
    def meta(self, key: str) -> str | None: ...
    @abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...
    @abstractmethod
    def fingerprint(self) -> dict | None: ...
    @abstractmethod
    def last_updates(self) -> dict[str, float]: ...
    @abstractmethod
    def mark_updated(self, collection: str, when: float | None = None) -> None: ...
    @abstractmethod
    def cached_expansion(self, key: str) -> dict | None: ...
    @abstractmethod
    def remember_expansion(self, key: str, value: dict) -> bool: ...
    @abstractmethod
    def forget_expansions(self) -> int: ...

    # documents
    @abstractmethod
    def collection_names(self) -> list[str]: ...
    @abstractmethod
    def documents(self, collection: str | None = None) -> list[DocRow]: ...
    @abstractmethod
    def document(self, collection: str, path: str) -> DocRow | None: ...
    @abstractmethod
    def documents_by_docid(self, docid: str) -> list[DocRow]: ...
    @abstractmethod
    def documents_by_id(self, ids: Sequence[int]) -> dict[int, DocRow]: ...
    @abstractmethod
    def documents_by_hash(self, hashes: Sequence[str],
                          collections: Sequence[str] | None = None) -> dict[str, list[DocRow]]: ...
    @abstractmethod
    def unique_docids(self, hashes: Sequence[str], minimum: int = 6) -> dict[str, str]: ...
    @abstractmethod
    def body(self, content_hash: str) -> str: ...
    @abstractmethod
    def upsert_document(self, collection: str, path: str, title: str, content_hash: str, body: str,
                        size: int, mtime_ns: int) -> int: ...
    @abstractmethod
    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None: ...
    @abstractmethod
    def delete_documents(self, ids: Iterable[int]) -> int: ...
    @abstractmethod
    def delete_collection(self, collection: str) -> int: ...
    @abstractmethod
    def rename_collection(self, old: str, new: str) -> None: ...
    @abstractmethod
    def collect_garbage(self) -> int: ...
    @abstractmethod
    def cleanup(self, keep_expansions: int = 10000) -> dict[str, int]: ...

    # full text
    @abstractmethod
    def bm25(self, terms: Sequence[str], limit: int, collections: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> list[tuple[DocRow, float]]: ...
    @abstractmethod
    def matching(self, terms: Sequence[str]) -> set[int]: ...

    # chunks and vectors
    @abstractmethod
    def unchunked_hashes(self) -> list[str]: ...
    @abstractmethod
    def still_indexed(self, hashes: Sequence[str]) -> list[str]: ...
    @abstractmethod
    def add_chunks(self, content_hash: str, chunks: Sequence[Any]) -> None: ...
    @abstractmethod
    def pending_chunks(self) -> list[ChunkRow]: ...
    @abstractmethod
    def add_vectors(self, items: Sequence[tuple[str, np.ndarray]]) -> None: ...
    @abstractmethod
    def drop_unused_vectors(self) -> int: ...
    @abstractmethod
    def after_embed(self) -> None: ...
    @abstractmethod
    def export_chunks(self) -> Iterator[tuple[ChunkRow, np.ndarray | None]]: ...
    @abstractmethod
    def export_expansions(self) -> Iterator[tuple[str, dict]]: ...
    @abstractmethod
    def import_chunks(self, rows: Sequence[tuple[ChunkRow, Any]]) -> None: ...
    @abstractmethod
    def upsert_documents(self, items: Sequence[tuple[str, str, str, str, str, int, int]]) -> None: ...
    @abstractmethod
    def clear_chunks(self) -> None: ...
    @abstractmethod
    def clear_embeddings(self) -> None: ...
    @abstractmethod
    def chunks_by_id(self, ids: Sequence[int]) -> dict[int, ChunkRow]: ...
    @abstractmethod
    def chunks_of(self, content_hash: str) -> list[ChunkRow]: ...
    @abstractmethod
    def counts(self) -> dict[str, Any]: ...

    # vector search
    @abstractmethod
    def nearest_chunks(self, query_vec: np.ndarray, k: int) -> Nearest:
        """The ``k`` chunks whose vectors are nearest the query (cosine over normalized vectors), best first.
        A query vector of another dimension than the index's is an :class:`~qmd_triton.errors.InputError`."""

    # capabilities with a default
    def bodies(self, hashes: Sequence[str]) -> dict[str, str]:
        """The texts of many contents (a page of hits). Default: one :meth:`body` each."""
        return {h: self.body(h) for h in dict.fromkeys(hashes)}

    def chunks_of_many(self, hashes: Sequence[str]) -> dict[str, list[ChunkRow]]:
        """The chunks of many contents, each list by sequence. Default: one :meth:`chunks_of` each."""
        return {h: self.chunks_of(h) for h in dict.fromkeys(hashes)}

    def complete_chunks(self, chunks: Sequence[ChunkRow]) -> list[ChunkRow]:
        """The rows of chunks that :meth:`nearest_chunks` returned without their text, with it."""
        missing = [c.id for c in chunks if not c.text]
        if not missing:
            return list(chunks)
        full = self.chunks_by_id(missing)
        return [full.get(c.id, c) if not c.text else c for c in chunks]

    def bulk_load(self) -> AbstractContextManager[Any]:
        """A block that writes only rows the index does not hold yet (a migration into an empty index), where a
        backend can take plain inserts. Default: nothing changes."""
        return nullcontext()

    def size_on_disk(self) -> int:
        """Bytes the index takes on this machine (0 where it lives on a server)."""
        return 0
