"""The keys map: one row per 6-hex hash prefix naming each content hash under it with the ids of the
documents that hold it (see the package's docstring)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from qmd_triton.index.milvus.schema import (
    IN_BATCH,
    KEYS_BUILT,
    MAX_PARTS,
    ZERO2,
    _entries_text,
    _is_hash,
    _keys_in,
    _matching,
    _prefix_of,
)


class _KeysMap:
    """Documents by content hash through the keys map, and its upkeep."""

    def unique_docids(self, hashes: Sequence[str], minimum: int = 6) -> dict[str, str]:
        out = {h: h[:minimum] for h in hashes if not _is_hash(h)}
        wanted = sorted({h for h in hashes if h not in out})
        if not wanted:
            return out
        keys = self._keys_of(wanted, recent=True)  # a page of hits annotated right after its documents were read
        for h in wanted:
            others = {o for o in keys.get(_prefix_of(h), {}) if o != h and o[:minimum] == h[:minimum]}
            longest = max((len(_common(h, o)) for o in others), default=0)
            out[h] = h[: max(minimum, longest + 1)]
        return out

    def _holders(self, entries: dict[str, list[int] | None], fields: Sequence[str] = ()) -> dict[str, list[Any]]:
        """The first rows of the documents the keys map names for each hash, each checked to hold that hash (an
        entry can be stale: see the module's docstring); a hash marked as held by too many documents for its
        row (``None``) is read by ``hkey``. As DocRows, or with ``fields`` as those fields of the rows."""
        ids = sorted({d * MAX_PARTS for docs in entries.values() for d in docs or ()})
        by_key = [h for h, docs in entries.items() if docs is None]
        wanted = set(entries)
        read = [*self._DOC_FIELDS, *fields]
        rows = []
        for start in range(0, len(ids), IN_BATCH):
            rows += self._by_ids(self.docs, ids[start : start + IN_BATCH], read)
        for start in range(0, len(by_key), IN_BATCH):
            batch = by_key[start : start + IN_BATCH]
            rows += _matching(self._query(self.docs, f"part == 0 and {_keys_in('hkey', batch)}", read), "hash",
                              batch)
        out: dict[str, list[Any]] = {}
        for r in rows:
            if r["hash"] in wanted:
                out.setdefault(r["hash"], []).append(r if fields else self._row(r))
        return out

    RECENT_KEYS_S = 1.0  # how long unique_docids reuses the keys rows just read (docids only print)

    def _keys_of(self, hashes: Iterable[str], recent: bool = False) -> dict[int, dict[str, list[int] | None]]:
        """The keys map's rows for these hashes' prefixes: prefix -> {hash: document ids, or None}. With
        ``recent``, the rows of the last read serve if it covered these prefixes within ``RECENT_KEYS_S`` and
        this connection wrote none since (a search's hits are annotated with their docids right after their
        documents were read: one read of the map, not two)."""
        prefixes = sorted({_prefix_of(h) for h in hashes})
        last = self._last_keys
        if recent and last and time.monotonic() - last[0] < self.RECENT_KEYS_S and last[1].issuperset(prefixes):
            return last[2]
        if self._bulk_prefixes is not None:  # a bulk load into an empty map: only what it wrote can exist
            prefixes = [p for p in prefixes if p in self._bulk_prefixes]
        out: dict[int, dict[str, list[int] | None]] = {}
        for start in range(0, len(prefixes), IN_BATCH):
            for r in self._by_ids(self.keys, prefixes[start : start + IN_BATCH], ["entries"]):
                out[int(r["id"])] = json.loads(r["entries"])
        self._last_keys = (time.monotonic(), set(prefixes), out)
        return out

    def _named(self, hashes: Sequence[str]) -> dict[str, list[int] | None]:
        """What the keys map says of each hash: the ids of the documents holding it ([] for none), or None."""
        keys = self._keys_of(hashes)
        return {h: keys.get(_prefix_of(h), {}).get(h, []) for h in hashes}

    def _edit_keys(self, add: Sequence[tuple[str, int]] = (), drop: Sequence[tuple[str, int]] = ()) -> None:
        """Adds (hash, document id) pairs to the keys map and takes others out, a read and a write per batch."""
        pairs = [*add, *drop]
        if not pairs:
            return
        current = self._keys_of(h for h, _ in pairs)  # edited in place: _write_keys drops the memo of it
        before = {p: _entries_text(entry) for p, entry in current.items()}
        for h, doc in drop:
            entry = current.get(_prefix_of(h), {})
            docs = entry.get(h, [])
            if docs is not None and doc in docs:
                docs.remove(doc)
                if not docs:
                    del entry[h]
        for h, doc in add:
            docs = current.setdefault(_prefix_of(h), {}).setdefault(h, [])
            if docs is not None and doc not in docs:
                docs.append(doc)
        touched = {_prefix_of(h) for h, _ in pairs}
        self._write_keys({p: current.get(p, {}) for p in touched}, before)

    def _write_keys(self, rows: dict[int, dict[str, list[int] | None]], before: dict[int, str]) -> None:
        """Writes keys rows (``before``: the text of those that exist): a changed row is upserted, one left
        empty deleted, one unchanged left alone. In a bulk load into an empty map a row it has not written
        is inserted instead (Milvus looks up every upserted key, a cost that grows with the collection; an
        insert of a key that exists would store it twice, so only where this process knows it cannot)."""
        self._last_keys = None
        new, changed, gone = [], [], []
        for p, entry in sorted(rows.items()):
            text = _entries_text(entry) if entry else None
            if text is None:
                gone += [p] if p in before else []
            elif text != before.get(p):
                fresh = self._bulk_prefixes is not None and p not in before
                (new if fresh else changed).append({"id": p, "entries": text, "v": ZERO2})
        if self._bulk_prefixes is not None:
            self._bulk_prefixes.update(r["id"] for r in new)
        with self._errors():
            for start in range(0, len(new), 1000):
                self.client.insert(self.keys, new[start : start + 1000])
            for start in range(0, len(changed), 1000):
                self.client.upsert(self.keys, changed[start : start + 1000])
            for start in range(0, len(gone), IN_BATCH):
                self.client.delete(self.keys, ids=gone[start : start + IN_BATCH])

    def _rebuild_keys(self) -> None:
        """Makes the keys map again from the documents (an index from before it, a build that was killed,
        ``cleanup``)."""
        self._create_keys()
        self._delete_meta([KEYS_BUILT])
        want: dict[int, dict[str, list[int] | None]] = {}
        for r in self._query(self.docs, "part == 0", ["doc", "hash"]):
            docs = want.setdefault(_prefix_of(r["hash"]), {}).setdefault(r["hash"], [])
            if docs is not None:
                docs.append(int(r["doc"]))
        have = {int(r["id"]): r["entries"] for r in self._query(self.keys, "id >= 0", ["id", "entries"])}
        rows = {**{p: {} for p in have}, **want}
        self._write_keys(rows, have)
        self.set_meta(KEYS_BUILT, "1")

    def _stored_hashes(self, docs: Sequence[int]) -> dict[int, str]:
        """The content hash each of these documents holds now."""
        return {i: d.hash for i, d in self.documents_by_id(docs).items()}


def _common(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
