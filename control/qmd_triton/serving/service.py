"""What the doors for programs do, written once: the HTTP gateway (``qmdctl api``) and the MCP server
(``qmdctl mcp``) both call this.

Searches, embeddings and reranking go through Triton with the asyncio client (``qmd_search``,
``qmd_vsearch``, ``qmd_query``, ``qmd_embed``, ``qmd_rerank``); documents (``get``, ``multi_get``) and the
index status are read from the index directly, as the CLI reads them, on a worker thread so the event loop
never waits on SQLite.

Example:
    >>> service = QmdService(Settings.load())
    >>> hits = await service.search("vsearch", "how do requests get batched", SearchOptions(n=3))
    >>> doc = await service.get(hits[0].file)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from qmd_triton import __version__, contracts
from qmd_triton.contracts import KIND_DOCUMENT
from qmd_triton.errors import InputError, QmdError
from qmd_triton.index.collections import CollectionConfig, ContextMap
from qmd_triton.index.config import index_config
from qmd_triton.index.factory import exists, index_summary, open_index
from qmd_triton.index.interface import Index
from qmd_triton.index.refs import fetch, fetch_many
from qmd_triton.progress import Progress, silent
from qmd_triton.search.options import Hit, SearchOptions, check_query, typed_query
from qmd_triton.serving import http
from qmd_triton.serving.aclient import AsyncQmdClient
from qmd_triton.settings import Settings
from qmd_triton.text.tokenization import PairEncoder, TextEncoder, read_manifest

MODES = {"search": contracts.SEARCH.name, "vsearch": contracts.VSEARCH.name, "query": contracts.QUERY_PIPELINE.name}
# A running server is not asked again for this long before the next search (ensure_server).
READY_RECHECK_S = 5.0


class QmdService:
    """One Triton server (the configured local one, started on demand, or ``triton_url``) and one index."""

    def __init__(self, settings: Settings, *, triton_url: str | None = None, protocol: str | None = None,
                 autostart: bool | None = None, progress: Progress = silent, warn: Progress = silent) -> None:
        self.settings = settings
        self.protocol = protocol or settings.protocol
        self.url = triton_url or settings.url(self.protocol)
        # A server named explicitly is somebody else's to run; the configured local one is started on demand.
        self.autostart = (triton_url is None) if autostart is None else autostart
        self.progress, self.warn = progress, warn
        self._client: AsyncQmdClient | None = None
        self._start_lock: asyncio.Lock | None = None
        self._ready_at = 0.0
        self._model: dict[str, Any] | None = None
        self._encoder: Any = None
        self._pairs: Any = None
        self.started = time.time()

    # -- Triton --------------------------------------------------------------------------------------------

    @property
    def client(self) -> AsyncQmdClient:
        """The asyncio client, made on first use inside the running event loop."""
        if self._client is None:
            self._client = AsyncQmdClient(self.url, self.protocol, self.settings.request_timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ensure_server(self) -> None:
        """Starts the local server when none answers (like the CLI's vsearch); a no-op for an explicit URL.

        Calls from concurrent requests wait for one start; a server seen ready recently is not asked again.
        """
        if not self.autostart or time.monotonic() - self._ready_at < READY_RECHECK_S:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if time.monotonic() - self._ready_at < READY_RECHECK_S:
                return
            from qmd_triton.serving.server import ensure_running

            await asyncio.to_thread(ensure_running, self.settings, self.progress, self.warn)
            self._ready_at = time.monotonic()

    async def ready(self) -> bool:
        return await self.client.is_ready()

    async def _timed(self, model: str, call: Any) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call
        except InputError:
            outcome = "invalid"
            raise
        except QmdError:
            outcome = "error"
            raise
        finally:
            http.TRITON_CALLS.labels(model, outcome).observe(time.perf_counter() - started)

    async def search_json(self, mode: str, query: str, options: SearchOptions = SearchOptions()) -> bytes:
        """The hits of ``search`` (BM25), ``vsearch`` or ``query`` (hybrid: typed ``lex:``/``vec:``/``hyde:``
        lines of ``query`` join ``options.searches``) as the JSON list the Triton model answered (the gateway
        passes it on without parsing it)."""
        model = MODES.get(mode)
        if model is None:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "query":
            text, typed = typed_query(query, options.searches)
            if typed != options.searches:
                options = replace(options, searches=typed)
        else:
            text = query
        text = check_query(text)
        return await self._timed(model, self.client.search_json(model, text, options.to_json()))

    async def search(self, mode: str, query: str, options: SearchOptions = SearchOptions()) -> list[Hit]:
        """As :meth:`search_json`, parsed into hits."""
        return [Hit.from_dict(d) for d in json.loads(await self.search_json(mode, query, options))]

    async def embed(self, texts: Sequence[str], kind: str = KIND_DOCUMENT, normalize: bool = True) -> np.ndarray:
        """Embeddings of any number of texts (split into requests of ``contracts.MAX_BATCH``); ``normalize=False``:
        the pooled vectors before their L2 normalization."""
        vectors = await self._timed(contracts.EMBED.name, self.client.embed(list(texts), kind, normalize))
        http.ITEMS.labels("embedded").inc(len(texts))
        return vectors

    async def rerank(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Raw cross-encoder logits of (query, text) for every text, in order (``qmd_rerank``)."""
        logits = await self._timed(contracts.RERANK.name, self.client.rerank(query, list(texts)))
        http.ITEMS.labels("reranked").inc(len(texts))
        return logits

    # -- the index ---------------------------------------------------------------------------------------

    def _collections(self) -> list:
        return CollectionConfig(self.settings.config_file).list()

    def _contexts(self) -> ContextMap:
        return ContextMap.load(self.settings.config_file)

    def _open(self) -> Index:
        return open_index(index_config(self.settings.home))

    def _get(self, ref: str, start: int | None, count: int | None) -> dict:
        with self._open() as index:
            doc = fetch(index, self._collections(), ref, start, count)
        collection, _, path = doc["file"].partition("/")
        context = self._contexts().for_path(collection, path)
        return {**doc, "collection": collection, "path": path, **({"context": context} if context else {})}

    async def get(self, ref: str, start: int | None = None, count: int | None = None) -> dict:
        """One document by path, ``collection/path`` or ``#docid`` (``:FROM[:COUNT]`` allowed); ``NotFound``
        when there is none."""
        return await asyncio.to_thread(self._get, ref, start, count)

    def _multi_get(self, pattern: str, max_bytes: int, max_lines: int | None,
                   errors: list[str] | None = None) -> list[dict]:
        with self._open() as index:
            return fetch_many(index, self._collections(), pattern, max_bytes, max_lines, errors)

    async def multi_get(self, pattern: str, max_bytes: int = 65536, max_lines: int | None = None) -> list[dict]:
        """Documents by comma-separated globs and references; larger ones than ``max_bytes`` come back as
        ``{..., "skipped"}``."""
        return await asyncio.to_thread(self._multi_get, pattern, max_bytes, max_lines)

    async def multi_get_listing_misses(self, pattern: str, max_bytes: int = 65536,
                                       max_lines: int | None = None) -> tuple[list[dict], list[str]]:
        """As :meth:`multi_get`, but an item that matches nothing is listed (one line each) beside the
        documents the other items found, instead of failing the call (MCP's ``multi_get``)."""
        errors: list[str] = []
        docs = await asyncio.to_thread(self._multi_get, pattern, max_bytes, max_lines, errors)
        return docs, errors

    def _documents(self, limit: int) -> list[dict]:
        if not exists(index_config(self.settings.home)):
            return []
        with self._open() as index:
            docs = index.documents()[:limit]
            docids = index.unique_docids([d.hash for d in docs])
        return [{"file": d.display_path, "title": d.title, "docid": "#" + docids[d.hash], "size": d.size}
                for d in docs]

    async def documents(self, limit: int = 1000) -> list[dict]:
        """Indexed documents (file, title, docid, size), at most ``limit``."""
        return await asyncio.to_thread(self._documents, limit)

    def embedding_model(self) -> dict[str, Any]:
        """The served embedding model's name and dimension, from the exporter's manifest (``qmd-embed`` and
        None when the repository's build outputs are not on this machine, as for a gateway in front of a
        remote server)."""
        if self._model is None:
            try:
                manifest = read_manifest(Path(self.settings.model_repository) / contracts.TOKENIZE.name / "1")
            except QmdError:
                manifest = {}
            source = Path(str(manifest.get("source") or ""))
            name = manifest.get("model") or (source.parent.name if source.name in ("model", "models") else source.name)
            manifest_file = Path(self.settings.model_repository) / contracts.TOKENIZE.name / "1" / "export.json"
            created = int(manifest_file.stat().st_mtime) if manifest_file.exists() else int(self.started)
            self._model = {"name": name or "qmd-embed", "dim": manifest.get("dim"), "created": created}
        return self._model

    def longest(self, texts: Sequence[str], kind: str = KIND_DOCUMENT) -> tuple[int, int] | None:
        """``(tokens of the longest text, the model's window)`` when a text does not fit the embedder's window;
        None when all fit or the tokenizer is not on this machine (the server truncates)."""
        encoder = self._text_encoder()
        if not encoder:
            return None
        longest = max(encoder.full_lengths(list(texts), kind), default=0)
        return (longest, encoder.max_length) if longest > encoder.max_length else None

    def longest_pair(self, query: str, texts: Sequence[str]) -> tuple[int, int] | None:
        """As :meth:`longest`, for the cross-encoder's (query, text) pairs."""
        pairs = self._tokenizer("_pairs", lambda: PairEncoder(
            Path(self.settings.model_repository) / contracts.RERANK_MODEL.name / "1" / "tokenizer.json"))
        if not pairs:
            return None
        longest = max(pairs.pair_lengths(query, list(texts)), default=0)
        return (longest, pairs.max_length) if longest > pairs.max_length else None

    def _text_encoder(self) -> Any:
        return self._tokenizer("_encoder", lambda: TextEncoder.from_repository(Path(self.settings.model_repository)))

    def _tokenizer(self, attr: str, build: Callable[[], Any]) -> Any:
        """A tokenizer of the repository, built at first use and kept; False when it is not on this machine
        (a gateway in front of a remote server)."""
        if getattr(self, attr) is None:
            try:
                setattr(self, attr, build())
            except (QmdError, OSError, ValueError):
                setattr(self, attr, False)
        return getattr(self, attr)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the embedding model sees for these texts (prompt, special tokens, truncation included); 0 when
        the tokenizer is not on this machine."""
        encoder = self._text_encoder()
        if not encoder:
            return 0
        return sum(len(r) for r in encoder.token_ids(list(texts), [KIND_DOCUMENT] * len(texts)))

    def _last_updates(self) -> dict[str, float]:
        if not exists(index_config(self.settings.home)):
            return {}
        with self._open() as index:
            return index.last_updates()

    async def status(self) -> dict[str, Any]:
        """The index (documents, chunks, share embedded, per collection) and whether Triton is ready; each
        collection's folder, globs and last update under ``collection_details``."""
        index = await asyncio.to_thread(index_summary, index_config(self.settings.home))
        configured = await asyncio.to_thread(self._collections)
        updates = await asyncio.to_thread(self._last_updates)
        collections = {c.name: str(c.path) for c in configured}
        if index is not None:
            index = {k: v for k, v in index.items() if k != "fingerprint"}
            for name, c in index["collections"].items():
                c["path"] = collections.get(name)
        counted = (index or {}).get("collections") or {}
        details = [{"name": c.name, "path": str(c.path), "pattern": ",".join(c.masks),
                    "documents": counted.get(c.name, {}).get("documents", 0), "last_update": updates.get(c.name)}
                   for c in configured]
        return {"version": __version__, "triton": {"url": self.url, "protocol": self.protocol,
                                                   "ready": await self.ready()},
                "index": index, "collections": sorted(collections), "collection_details": details,
                "uptime_s": round(time.time() - self.started, 1)}


def hits_json(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits as the doors return them (``Hit.to_dict``: docid, collection, path, file, title, score, line,
    snippet, and context/body/explain where present)."""
    return [h.to_dict() for h in hits]
