"""The HTTP gateway: QMD-Python's JSON endpoints, TEI's ``/rerank`` and OpenAI's ``/v1/embeddings`` over the
Triton models, with OpenAPI docs at ``/docs``.

| route | body | answer |
|---|---|---|
| ``GET /health`` | | ``{"status": "healthy", "model_loaded": true, ...}`` (503 when Triton is not ready) |
| ``POST /embed`` | ``{"texts": [...]}`` | ``{"embeddings": [[...]], "model", "dim"}`` (QMD-Python) |
| | TEI's ``{"inputs", "normalize", "truncate"}`` | ``[[...], ...]`` (TEI) |
| ``POST /search``, ``/vsearch`` | ``{"query", "top_k"}`` | ``{"query", "mode", "results": [hit, ...]}`` |
| ``POST /query`` | ``{"query", "top_k", "searches", "intent", ...}`` | as ``/search`` |
| ``POST /get``, ``/multi_get`` | ``{"file"}``, ``{"pattern"}`` | a document, a list of documents |
| ``GET /status`` | | the index and Triton's state |
| ``POST /rerank`` | TEI's ``{"query", "texts"}`` | ``[{"index", "score"}, ...]``, best first |
| | QMD-Python's ``{"query", "documents", "top_k"}`` | ``{"results": [document + "rerank_score"]}`` |
| ``POST /v1/embeddings``, ``GET /v1/models`` | ``{"input", "model"}`` | OpenAI's shapes |
| ``GET /metrics`` | | Prometheus |

A hit carries QMD-Python's fields beside qmd's: ``filepath`` (``qmd://collection/path``), ``display_path``,
``hash`` (the content's SHA-256) and, on ``/vsearch`` by default, ``body``.

Every error is JSON with its status: 400 malformed bodies and options, 401 no or wrong token, 403 a foreign
Origin or Host, 404 unknown documents and routes, 413 bodies, lists or (TEI, ``truncate: false``) texts too
large, 503 Triton down, 504 Triton too slow; never a traceback. The shape is
:func:`qmd_triton.serving.http.error_body` (OpenAI's, with QMD-Python's ``detail``), except for requests in
TEI's form, which get TEI's ``{"error", "error_type"}``.

Example:
    >>> app = create_app(QmdService(Settings.load()), Guard.for_bind("127.0.0.1", 18765, token=None))
    >>> uvicorn.run(app, host="127.0.0.1", port=18765)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from qmd_triton import __version__
from qmd_triton.api.models import (
    EmbedRequest,
    GetRequest,
    MultiGetRequest,
    OpenAIEmbeddingRequest,
    QueryRequest,
    RerankRequest,
    SearchRequest,
)
from qmd_triton.errors import InputError, QmdError
from qmd_triton.serving import http
from qmd_triton.serving.http import Guard, GuardMiddleware, error_body, status_of
from qmd_triton.serving.service import QmdService
from qmd_triton.settings import API_MAX_BODY_BYTES, API_MAX_TEXTS

log = logging.getLogger(__name__)

ROUTES = ("/health", "/embed", "/search", "/vsearch", "/query", "/get", "/multi_get", "/status", "/rerank",
          "/v1/embeddings", "/v1/models", "/metrics", "/docs", "/openapi.json")
RERANK_TOP_K = 5  # QMD-Python's /rerank default
EMBED_ALIAS = "qmd-embed"  # a model id that always names the served embedder (GET /v1/models lists both)


class TooLarge(InputError):
    """A body or a list beyond the gateway's limits (413)."""


def _status(e: BaseException) -> int:
    return 413 if isinstance(e, TooLarge) else status_of(e)


# TEI's error types by status (its ErrorType names).
TEI_TYPES = {400: "Empty", 413: "Validation", 422: "Validation", 424: "Backend", 429: "Overloaded",
             503: "Unhealthy", 504: "Backend"}


def tei_error(status: int, message: str) -> JSONResponse:
    """An error in TEI's shape, ``{"error", "error_type"}``; a malformed request is TEI's 422."""
    status = 422 if status == 400 and not message.endswith("cannot be empty") else status
    return JSONResponse({"error": message, "error_type": TEI_TYPES.get(status, "Backend")}, status_code=status)


def is_tei(path: str, body: Any) -> bool:
    """Whether a request is in TEI's form: ``/embed`` with ``inputs``, ``/rerank`` with ``texts``."""
    return isinstance(body, dict) and ((path == "/embed" and "inputs" in body) or
                                       (path == "/rerank" and "texts" in body))


class TeiError(InputError):
    """A refusal of a request in TEI's form, answered in TEI's shape with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def refuse_too_long(over: tuple[int, int] | None) -> None:
    """TEI's 413 for ``truncate: false`` when a text (``(its tokens, the window)``) does not fit."""
    if over is not None:
        raise TeiError(413, f"Input validation error: `inputs` must have less than {over[1]} tokens. "
                            f"Given: {over[0]}")


async def in_form(tei: bool, call: Awaitable[Any]) -> Any:
    """``await call``; a failure of a request in TEI's form becomes TEI's error (a refused request: 422)."""
    try:
        return await call
    except QmdError as e:
        if not tei:
            raise
        status = _status(e)
        raise TeiError(422 if status == 400 else status, str(e).splitlines()[0]) from None


def _validation_message(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        if err.get("type") == "json_invalid":
            pos = err.get("loc", ("body", "?"))[-1]
            return f"the body is not valid JSON: {err.get('ctx', {}).get('error', 'decode error')} at position {pos}"
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "the request body is not valid"


class JsonBody:
    """ASGI middleware: 413 for a body over ``limit`` bytes (by its Content-Length, or as it streams in), and
    every body read as JSON whatever its Content-Type (``curl -d`` sends form-urlencoded)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        declared = dict(headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await http.send_json(send, 413, error_body(413, f"the body is {int(declared)} bytes; the limit is "
                                                            f"{self.limit}"))
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:  # a chunked body: read it whole (up to the limit), then hand it on
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await http.send_json(send, 413, error_body(413, f"the body is over the limit of {self.limit} bytes"))
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(service: QmdService, guard: Guard, *, max_body_bytes: int = API_MAX_BODY_BYTES,
               max_texts: int = API_MAX_TEXTS) -> Any:
    """The gateway as an ASGI app: the FastAPI routes behind the guard and the body limit."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()

    app = FastAPI(title="qmd-triton gateway", version=__version__, lifespan=lifespan,
                  description="Search markdown notes (BM25, vectors, expansion, reranking) served by Triton: "
                              "QMD-Python's endpoints, TEI's /rerank, OpenAI's /v1/embeddings. Send "
                              "`Authorization: Bearer <QMD_API_TOKEN>` where the server has a token.")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        if is_tei(request.url.path, e.body):
            return tei_error(400, _validation_message(e))
        return JSONResponse(error_body(400, _validation_message(e)), status_code=400)

    @app.exception_handler(TeiError)
    async def tei_refused(_: Request, e: TeiError) -> JSONResponse:
        return tei_error(e.status, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else "request failed"
        if e.status_code == 400 and "JSON" in message:
            message = f"the body is not valid JSON: {message}"
        return JSONResponse(error_body(e.status_code, message), status_code=e.status_code)

    @app.exception_handler(QmdError)
    async def known(_: Request, e: QmdError) -> JSONResponse:
        status = _status(e)
        return JSONResponse(error_body(status, str(e).splitlines()[0][:1000]), status_code=status)

    @app.exception_handler(Exception)
    async def unknown(_: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(error_body(500, f"internal error ({type(e).__name__}); see the gateway's log"),
                            status_code=500)

    async def large_json(build: Any) -> Response:
        """A JSON answer built and encoded on a worker thread: thousands of vectors take long enough to encode
        to stall every other request on the event loop."""
        body = await asyncio.to_thread(lambda: json.dumps(build(), ensure_ascii=False, separators=(",", ":")))
        return Response(body.encode("utf-8"), media_type="application/json")

    def count(items: list[str]) -> None:
        if not items:
            raise InputError("the list of texts is empty")
        if len(items) > max_texts:
            raise TooLarge(f"{len(items)} texts in one request; the limit is {max_texts}")

    async def searched(mode: str, query: str, body: SearchRequest, full_by_default: bool = False) -> Response:
        # Triton's results JSON is passed on as it came (no parse and re-encode on the hot path).
        results = await service.search_json(mode, query, body.options(full_by_default))
        head = json.dumps({"query": query, "mode": mode}, ensure_ascii=False)[:-1].encode("utf-8")
        return Response(head + b', "results": ' + results + b"}", media_type="application/json")

    @app.get("/health", tags=["service"])
    async def health() -> JSONResponse:
        """Ready when Triton is (503 otherwise), in QMD-Python's shape."""
        ready = await service.ready()
        return JSONResponse({"status": "healthy" if ready else "unhealthy", "model_loaded": ready,
                             "triton": service.url, "version": __version__}, status_code=200 if ready else 503)

    @app.post("/search", tags=["search"])
    async def search(body: SearchRequest) -> Response:
        """BM25 full-text search (qmd_search)."""
        return await searched("search", body.query, body)

    @app.post("/vsearch", tags=["search"])
    async def vsearch(body: SearchRequest) -> Response:
        """Vector search (qmd_vsearch); each hit carries its document's `body` unless `full` is false
        (QMD-Python's shape)."""
        return await searched("vsearch", body.query, body, full_by_default=True)

    @app.post("/query", tags=["search"])
    async def query(body: QueryRequest) -> Response:
        """The hybrid pipeline (qmd_query): expansion or typed sub-queries, BM25 + vectors, RRF, reranking."""
        return await searched("query", body.query, body)

    @app.post("/embed", tags=["models"])
    async def embed(body: EmbedRequest) -> Response:
        """Embeddings of any number of texts, one vector per text (qmd_embed, split into batches of 64).
        QMD-Python's `texts` get `{"embeddings", "model", "dim"}`; TEI's `inputs` a bare list of vectors."""
        items = body.items
        if body.tei and not items:
            raise TeiError(400, "`inputs` cannot be empty")
        count(items)
        model = service.embedding_model()
        if body.dimensions is not None and model["dim"] and body.dimensions != model["dim"]:
            raise InputError(f"dimensions must be {model['dim']} (this model's), got {body.dimensions}")
        if body.truncate is False:
            refuse_too_long(await asyncio.to_thread(service.longest, items, body.kind))
        vectors = await in_form(body.tei, service.embed(items, body.kind, body.normalize))
        if body.tei:
            return await large_json(lambda: vectors.tolist())
        return await large_json(lambda: {"embeddings": vectors.tolist(), "model": model["name"],
                                         "dim": int(vectors.shape[1])})

    @app.post("/rerank", tags=["models"])
    async def rerank(body: RerankRequest) -> Response:
        """TEI's `texts`: a score per text, best first (sigmoid of the cross-encoder's logit unless
        raw_scores). QMD-Python's `documents`: the top_k documents back whole with their `rerank_score`."""
        try:
            passages = body.passages()
        except ValueError as e:
            raise InputError(str(e)) from None
        if body.tei and not passages:
            raise TeiError(400, "`texts` cannot be empty")
        if not passages:
            return JSONResponse({"results": []})
        count(passages)
        if body.truncate is False:
            refuse_too_long(await asyncio.to_thread(service.longest_pair, body.query, passages))
        logits = await in_form(body.tei, service.rerank(body.query, passages))
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        scores = logits if body.raw_scores else probabilities
        order = np.argsort(-scores, kind="stable")
        if body.documents is not None:
            top = order[: body.top_k or RERANK_TOP_K]
            return JSONResponse({"results": [{**body.documents[i], "rerank_score": float(probabilities[i])}
                                             for i in top]})
        return JSONResponse([{"index": int(i), "score": float(scores[i]),
                              **({"text": passages[i]} if body.return_text else {})} for i in order])

    @app.get("/v1/models", tags=["models"])
    async def openai_models() -> dict[str, Any]:
        """OpenAI's model list (the `openai` client's `models.list`): the embedding model /v1/embeddings serves."""
        model = service.embedding_model()
        return {"object": "list", "data": [{"id": name, "object": "model", "created": model["created"],
                                            "owned_by": "qmd-triton"} for name in (model["name"], EMBED_ALIAS)]}

    @app.post("/v1/embeddings", tags=["models"])
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Response:
        """OpenAI's embeddings API (the `openai` client's `embeddings.create`), float or base64."""
        items = body.items
        count(items)
        model = service.embedding_model()
        if body.model is not None and body.model not in (model["name"], EMBED_ALIAS):
            raise InputError(f"model {body.model!r} is not served here; this server embeds with {model['name']!r} "
                             "(GET /v1/models)")
        if body.dimensions is not None and model["dim"] and body.dimensions != model["dim"]:
            raise InputError(f"dimensions must be {model['dim']} (this model's), got {body.dimensions}")
        vectors, tokens = await asyncio.gather(service.embed(items), asyncio.to_thread(service.count_tokens, items))

        def encoded(v: np.ndarray) -> Any:
            if body.encoding_format == "base64":
                return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
            return v.tolist()

        return await large_json(lambda: {
            "object": "list", "model": model["name"],
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/get", tags=["documents"])
    async def get(body: GetRequest) -> dict[str, Any]:
        """One document by collection/path, path or #docid (404 when there is none)."""
        return await service.get(body.file, body.from_line, body.max_lines)

    @app.post("/multi_get", tags=["documents"])
    async def multi_get(body: MultiGetRequest) -> dict[str, Any]:
        """Documents by glob or comma-separated references; larger ones than max_bytes are listed as skipped."""
        return {"documents": await service.multi_get(body.pattern, body.max_bytes, body.max_lines)}

    @app.get("/status", tags=["service"])
    async def status() -> dict[str, Any]:
        """The index (documents, chunks, share embedded, per collection) and Triton's readiness."""
        return await service.status()

    @app.get("/metrics", tags=["service"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(http.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return GuardMiddleware(JsonBody(app, max_body_bytes), guard, door="api", routes=ROUTES)
