"""An asyncio Triton client for the qmd models (HTTP or gRPC), what the HTTP gateway and the MCP server use.

It mirrors :class:`~qmd_triton.serving.client.QmdClient` (same errors, same splitting of long lists) without
blocking the event loop: one connection pool per client, requests of a long list sent concurrently (at most
``parallel`` in flight) so Triton's dynamic batcher can merge them.

Example:
    >>> async with AsyncQmdClient("127.0.0.1:8000") as c:
    ...     vectors = await c.embed(["a document", "another"] * 100)   # 200 texts: 4 requests of <= 64
    ...     logits = await c.rerank("batching", ["Dynamic batching merges requests.", "Bread"])
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from qmd_triton import contracts
from qmd_triton.contracts import (
    ATTENTION_MASK,
    EMBEDDING,
    EMBEDDING_RAW,
    INPUT_IDS,
    KIND,
    KIND_DOCUMENT,
    LOGIT,
    OPTIONS,
    QUERY,
    RESULTS,
    TEXT,
    TEXTS,
)
from qmd_triton.errors import InferenceError, InputError, RequestTimeout, ServerUnavailable

DEFAULT_PARALLEL = 4


def _short(e: BaseException) -> str:
    text = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    text = (text or type(e).__name__).strip()
    return text.splitlines()[0][:300]


def _column(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


class AsyncQmdClient:
    """One Triton server over HTTP (aiohttp) or gRPC (grpc.aio); create and use it inside one event loop."""

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 60.0,
                 parallel: int = DEFAULT_PARALLEL) -> None:
        if protocol not in ("http", "grpc"):
            raise InputError(f"protocol must be http or grpc, got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as module
            import tritonclient.grpc.aio as aio

            self._client: Any = aio.InferenceServerClient(url=url)
        else:
            import tritonclient.http as module
            import tritonclient.http.aio as aio

            self._client = aio.InferenceServerClient(url=url, conn_timeout=timeout_s)
        self._mod = module
        from tritonclient.utils import InferenceServerException

        self._server_error = InferenceServerException
        self._parallel = asyncio.Semaphore(max(1, parallel))

    async def __aenter__(self) -> AsyncQmdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass

    def _unavailable(self, e: BaseException) -> ServerUnavailable:
        return ServerUnavailable(f"no Triton server answers at {self.url} ({self.protocol}): {_short(e)}")

    def _timed_out(self, model: str) -> RequestTimeout:
        return RequestTimeout(f"{model} did not answer within {self.timeout_s:g}s at {self.url} ({self.protocol})")

    async def is_ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._client.is_server_ready(), timeout=min(self.timeout_s, 5.0)))
        except Exception:  # noqa: BLE001 - any transport failure means "not ready"
            return False

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """One request. A request the server refuses as invalid raises ``InputError`` with its message; an
        unreachable server ``ServerUnavailable``; no answer in time ``RequestTimeout``."""
        spec = contracts.model(model)
        tensors = []
        for name, array in inputs.items():
            dtype = next(t.dtype for t in spec.inputs if t.name == name)
            t = self._mod.InferInput(name, list(array.shape), dtype.wire)
            t.set_data_from_numpy(array)
            tensors.append(t)
        requested = [self._mod.InferRequestedOutput(n) for n in outputs]
        # The deadline is the transport's own (aiohttp's total timeout, gRPC's client_timeout): no extra task
        # per request on the hot path.
        # HTTP: no gzip. aiohttp asks for it by default, and Triton then compresses every answer: 5 ms of its
        # CPU (and ours to inflate it) for a page of hits with their bodies (150 KB), to save bytes on
        # loopback or a LAN (perf/RESULTS.md, "The HTTP gateway against Triton directly").
        kwargs: dict[str, Any] = ({"client_timeout": self.timeout_s} if self.protocol == "grpc"
                                  else {"headers": {"Accept-Encoding": "identity"}})
        try:
            async with self._parallel:
                result = await self._client.infer(model, tensors, outputs=requested, **kwargs)
        except self._server_error as e:
            status = str(e.status() or "")
            if "DEADLINE_EXCEEDED" in status:
                raise self._timed_out(model) from None
            if "UNAVAILABLE" in status or "Connection refused" in str(e):
                raise self._unavailable(e) from None
            if status in ("400", "StatusCode.INVALID_ARGUMENT"):
                raise InputError(_short(e).removeprefix(f"in ensemble '{model}', ")) from None
            raise InferenceError(f"{model}: {_short(e)}") from None
        except TimeoutError:
            raise self._timed_out(model) from None
        except (ConnectionError, OSError) as e:
            raise self._unavailable(e) from None
        except Exception as e:  # aiohttp's and grpc's own connection errors
            if type(e).__module__.split(".")[0] in ("aiohttp", "grpc"):
                raise self._unavailable(e) from None
            raise
        return {n: result.as_numpy(n) for n in outputs}

    async def search_json(self, model: str, query: str, options: str) -> bytes:
        """A search model's (``qmd_search``, ``qmd_vsearch``, ``qmd_query``) ``results`` as the JSON it sent."""
        out = await self.infer(model, {QUERY: _column([query]), OPTIONS: _column([options])}, [RESULTS])
        raw = out[RESULTS].reshape(-1)[0]
        return raw if isinstance(raw, bytes) else str(raw).encode("utf-8")

    async def search(self, model: str, query: str, options: str) -> list[dict]:
        """A search model's hits as dicts."""
        return json.loads(await self.search_json(model, query, options))

    async def embed(self, texts: Sequence[str], kind: str = KIND_DOCUMENT, normalize: bool = True) -> np.ndarray:
        """Embeddings ``[len(texts), dim]`` in input order, ``contracts.MAX_BATCH`` texts per request;
        ``normalize=False``: the pooled vectors before their L2 normalization."""
        if not texts:
            raise InputError("nothing to embed")
        output = EMBEDDING if normalize else EMBEDDING_RAW

        async def one(chunk: Sequence[str]) -> np.ndarray:
            column = _column(chunk).reshape(-1, 1)
            if kind == KIND_DOCUMENT and normalize:
                return (await self.infer(contracts.EMBED.name, {TEXT: column}, [EMBEDDING]))[EMBEDDING]
            kinds = _column([kind] * len(chunk)).reshape(-1, 1)
            tok = await self.infer(contracts.TOKENIZE.name, {TEXT: column, KIND: kinds}, [INPUT_IDS, ATTENTION_MASK])
            return (await self.infer(contracts.EMBED_MODEL.name, tok, [output]))[output]

        step = contracts.MAX_BATCH
        parts = await asyncio.gather(*(one(texts[i:i + step]) for i in range(0, len(texts), step)))
        return np.concatenate(parts, axis=0)

    async def rerank(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """``qmd_rerank``'s raw logits ``[len(texts)]`` in input order, ``contracts.RERANK_MAX_PAIRS`` texts per
        request (a pair's logit can depend slightly on the pairs it shares a request with: the INT8 reranker
        quantizes activations per batch)."""
        if not texts:
            raise InputError("texts is empty: send at least one text to score")

        async def one(chunk: Sequence[str]) -> np.ndarray:
            out = await self.infer(contracts.RERANK.name, {QUERY: _column([query]), TEXTS: _column(chunk)}, [LOGIT])
            return out[LOGIT].reshape(-1)

        step = contracts.RERANK_MAX_PAIRS
        parts = await asyncio.gather(*(one(texts[i:i + step]) for i in range(0, len(texts), step)))
        return np.concatenate(parts)
