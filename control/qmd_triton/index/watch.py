"""Watching collections: which collections changed on disk, debounced, for ``qmdctl watch``.

A change is any file added, modified or removed below a collection's folder that its masks
select (hidden and tool folders ignored, as ``update`` does). Changes are gathered until the
folders have been quiet for the debounce time, then reported once per batch.

The first batch names every collection, once the watch is in place (index then, not before).

Example:
    >>> for changed in watch_changes(config.list(), debounce_ms=1000, stop=stop_event):
    ...     update(index, [c for c in collections if c.name in changed])
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from qmd_triton.index.collections import SKIP_DIRS, Collection

DEBOUNCE_MS = 1000


def _collection_of(path: Path, collections: Sequence[Collection]) -> Collection | None:
    for c in collections:
        try:
            rel = path.relative_to(c.path)
        except ValueError:
            continue
        parts = rel.parts
        if any(p in SKIP_DIRS or p.startswith(".") for p in parts[:-1]):
            return None
        return c if c.matches(rel.as_posix()) else None
    return None


def watch_changes(collections: Sequence[Collection], *, debounce_ms: int = DEBOUNCE_MS,
                  stop: threading.Event | None = None) -> Iterator[set[str]]:
    """Yields the names of the collections whose selected files changed, one set per quiet period.

    The first set holds every collection and comes once the folders are being watched: a caller that
    indexes then (not before) misses no change made while it started.
    """
    from watchfiles import watch

    roots = [str(c.path) for c in collections if c.path.is_dir()]
    if not roots:
        return
    first = True
    for batch in watch(*roots, debounce=debounce_ms, step=50, stop_event=stop, rust_timeout=200,
                       yield_on_timeout=True, raise_interrupt=False):
        if first:
            first = False
            yield {c.name for c in collections}
            continue
        changed = {c.name for _, raw in batch if (c := _collection_of(Path(raw), collections)) is not None}
        if changed:
            yield changed
