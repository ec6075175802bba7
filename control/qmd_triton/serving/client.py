"""A thin Triton client over HTTP or gRPC for the qmd models.

Example:
    >>> with QmdClient("127.0.0.1:8000", "http") as c:
    ...     vectors = c.embed(["hello", "你好"])
    >>> vectors.shape
    (2, 384)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from qmd_triton import contracts
from qmd_triton.contracts import EMBEDDING, KIND_DOCUMENT, RESULTS
from qmd_triton.progress import Count, uncounted
from qmd_triton.serving.client_base import (
    ClientBase,
    Request,
    embed_chunks,
    embed_plan,
    results_json,
    run_plan,
    search_inputs,
)


class QmdClient(ClientBase):
    """Sends requests to one server; batches larger than ``max_batch`` are split."""

    unavailable_hint = "; start one with `qmdctl up`"
    timeout_hint = (": the server is up but busy, or the request is long; allow more with request_timeout_s under "
                    "[server] in $QMD_HOME/config.toml, or QMD_REQUEST_TIMEOUT_S")

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 60.0) -> None:
        self._setup(url, protocol, timeout_s)
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._mod = module
        kwargs: dict[str, Any] = {}
        if protocol == "http":
            kwargs = {"connection_timeout": timeout_s, "network_timeout": timeout_s}
        self._client = module.InferenceServerClient(url=url, **kwargs)

    def __enter__(self) -> QmdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # noqa: BLE001 - any transport failure means "not ready"
            return False

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
              priority: int = 0) -> dict[str, np.ndarray]:
        """One request; ``InferenceError`` carries the server's message.

        ``priority`` is Triton's schedule-policy priority (1 highest; 0 the model's default level).
        """
        tensors, requested = self._tensors(model, inputs, outputs)
        kwargs: dict[str, Any] = {"priority": priority} if priority else {}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            result = self._client.infer(model, tensors, outputs=requested, **kwargs)
        except Exception as e:
            failure = self._failure(e, model)
            if failure is None:
                raise
            raise failure from None
        return {n: result.as_numpy(n) for n in outputs}

    def _send(self, request: Request) -> dict[str, np.ndarray]:
        return self.infer(request.model, request.inputs, request.outputs, request.priority)

    def embed(self, texts: Sequence[str], kind: str = KIND_DOCUMENT, batch: int = contracts.MAX_BATCH,
              priority: int = 0) -> np.ndarray:
        """Embeddings ``[len(texts), dim]``; documents through ``qmd_embed``, queries via ``kind``.

        With a ``priority`` (``BULK_PRIORITY`` for indexing), the texts go to ``qmd_tokenize`` and
        ``qmd_embed_model`` directly, each request carrying it, so interactive searches are scheduled first.
        """
        parts = [run_plan(embed_plan(chunk, kind, EMBEDDING, priority), self._send)
                 for chunk in embed_chunks(texts, batch)]
        return np.concatenate(parts, axis=0)

    def search(self, model: str, query: str, options: str) -> list[dict]:
        """Runs a search model (``qmd_search``, ``qmd_vsearch``, ``qmd_query``); returns its hits."""
        return json.loads(results_json(self.infer(model, search_inputs(query, options), [RESULTS])))

    def model_config(self, model: str) -> dict:
        """The configuration the server runs ``model`` with (after ``qmdctl tune`` or a user's edits)."""
        try:
            if self.protocol == "grpc":
                return self._client.get_model_config(model, as_json=True).get("config", {})
            return self._client.get_model_config(model)
        except Exception as e:
            failure = self._admin_failure(e)
            if failure is None:
                raise
            raise failure from None

    def statistics(self, model: str = "") -> dict:
        """Triton's per-model inference statistics as a dict."""
        try:
            if self.protocol == "grpc":
                return self._client.get_inference_statistics(model_name=model, as_json=True)
            return self._client.get_inference_statistics(model_name=model)
        except Exception as e:
            failure = self._admin_failure(e)
            if failure is None:
                raise
            raise failure from None


# Triton priority of bulk embedding (`qmdctl embed`, `watch`): below the default level (1) of interactive
# requests, in the models that declare two levels (qmd_tokenize, qmd_embed_model).
BULK_PRIORITY = 2
# Bulk requests in flight. A priority only orders the queue: a search that finds every qmd_embed_model
# instance running a bulk batch waits for one to finish (hundreds of ms). So on the CPU bulk embedding keeps
# one instance free for searches: with the shipped three single-thread instances, two bulk requests keep
# both cores busy (perf/RESULTS.md, "Interactive first"). A GPU instance batches, and runs a bulk batch in
# milliseconds: two in flight keep it fed.
BULK_IN_FLIGHT = 2


def bulk_in_flight(config: dict) -> int:
    """How many bulk requests to keep in flight against the served ``qmd_embed_model`` ``config``: one less
    than its CPU instances (at least one), or ``BULK_IN_FLIGHT`` on a GPU."""
    groups = config.get("instance_group") or [{}]
    if any(str(g.get("kind", "")).endswith("GPU") for g in groups):
        return BULK_IN_FLIGHT
    instances = sum(int(g.get("count", 1) or 1) for g in groups)
    return max(1, instances - 1)


class TritonEmbedder:
    """``qmd_embed`` of a running server, as an embedder for ``embed`` (one client per thread), at the bulk
    priority: interactive searches go first."""

    name = "triton"

    def __init__(self, settings: Any, priority: int = BULK_PRIORITY) -> None:
        from qmd_triton.index.fingerprint import embedding_setup

        self.settings = settings
        self.priority = priority
        self._setup = embedding_setup(settings.model_repository)
        self._local = threading.local()

    def _client(self) -> QmdClient:
        if not hasattr(self._local, "client"):
            self._local.client = QmdClient(self.settings.url(), self.settings.protocol, self.settings.request_timeout_s)
        return self._local.client

    def setup(self) -> Any:
        return self._setup

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._client().embed(list(texts), priority=self.priority)

    def embed_query(self, text: str) -> np.ndarray:
        return self._client().embed([text], kind=contracts.KIND_QUERY)[0]

    def in_flight(self) -> int:
        """Bulk requests to keep in flight, from the server's running ``qmd_embed_model`` (``bulk_in_flight``)."""
        return bulk_in_flight(self._client().model_config(contracts.EMBED_MODEL.name))


def embed_index(settings: Any, *, embedder: Any = None, force: bool = False, batch_size: int = 32,
                concurrency: int | None = None, progress: Count = uncounted,
                stop: threading.Event | None = None) -> Any:
    """Chunks and embeds everything pending in the settings' index (through the server by default), with
    ``concurrency`` requests in flight (None: as many as leave the server's embedder room for searches)."""
    from qmd_triton.index.config import index_config
    from qmd_triton.index.embed import embed_pending
    from qmd_triton.index.factory import open_index

    embedder = embedder or TritonEmbedder(settings)
    if concurrency is None:
        concurrency = embedder.in_flight() if hasattr(embedder, "in_flight") else BULK_IN_FLIGHT
    with open_index(index_config(settings.home)) as index:
        return embed_pending(index, embedder.setup(), lambda: embedder.embed, force=force, batch_size=batch_size,
                             concurrency=concurrency, progress=progress, stop=stop)
