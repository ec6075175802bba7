"""Searching the index: options, BM25 over FTS5, exact vector search, hits and snippets.

The CLI's ``search`` and the server's ``qmd_search`` / ``qmd_retrieve`` run this same
code, so a query answers the same with or without the server.

Example:
    >>> hits = search_bm25(store, "dynamic batching", SearchOptions(n=5))
    >>> hits[0].path
    'docs/architecture.md'
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .analysis import has_cjk, query_terms
from .errors import IndexMissing, InputError
from .store import ChunkRow, DocRow, IndexStore, docid_of

MAX_QUERY_BYTES = 16 * 1024
MAX_RESULTS = 1000
SNIPPET_LINES = 3
SNIPPET_CHARS = 400


def check_query(query: str) -> str:
    """A usable query or one clear error: empty and oversized queries are refused."""
    if not isinstance(query, str):
        raise InputError("query must be a string")
    size = len(query.encode("utf-8"))
    if size > MAX_QUERY_BYTES:
        raise InputError(f"query is {size} bytes; the limit is {MAX_QUERY_BYTES}")
    q = " ".join(query.split())
    if not q:
        raise InputError("query is empty")
    return q


@dataclass(frozen=True)
class SearchOptions:
    """What a caller may ask of a search; parsed from the ``options`` JSON tensor too."""

    n: int = 10
    collections: tuple[str, ...] = ()
    min_score: float = 0.0
    full: bool = False
    # Used by the hybrid pipeline (qmd_query); accepted and ignored elsewhere.
    expand: bool = True
    rerank: bool = True
    candidates: int = 40
    explain: bool = False
    fusion: str | None = None  # None: the server's configured fusion

    def __post_init__(self) -> None:
        for name in ("n", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.min_score, (int, float)) or not 0.0 <= float(self.min_score) <= 1.0:
            raise InputError(f"min_score must be between 0 and 1, got {self.min_score!r}")
        for name in ("full", "expand", "rerank", "explain"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.fusion not in (None, "rerank", "blend"):
            raise InputError(f"fusion must be rerank or blend, got {self.fusion!r}")

    @property
    def limit(self) -> int:
        return min(self.n, MAX_RESULTS)

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> "SearchOptions":
        if raw in (None, b"", ""):
            data: dict = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise InputError(f"options is not valid JSON: {e}") from None
            if not isinstance(data, dict):
                raise InputError("options must be a JSON object")
        known = {"n", "collections", "min_score", "full", "expand", "rerank", "candidates", "explain", "fusion"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cols = data.get("collections", ())
        if isinstance(cols, str):
            cols = (cols,)
        if not isinstance(cols, (list, tuple)) or not all(isinstance(c, str) for c in cols):
            raise InputError("collections must be a list of collection names")
        base = cls()
        return cls(
            n=data.get("n", base.n),
            collections=tuple(cols),
            min_score=data.get("min_score", base.min_score),
            full=data.get("full", base.full),
            expand=data.get("expand", base.expand),
            rerank=data.get("rerank", base.rerank),
            candidates=data.get("candidates", base.candidates),
            explain=data.get("explain", base.explain),
            fusion=data.get("fusion", base.fusion),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "collections": list(self.collections), "min_score": self.min_score, "full": self.full,
                "expand": self.expand, "rerank": self.rerank, "candidates": self.candidates, "explain": self.explain,
                "fusion": self.fusion}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def check_collections(self, known: Sequence[str]) -> None:
        missing = [c for c in self.collections if c not in known]
        if missing:
            raise InputError(f"unknown collection {missing[0]!r} (known: {', '.join(sorted(known)) or 'none'})")


@dataclass
class Hit:
    """One document in a result list."""

    docid: str
    collection: str
    path: str
    title: str
    score: float
    line: int
    snippet: str
    hash: str = field(default="", repr=False)
    body: str | None = field(default=None, repr=False)
    explain: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def file(self) -> str:
        return f"{self.collection}/{self.path}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("hash")
        d["docid"] = "#" + self.docid
        d["file"] = self.file
        d["score"] = round(self.score, 4)
        if self.body is None:
            d.pop("body")
        if not self.explain:
            d.pop("explain")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Hit":
        return cls(
            docid=str(d["docid"]).lstrip("#"), collection=d["collection"], path=d["path"], title=d["title"],
            score=float(d["score"]), line=int(d["line"]), snippet=d["snippet"], body=d.get("body"),
            explain=d.get("explain") or {},
        )


def normalize_bm25(raw: float) -> float:
    """SQLite's bm25 (negative, unbounded) -> 0..1, monotone: |s| / (1 + |s|)."""
    s = abs(raw)
    return s / (1.0 + s)


def snippet_for(body: str, terms: Sequence[str], lines: int = SNIPPET_LINES) -> tuple[int, str]:
    """The 1-based line and the text of the window of lines holding most query terms."""
    all_lines = body.split("\n")
    if not all_lines:
        return 1, ""
    lowered = [ln.lower() for ln in all_lines]
    stems = [t[:5] if not has_cjk(t) and len(t) > 5 else t for t in terms]
    scores = [sum(1 for s in stems if s in ln) for ln in lowered]
    best, best_score = 0, -1
    window = [0] * len(all_lines)
    for i in range(len(all_lines)):
        window[i] = sum(scores[i : i + lines])
        if window[i] > best_score and all_lines[i].strip():
            best, best_score = i, window[i]
    text = "\n".join(all_lines[best : best + lines]).strip()
    return best + 1, _clip(text)


def _clip(text: str, limit: int = SNIPPET_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _hit(doc: DocRow, score: float, line: int, snippet: str, body: str | None) -> Hit:
    return Hit(docid=doc.docid, collection=doc.collection, path=doc.path, title=doc.title, score=score,
               line=line, snippet=snippet, hash=doc.hash, body=body)


def known_collections(store: IndexStore) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT DISTINCT collection FROM documents ORDER BY 1")]


def search_bm25(store: IndexStore, query: str, options: SearchOptions = SearchOptions()) -> list[Hit]:
    """Full-text search: documents matching any query term, ranked by BM25."""
    q = check_query(query)
    if options.collections:
        options.check_collections(known_collections(store))
    terms = query_terms(q)
    hits = []
    for doc, raw in store.bm25(terms, options.limit, options.collections or None):
        score = normalize_bm25(raw)
        if score < options.min_score:
            continue
        body = store.body(doc.hash)
        line, snippet = snippet_for(body, terms)
        hits.append(_hit(doc, score, line, snippet, body if options.full else None))
    return hits


class IndexHandle:
    """A long-lived reader (a server model) of an index that may be created, updated or rebuilt.

    Reopens the file when its inode changes (deleted and rebuilt), so a server
    never keeps answering from a replaced index.
    """

    def __init__(self, path: "os.PathLike[str] | str") -> None:
        self.path = path
        self._store: IndexStore | None = None
        self._inode: int | None = None

    def get(self) -> IndexStore:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            self.close()
            raise IndexMissing(f"no index at {self.path}; add a collection and run `qmdctl update`") from None
        if self._store is None or inode != self._inode:
            self.close()
            self._store = IndexStore.open(self.path)  # type: ignore[arg-type]
            self._inode = inode
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store = None
        self._inode = None


class VectorIndex:
    """Exact cosine search over every stored chunk vector (BLAS matrix product).

    The matrix is loaded once and reloaded when the index changes: SQLite's
    ``data_version`` moves when another connection commits, and the file's inode
    changes when the index is rebuilt from scratch.
    """

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self._version: tuple[int, int] | None = None
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.chunks: list[ChunkRow] = []
        self.hashes: np.ndarray = np.zeros(0, dtype=object)

    def _stamp(self) -> tuple[int, int]:
        try:
            inode = os.stat(self.store.path).st_ino
        except OSError:
            inode = -1
        return inode, self.store.data_version()

    def refresh(self) -> bool:
        """Reloads when the index changed; True if it did."""
        stamp = self._stamp()
        if stamp == self._version:
            return False
        self.matrix, self.chunks = self.store.load_vectors()
        self.hashes = np.array([c.hash for c in self.chunks], dtype=object)
        self._version = stamp
        return True

    def top_chunks(self, query_vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Indices into ``self.chunks`` and cosine scores of the k best chunks."""
        if not len(self.chunks):
            return []
        if query_vec.shape[-1] != self.matrix.shape[1]:
            raise InputError(
                f"query vector has {query_vec.shape[-1]} dims but the index holds {self.matrix.shape[1]}-d vectors"
            )
        scores = self.matrix @ query_vec.astype(np.float32)
        k = min(k, len(scores))
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return [(int(i), float(scores[i])) for i in idx]

    def ranked_docs(self, query_vec: np.ndarray, n: int,
                    collections: Sequence[str] = ()) -> list[tuple[DocRow, ChunkRow, float]]:
        """Up to n documents by their best chunk's cosine similarity, with that chunk."""
        self.refresh()
        k = n * 4
        while True:
            top = self.top_chunks(query_vec, k)
            best: dict[str, tuple[int, float]] = {}
            for i, score in top:
                best.setdefault(self.chunks[i].hash, (i, score))
            docs = self.store.documents_by_hash(list(best), collections or None)
            ranked = sorted(((doc, best[h]) for h, ds in docs.items() for doc in ds), key=lambda x: -x[1][1])
            if len(ranked) >= n or k >= len(self.chunks):
                break
            k *= 4
        return [(doc, self.chunks[i], score) for doc, (i, score) in ranked[:n]]

    def search(self, query_vec: np.ndarray, options: SearchOptions = SearchOptions()) -> list[Hit]:
        """Documents by their best chunk's cosine similarity to the query."""
        if options.collections:
            options.check_collections(known_collections(self.store))
        hits = []
        for doc, chunk, score in self.ranked_docs(query_vec, options.limit, options.collections):
            if score < options.min_score:
                continue
            body = self.store.body(doc.hash) if options.full else None
            lines = chunk.text.strip().split("\n")[:SNIPPET_LINES]
            hits.append(_hit(doc, score, chunk.start_line, _clip("\n".join(lines)), body))
        return hits


__all__ = ["Hit", "SearchOptions", "VectorIndex", "check_query", "docid_of", "search_bm25"]
