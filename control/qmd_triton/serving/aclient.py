"""An asyncio Triton client for the qmd models (HTTP or gRPC), what the HTTP gateway and the MCP server use.

It mirrors :class:`~qmd_triton.serving.client.QmdClient` (same errors, same splitting of long lists: both
are :class:`~qmd_triton.serving.client_base.ClientBase`, this module only does the I/O) without blocking the
event loop: one connection pool per client, requests of a long list sent concurrently (at most ``parallel`` in
flight) so Triton's dynamic batcher can merge them.

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
from qmd_triton.contracts import EMBEDDING, EMBEDDING_RAW, KIND_DOCUMENT, LOGIT, QUERY, RESULTS, TEXTS
from qmd_triton.errors import InputError
from qmd_triton.serving.client_base import (
    ClientBase,
    Plan,
    column,
    embed_chunks,
    embed_plan,
    results_json,
    search_inputs,
)

DEFAULT_PARALLEL = 4


class AsyncQmdClient(ClientBase):
    """One Triton server over HTTP (aiohttp) or gRPC (grpc.aio); create and use it inside one event loop."""

    refused_as_input = True
    transport_modules = ("aiohttp", "grpc")  # their own connection errors

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 60.0,
                 parallel: int = DEFAULT_PARALLEL) -> None:
        self._setup(url, protocol, timeout_s)
        if protocol == "grpc":
            import tritonclient.grpc as module
            import tritonclient.grpc.aio as aio

            self._client: Any = aio.InferenceServerClient(url=url)
        else:
            import tritonclient.http as module
            import tritonclient.http.aio as aio

            self._client = aio.InferenceServerClient(url=url, conn_timeout=timeout_s)
        self._mod = module
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

    async def is_ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._client.is_server_ready(), timeout=min(self.timeout_s, 5.0)))
        except Exception:  # noqa: BLE001 - any transport failure means "not ready"
            return False

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
                    priority: int = 0) -> dict[str, np.ndarray]:
        """One request. A request the server refuses as invalid raises ``InputError`` with its message; an
        unreachable server ``ServerUnavailable``; no answer in time ``RequestTimeout``. ``priority`` as in
        :meth:`QmdClient.infer <qmd_triton.serving.client.QmdClient.infer>`."""
        tensors, requested = self._tensors(model, inputs, outputs)
        # The deadline is the transport's own (aiohttp's total timeout, gRPC's client_timeout): no extra task
        # per request on the hot path.
        # HTTP: no gzip. aiohttp asks for it by default, and Triton then compresses every answer: 5 ms of its
        # CPU (and ours to inflate it) for a page of hits with their bodies (150 KB), to save bytes on
        # loopback or a LAN (perf/RESULTS.md, "The HTTP gateway against Triton directly").
        kwargs: dict[str, Any] = ({"client_timeout": self.timeout_s} if self.protocol == "grpc"
                                  else {"headers": {"Accept-Encoding": "identity"}})
        if priority:
            kwargs["priority"] = priority
        try:
            async with self._parallel:
                result = await self._client.infer(model, tensors, outputs=requested, **kwargs)
        except Exception as e:
            failure = self._failure(e, model)
            if failure is None:
                raise
            raise failure from None
        return {n: result.as_numpy(n) for n in outputs}

    async def _run(self, plan: Plan) -> Any:
        """Drives a plan of :mod:`client_base`, awaiting each of its requests."""
        try:
            request = next(plan)
            while True:
                request = plan.send(await self.infer(request.model, request.inputs, request.outputs,
                                                     request.priority))
        except StopIteration as done:
            return done.value

    async def search_json(self, model: str, query: str, options: str) -> bytes:
        """A search model's (``qmd_search``, ``qmd_vsearch``, ``qmd_query``) ``results`` as the JSON it sent."""
        return results_json(await self.infer(model, search_inputs(query, options), [RESULTS]))

    async def search(self, model: str, query: str, options: str) -> list[dict]:
        """A search model's hits as dicts."""
        return json.loads(await self.search_json(model, query, options))

    async def embed(self, texts: Sequence[str], kind: str = KIND_DOCUMENT, normalize: bool = True) -> np.ndarray:
        """Embeddings ``[len(texts), dim]`` in input order, ``contracts.MAX_BATCH`` texts per request;
        ``normalize=False``: the pooled vectors before their L2 normalization."""
        output = EMBEDDING if normalize else EMBEDDING_RAW
        chunks = embed_chunks(texts, contracts.MAX_BATCH)
        parts = await asyncio.gather(*(self._run(embed_plan(chunk, kind, output)) for chunk in chunks))
        return np.concatenate(parts, axis=0)

    async def rerank(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """``qmd_rerank``'s raw logits ``[len(texts)]`` in input order, ``contracts.RERANK_MAX_PAIRS`` texts per
        request (a pair's logit can depend slightly on the pairs it shares a request with: the INT8 reranker
        quantizes activations per batch)."""
        if not texts:
            raise InputError("texts is empty: send at least one text to score")

        async def one(chunk: Sequence[str]) -> np.ndarray:
            out = await self.infer(contracts.RERANK.name, {QUERY: column([query]), TEXTS: column(chunk)}, [LOGIT])
            return out[LOGIT].reshape(-1)

        step = contracts.RERANK_MAX_PAIRS
        parts = await asyncio.gather(*(one(texts[i:i + step]) for i in range(0, len(texts), step)))
        return np.concatenate(parts)
