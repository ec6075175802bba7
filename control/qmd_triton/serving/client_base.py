"""What the sync and the asyncio Triton clients share, everything but their I/O: the protocol check, tensors
built from numpy arrays with the dtypes of ``contracts``, Triton's and the transport's errors turned into this
project's, the search inputs and results, and the embedding plan (how many texts per request, and which
models a request goes through).

A plan is a generator: it yields each request it needs (:class:`Request`) and receives that request's outputs;
:class:`~qmd_triton.serving.client.QmdClient` sends them one after the other, and
:class:`~qmd_triton.serving.aclient.AsyncQmdClient` awaits them, several plans at once.

Example:
    >>> plan = embed_plan(["a note"], KIND_QUERY)
    >>> next(plan).model             # a query goes through the tokenizer first (it adds the query prompt)
    'qmd_tokenize'
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
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

PROTOCOLS = ("http", "grpc")


def short(e: BaseException) -> str:
    """The first line of an error's message (Triton's, or the transport's), at most 300 characters."""
    text = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    text = (text or type(e).__name__).strip()
    return text.splitlines()[0][:300]


def column(values: Sequence[str]) -> np.ndarray:
    """UTF-8 bytes in a BYTES tensor ``[len(values)]``."""
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


@dataclass(frozen=True)
class Request:
    """One inference request of a plan."""

    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    priority: int = 0


Plan = Generator[Request, dict[str, np.ndarray], Any]


def run_plan(plan: Plan, send: Callable[[Request], dict[str, np.ndarray]]) -> Any:
    """Drives ``plan`` with ``send`` (one request at a time) and returns what it returns."""
    try:
        request = next(plan)
        while True:
            request = plan.send(send(request))
    except StopIteration as done:
        return done.value


def embed_chunks(texts: Sequence[str], step: int) -> list[Sequence[str]]:
    """The texts of each embedding request, at most ``step`` each, in order."""
    if not texts:
        raise InputError("nothing to embed")
    return [texts[i:i + step] for i in range(0, len(texts), step)]


def embed_plan(texts: Sequence[str], kind: str, output: str = EMBEDDING, priority: int = 0) -> Plan:
    """Embeddings of ``texts`` (one request's worth): documents through the ``qmd_embed`` ensemble; queries,
    another ``output`` (the raw pooled vector) or a ``priority`` through ``qmd_tokenize`` and
    ``qmd_embed_model`` directly, each request carrying the priority."""
    text = column(texts).reshape(-1, 1)
    if kind == KIND_DOCUMENT and output == EMBEDDING and not priority:
        return (yield Request(contracts.EMBED.name, {TEXT: text}, [EMBEDDING]))[EMBEDDING]
    kinds = column([kind] * len(texts)).reshape(-1, 1)
    tokens = yield Request(contracts.TOKENIZE.name, {TEXT: text, KIND: kinds}, [INPUT_IDS, ATTENTION_MASK], priority)
    return (yield Request(contracts.EMBED_MODEL.name, tokens, [output], priority))[output]


def search_inputs(query: str, options: str) -> dict[str, np.ndarray]:
    """The inputs of a search model (``qmd_search``, ``qmd_vsearch``, ``qmd_query``)."""
    return {QUERY: column([query]), OPTIONS: column([options])}


def results_json(outputs: dict[str, np.ndarray]) -> bytes:
    """A search model's ``results``, the JSON it sent."""
    raw = outputs[RESULTS].reshape(-1)[0]
    return raw if isinstance(raw, bytes) else str(raw).encode("utf-8")


class ClientBase:
    """A Triton server's address and protocol, and what turns arrays into its tensors and its errors into ours.

    A subclass sets ``_mod`` (``tritonclient.http`` or ``tritonclient.grpc``) and does the I/O.
    """

    unavailable_hint = ""  # appended to "no Triton server answers at ..."
    timeout_hint = ""  # appended to "... did not answer within ..."
    refused_as_input = False  # a request the server refuses as invalid (HTTP 400) raises InputError
    transport_modules: tuple[str, ...] = ()  # libraries whose own exceptions mean the server cannot be reached
    _mod: Any

    def _setup(self, url: str, protocol: str, timeout_s: float) -> None:
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol must be http or grpc, got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        from tritonclient.utils import InferenceServerException

        self._server_error = InferenceServerException

    def _unavailable(self, e: BaseException) -> ServerUnavailable:
        return ServerUnavailable(f"no Triton server answers at {self.url} ({self.protocol}): {short(e)}"
                                 f"{self.unavailable_hint}")

    def _timed_out(self, model: str) -> RequestTimeout:
        return RequestTimeout(f"{model} did not answer within {self.timeout_s:g}s at {self.url} ({self.protocol})"
                              f"{self.timeout_hint}")

    def _tensors(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> tuple[list, list]:
        """The request's input tensors (dtypes from ``contracts``) and requested outputs."""
        from tritonclient.utils import np_to_triton_dtype

        spec = contracts.model(model)
        tensors = []
        for name, array in inputs.items():
            dtype = next((t.dtype for t in spec.inputs if t.name == name), None)
            tensor = self._mod.InferInput(name, list(array.shape), dtype.wire if dtype else
                                          np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors, [self._mod.InferRequestedOutput(n) for n in outputs]

    def _failure(self, e: Exception, model: str) -> Exception | None:
        """This project's error for what a request to ``model`` raised; None for an error that is not the
        server's or the transport's (raise it as it is)."""
        if isinstance(e, self._server_error):
            status = str(e.status() or "")
            if "DEADLINE_EXCEEDED" in status:
                return self._timed_out(model)
            if "UNAVAILABLE" in status or "Connection refused" in str(e):
                return self._unavailable(e)
            if self.refused_as_input and status in ("400", "StatusCode.INVALID_ARGUMENT"):
                return InputError(short(e).removeprefix(f"in ensemble '{model}', "))
            return InferenceError(f"{model}: {short(e)}")
        if isinstance(e, TimeoutError):
            return self._timed_out(model)
        if isinstance(e, (ConnectionError, OSError)):
            return self._unavailable(e)
        if type(e).__module__.split(".")[0] in self.transport_modules:
            return self._unavailable(e)
        return None

    def _admin_failure(self, e: Exception) -> Exception | None:
        """This project's error for a failed configuration or statistics call."""
        if isinstance(e, self._server_error):
            return InferenceError(short(e))
        if isinstance(e, (ConnectionError, OSError)):
            return self._unavailable(e)
        return None
