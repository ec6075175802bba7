"""``update``: keep the index in step with the collections' files (scan, hash, FTS).

Every selected file is read first and all changes are applied in one transaction
(on the sqlite backend: a reader never sees half an update and a failure changes
nothing; on milvus, which has no transactions, the next update completes a failed one).

Example:
    >>> report = update(index, config.list(), warn=print)
    >>> report.added
    12
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qmd_triton.errors import InputError
from qmd_triton.index.collections import Collection
from qmd_triton.index.interface import Index
from qmd_triton.progress import Progress, Warn, silent
from qmd_triton.system.files import sha256_text
from qmd_triton.text.markdown import SkippedFile, read_document, title_of


@dataclass
class UpdateReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)
    excluded: int = 0  # matching files under hidden or tool folders (.git, node_modules, ...)
    collections: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Change:
    """What an update does to one file's row: ``touch`` (same content, new size/mtime) or ``write``."""

    kind: str
    size: int
    mtime_ns: int
    text: str = ""
    title: str = ""


def content_hash(text: str) -> str:
    return sha256_text(text)


UPDATE_CMD_TIMEOUT_S = 600
# How titles are read from a document (text/markdown.py ``title_of``); an index whose documents were titled by an
# earlier rule has every file read again by the next ``update`` and the titles that changed rewritten.
# 2: front matter, then headings outside HTML comments (1 took a licence comment's "# Copyright" line).
TITLE_RULE = "2"
TITLE_RULE_KEY = "title_rule"


def run_update_cmd(collection: Collection, warn: Warn = silent, progress: Progress = silent) -> bool:
    """Runs a collection's ``update_cmd`` (``git pull``, a sync) in its folder; False (and a warning) on failure."""
    progress(f"{collection.name}: running `{collection.update_cmd}` in {collection.path}")
    try:
        proc = subprocess.run(collection.update_cmd, shell=True, cwd=collection.path, capture_output=True,
                              text=True, timeout=UPDATE_CMD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        warn(f"{collection.name}: `{collection.update_cmd}` did not finish in {UPDATE_CMD_TIMEOUT_S}s; "
             "scanning the files as they are")
        return False
    for line in (proc.stdout + proc.stderr).splitlines()[-20:]:
        progress(f"  {line}")
    if proc.returncode != 0:
        warn(f"{collection.name}: `{collection.update_cmd}` exited with status {proc.returncode}; "
             "scanning the files as they are")
        return False
    return True


def update(index: Index, collections: Sequence[Collection], *, force: bool = False, run_commands: bool = True,
           warn: Warn = silent, progress: Progress = silent) -> UpdateReport:
    """Scans collections and records added, changed and removed documents in one transaction.

    Each collection's ``update_cmd`` runs first (unless ``run_commands`` is false).
    """
    for c in collections:
        if not c.path.is_dir():
            raise InputError(f"collection {c.name}: path {c.path} does not exist or is not a directory")
    report = UpdateReport()
    plans = []
    retitle = index.meta(TITLE_RULE_KEY) != TITLE_RULE
    if retitle and index.collection_names():
        progress("titles are read by a newer rule: reading every file again")
    for c in collections:
        if c.update_cmd and run_commands:
            run_update_cmd(c, warn, progress)
        progress(f"scanning {c.name} ({c.path})")
        known = {d.path: d for d in index.documents(c.name)}
        seen: dict[str, _Change | None] = {}
        stats = {"added": 0, "changed": 0, "removed": 0, "unchanged": 0, "skipped": 0, "excluded": 0}
        scan = c.scan()
        for skipped in scan.skipped:
            warn(f"skipped {c.name}/{skipped.path}: {skipped.reason}")
            report.skipped.append(f"{c.name}/{skipped.path}")
        stats["skipped"] += len(scan.skipped)
        stats["excluded"] = scan.excluded
        report.excluded += scan.excluded
        for rel, full in scan.files:
            try:
                st = full.stat()
            except FileNotFoundError:
                continue  # vanished between listing and stat: it is simply not there
            doc = known.get(rel)
            if doc and not (force or retitle) and doc.size == st.st_size and doc.mtime_ns == st.st_mtime_ns:
                seen[rel] = None
                stats["unchanged"] += 1
                continue
            try:
                text = read_document(full)
            except SkippedFile as e:
                warn(f"skipped {c.name}/{rel}: {str(e).split(': ', 1)[-1]}")
                report.skipped.append(f"{c.name}/{rel}")
                stats["skipped"] += 1
                continue
            h = content_hash(text)
            title = title_of(text, Path(rel).stem)
            if doc and doc.hash == h and doc.title == title:
                seen[rel] = _Change("touch", st.st_size, st.st_mtime_ns)
                stats["unchanged"] += 1
            elif doc and doc.hash == h:  # the same text, titled by a newer rule
                seen[rel] = _Change("write", st.st_size, st.st_mtime_ns, text, title)
                stats["unchanged"] += 1
            else:
                seen[rel] = _Change("write", st.st_size, st.st_mtime_ns, text, title)
                stats["changed" if doc else "added"] += 1
        removed = [d.id for p, d in known.items() if p not in seen]
        stats["removed"] = len(removed)
        plans.append((c, known, seen, removed))
        report.collections[c.name] = stats
        for key in ("added", "changed", "removed", "unchanged"):
            setattr(report, key, getattr(report, key) + stats[key])
    with index.transaction():
        for c, known, seen, removed in plans:
            writes = []
            for rel, item in seen.items():
                if item is None:
                    continue
                if item.kind == "touch":
                    index.touch_document(known[rel].id, item.size, item.mtime_ns)
                else:
                    writes.append((c.name, rel, item.title, content_hash(item.text), item.text, item.size,
                                   item.mtime_ns))
            index.upsert_documents(writes)
            index.delete_documents(removed)
        index.collect_garbage()
        now = time.time()
        for c, *_ in plans:
            index.mark_updated(c.name, now)
        if retitle and set(index.collection_names()) <= {c.name for c in collections}:
            index.set_meta(TITLE_RULE_KEY, TITLE_RULE)
    return report
