"""The milvus backend: the index in Milvus (Milvus Lite locally and in tests, Standalone or Distributed in
production), spoken to through pymilvus.

Four Milvus collections per index, named ``PREFIX_docs``, ``PREFIX_chunks``, ``PREFIX_meta`` and
``PREFIX_keys``:

- ``docs``: one row per document *part* (a document's text in pieces of at most 60,000 bytes, cut at line
  ends; most notes are one part), each with the document's metadata, its text under a BM25 function
  (``[index] analyzer``: ``standard`` tokenizer lower-cased, or ``english`` with stemming) and its CJK runs
  under a second one (``jieba``). A document's BM25 score is its best part's. Row id = document id * 4096 +
  part; ``hkey`` (a 63-bit key of the hash) finds a content's documents where the keys map (below) cannot:
  Milvus finds integers in a list through an index where strings cost a scan; ``v`` is a 2-d zero vector
  through which rows are read by id (``_by_ids``).
- ``chunks``: one row per chunk of each distinct content, with its vector (``[index] vector_index``, HNSW by
  default; inner product over the model's normalized vectors: cosine) and ``embedded`` (false until its
  vector came). Chunks are keyed by
  content hash and sequence, vectors by the chunk text's hash: a chunk whose text is already embedded
  elsewhere gets that vector without calling the model.
- ``meta``: key/value rows (the embedding fingerprint, the last update per collection, the expansion
  cache); Milvus needs a vector field in every collection, so each row carries a 2-d zero vector.
- ``keys``: one row per 6-hex hash prefix in use, keyed by that prefix as an integer, naming each content
  hash under it with the ids of the documents that hold it. A search's hits are chunks (content hashes): their
  documents and docid neighbours come from two lookups by primary key (this map, then the documents' first
  rows; ``_by_ids``: on Milvus's C++ engine a search filtered to those keys, since there a query paid ~5 ms
  for every row it returned, the hits' documents by ``prefix in [40 values]`` 230-300 ms at 1M documents
  against 5 ms; on Milvus Lite 3 a query; perf/RESULTS.md). Writers add a
  document to the map before its rows are written and take it out after they are deleted, and readers check
  every document row against the hash they asked for, so a crash between the two leaves at worst a stale
  entry, never a document the map hides. Two writers at once (two ``update`` runs against one Milvus) can
  each read a row and write it back without the other's change: ``qmdctl cleanup`` rebuilds the map from the
  documents (the Kubernetes update CronJob forbids overlapping runs).

Milvus has no transactions across rows: ``update`` writes each document's rows then deletes what went
away, so a reader during an update may see some files changed and others not yet; a failed update is
completed by the next one (it compares the files with what Milvus holds). Writes are acknowledged only
once Milvus has them in its write-ahead log: a killed Milvus (Lite or Standalone) loses nothing acknowledged.

Example:
    >>> index = MilvusIndex.open(index_config(home), create=True)
    >>> index.bm25(["batching"], 5)[0][0].path
    'guide/batching.md'
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from qmd_triton.errors import ConfigError, IndexCorrupt, IndexMissing, IndexUnavailable, InputError, QmdError
from qmd_triton.index.migrations import text_hash
from qmd_triton.index.store import FINGERPRINT_KEY, LAST_UPDATE_KEY, ChunkRow, DocRow
from qmd_triton.text.terms import cjk_runs, has_cjk

if TYPE_CHECKING:

    from qmd_triton.index.backend import IndexConfig

PART_BYTES = 60_000  # a VARCHAR holds 65,535 bytes; parts are cut at line ends below this
MAX_PARTS = 4096
TEXT_MAX = 65_535
PATH_MAX = 8192
DOCID_MIN = 6  # a docid's shortest prefix of the content hash (index.store.docid_of)
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


def _quiet() -> None:
    """pymilvus sets up its own loggers when imported; its warnings (an iterator's timestamp fallback on
    Milvus Lite) would reach stderr on every listing, and every failed call logs a traceback: a failure is
    this module's one-line error instead (``_milvus_error``)."""
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("pymilvus")] + ["pymilvus"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


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


def _python_engine(client: Any) -> bool:
    """Whether the server is Milvus Lite 3, the Python engine (it names itself ``milvus_lite-3...``; Milvus
    2.x servers answer ``v2...``, the C++ Milvus Lite does not implement the call)."""
    try:
        version = re.match(r"milvus_lite-(\d+)", str(client.get_server_version()))
    except Exception:  # noqa: BLE001
        return False
    return version is not None and int(version.group(1)) >= 3


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


def _milvus_error(e: Exception, config: IndexConfig) -> QmdError:
    message = getattr(e, "message", None)  # pymilvus's exceptions: the server's or client's own words
    text = " ".join(str(message if isinstance(message, str) and message else e).split())
    where = config.describe()
    if type(e).__name__ == "ConnectionConfigException":
        return ConfigError(f"index.uri {config.uri!r} is not a Milvus URI ({text[:200]})")
    if any(s in text for s in ("Fail connecting", "UNAVAILABLE", "failed to connect", "Connection refused",
                               "Deadline Exceeded", "DEADLINE_EXCEEDED")):
        hint = "`qmdctl up` starts the local Milvus Lite server" if config.local else "check that Milvus is up"
        return IndexUnavailable(f"cannot reach the index in {where} ({text[:200]}); {hint}; nothing was changed")
    if "tokenizer" in text and config.analyzer != "standard":
        return ConfigError(f"this Milvus has no {config.analyzer!r} analyzer ({text[:200]}): set index.analyzer = "
                           "\"standard\" in config.toml (Milvus Lite 3 has standard and jieba only)")
    if "index type" in text and config.vector_index in text:
        return ConfigError(f"this Milvus does not build {config.vector_index} indexes ({text[:200]}): set "
                           "index.vector_index in config.toml to one it names")
    return IndexUnavailable(f"the index in {where} failed: {text[:300]}")


class MilvusIndex:
    """One connection to the index in Milvus; implements :class:`qmd_triton.index.backend.Index`."""

    backend = "milvus"
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

    # -- opening -------------------------------------------------------------------

    @staticmethod
    def _client(config: IndexConfig, timeout: float = 10.0) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise IndexUnavailable("index.backend = \"milvus\" needs pymilvus: pip install 'qmd-triton[milvus]'") \
                from None
        _quiet()
        uri = config.resolved_uri()
        try:
            # dedicated: close() really closes the channel (a shared one outlives its clients in a pool);
            # no keepalive pings while no call runs: gRPC servers answer pings on an idle channel more often
            # than every 5 minutes with GOAWAY (too_many_pings), and the next call on it would fail.
            return MilvusClient(uri=uri, token=config.token or "", timeout=timeout, dedicated=True,
                                grpc_options={"grpc.keepalive_permit_without_calls": False})
        except Exception as e:  # noqa: BLE001 - pymilvus raises its own and grpc's errors
            raise _milvus_error(e, config) from None

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

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return self.config.describe()

    @contextmanager
    def transaction(self) -> Iterator[MilvusIndex]:
        """Milvus has no transactions across rows: the block's writes happen as they are made (see the
        module's docstring for what a reader can see); errors become one line."""
        with self._errors():
            yield self

    @contextmanager
    def snapshot(self) -> Iterator[MilvusIndex]:
        yield self

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except QmdError:
            raise
        except Exception as e:  # noqa: BLE001
            if type(e).__module__.startswith(("pymilvus", "grpc")):
                self.broken = True  # a long-lived reader connects again for its next request
                raise _milvus_error(e, self.config) from None
            raise

    # -- low level -------------------------------------------------------------------

    def _query(self, table: str, expr: str, fields: Sequence[str], limit: int | None = None) -> list[dict]:
        """Every row matching ``expr`` (past Milvus's per-query cap through an iterator)."""
        with self._errors():
            if limit is not None and limit <= QUERY_LIMIT:
                return list(self.client.query(table, filter=expr, output_fields=list(fields), limit=limit))
            first = list(self.client.query(table, filter=expr, output_fields=list(fields), limit=QUERY_LIMIT))
            if len(first) < QUERY_LIMIT:
                return first
            it = self.client.query_iterator(table, batch_size=4096, filter=expr, output_fields=list(fields),
                                            limit=limit if limit is not None else -1)
            out: list[dict] = []
            try:
                while True:
                    batch = it.next()
                    if not batch:
                        break
                    out.extend(batch)
            finally:
                it.close()
            return out

    def _by_ids(self, table: str, ids: Sequence[int], fields: Sequence[str]) -> list[dict]:
        """The rows with these primary keys (at most IN_BATCH). On Milvus's C++ engine (Standalone,
        Distributed, the C++ Milvus Lite) through a search over the collection's 2-d vector filtered to them:
        there a query pays ~5 ms for every row it returns (40 documents by id 190-275 ms at 1M rows), the
        filtered search 5 ms (perf/RESULTS.md, "The index on Milvus"). Every filtered row comes back: the
        filter leaves exactly these rows, the index is FLAT (exact) and the limit is their number. On Milvus
        Lite 3 the other way round: its Python engine answers a query by key at once and a search by looking
        at every row (40 rows at 5k documents: 3.8 ms as a query, 25.7 ms as a search)."""
        ids = list(dict.fromkeys(int(i) for i in ids))
        if not ids:
            return []
        if not self._search_by_id or (table == self.docs and "v" not in self._stored):
            return self._query(table, _in("id", ids), ["id", *fields], limit=len(ids))
        with self._errors():  # the keys' and docs' 2-d zero vectors, in a FLAT index: an exact scan of the filter
            hits = self.client.search(table, data=[ZERO2], anns_field="v", filter=_in("id", ids), limit=len(ids),
                                      output_fields=list(fields), search_params={"metric_type": "L2"})[0]
        return [{**h["entity"], "id": h["id"]} for h in hits]

    def _count(self, table: str, expr: str = "") -> int:
        with self._errors():
            rows = self.client.query(table, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _has_chunks(self) -> bool:
        with self._errors():
            return bool(self.client.has_collection(self.chunks))

    # -- meta ------------------------------------------------------------------------

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

    # -- documents -------------------------------------------------------------------

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

    # -- the keys map ----------------------------------------------------------------

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

    # -- contents --------------------------------------------------------------------

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

    def _chunk_hashes(self) -> set[str]:
        if not self._has_chunks():
            return set()
        return {r["hash"] for r in self._query(self.chunks, "seq == 0", ["hash"])}

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

    # -- BM25 ------------------------------------------------------------------------

    def bm25(self, terms: Sequence[str], limit: int, collections: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> list[tuple[DocRow, float]]:
        """The ``limit`` best documents matching any term, with their BM25 score (negative, lower is better,
        as the SQLite backend's).

        Milvus scores: Latin words through the ``standard`` analyzer (lower-cased, no stemming), CJK runs
        through ``jieba`` (the query's CJK bigrams are joined back into runs first), k1 = 1.2 and b = 0.75
        (``BM25_PARAMS``). A document scores its best part plus, for a query with both scripts, its best part in
        the CJK field. A phrase (a term with spaces) is searched as its words and kept only where the words
        stand together; ``exclude`` drops documents holding any excluded word or phrase.
        """
        terms = list(dict.fromkeys(t for t in terms if t.strip()))
        if not terms:
            return []
        latin = " ".join(t for t in terms if not has_cjk(t))
        cjk = " ".join(_join_bigrams([t for t in terms if has_cjk(t)]))
        phrases = [t.lower() for t in terms if " " in t.strip()]
        only_phrases = phrases and all(" " in t.strip() for t in terms)
        expr = self._filter(collections, exclude)
        want = limit
        while True:
            k = min(QUERY_LIMIT, max(want * 2, 20))
            scores: dict[int, float] = {}
            rows: dict[int, dict] = {}
            full = True
            for field, text in (("sparse", latin), ("sparse_zh", cjk)):
                if not text:
                    continue
                fields = list(self._DOC_FIELDS) + (["text"] if phrases else [])
                with self._errors():
                    hits = self.client.search(self.docs, data=[text], anns_field=field, limit=k, filter=expr,
                                              output_fields=fields, search_params={"metric_type": "BM25"})[0]
                full = full and len(hits) < k
                best: dict[int, float] = {}
                for h in hits:
                    e = h["entity"]
                    if only_phrases and not any(_has_phrase(e.get("text", ""), p) for p in phrases):
                        continue
                    doc = int(e["doc"])
                    score = abs(float(h["distance"]))
                    if score > best.get(doc, 0.0):
                        best[doc] = score
                        rows[doc] = e
                for doc, s in best.items():
                    scores[doc] = scores.get(doc, 0.0) + s
            ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
            if len(ranked) >= limit or full or k >= QUERY_LIMIT:
                return [(self._row(rows[d]), -s) for d, s in ranked[:limit]]
            want *= 4

    def _filter(self, collections: Sequence[str] | None, exclude: Sequence[str] = ()) -> str:
        parts = []
        if collections:
            parts.append(_in("collection", collections))
        for term in (e for e in exclude if e.strip()):
            field = "text_zh" if has_cjk(term) else "text"
            words = " ".join(_join_bigrams(term.split())) if has_cjk(term) else term
            if " " in term.strip() and not has_cjk(term):
                continue  # phrases are checked on the text (see matching)
            parts.append(f"not text_match({field}, {_quote(words)})")
        return " and ".join(parts)

    def matching(self, terms: Sequence[str]) -> set[int]:
        """Ids of the documents that hold any of the terms or phrases."""
        out: set[int] = set()
        for term in (t for t in terms if t.strip()):
            cjk = has_cjk(term)
            field = "text_zh" if cjk else "text"
            words = " ".join(_join_bigrams(term.split())) if cjk else term
            fields = ["doc", "text"] if " " in term.strip() and not cjk else ["doc"]
            for r in self._query(self.docs, f"text_match({field}, {_quote(words)})", fields):
                if len(fields) == 1 or _has_phrase(r["text"], term.lower()):
                    out.add(int(r["doc"]))
        return out

    # -- chunks and vectors ----------------------------------------------------------

    def unchunked_hashes(self) -> list[str]:
        return sorted(self._doc_hashes() - self._chunk_hashes())

    def still_indexed(self, hashes: Sequence[str]) -> list[str]:
        keep = set(self.documents_by_hash(hashes))
        return [h for h in hashes if h in keep]

    def add_chunks(self, content_hash: str, chunks: Sequence[Any]) -> None:
        """Stores a content's chunks without vectors (``embedded`` false, a zero vector)."""
        if not self._has_chunks():
            fp = self.fingerprint()
            if not fp or not int(fp.get("dim") or 0):
                raise IndexCorrupt(f"{self.describe()}: chunks need the embedding fingerprint first")
            self._create_chunks(int(fp["dim"]))
        dim = int((self.fingerprint() or {}).get("dim") or 0)
        rows = [{"id": chunk_id_of(content_hash, c.seq), "hash": content_hash, "seq": int(c.seq),
                 "start_line": int(c.start_line), "end_line": int(c.end_line), "tokens": int(c.tokens),
                 "text": _clip(c.text, CHUNK_TEXT_BYTES), "text_hash": text_hash(c.text), "embedded": False,
                 "hkey": _key(content_hash), "tkey": _key(text_hash(c.text)), "embedding": [0.0] * dim}
                for c in chunks]
        with self._errors():
            for start in range(0, len(rows), 512):
                self.client.upsert(self.chunks, rows[start : start + 512])

    _CHUNK_FIELDS = ("id", "hash", "seq", "start_line", "end_line", "tokens", "text", "text_hash", "hkey", "tkey")

    @staticmethod
    def _chunk(r: dict) -> ChunkRow:
        return ChunkRow(int(r["id"]), r["hash"], int(r["seq"]), int(r["start_line"]), int(r["end_line"]),
                        int(r["tokens"]), r["text"], r["text_hash"])

    def pending_chunks(self) -> list[ChunkRow]:
        """One chunk per distinct text that has no vector yet. Texts already embedded in another chunk (an
        edit elsewhere in a document, a renamed or copied file) get that vector here, without the model."""
        if not self._has_chunks():
            return []
        pending = self._query(self.chunks, "embedded == false", self._CHUNK_FIELDS)
        by_text: dict[str, dict] = {}
        for r in pending:
            by_text.setdefault(r["text_hash"], r)
        texts = list(by_text)
        for start in range(0, len(texts), IN_BATCH):
            part = texts[start : start + IN_BATCH]
            found = _matching(self._query(self.chunks, f"embedded == true and {_keys_in('tkey', part)}",
                                          ["text_hash", "embedding"]), "text_hash", part)
            known = {r["text_hash"]: r["embedding"] for r in found}
            if known:
                self.add_vectors(list(known.items()))
                for h in known:
                    by_text.pop(h, None)
        return [self._chunk(r) for r in by_text.values()]

    def add_vectors(self, items: Sequence[tuple[str, Any]]) -> None:
        """Gives every chunk with one of these texts (by hash) its vector."""
        import numpy as np

        vectors = {h: np.asarray(v, dtype=np.float32).tolist() for h, v in items}
        hashes = list(vectors)
        for start in range(0, len(hashes), IN_BATCH):
            part = hashes[start : start + IN_BATCH]
            rows = _matching(self._query(self.chunks, _keys_in("tkey", part), self._CHUNK_FIELDS), "text_hash", part)
            for r in rows:
                r["embedded"] = True
                r["embedding"] = vectors[r["text_hash"]]
            with self._errors():
                for s in range(0, len(rows), 512):
                    self.client.upsert(self.chunks, rows[s : s + 512])

    def insert_chunks(self, rows: Sequence[tuple[ChunkRow, Any]]) -> None:
        """Chunks with their vectors at once (``index migrate``, ``perf/``)."""
        import numpy as np

        out = [{"id": chunk_id_of(c.hash, c.seq), "hash": c.hash, "seq": int(c.seq), "start_line": int(c.start_line),
                "end_line": int(c.end_line), "tokens": int(c.tokens), "text": _clip(c.text, CHUNK_TEXT_BYTES),
                "text_hash": c.text_hash or text_hash(c.text), "embedded": v is not None, "hkey": _key(c.hash),
                "tkey": _key(c.text_hash or text_hash(c.text)),
                "embedding": (np.asarray(v, dtype=np.float32).tolist() if v is not None else None)} for c, v in rows]
        if not out:
            return
        if not self._has_chunks():
            dim = next((len(r["embedding"]) for r in out if r["embedding"] is not None), 0) or \
                int((self.fingerprint() or {}).get("dim") or 0)
            self._create_chunks(dim)
        dim = next((len(r["embedding"]) for r in out if r["embedding"] is not None), 0) or \
            int((self.fingerprint() or {}).get("dim") or 0)
        for r in out:
            if r["embedding"] is None:
                r["embedding"] = [0.0] * dim
        with self._errors():
            self._write(self.chunks, out)

    def import_chunks(self, rows: Sequence[tuple[ChunkRow, Any]]) -> None:
        self.insert_chunks(rows)

    def export_chunks(self) -> Iterator[tuple[ChunkRow, Any]]:
        import numpy as np

        if not self._has_chunks():
            return
        with self._errors():
            it = self.client.query_iterator(self.chunks, batch_size=2048, filter="",
                                            output_fields=[*self._CHUNK_FIELDS, "embedded", "embedding"])
        live = self._doc_hashes()
        try:
            while True:
                with self._errors():
                    batch = it.next()
                if not batch:
                    break
                for r in batch:
                    if r["hash"] in live:
                        yield self._chunk(r), (np.asarray(r["embedding"], dtype=np.float32) if r["embedded"] else None)
        finally:
            it.close()

    def export_expansions(self) -> Iterator[tuple[str, dict]]:
        for r in self._query(self.meta_table, f'key like "{EXPANSION_PREFIX}%"', ["key", "value"]):
            yield r["key"][len(EXPANSION_PREFIX):], json.loads(r["value"])

    def after_embed(self) -> None:
        with self._errors():
            if self._has_chunks():
                self.client.flush(self.chunks)

    def clear_chunks(self) -> None:
        """Forgets every chunk (the next embed chunks again) but keeps the vectors for their texts: embedded
        rows move to a retired content key (``retired:HASH``) that no document holds, where the next embed
        finds them by text and then drops them."""
        if not self._has_chunks():
            return
        rows = self._query(self.chunks, f'embedded == true and not (hash like "{RETIRED}%")',
                           [*self._CHUNK_FIELDS, "embedded", "embedding"])
        for start in range(0, len(rows), 512):
            part = rows[start : start + 512]
            moved = [{**r, "hash": RETIRED + r["hash"][:55], "hkey": _key(RETIRED + r["hash"][:55]),
                      "id": chunk_id_of(RETIRED + r["hash"], r["seq"])}
                     for r in part]
            with self._errors():
                self.client.upsert(self.chunks, moved)
                self.client.delete(self.chunks, ids=[int(r["id"]) for r in part])
        with self._errors():
            self.client.delete(self.chunks, filter=f'not (hash like "{RETIRED}%")')

    def drop_chunks(self) -> None:
        self._chunks_seen = False
        with self._errors():
            if self._has_chunks():
                self.client.drop_collection(self.chunks)

    def clear_embeddings(self) -> None:
        self.drop_chunks()
        self._delete_meta([FINGERPRINT_KEY])

    def chunks_by_id(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        ids = [int(i) for i in ids]
        if not ids or not self._has_chunks():
            return {}
        out = {}
        for start in range(0, len(ids), IN_BATCH):
            for r in self._query(self.chunks, _in("id", ids[start : start + IN_BATCH]), self._CHUNK_FIELDS):
                out[int(r["id"])] = self._chunk(r)
        return out

    def chunks_of(self, content_hash: str) -> list[ChunkRow]:
        if not self._has_chunks():
            return []
        rows = _matching(self._query(self.chunks, _keys_in("hkey", [content_hash]), self._CHUNK_FIELDS), "hash",
                         [content_hash])
        return sorted((self._chunk(r) for r in rows), key=lambda c: c.seq)

    def chunks_of_many(self, hashes: Sequence[str]) -> dict[str, list[ChunkRow]]:
        """The chunks of many contents in one query, by content hash (each list by sequence)."""
        wanted = list(dict.fromkeys(hashes))
        out: dict[str, list[ChunkRow]] = {h: [] for h in wanted}
        if not wanted or not self._has_chunks():
            return out
        for start in range(0, len(wanted), IN_BATCH):
            batch = wanted[start : start + IN_BATCH]
            for r in _matching(self._query(self.chunks, _keys_in("hkey", batch), self._CHUNK_FIELDS), "hash", batch):
                out[r["hash"]].append(self._chunk(r))
        for chunks in out.values():
            chunks.sort(key=lambda c: c.seq)
        return out

    def nearest_chunks(self, query_vec: Any, k: int, raw: bool = False) -> Any:
        """The k chunks nearest the query (the ANN index, inner product), best first, with their scores; with ``raw``
        also how many Milvus returned (before chunks still waiting for their vector are dropped)."""
        # A long-lived reader (a search model) asks Milvus whether the chunks exist only until it has seen them;
        # should another process drop them (`embed --force`), the search says so and the next one asks again.
        if not self._chunks_seen and not self._has_chunks():
            return ([], 0) if raw else []
        self._chunks_seen = True
        vec = [float(x) for x in query_vec]
        try:
            with self._errors():
                hits = self.client.search(
                    self.chunks, data=[vec], anns_field="embedding", limit=min(k, QUERY_LIMIT),
                    output_fields=[*self._CHUNK_FIELDS, "embedded"],
                    search_params={"metric_type": "IP",
                                   "params": VECTOR_INDEXES[self.config.vector_index][1](k)})[0]
        except QmdError as e:
            self._chunks_seen = False
            if "not found" in str(e) and not self._has_chunks():
                return ([], 0) if raw else []
            raise
        # Chunks still waiting for their vector hold a zero vector: dropped here rather than filtered in the
        # search (a filter over every row would cost each query more than the few rows it removes).
        out = [(self._chunk({**h["entity"], "id": h["id"]}), float(h["distance"])) for h in hits
               if h["entity"].get("embedded")]
        return (out, len(hits)) if raw else out

    def embedded_count(self) -> int:
        return self._count(self.chunks, "embedded == true") if self._has_chunks() else 0

    # -- status ----------------------------------------------------------------------

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


def _common(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _has_phrase(text: str, phrase: str) -> bool:
    words = re.findall(r"\w+", phrase.lower())
    return bool(words) and re.search(r"\W+".join(map(re.escape, words)), text.lower()) is not None


def _join_bigrams(terms: Sequence[str]) -> list[str]:
    """CJK bigrams (``向量 量检 检索``) joined back into the runs they came from (``向量检索``), for jieba."""
    runs: list[str] = []
    for t in terms:
        t = t.replace(" ", "")
        if runs and len(t) == 2 and runs[-1][-1] == t[0] and len(runs[-1]) >= 2:
            runs[-1] += t[1]
        else:
            runs.append(t)
    return runs
