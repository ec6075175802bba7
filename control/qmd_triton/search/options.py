"""What a search request may ask (options, limits) and what it gets back (hits).

The same types travel through the CLI, the Triton models (as the ``options`` and
``results`` JSON tensors) and the HTTP doors.

Example:
    >>> SearchOptions.from_json('{"n": 3}').n
    3
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qmd_triton.errors import InputError, parse_json_input
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.interface import Index
from qmd_triton.index.rows import DocRow

MAX_QUERY_BYTES = 16 * 1024


MAX_RESULTS = 1000
# Candidates the cross-encoder reads per query, each cut to its best window of `rerank_passage_tokens`
# (a qmd_retrieve parameter, 128 on the CPU) tokens: chosen by `perf/rerank_budget.py` on triton-docs, msmarco and
# dbpedia (perf/RESULTS.md, "Rerank budget"): a quarter to a half of the cost of 40 whole chunks.
CANDIDATES = 20


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


MAX_INTENT_CHARS = 1000
MAX_SEARCHES = 10
SEARCH_TYPES = ("lex", "vec", "hyde")
_TYPED_LINE = re.compile(r"^\s*(lex|vec|hyde)\s*:\s*(.+?)\s*$", re.IGNORECASE)


def _searches(raw: Any) -> tuple[tuple[str, str], ...]:
    """``[{"type": "lex", "query": "..."}, ...]`` (tobi/qmd's shape) -> ``(("lex", "..."), ...)``."""
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise InputError('searches must be a list of {"type": "lex|vec|hyde", "query": "..."}')
    out = []
    for s in raw:
        kind, text = s.get("type"), s.get("query")
        if not isinstance(kind, str) or not isinstance(text, str):
            raise InputError('each search needs a "type" (lex, vec or hyde) and a "query" string')
        out.append((kind.lower(), text))
    return tuple(out)


def split_typed(query: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A query whose lines start with ``lex:``, ``vec:`` or ``hyde:`` -> (the untyped text, the typed searches).

    With no untyped line, the first ``vec:`` (else ``lex:``) line stands for the query in reranking.
    """
    plain, typed = [], []
    for line in query.splitlines():
        m = _TYPED_LINE.match(line)
        if m:
            typed.append((m.group(1).lower(), m.group(2)))
        elif line.strip():
            plain.append(line.strip())
    text = " ".join(plain)
    if not text and typed:
        text = next((t for k, t in typed if k == "vec"), typed[0][1])
    return text, tuple(typed)


def typed_query(query: str, searches: Sequence[tuple[str, str]] = ()) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What a hybrid request runs: the untyped text of ``query`` and its typed lines followed by ``searches``.

    With no untyped text, the first ``vec:`` search (else the first search) stands for the query, so an agent
    may send typed sub-queries alone (tobi/qmd's ``query`` tool shape).
    """
    text, typed = split_typed(query or "")
    typed = typed + tuple(searches)
    if not text and typed:
        text = next((t for k, t in typed if k == "vec"), typed[0][1])
    if not text:
        raise InputError("query is empty")
    return text, typed


@dataclass(frozen=True)
class SearchOptions:
    """What a caller may ask of a search; parsed from the ``options`` JSON tensor too."""

    n: int = 10
    collections: tuple[str, ...] = ()
    min_score: float = 0.0
    full: bool = False
    # Used by the hybrid pipeline (qmd_query); accepted and ignored elsewhere.
    expand: bool | None = None  # None: the server's default (qmd_expand's expand_by_default: off on the CPU)
    rerank: bool = True
    vectors: bool = True  # the vector lists of the hybrid query (false: BM25 lists only, an ablation)
    candidates: int = CANDIDATES
    explain: bool = False
    fusion: str | None = None  # None: the server's configured fusion
    # Disambiguation context for expansion and reranking ("the Triton inference server", not the god).
    intent: str = ""
    # Sub-queries typed by the caller, (type, text) with type lex, vec or hyde: they replace the LLM's
    # expansion for this request.
    searches: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("n", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.min_score, (int, float)) or not 0.0 <= float(self.min_score) <= 1.0:
            raise InputError(f"min_score must be between 0 and 1, got {self.min_score!r}")
        for name in ("full", "rerank", "vectors", "explain"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.expand is not None and not isinstance(self.expand, bool):
            raise InputError(f"expand must be true, false or null (the server's default), got {self.expand!r}")
        if self.fusion not in (None, "prior", "rerank", "blend"):
            raise InputError(f"fusion must be prior, rerank or blend, got {self.fusion!r}")
        if not isinstance(self.intent, str) or len(self.intent) > MAX_INTENT_CHARS:
            raise InputError(f"intent must be a string of at most {MAX_INTENT_CHARS} characters")
        if len(self.searches) > MAX_SEARCHES:
            raise InputError(f"at most {MAX_SEARCHES} typed searches, got {len(self.searches)}")
        for kind, text in self.searches:
            if kind not in SEARCH_TYPES:
                raise InputError(f"a search's type must be one of {', '.join(SEARCH_TYPES)}, got {kind!r}")
            check_query(text)

    @property
    def limit(self) -> int:
        return min(self.n, MAX_RESULTS)

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> SearchOptions:
        if raw in (None, b"", ""):
            data: dict = {}
        else:
            data = parse_json_input(raw, "options")
            if not isinstance(data, dict):
                raise InputError("options must be a JSON object")
        known = {"n", "collections", "min_score", "full", "expand", "rerank", "vectors", "candidates", "explain",
                 "fusion", "intent", "searches"}
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
            vectors=data.get("vectors", base.vectors),
            candidates=data.get("candidates", base.candidates),
            explain=data.get("explain", base.explain),
            fusion=data.get("fusion", base.fusion),
            intent=data.get("intent", base.intent),
            searches=_searches(data.get("searches", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "collections": list(self.collections), "min_score": self.min_score, "full": self.full,
                "expand": self.expand, "rerank": self.rerank, "vectors": self.vectors, "candidates": self.candidates,
                "explain": self.explain,
                "fusion": self.fusion, "intent": self.intent,
                "searches": [{"type": k, "query": q} for k, q in self.searches]}

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
    context: str = ""  # descriptions attached to the document's collection or folder (`qmdctl context`)

    @property
    def file(self) -> str:
        return f"{self.collection}/{self.path}"

    def to_dict(self) -> dict[str, Any]:
        """The hit as every door answers it: qmd's fields, and QMD-Python's ``filepath`` (``qmd://`` URI),
        ``display_path`` and ``hash`` (the content's SHA-256) beside them."""
        d = asdict(self)
        d["docid"] = "#" + self.docid
        d["file"] = self.file
        d["filepath"] = f"qmd://{self.file}"
        d["display_path"] = self.file
        if not self.hash:
            d.pop("hash")
        d["score"] = round(self.score, 4)
        if self.body is None:
            d.pop("body")
        if not self.explain:
            d.pop("explain")
        if not self.context:
            d.pop("context")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hit:
        return cls(
            docid=str(d["docid"]).lstrip("#"), collection=d["collection"], path=d["path"], title=d["title"],
            score=float(d["score"]), line=int(d["line"]), snippet=d["snippet"], body=d.get("body"),
            explain=d.get("explain") or {}, context=d.get("context") or "", hash=d.get("hash") or "",
        )


def clip(text: str, limit: int = SNIPPET_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def hit_of(doc: DocRow, score: float, line: int, snippet: str, body: str | None) -> Hit:
    return Hit(docid=doc.docid, collection=doc.collection, path=doc.path, title=doc.title, score=score,
               line=line, snippet=snippet, hash=doc.hash, body=body)


def annotate(hits: Sequence[Hit], index: Index, contexts: ContextMap | None = None) -> list[Hit]:
    """Gives hits their shortest unique ``#docid`` and their contexts (in place; returns them)."""
    docids = index.unique_docids([h.hash for h in hits if h.hash])
    for h in hits:
        if h.hash:
            h.docid = docids[h.hash]
        if contexts:
            h.context = contexts.for_path(h.collection, h.path)
    return list(hits)
