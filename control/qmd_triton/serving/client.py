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
from qmd_triton.contracts import (
    ATTENTION_MASK,
    EMBEDDING,
    INPUT_IDS,
    KIND,
    KIND_DOCUMENT,
    OPTIONS,
    QUERY,
    RESULTS,
    TEXT,
)
from qmd_triton.errors import InferenceError, InputError, RequestTimeout, ServerUnavailable
from qmd_triton.progress import Count, uncounted


class QmdClient:
    """Sends requests to one server; batches larger than ``max_batch`` are split."""

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 60.0) -> None:
        if protocol not in ("http", "grpc"):
            raise InputError(f"protocol must be http or grpc, got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._mod = module
        self._utils = __import__("tritonclient.utils", fromlist=["InferenceServerException"])
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

    def _unavailable(self, e: Exception) -> ServerUnavailable:
        return ServerUnavailable(
            f"no Triton server answers at {self.url} ({self.protocol}): {_short(e)}; start one with `qmdctl up`"
        )

    def _timed_out(self, model: str) -> RequestTimeout:
        return RequestTimeout(
            f"{model} did not answer within {self.timeout_s:g}s at {self.url} ({self.protocol}): the server is up "
            "but busy, or the request is long; allow more with request_timeout_s under [server] in "
            "$QMD_HOME/config.toml, or QMD_REQUEST_TIMEOUT_S")

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
        spec = contracts.model(model)
        tensors = []
        for name, array in inputs.items():
            dtype = next((t.dtype for t in spec.inputs if t.name == name), None)
            wire = dtype.wire if dtype else self._utils.np_to_triton_dtype(array.dtype)
            t = self._mod.InferInput(name, list(array.shape), wire)
            t.set_data_from_numpy(array)
            tensors.append(t)
        requested = [self._mod.InferRequestedOutput(n) for n in outputs]
        try:
            kwargs: dict[str, Any] = {"priority": priority} if priority else {}
            if self.protocol == "grpc":
                kwargs["client_timeout"] = self.timeout_s
            result = self._client.infer(model, tensors, outputs=requested, **kwargs)
        except self._utils.InferenceServerException as e:
            status = str(e.status() or "")
            if "DEADLINE_EXCEEDED" in status:
                raise self._timed_out(model) from None
            if "UNAVAILABLE" in status or "Connection refused" in str(e) or "StatusCode.UNAVAILABLE" in status:
                raise self._unavailable(e) from None
            raise InferenceError(f"{model}: {_short(e)}") from None
        except TimeoutError:
            raise self._timed_out(model) from None
        except (ConnectionError, OSError) as e:
            raise self._unavailable(e) from None
        return {n: result.as_numpy(n) for n in outputs}

    def embed(self, texts: Sequence[str], kind: str = KIND_DOCUMENT, batch: int = contracts.MAX_BATCH,
              priority: int = 0) -> np.ndarray:
        """Embeddings ``[len(texts), dim]``; documents through ``qmd_embed``, queries via ``kind``.

        With a ``priority`` (``BULK_PRIORITY`` for indexing), the texts go to ``qmd_tokenize`` and
        ``qmd_embed_model`` directly, each request carrying it, so interactive searches are scheduled first.
        """
        if not texts:
            raise InputError("nothing to embed")
        parts = []
        for start in range(0, len(texts), batch):
            chunk = texts[start : start + batch]
            column = np.array([t.encode("utf-8") for t in chunk], dtype=np.object_).reshape(-1, 1)
            if kind == KIND_DOCUMENT and not priority:
                out = self.infer(contracts.EMBED.name, {TEXT: column}, [EMBEDDING])
            else:
                kinds = np.array([kind.encode()] * len(chunk), dtype=np.object_).reshape(-1, 1)
                tok = self.infer(contracts.TOKENIZE.name, {TEXT: column, KIND: kinds}, [INPUT_IDS, ATTENTION_MASK],
                                 priority)
                out = self.infer(contracts.EMBED_MODEL.name, tok, [EMBEDDING], priority)
            parts.append(out[EMBEDDING])
        return np.concatenate(parts, axis=0)

    def search(self, model: str, query: str, options: str) -> list[dict]:
        """Runs a search model (``qmd_search``, ``qmd_vsearch``, ``qmd_query``); returns its hits."""
        out = self.infer(
            model,
            {QUERY: np.array([query.encode("utf-8")], dtype=np.object_),
             OPTIONS: np.array([options.encode("utf-8")], dtype=np.object_)},
            [RESULTS],
        )
        raw = out[RESULTS].reshape(-1)[0]
        return json.loads(raw)

    def model_config(self, model: str) -> dict:
        """The configuration the server runs ``model`` with (after ``qmdctl tune`` or a user's edits)."""
        try:
            if self.protocol == "grpc":
                return self._client.get_model_config(model, as_json=True).get("config", {})
            return self._client.get_model_config(model)
        except self._utils.InferenceServerException as e:
            raise InferenceError(_short(e)) from None
        except (ConnectionError, OSError) as e:
            raise self._unavailable(e) from None

    def statistics(self, model: str = "") -> dict:
        """Triton's per-model inference statistics as a dict."""
        try:
            if self.protocol == "grpc":
                return self._client.get_inference_statistics(model_name=model, as_json=True)
            return self._client.get_inference_statistics(model_name=model)
        except self._utils.InferenceServerException as e:
            raise InferenceError(_short(e)) from None
        except (ConnectionError, OSError) as e:
            raise self._unavailable(e) from None


def _short(e: Exception) -> str:
    text = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    text = (text or type(e).__name__).strip()
    return text.splitlines()[0][:300]


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
