"""Addressing documents: ``#docid``, ``collection/path``, filesystem paths, line ranges.

Example:
    >>> ref = parse_ref("notes/plan.md:10:5")
    >>> (ref.target, ref.start, ref.count)
    ('notes/plan.md', 10, 5)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qmd_triton.errors import InputError, NotFound
from qmd_triton.index.collections import Collection, glob_match
from qmd_triton.index.interface import Index
from qmd_triton.index.rows import DocRow

_RANGE = re.compile(r"^(?P<target>.+?)(?::(?P<start>\d+)(?::(?P<count>\d+))?)?$")


@dataclass(frozen=True)
class Ref:
    target: str
    start: int | None = None  # 1-based first line
    count: int | None = None


def parse_ref(text: str) -> Ref:
    """``target[:FROM[:COUNT]]``; one clear error for an empty reference or one with control characters."""
    text = text.strip()
    if not text:
        raise InputError("give a path or #docid")
    if any(ord(ch) < 32 for ch in text):
        raise InputError(f"a reference cannot contain a line break or control character: {text!r}")
    m = _RANGE.match(text)
    assert m is not None
    start = int(m["start"]) if m["start"] else None
    count = int(m["count"]) if m["count"] else None
    if start == 0:
        raise InputError("line numbers start at 1")
    if count == 0:
        raise InputError(f"{text!r} asks for 0 lines; the count after FROM: is at least 1 (TARGET:FROM:COUNT)")
    return Ref(m["target"], start, count)


def _close_paths(index: Index, target: str) -> list[str]:
    """The indexed paths closest to a reference that missed (at most 3)."""
    paths = [d.display_path for d in index.documents()]
    close = difflib.get_close_matches(target, paths, n=3, cutoff=0.5)
    if not close:
        names = {p.rsplit("/", 1)[-1]: p for p in paths}
        close = [names[n] for n in difflib.get_close_matches(target.rsplit("/", 1)[-1], list(names), n=3, cutoff=0.6)]
    return close


def _missing(index: Index, target: str, head: str, tail: str) -> NotFound:
    """``head`` `` (did you mean a, b?)`` ``tail``, the hint only when some path is close."""
    close = _close_paths(index, target)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return NotFound(head + hint + tail, close)


def resolve(index: Index, collections: Sequence[Collection], target: str) -> DocRow:
    """One document by ``#docid`` (any unique prefix), ``collection/path`` or a path inside a collection's
    directory."""
    if target.startswith("#"):
        prefix = target[1:].lower()
        if not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            raise InputError(f"a docid is # and hex digits, got {target!r}")
        docs = index.documents_by_docid(prefix)
        if not docs:
            raise NotFound(f"no document with docid {target}")
        hashes = sorted({d.hash for d in docs})
        if len(hashes) > 1:
            ids = index.unique_docids(hashes)
            which = [f"#{ids[d.hash]} {d.display_path}" for d in docs[:5]]
            raise InputError(f"docid {target} is ambiguous: {', '.join(which)}")
        return docs[0]
    names = {c.name: c for c in collections}
    head, _, rest = target.partition("/")
    if head in names and rest:
        doc = index.document(head, rest)
        if doc is None:
            raise _missing(index, target, f"{target} is not in the index",
                           "; run `qmdctl update` if it is a new file")
        return doc
    path = Path(target).expanduser()
    absolute = path.resolve() if path.exists() or path.is_absolute() else None
    if absolute is not None:
        for c in collections:
            try:
                rel = absolute.relative_to(c.path.resolve()).as_posix()
            except ValueError:
                continue
            doc = index.document(c.name, rel)
            if doc is None:
                raise NotFound(f"{target} is not in the index; run `qmdctl update`")
            return doc
        known = ", ".join(f"{c.name} ({c.path})" for c in collections) or "none"
        raise NotFound(f"{target} is not inside any collection (collections: {known})")
    matches = [d for d in index.documents() if d.path == target or d.path.endswith("/" + target)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InputError(f"{target} matches {len(matches)} documents; use collection/path or #docid")
    raise _missing(index, target, f"no document {target!r} in the index",
                   " (use collection/path, #docid or a file path)")


def line_range(body: str, start: int | None, count: int | None) -> tuple[int, str]:
    """The requested lines of a body and the number of the first one."""
    if start is None and count is None:
        return 1, body
    start = start or 1
    lines = body.split("\n")
    if body.endswith("\n"):
        lines.pop()  # the newline ends the last line; it does not start another
    if start > len(lines):
        raise InputError(f"line {start} is past the end of the document ({len(lines)} lines)")
    end = len(lines) if count is None else start - 1 + count
    return start, "\n".join(lines[start - 1 : end]) + "\n"


@dataclass(frozen=True)
class Selected:
    """A document ``multi-get`` prints, with the line range its reference asked for."""

    doc: DocRow
    start: int | None = None
    count: int | None = None


def select(index: Index, collections: Sequence[Collection], pattern: str,
           errors: list[str] | None = None) -> list[Selected]:
    """Documents for ``multi-get``: comma-separated items, each a glob over collection/path or a reference
    (``#docid``, ``collection/path``, a file path) with an optional ``:FROM[:COUNT]``.

    An item that matches nothing is an error, so a typo is never a silent empty answer: raised, or (given
    ``errors``) listed there, one line per item, while the other items are still read.
    """
    items = [p.strip() for p in pattern.split(",") if p.strip()]
    if not items:
        raise InputError("give a glob or a comma-separated list of paths or #docids")
    docs = None
    out: list[Selected] = []
    seen: set[int] = set()
    for item in items:
        try:
            if any(ch in item for ch in "*?["):
                docs = docs if docs is not None else index.documents()
                found = [Selected(d) for d in docs if glob_match(d.display_path, item) or glob_match(d.path, item)]
                if not found:
                    raise NotFound(f"no indexed document matches {item!r}")
            else:
                ref = parse_ref(item)
                found = [Selected(resolve(index, collections, ref.target), ref.start, ref.count)]
        except InputError as e:  # NotFound included
            if errors is None:
                raise
            errors.append(str(e))
            continue
        for sel in found:
            if sel.doc.id not in seen:
                seen.add(sel.doc.id)
                out.append(sel)
    return out


def fetch(index: Index, collections: Sequence[Collection], ref: str, start: int | None = None,
          count: int | None = None) -> dict:
    """``get``: one document (or the lines a ``:FROM[:COUNT]`` reference or ``start``/``count`` ask for) as
    ``{docid, file, title, from, text}``; ``start``/``count`` win over the reference's own range."""
    parsed = parse_ref(ref)
    doc = resolve(index, collections, parsed.target)
    body = index.body(doc.hash)
    docid = index.unique_docids([doc.hash])[doc.hash]
    first, text = line_range(body, start or parsed.start, count or parsed.count)
    return {"docid": "#" + docid, "file": doc.display_path, "title": doc.title, "from": first, "text": text}


def fetch_many(index: Index, collections: Sequence[Collection], pattern: str, max_bytes: int,
               max_lines: int | None = None, errors: list[str] | None = None) -> list[dict]:
    """``multi-get``: every selected document as :func:`fetch` returns it, plus ``truncated`` (cut at
    ``max_lines``); a whole document larger than ``max_bytes`` is ``{docid, file, title, skipped}`` instead."""
    selected = select(index, collections, pattern, errors)
    docids = index.unique_docids([s.doc.hash for s in selected])
    out = []
    for sel in selected:
        doc = sel.doc
        head = {"docid": "#" + docids[doc.hash], "file": doc.display_path, "title": doc.title}
        body = index.body(doc.hash)
        size = len(body.encode("utf-8"))
        if size > max_bytes and sel.start is None and sel.count is None:
            out.append({**head, "skipped": f"{size} bytes", "size": size})
            continue
        first, text = line_range(body, sel.start, sel.count)
        lines = text.splitlines()
        truncated = max_lines is not None and len(lines) > max_lines
        if truncated:
            text = "\n".join(lines[:max_lines]) + "\n"
        out.append({**head, "from": first, "text": text, "truncated": truncated,
                    **({"more_lines": len(lines) - max_lines} if truncated and max_lines is not None else {})})
    return out
