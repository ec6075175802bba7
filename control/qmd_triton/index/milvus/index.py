"""The milvus backend's :class:`MilvusIndex`: documents, meta, contents and status, with the
collections, engine, keys map, full text and chunks of its sibling modules."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from qmd_triton.errors import IndexCorrupt, IndexMissing, QmdError
from qmd_triton.index.interface import Index
from qmd_triton.index.milvus.chunks import _Chunks
from qmd_triton.index.milvus.engine import _Engine, _milvus_error, _python_engine
from qmd_triton.index.milvus.fulltext import _FullText
from qmd_triton.index.milvus.keys import _KeysMap
from qmd_triton.index.milvus.schema import (
    _STORED,
    DOCID_MIN,
    EXPANSION_PREFIX,
    IN_BATCH,
    KEYS_BUILT,
    MAX_PARTS,
    RETIRED,
    TEXT_MAX,
    ZERO2,
    _clip,
    _doc_row,
    _in,
    _is_hash,
    _keys_in,
    _matching,
    _prefix_of,
    _quote,
    _Schema,
    doc_id_of,
    split_parts,
)
from qmd_triton.index.rows import FINGERPRINT_KEY, LAST_UPDATE_KEY, DocRow

if TYPE_CHECKING:
    from qmd_triton.index.config import IndexConfig


class MilvusIndex(_Engine, _Schema, _KeysMap, _FullText, _Chunks, Index):
    """One connection to the index in Milvus; the milvus backend of :class:`Index`."""

    backend = "milvus"
    cheap_counts = False  # counts() reads every chunk row: seconds at a million chunks

    TABLES = ("docs", "chunks", "meta", "keys")  # the collections' name suffixes (PREFIX_docs, ...)

    def __init__(self, client: Any, config: IndexConfig) -> None:
        self.client = client
        self.config = config
        self._bulk = False
        self._bulk_prefixes: set[int] | None = None  # see bulk_load
        self._last_keys: tuple[float, set[int], dict] | None = None  # see _keys_of
        p = config.prefix
        self.docs, self.chunks, self.meta_table, self.keys = f"{p}_docs", f"{p}_chunks", f"{p}_meta", f"{p}_keys"
        self._chunks_seen = False
        self._stored = _STORED  # what a docs row holds besides its id, in this index's layout
        self._search_by_id = True  # see _by_ids; decided by the server's engine when opened
        self.broken = False
        self._fingerprint: tuple[float, dict | None] | None = None  # (when read, value): see fingerprint()

    @classmethod
    def exists(cls, config: IndexConfig) -> bool:
        if config.local and not config.local_state.exists():
            return False
        client = cls._client(config)
        try:
            return client.has_collection(f"{config.prefix}_docs")
        except Exception as e:  # noqa: BLE001
            raise _milvus_error(e, config) from None
        finally:
            client.close()

    @classmethod
    def open(cls, config: IndexConfig, *, create: bool = False) -> MilvusIndex:
        client = cls._client(config)
        index = cls(client, config)
        try:
            if not client.has_collection(index.docs):
                if not create:
                    client.close()
                    raise IndexMissing(f"no index in {config.describe()}; add a collection and run `qmdctl update`")
                index._create()
            else:
                for name in (index.docs, index.meta_table):
                    if not client.has_collection(name):
                        raise IndexCorrupt(f"the index in {config.describe()} has no {name} collection; drop the "
                                           f"{config.prefix}_* collections and run `qmdctl update` to rebuild")
                fields = {f["name"] for f in client.describe_collection(index.docs).get("fields", [])}
                if "hkey" not in fields:
                    raise IndexCorrupt(f"the index in {config.describe()} has the layout of an earlier qmd-triton "
                                       f"(no integer hash keys); drop the {config.prefix}_* collections and run "
                                       "`qmdctl update` and `qmdctl embed` to rebuild it")
                if "v" not in fields:  # written before the keys map: rows carry the hash prefix, no vector
                    index._stored = (*(f for f in _STORED if f != "v"), "prefix")
            for name in (index.docs, index.meta_table, index.chunks, index.keys):
                index._load(name)
            index._search_by_id = not _python_engine(client)
            if index.meta(KEYS_BUILT) is None:  # an index from before the map, or a build that was killed
                index._rebuild_keys()
        except QmdError:
            raise
        except Exception as e:  # noqa: BLE001
            client.close()
            raise _milvus_error(e, config) from None
        return index

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> str:
        return self.config.describe()

    def meta(self, key: str) -> str | None:
        with self._errors():
            rows = self.client.get(self.meta_table, ids=[key], output_fields=["value"])
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._fingerprint = None
        with self._errors():
            self.client.upsert(self.meta_table, [{"key": key, "value": value, "created": time.time(),
                                                  "v": ZERO2}])

    def _delete_meta(self, keys: Sequence[str]) -> None:
        self._fingerprint = None
        if keys:
            with self._errors():
                self.client.delete(self.meta_table, ids=list(keys))

    FINGERPRINT_TTL_S = 2.0

    def fingerprint(self) -> dict | None:
        """The embedding fingerprint; a search model asks on every request, so a value read in the last
        ``FINGERPRINT_TTL_S`` seconds is reused (this connection's own writes reset it at once)."""
        cached = self._fingerprint
        if cached is not None and time.monotonic() - cached[0] < self.FINGERPRINT_TTL_S:
            return cached[1]
        raw = self.meta(FINGERPRINT_KEY)
        value = json.loads(raw) if raw else None
        self._fingerprint = (time.monotonic(), value)
        return value

    def last_updates(self) -> dict[str, float]:
        prefix = LAST_UPDATE_KEY + ":"
        rows = self._query(self.meta_table, f'key like "{prefix}%"', ["key", "value"])
        return {r["key"][len(prefix):]: float(r["value"]) for r in rows}

    def mark_updated(self, collection: str, when: float | None = None) -> None:
        when = time.time() if when is None else when
        self.set_meta(f"{LAST_UPDATE_KEY}:{collection}", str(when))

    def cached_expansion(self, key: str) -> dict | None:
        raw = self.meta(EXPANSION_PREFIX + key)
        return json.loads(raw) if raw else None

    def remember_expansion(self, key: str, value: dict) -> bool:
        try:
            self.set_meta(EXPANSION_PREFIX + key, _clip(json.dumps(value, ensure_ascii=False), TEXT_MAX))
            return True
        except QmdError:
            return False

    def forget_expansions(self) -> int:
        keys = [r["key"] for r in self._query(self.meta_table, f'key like "{EXPANSION_PREFIX}%"', ["key"])]
        self._delete_meta(keys)
        return len(keys)

    _DOC_FIELDS = ("doc", "collection", "path", "title", "hash", "size", "mtime_ns")

    @staticmethod
    def _row(r: dict) -> DocRow:
        return DocRow(int(r["doc"]), r["collection"], r["path"], r["title"], r["hash"], int(r["size"]),
                      int(r["mtime_ns"]))

    def _docs(self, expr: str) -> list[DocRow]:
        where = f"part == 0 and ({expr})" if expr else "part == 0"
        rows = [self._row(r) for r in self._query(self.docs, where, self._DOC_FIELDS)]
        return sorted(rows, key=lambda d: (d.collection, d.path))

    def collection_names(self) -> list[str]:
        return sorted(self.last_updates())

    def documents(self, collection: str | None = None) -> list[DocRow]:
        return self._docs(f"collection == {_quote(collection)}" if collection is not None else "")

    def document(self, collection: str, path: str) -> DocRow | None:
        rows = self._docs(f"collection == {_quote(collection)} and path == {_quote(path)}")
        return rows[0] if rows else None

    def documents_by_docid(self, docid: str) -> list[DocRow]:
        prefix = docid.lower().lstrip("#")
        if not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            return []
        if len(prefix) >= DOCID_MIN:  # the keys map names the hashes under its first 6 hex
            entries = self._keys_of([prefix]).get(_prefix_of(prefix), {})
            found = self._holders({h: docs for h, docs in entries.items() if h.startswith(prefix)})
            return sorted((d for ds in found.values() for d in ds), key=lambda d: (d.collection, d.path))
        return self._docs(f'hash like "{prefix}%"')

    def documents_by_id(self, ids: Sequence[int]) -> dict[int, DocRow]:
        out: dict[int, DocRow] = {}
        ids = list(dict.fromkeys(int(i) for i in ids))
        for start in range(0, len(ids), IN_BATCH):  # by each document's first row's primary key
            for r in self._by_ids(self.docs, [i * MAX_PARTS for i in ids[start : start + IN_BATCH]],
                                  self._DOC_FIELDS):
                out[int(r["doc"])] = self._row(r)
        return out

    def documents_by_hash(self, hashes: Sequence[str],
                          collections: Sequence[str] | None = None) -> dict[str, list[DocRow]]:
        """The documents holding each content: the keys map names them, their first rows are read by primary
        key (a page of vector hits costs two key lookups, however large the index)."""
        found = self._holders(self._named([h for h in dict.fromkeys(hashes) if _is_hash(h)]))
        out = {}
        for h, docs in found.items():
            docs = [d for d in docs if not collections or d.collection in collections]
            if docs:
                out[h] = sorted(docs, key=lambda d: (d.collection, d.path))
        return out

    def body(self, content_hash: str) -> str:
        return self.bodies([content_hash])[content_hash]

    def bodies(self, hashes: Sequence[str]) -> dict[str, str]:
        """The texts of many contents (a page of hits' snippets): the keys map names a document holding each,
        whose rows are read by primary key."""
        wanted = list(dict.fromkeys(hashes))
        firsts = self._holders(self._named([h for h in wanted if _is_hash(h)]), ["id", "part", "parts", "text"])
        rest = [int(r["id"]) + i for rows in firsts.values() for r in rows[:1] for i in range(1, int(r["parts"]))]
        more: dict[int, dict] = {}
        for start in range(0, len(rest), IN_BATCH):
            more.update({int(r["id"]): r for r in self._by_ids(self.docs, rest[start : start + IN_BATCH],
                                                               ["id", "hash", "text"])})
        out: dict[str, str] = {}
        for h in wanted:
            rows = firsts.get(h)
            if not rows:
                raise IndexCorrupt(f"{self.describe()}: content {h[:12]} is missing")
            first = rows[0]
            parts = [first] + [more.get(int(first["id"]) + i) for i in range(1, int(first["parts"]))]
            if any(p is None or p["hash"] != h for p in parts):
                raise IndexCorrupt(f"{self.describe()}: content {h[:12]} has {sum(p is not None for p in parts)} "
                                   f"of {first['parts']} parts; run `qmdctl update --force`")
            out[h] = "".join(p["text"] for p in parts)
        return out

    def upsert_document(self, collection: str, path: str, title: str, content_hash: str, body: str,
                        size: int, mtime_ns: int) -> int:
        self.upsert_documents([(collection, path, title, content_hash, body, size, mtime_ns)])
        return doc_id_of(collection, path)

    def upsert_documents(self, items: Sequence[tuple[str, str, str, str, str, int, int]]) -> None:
        """Many documents at once (``update``, ``migrate``): rows sent in batches, stale parts dropped."""
        batch: list[dict] = []
        stale: dict[int, list[int]] = {}  # part count -> documents whose parts beyond it go
        now = time.time()
        for collection, path, title, content_hash, body, size, mtime_ns in items:
            doc = doc_id_of(collection, path)
            parts = split_parts(body)
            stale.setdefault(len(parts), []).append(doc)
            for i, text in enumerate(parts):
                batch.append(_doc_row(doc, i, len(parts), collection, path, title, content_hash, size, mtime_ns,
                                      now, text))
            if len(batch) >= 256 or sum(len(r["text"]) for r in batch) > 4 << 20:
                self._flush_docs(batch, stale)
        self._flush_docs(batch, stale)

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Writes into an index that holds none of the rows written (``index migrate`` into a new or emptied
        target, ``perf/`` builds) as plain inserts, with no stale document parts to look for. Milvus's upsert
        looks up every row's key, and the stale-part delete queries the collection: both cost more the more the
        collection holds (perf/RESULTS.md, "The index on Milvus")."""
        self._bulk = True
        # Into an empty keys map, the prefixes this load wrote are remembered here: a row is read back only when
        # a later batch shares its prefix, and the others are inserted, not upserted (1M documents on the C++
        # Milvus Lite: 1,230 s upserting every keys row, 1,097 s so).
        self._bulk_prefixes = set() if self._count(self.keys) == 0 else None
        try:
            yield
        finally:
            self._bulk = False
            self._bulk_prefixes = None

    def _write(self, table: str, rows: list[dict]) -> None:
        (self.client.insert if self._bulk else self.client.upsert)(table, rows)

    def _flush_docs(self, batch: list[dict], stale: dict[int, list[int]]) -> None:
        if self._bulk:
            stale.clear()
        if "prefix" in self._stored:
            for r in batch:
                r["prefix"] = _prefix_of(r["hash"])
                del r["v"]
        new = {int(r["doc"]): r["hash"] for r in batch if r["part"] == 0}
        old = {} if self._bulk else self._stored_hashes(list(new))
        with self._errors():
            # the map first, then the rows; what left a document goes from the map after (module docstring)
            self._edit_keys(add=[(h, d) for d, h in new.items() if old.get(d) != h])
            if batch:
                self._write(self.docs, batch)
            for n, docs in stale.items():
                for start in range(0, len(docs), IN_BATCH):
                    ids = _in("doc", docs[start : start + IN_BATCH])
                    self.client.delete(self.docs, filter=f"{ids} and part >= {n}")
            self._edit_keys(drop=[(h, d) for d, h in old.items() if new.get(d) != h])
        batch.clear()
        stale.clear()

    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None:
        rows = self._query(self.docs, f"doc == {int(doc_id)}", ["id", *self._stored])
        for r in rows:
            r["size"], r["mtime_ns"] = int(size), int(mtime_ns)
        if rows:
            with self._errors():
                self.client.upsert(self.docs, rows)

    def delete_documents(self, ids: Iterable[int]) -> int:
        ids = [int(i) for i in ids]
        n = 0
        for start in range(0, len(ids), IN_BATCH):
            part = ids[start : start + IN_BATCH]
            held = self._stored_hashes(part)
            n += len(held)
            with self._errors():
                self.client.delete(self.docs, filter=_in("doc", part))
                self._edit_keys(drop=[(h, d) for d, h in held.items()])
        return n

    def delete_collection(self, collection: str) -> int:
        held = self._query(self.docs, f"part == 0 and collection == {_quote(collection)}", ["doc", "hash"])
        with self._errors():
            self.client.delete(self.docs, filter=f"collection == {_quote(collection)}")
            self._edit_keys(drop=[(r["hash"], int(r["doc"])) for r in held])
        self._delete_meta([f"{LAST_UPDATE_KEY}:{collection}"])
        return len(held)

    def rename_collection(self, old: str, new: str) -> None:
        """Documents move to the new name (their ids follow the name, so their rows are rewritten)."""
        rows = self._query(self.docs, f"collection == {_quote(old)}", list(self._stored))
        out = []
        for r in rows:
            doc = doc_id_of(new, r["path"])
            out.append({**r, "id": doc * MAX_PARTS + int(r["part"]), "doc": doc, "collection": new})
        firsts = [(r, o) for r, o in zip(rows, out) if int(r["part"]) == 0]
        with self._errors():
            self._edit_keys(add=[(o["hash"], o["doc"]) for _, o in firsts])
            for start in range(0, len(out), 256):
                self.client.upsert(self.docs, out[start : start + 256])
            self.client.delete(self.docs, filter=f"collection == {_quote(old)}")
            self._edit_keys(drop=[(r["hash"], int(r["doc"])) for r, _ in firsts])
        when = self.meta(f"{LAST_UPDATE_KEY}:{old}")
        if when is not None:
            self.set_meta(f"{LAST_UPDATE_KEY}:{new}", when)
        self._delete_meta([f"{LAST_UPDATE_KEY}:{old}"])

    def _doc_hashes(self) -> set[str]:
        return {r["hash"] for r in self._query(self.docs, "part == 0", ["hash"])}

    def collect_garbage(self) -> int:
        """Content lives in its documents' rows, so nothing is left to collect after ``update``: the chunks of
        content no document holds any more stay until ``embed`` has reused their vectors (a chunk whose text
        did not change keeps its vector) and then go (``drop_unused_vectors``)."""
        return 0

    def drop_unused_vectors(self) -> int:
        """Drops the chunks (and vectors) of content that no document holds any more; returns how many
        contents."""
        if not self._has_chunks():
            return 0
        gone = sorted(h for h in self._chunk_hashes() - self._doc_hashes() if not h.startswith(RETIRED))
        for start in range(0, len(gone), IN_BATCH):
            with self._errors():
                batch = gone[start : start + IN_BATCH]
                rows = _matching(self._query(self.chunks, _keys_in("hkey", batch), ["id", "hash"]), "hash", batch)
                if rows:
                    self.client.delete(self.chunks, ids=[int(r["id"]) for r in rows])
        retired = self._count(self.chunks, f'hash like "{RETIRED}%"')
        if retired:  # kept by clear_chunks for this embed to find by text; every seq, not only seq 0
            with self._errors():
                self.client.delete(self.chunks, filter=f'hash like "{RETIRED}%"')
        return len(gone) + retired

    def cleanup(self, keep_expansions: int = 10000) -> dict[str, int]:
        rows = self._query(self.meta_table, f'key like "{EXPANSION_PREFIX}%"', ["key", "created"])
        rows.sort(key=lambda r: -float(r["created"]))
        old = [r["key"] for r in rows[keep_expansions:]]
        self._delete_meta(old)
        report = {"contents": self.collect_garbage(), "vectors": self.drop_unused_vectors(), "expansions": len(old)}
        self._rebuild_keys()  # entries a killed writer or two writers at once left stale
        with self._errors():
            for name in (self.docs, self.chunks, self.meta_table, self.keys):
                if self.client.has_collection(name):
                    try:
                        self.client.compact(name)
                    except Exception as e:  # noqa: BLE001
                        if "UNIMPLEMENTED" not in str(e):  # the C++ Milvus Lite compacts on its own only
                            raise
        report.update(bytes_before=0, bytes_after=0, bytes_reclaimed=0)
        return report

    def export_expansions(self) -> Iterator[tuple[str, dict]]:
        for r in self._query(self.meta_table, f'key like "{EXPANSION_PREFIX}%"', ["key", "value"]):
            yield r["key"][len(EXPANSION_PREFIX):], json.loads(r["value"])

    def counts(self) -> dict[str, Any]:
        docs = self._query(self.docs, "part == 0", ["collection", "hash", "indexed_at"])
        chunked: dict[str, tuple[int, int]] = {}
        if self._has_chunks():
            for r in self._query(self.chunks, "", ["hash", "embedded"]) if docs else []:
                n, e = chunked.get(r["hash"], (0, 0))
                chunked[r["hash"]] = (n + 1, e + int(bool(r["embedded"])))
        per: dict[str, dict[str, int]] = {}
        for r in docs:
            c = per.setdefault(r["collection"], {"documents": 0, "chunks": 0, "embedded": 0})
            n, e = chunked.get(r["hash"], (0, 0))
            c["documents"] += 1
            c["chunks"] += n
            c["embedded"] += e
        live = {r["hash"] for r in docs}
        return {
            "documents": len(docs),
            "chunks": sum(chunked[h][0] for h in live if h in chunked),
            "embedded": sum(chunked[h][1] for h in live if h in chunked),
            "unchunked_documents": len(live - set(chunked)),
            "collections": per,
            "last_update": max((float(r["indexed_at"]) for r in docs), default=None),
            "fingerprint": self.fingerprint(),
            "bytes": 0,
        }
