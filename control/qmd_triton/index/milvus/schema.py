"""The Milvus collections qmd makes (their fields, indexes and limits), row ids and keys, and the
filter expressions every read builds."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from qmd_triton.errors import IndexUnavailable, InputError
from qmd_triton.text.terms import cjk_runs

PART_BYTES = 60_000  # a VARCHAR holds 65,535 bytes; parts are cut at line ends below this


MAX_PARTS = 4096


TEXT_MAX = 65_535


PATH_MAX = 8192


DOCID_MIN = 6  # a docid's shortest prefix of the content hash (index.rows.docid_of)


TITLE_MAX = 2048


CHUNK_TEXT_BYTES = 60_000  # a chunk is ~254 tokens; a giant code fence is kept whole in SQLite, cut here


QUERY_LIMIT = 16_384  # Milvus's offset + limit cap for one query or search


IN_BATCH = 1000  # values per `x in [...]` filter


HNSW = {"M": 16, "efConstruction": 200}


# The chunk vectors' ANN index (``[index] vector_index``): what it is built with, and its search parameters for
# k hits. HNSW on Milvus Standalone/Distributed and Milvus Lite 3; the C++ Milvus Lite 2.5 server takes only
# FLAT, IVF_FLAT and AUTOINDEX (perf/RESULTS.md, "The index on Milvus").
VECTOR_INDEXES: dict[str, tuple[dict, Any]] = {
    "HNSW": (HNSW, lambda k: {"ef": max(SEARCH_EF, k)}),
    "AUTOINDEX": ({}, lambda k: {}),
    "IVF_FLAT": ({"nlist": 1024}, lambda k: {"nprobe": 32}),
    "FLAT": ({}, lambda k: {}),
}


# k1 and b said, not left to each engine (Milvus Lite defaults k1 to 1.5, Milvus Standalone to 1.2): SQLite's FTS5
# uses 1.2 and 0.75 too.
BM25_PARAMS = {"bm25_k1": 1.2, "bm25_b": 0.75}


SEARCH_EF = 128  # HNSW's candidate list at search time (recall@10 vs exact: perf/milvus_scale.py)


# ``[index] analyzer``: "standard" (every Milvus; no stemming) or "english" (Porter-like stemming and stop words,
# as SQLite's FTS5 here; Milvus Standalone and the C++ Milvus Lite 2.5, not Milvus Lite 3).
ANALYZERS = {"standard": {"tokenizer": "standard", "filter": ["lowercase"]}, "english": {"type": "english"}}


CJK_ANALYZER = {"tokenizer": "jieba", "filter": ["lowercase"]}


EXPANSION_PREFIX = "expansion:"


KEYS_BUILT = "layout:keys"  # meta key: the keys map is complete (a map half built by a killed process is not)


ZERO2 = [0.0, 0.0]  # the small vector of the meta, keys and docs rows (Milvus needs one per collection)


ENTRIES_MAX = TEXT_MAX - 1024  # a keys row's text; a content held by more documents is marked "read by hkey"


RETIRED = "retired:"  # chunks of a re-chunked index, kept until the next embed has taken their vectors


def _id63(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def doc_id_of(collection: str, path: str) -> int:
    """A document's id: 51 bits of a hash of its collection and path (parts add 12 bits below)."""
    return _id63(f"{collection}\0{path}") >> 12


def chunk_id_of(content_hash: str, seq: int) -> int:
    return _id63(f"{content_hash}:{seq}")


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _in(field: str, values: Iterable[Any]) -> str:
    return f"{field} in [{', '.join(_quote(v) if isinstance(v, str) else str(int(v)) for v in values)}]"


def _key(text: str) -> int:
    """A 63-bit key of a hash string. Milvus finds an INT64 in a list through its inverted index in
    milliseconds where a VARCHAR list costs ~60-300 ms over 1M rows (perf/RESULTS.md, "The index on Milvus"),
    so every lookup by hash narrows by its key first, then checks the hash itself."""
    return _id63(text)


def _keys_in(key_field: str, values: Sequence[str]) -> str:
    """The rows whose INT64 ``key_field`` holds the key of one of ``values``. The string itself is checked on
    the rows that come back (``_matching``), not in the filter: a VARCHAR ``in`` beside the keys makes Milvus's
    C++ engine compare strings over every row again."""
    return _in(key_field, [_key(v) for v in values])


def _matching(rows: Iterable[dict], field: str, values: Iterable[str]) -> list[dict]:
    wanted = set(values)
    return [r for r in rows if r.get(field) in wanted]


def _prefix_of(content_hash: str) -> int:
    """A hash's first 6 hex as an integer: its row in the keys map."""
    return int(content_hash[:DOCID_MIN], 16)


_HASH = re.compile(r"[0-9a-f]{6,64}")


def _is_hash(text: str) -> bool:
    """A content hash (hex, at least a docid's 6 digits): what the keys map can be asked about."""
    return _HASH.fullmatch(text) is not None


def _entries_text(entry: dict[str, list[int] | None]) -> str:
    """A keys row's text; contents held by so many documents that the row would not fit are marked ``null``
    (their documents are then read by ``hkey``), the most widely held first."""
    entry = {h: (sorted(docs) if docs is not None else None) for h, docs in sorted(entry.items())}
    text = json.dumps(entry, separators=(",", ":"))
    while len(text) > ENTRIES_MAX:
        widest = max((h for h, docs in entry.items() if docs is not None), key=lambda h: len(entry[h] or ()))
        entry[widest] = None
        text = json.dumps(entry, separators=(",", ":"))
    return text


def _clip(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def split_parts(body: str, limit: int = PART_BYTES) -> list[str]:
    """The body in pieces of at most ``limit`` UTF-8 bytes, cut after a line end where one is near; joined
    they are the body again."""
    if len(body.encode("utf-8")) <= limit:
        return [body]
    parts: list[str] = []
    rest = body
    while rest:
        piece = _clip(rest, limit)
        if len(piece) < len(rest):
            cut = piece.rfind("\n")
            if cut > len(piece) // 2:
                piece = piece[: cut + 1]
        parts.append(piece)
        rest = rest[len(piece):]
    if len(parts) > MAX_PARTS:
        raise InputError(f"a document of {len(body.encode('utf-8'))} bytes has more than {MAX_PARTS} parts")
    return parts


_STORED = ("doc", "part", "parts", "collection", "path", "title", "hash", "hkey", "size", "mtime_ns",
           "indexed_at", "v",
           "text", "text_zh")  # what a docs row holds besides its id (the BM25 sparse fields are made from text)


def _doc_row(doc: int, part: int, parts: int, collection: str, path: str, title: str, content_hash: str, size: int,
             mtime_ns: int, now: float, text: str) -> dict:
    return {"id": doc * MAX_PARTS + part, "doc": doc, "part": part, "parts": parts, "collection": collection,
            "path": _clip(path, PATH_MAX), "title": _clip(title, TITLE_MAX), "hash": content_hash,
            "hkey": _key(content_hash), "size": int(size),
            "mtime_ns": int(mtime_ns), "indexed_at": now, "text": text, "text_zh": cjk_text(text), "v": ZERO2}


def cjk_text(text: str) -> str:
    """The CJK runs of a text, one per line: what the ``jieba`` field indexes."""
    return _clip("\n".join(cjk_runs(text)), TEXT_MAX - 16)


class _Schema:
    """Creates and loads the four collections."""

    def _create(self) -> None:
        from pymilvus import DataType, Function, FunctionType

        c = self.client
        if not c.has_collection(self.meta_table):
            s = c.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=1024)
            s.add_field("value", DataType.VARCHAR, max_length=TEXT_MAX)
            s.add_field("created", DataType.DOUBLE)
            s.add_field("v", DataType.FLOAT_VECTOR, dim=2)
            ip = c.prepare_index_params()
            ip.add_index("v", index_type="FLAT", metric_type="L2")
            self._create_collection(self.meta_table, s, ip)
        s = c.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("doc", DataType.INT64)
        s.add_field("part", DataType.INT64)
        s.add_field("parts", DataType.INT64)
        s.add_field("collection", DataType.VARCHAR, max_length=256)
        s.add_field("path", DataType.VARCHAR, max_length=PATH_MAX)
        s.add_field("title", DataType.VARCHAR, max_length=TITLE_MAX)
        s.add_field("hash", DataType.VARCHAR, max_length=64)
        s.add_field("hkey", DataType.INT64)  # _key(hash): lookups by hash
        s.add_field("size", DataType.INT64)
        s.add_field("mtime_ns", DataType.INT64)
        s.add_field("indexed_at", DataType.DOUBLE)
        s.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # zeros: rows by id are read through a search (_by_ids)
        s.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX, enable_analyzer=True, enable_match=True,
                    analyzer_params=ANALYZERS[self.config.analyzer])
        s.add_field("text_zh", DataType.VARCHAR, max_length=TEXT_MAX, enable_analyzer=True, enable_match=True,
                    analyzer_params=CJK_ANALYZER)
        s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        s.add_field("sparse_zh", DataType.SPARSE_FLOAT_VECTOR)
        s.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                output_field_names=["sparse"]))
        s.add_function(Function(name="bm25_zh", function_type=FunctionType.BM25, input_field_names=["text_zh"],
                                output_field_names=["sparse_zh"]))
        ip = c.prepare_index_params()
        ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params=BM25_PARAMS)
        ip.add_index("v", index_type="FLAT", metric_type="L2")
        ip.add_index("sparse_zh", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params=BM25_PARAMS)
        for field in ("collection", "hash", "hkey", "doc"):
            ip.add_index(field, index_type="INVERTED")
        self._create_collection(self.docs, s, ip)
        self._create_keys()
        self.set_meta(KEYS_BUILT, "1")

    def _create_keys(self) -> None:
        from pymilvus import DataType

        c = self.client
        if c.has_collection(self.keys):
            return
        s = c.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.INT64, is_primary=True)  # int(hash[:6], 16)
        s.add_field("entries", DataType.VARCHAR, max_length=TEXT_MAX)  # JSON {hash: [document id, ...] or null}
        s.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        ip = c.prepare_index_params()
        ip.add_index("v", index_type="FLAT", metric_type="L2")
        self._create_collection(self.keys, s, ip)

    def _create_chunks(self, dim: int) -> None:
        from pymilvus import DataType

        c = self.client
        s = c.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("hash", DataType.VARCHAR, max_length=64)
        s.add_field("seq", DataType.INT64)
        s.add_field("start_line", DataType.INT64)
        s.add_field("end_line", DataType.INT64)
        s.add_field("tokens", DataType.INT64)
        s.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX)
        s.add_field("text_hash", DataType.VARCHAR, max_length=64)
        s.add_field("hkey", DataType.INT64)  # _key(hash)
        s.add_field("tkey", DataType.INT64)  # _key(text_hash)
        s.add_field("embedded", DataType.BOOL)
        s.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        ip = c.prepare_index_params()
        build, _ = VECTOR_INDEXES[self.config.vector_index]
        ip.add_index("embedding", index_type=self.config.vector_index, metric_type="IP", params=build)
        for field in ("hash", "text_hash", "hkey", "tkey"):
            ip.add_index(field, index_type="INVERTED")
        self._create_collection(self.chunks, s, ip)

    def _create_collection(self, name: str, schema: Any, index_params: Any, timeout_s: float = 60.0) -> None:
        """An empty collection with its indexes, loaded. The indexes are asked for without pymilvus's own wait
        (it sleeps half a second per index before its first look) and watched here instead."""
        c = self.client
        c.create_collection(name, schema=schema, consistency_level="Strong")
        c.create_index(name, index_params, sync=False)
        deadline = time.monotonic() + timeout_s
        for index in c.list_indexes(name):
            while (state := c.describe_index(name, index).get("state")) not in ("Finished", None):
                if state == "Failed" or time.monotonic() > deadline:
                    raise IndexUnavailable(f"{self.describe()}: building index {index} of {name} {state or 'failed'}")
                time.sleep(0.02)
        c.load_collection(name)

    def _load(self, name: str) -> None:
        """Milvus serves a collection once it is loaded (after a restart they come back released)."""
        from pymilvus.client.types import LoadState

        if self.client.has_collection(name) and self.client.get_load_state(name).get("state") != LoadState.Loaded:
            self.client.load_collection(name)
