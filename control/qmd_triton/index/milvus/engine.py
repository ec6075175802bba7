"""Talking to Milvus: the client, one-line errors, and reads that differ by engine (Milvus's C++
servers against Milvus Lite 3's Python engine)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from qmd_triton.errors import ConfigError, IndexUnavailable, QmdError
from qmd_triton.index.milvus.schema import QUERY_LIMIT, ZERO2, _in

if TYPE_CHECKING:
    from qmd_triton.index.config import IndexConfig
    from qmd_triton.index.milvus.index import MilvusIndex


def _quiet() -> None:
    """pymilvus sets up its own loggers when imported; its warnings (an iterator's timestamp fallback on
    Milvus Lite) would reach stderr on every listing, and every failed call logs a traceback: a failure is
    this module's one-line error instead (``_milvus_error``)."""
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("pymilvus")] + ["pymilvus"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _python_engine(client: Any) -> bool:
    """Whether the server is Milvus Lite 3, the Python engine (it names itself ``milvus_lite-3...``; Milvus
    2.x servers answer ``v2...``, the C++ Milvus Lite does not implement the call)."""
    try:
        version = re.match(r"milvus_lite-(\d+)", str(client.get_server_version()))
    except Exception:  # noqa: BLE001
        return False
    return version is not None and int(version.group(1)) >= 3


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


class _Engine:
    """The connection and its reads."""

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
