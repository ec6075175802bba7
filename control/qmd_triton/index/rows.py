"""The rows every index backend reads and writes (documents, chunks) and the keys both keep in their meta."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

FINGERPRINT_KEY = "embedding_fingerprint"


LAST_UPDATE_KEY = "last_update"


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


def text_hash(text: str) -> str:
    """The key of a chunk's vector: the sha256 of its text (first 32 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
