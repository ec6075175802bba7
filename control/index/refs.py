"""Addressing documents: ``#docid``, ``collection/path``, filesystem paths, line ranges.

Example:
    >>> ref = parse_ref("notes/plan.md:10:5")
    >>> (ref.target, ref.start, ref.count)
    ('notes/plan.md', 10, 5)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qmd_triton.errors import InputError
from qmd_triton.index.collections import Collection, _glob_match
from qmd_triton.index.store import DocRow, IndexStore

_RANGE = re.compile(r"^(?P<target>.+?)(?::(?P<start>\d+)(?::(?P<count>\d+))?)?$")


@dataclass(frozen=True)
class Ref:
    target: str
    start: int | None = None  # 1-based first line
    count: int | None = None


def parse_ref(text: str) -> Ref:
    text = text.strip()
    if not text:
        raise InputError("give a path or #docid")
    m = _RANGE.match(text)
    assert m is not None
    start = int(m["start"]) if m["start"] else None
    count = int(m["count"]) if m["count"] else None
    if start == 0:
        raise InputError("line numbers start at 1")
    return Ref(m["target"], start, count)


def resolve(store: IndexStore, collections: Sequence[Collection], target: str) -> DocRow:
    """One document by ``#docid``, ``collection/path`` or a path inside a collection's directory."""
    if target.startswith("#"):
        docs = store.documents_by_docid(target)
        if not docs:
            raise InputError(f"no document with docid {target}")
        if len({d.hash for d in docs}) > 1:
            raise InputError(f"docid {target} is ambiguous: {', '.join(d.display_path for d in docs[:5])}")
        return docs[0]
    names = {c.name: c for c in collections}
    head, _, rest = target.partition("/")
    if head in names and rest:
        doc = store.document(head, rest)
        if doc is None:
            raise InputError(f"{target} is not in the index; run `qmdctl update`")
        return doc
    path = Path(target).expanduser()
    absolute = path.resolve() if path.exists() or path.is_absolute() else None
    if absolute is not None:
        for c in collections:
            try:
                rel = absolute.relative_to(c.path.resolve()).as_posix()
            except ValueError:
                continue
            doc = store.document(c.name, rel)
            if doc is None:
                raise InputError(f"{target} is not in the index; run `qmdctl update`")
            return doc
        known = ", ".join(f"{c.name} ({c.path})" for c in collections) or "none"
        raise InputError(f"{target} is not inside any collection (collections: {known})")
    matches = [d for d in store.documents() if d.path == target or d.path.endswith("/" + target)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InputError(f"{target} matches {len(matches)} documents; use collection/path or #docid")
    raise InputError(f"no document {target!r} in the index (use collection/path, #docid or a file path)")


def line_range(body: str, start: int | None, count: int | None) -> tuple[int, str]:
    """The requested lines of a body and the number of the first one."""
    if start is None:
        return 1, body
    lines = body.split("\n")
    if body.endswith("\n"):
        lines.pop()  # the newline ends the last line; it does not start another
    if start > len(lines):
        raise InputError(f"line {start} is past the end of the document ({len(lines)} lines)")
    end = len(lines) if count is None else start - 1 + count
    return start, "\n".join(lines[start - 1 : end]) + "\n"


def select(store: IndexStore, pattern: str) -> list[DocRow]:
    """Documents for ``multi-get``: a comma-separated list of refs, or a glob over collection/path."""
    docs = store.documents()
    if any(ch in pattern for ch in "*?["):
        return [d for d in docs if _glob_match(d.display_path, pattern) or _glob_match(d.path, pattern)]
    out = []
    by_path = {d.display_path: d for d in docs}
    for item in (p.strip() for p in pattern.split(",")):
        if not item:
            continue
        if item.startswith("#"):
            found = store.documents_by_docid(item)
            if not found:
                raise InputError(f"no document with docid {item}")
            out.append(found[0])
        elif item in by_path:
            out.append(by_path[item])
        else:
            raise InputError(f"no document {item!r} in the index")
    return out
