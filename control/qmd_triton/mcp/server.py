"""The MCP server (``qmdctl mcp``): qmd's search and documents as tools and resources for agents, on the official
``mcp`` SDK, over stdio or streamable HTTP.

The tools, arguments, defaults, result shapes and errors are tobi/qmd's (v2.8.3), so an agent config, a prompt
or a client written for ``qmd mcp`` works unchanged; extra tools and fields sit beside them:

- ``query``: a plain ``query`` or typed sub-queries ``searches`` (``lex``/``vec``/``hyde``), never both;
  ``intent``, ``limit`` (10), ``minScore`` (0), ``candidateLimit``, ``collections`` (or v1's ``collection``),
  ``rerank`` (true) -> ``{"results": [hit, ...]}`` and a one-line-per-hit summary
- ``search`` (BM25) and ``vsearch`` (vectors), this server's extras: ``query``, ``limit``, ``minScore``,
  ``collections`` -> the same hits
- ``get``: ``file`` (path, collection/path or #docid; ``file.md:120`` starts at line 120, ``:120:40`` reads 40
  lines), ``fromLine``, ``maxLines``, ``lineNumbers`` (true) -> the document as an embedded resource
- ``multi_get``: ``pattern`` (globs, comma-separated references), ``maxLines``, ``maxBytes`` (65536),
  ``lineNumbers`` (true) -> documents as embedded resources; larger ones and misses listed in text
- ``status`` -> ``{totalDocuments, needsEmbedding, hasVectorIndex, collections: [{name, path, pattern,
  documents, lastUpdated}]}`` and this server's own fields (``version``, ``triton``, ``index``)

A hit is ``{docid, file, title, score, context, line, snippet}`` (``context`` always present, null when none;
every snippet line prefixed ``N: ``, the first one a ``@@ -LINE,COUNT @@`` header). Where this server differs
on purpose: ``candidateLimit`` defaults to 20, the candidate count chosen by eval (docs/search.md), not 40.
Argument errors are one line naming the argument. Documents are also resources, ``qmd://COLLECTION/PATH``.
Every call goes through :class:`~qmd_triton.serving.service.QmdService`, which starts the local Triton
server when none answers.

Example:
    >>> server = build_server(QmdService(Settings.load()))
    >>> server.run("stdio")
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, EmbeddedResource, Resource, TextContent, TextResourceContents, ToolAnnotations
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from qmd_triton import __version__
from qmd_triton.errors import NotFound, QmdError
from qmd_triton.search.options import CANDIDATES, MAX_RESULTS, MAX_SEARCHES, Hit, SearchOptions
from qmd_triton.serving import http
from qmd_triton.serving.http import Guard, GuardMiddleware, jsonrpc_error_body
from qmd_triton.serving.service import QmdService

URI_SCHEME = "qmd"
MCP_PATH = "/mcp"
DEFAULT_MAX_BYTES = 65536  # multi_get skips documents larger than this (tobi/qmd's default)
RESOURCE_LIMIT = 1000  # documents listed as resources; the template reads any of them
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)


class SubQuery(BaseModel):
    """One typed sub-query of the ``query`` tool."""

    type: Annotated[str, Field(pattern="^(lex|vec|hyde)$", description=(
        "lex: BM25 keywords (\"a phrase\" and -word allowed); vec: a natural-language question for vector "
        "search; hyde: a short hypothetical answer passage, embedded"))]
    query: Annotated[str, Field(min_length=1, description="The text of this sub-query.")]


Limit = Annotated[int, Field(ge=1, le=MAX_RESULTS, description="Results to return (default 10).")]
MinScore = Annotated[float, Field(ge=0, le=1, description="Drop results scoring below this (0-1; default 0).")]
Collections = Annotated[list[str] | None, Field(description="Search only these collections (any of them).")]


def document_uri(file: str) -> str:
    """``qmd://collection/path`` with each path segment percent-encoded (slashes kept)."""
    return f"{URI_SCHEME}://" + "/".join(urllib.parse.quote(part) for part in file.split("/"))


def failed(text: str) -> CallToolResult:
    """A tool's own error: ``isError`` with one text item, as tobi/qmd answers (no SDK prefix)."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def numbered_snippet(snippet: str, line: int) -> str:
    """A snippet as tobi/qmd gives it: a ``@@ -LINE,COUNT @@`` header, then its lines, each prefixed ``N: ``."""
    lines = snippet.split("\n") if snippet else []
    out = [f"{line}: @@ -{line},{len(lines)} @@"]
    out += [f"{line + i}: {text}" for i, text in enumerate(lines)]
    return "\n".join(out)


def mcp_hit(hit: Hit) -> dict[str, Any]:
    """tobi/qmd's hit (``docid``, ``file``, ``title``, ``score`` to 2 places, ``context`` or null, ``line``,
    numbered ``snippet``), with this server's ``collection``, ``path`` and ``explain`` beside it."""
    d = hit.to_dict()
    out = {"docid": d["docid"], "file": hit.file, "title": hit.title, "score": round(hit.score, 2),
           "context": hit.context or None, "line": hit.line, "snippet": numbered_snippet(hit.snippet, hit.line),
           "collection": hit.collection, "path": hit.path}
    if hit.explain:
        out["explain"] = hit.explain
    return out


def summary(hits: list[Hit], query: str) -> str:
    """One line per hit, what an agent reads before deciding what to ``get``."""
    if not hits:
        return f'No results found for "{query}"'
    lines = [f'Found {len(hits)} result{"s" if len(hits) != 1 else ""} for "{query}":', ""]
    lines += [f"{h.to_dict()['docid']} {round(h.score * 100)}% {h.file} - {h.title}" for h in hits]
    return "\n".join(lines)


def numbered(text: str, first: int) -> str:
    return "".join(f"{first + i}: {line}\n" for i, line in enumerate(text.splitlines()))


def _document(doc: dict[str, Any], line_numbers: bool) -> EmbeddedResource:
    text = doc["text"]
    if doc.get("more_lines"):
        text += f"\n[... truncated {doc['more_lines']} more lines]\n"
    text = numbered(text, doc["from"]) if line_numbers else text
    if doc.get("context"):
        text = f"<!-- Context: {doc['context']} -->\n\n{text}"
    return EmbeddedResource(type="resource", resource=TextResourceContents(
        uri=document_uri(doc["file"]), text=text, mime_type="text/markdown"))


def _iso(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch if epoch is not None else time.time()))


def status_result(st: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``status``'s text and structured content: tobi/qmd's keys, this server's beside them."""
    index = st["index"] or {}
    details = st.get("collection_details") or []
    pending = (index.get("chunks", 0) - index.get("embedded", 0)) + index.get("unchunked_documents", 0)
    collections = [{"name": c["name"], "path": c["path"], "pattern": c["pattern"], "documents": c["documents"],
                    "lastUpdated": _iso(c["last_update"])}
                   for c in sorted(details, key=lambda c: -(c["last_update"] or 0))]
    structured = {"totalDocuments": index.get("documents", 0), "needsEmbedding": pending,
                  "hasVectorIndex": index.get("embedded", 0) > 0, "collections": collections,
                  "version": st["version"], "triton": st["triton"], "index": st["index"], "uptime_s": st["uptime_s"]}
    lines = ["QMD Index Status:", f"  Total documents: {structured['totalDocuments']}",
             f"  Needs embedding: {pending}", f"  Vector index: {'yes' if structured['hasVectorIndex'] else 'no'}",
             f"  Collections: {len(collections)}"]
    lines += [f"    - {c['name']}: {c['path']} ({c['documents']} docs)" for c in collections]
    lines.append(f"  Search server: {'ready' if st['triton']['ready'] else 'not ready'} at {st['triton']['url']}")
    return "\n".join(lines), structured


def _scope(collections: list[str] | None, collection: str | None) -> tuple[str, ...] | str:
    """The collections to search; a message when v1's ``collection`` and ``collections`` disagree."""
    if collection is None:
        return tuple(collections or ())
    if collections and list(collections) != [collection]:
        return (f"Error: 'collection' ({collection!r}) and 'collections' ({collections!r}) disagree; give "
                "only 'collections'")
    return (collection,)


def build_server(service: QmdService) -> MCPServer:
    """An MCPServer with qmd's tools and document resources, every call served by ``service``."""
    server = DocumentServer(
        "qmd", version=__version__, service=service, log_level="WARNING",
        instructions=(
            "qmd searches the user's markdown notes and docs. Use `query` for the best results: a plain "
            "question, or typed sub-queries (lex for exact terms, vec for questions, hyde for a hypothetical "
            "answer), the first weighted most, with an `intent` saying what the words mean here. `search` is "
            "keyword-only and fast, `vsearch` by meaning. Then read documents with `get` (path or #docid from a "
            "result, `file.md:120` starts at line 120) or several with `multi_get`. `status` lists the "
            "collections."))

    async def searched(mode: str, query: str, options: SearchOptions) -> CallToolResult:
        try:
            await service.ensure_server()
            hits = await service.search(mode, query, options)
        except QmdError as e:
            return failed(f"Error: {str(e).splitlines()[0]}")
        shown = query or next((q for kind, q in options.searches if kind == "lex"), "") or \
            next((q for _, q in options.searches), "")
        return CallToolResult(content=[TextContent(type="text", text=summary(hits, shown))],
                              structured_content={"results": [mcp_hit(h) for h in hits]})

    def base_options(limit: int, min_score: float, collections: tuple[str, ...], **extra: Any) -> SearchOptions:
        try:
            return SearchOptions(n=limit, min_score=min_score, collections=collections, **extra)
        except QmdError as e:
            raise ToolError(str(e)) from None

    @server.tool(title="Query", annotations=READ_ONLY)
    async def query(
        query: Annotated[str | None, Field(description=(
            "A plain query; the server's LLM expands it where the server expands by default (its GPU configs; "
            "not on the CPU). Lines starting with lex:, vec: or hyde: are typed sub-queries. Mutually "
            "exclusive with 'searches'."))] = None,
        searches: Annotated[list[SubQuery] | None, Field(max_length=MAX_SEARCHES, description=(
            "Typed sub-queries (lex/vec/hyde), best signal first; they replace the LLM's expansion. Mutually "
            "exclusive with 'query'."))] = None,
        limit: Limit = 10,
        minScore: MinScore = 0.0,  # noqa: N803 - tobi/qmd's argument names
        candidateLimit: Annotated[int | None, Field(ge=1, le=200, description=(  # noqa: N803
            f"Candidates the cross-encoder reranks (default {CANDIDATES}, chosen by eval; fewer is "
            "faster)."))] = None,
        collections: Collections = None,
        collection: Annotated[str | None, Field(description=(
            "One collection (the v1 form of 'collections')."))] = None,
        intent: Annotated[str, Field(description=(
            "What the query means, to tell apart words with several senses (e.g. 'the Triton inference "
            "server'); used by expansion and reranking, never searched on its own."))] = "",
        rerank: Annotated[bool, Field(description="Rerank with the cross-encoder (default true).")] = True,
    ) -> CallToolResult:
        """Search the notes with the full pipeline: a plain query or typed sub-queries, BM25 and vector search,
        reciprocal rank fusion, cross-encoder reranking. The best tool for most questions."""
        typed = tuple((s.type, s.query) for s in searches or ())
        text = query or ""
        if text.strip() and typed:
            return failed("Error: 'query' and 'searches' are mutually exclusive; provide only one")
        if not text.strip() and not typed:
            return failed("Error: provide either 'query' (plain text) or 'searches' (typed sub-queries)")
        scope = _scope(collections, collection)
        if isinstance(scope, str):
            return failed(scope)
        options = base_options(limit, minScore, scope, candidates=candidateLimit or CANDIDATES, rerank=rerank,
                               intent=intent, searches=typed)
        return await searched("query", text, options)

    @server.tool(title="Keyword search", annotations=READ_ONLY)
    async def search(
        query: Annotated[str, Field(description='Keywords; "a phrase" must appear as written, -word excludes.')],
        limit: Limit = 10,
        minScore: MinScore = 0.0,  # noqa: N803
        collections: Collections = None,
    ) -> CallToolResult:
        """BM25 full-text search: fast, exact words (CJK text works too)."""
        return await searched("search", query, base_options(limit, minScore, tuple(collections or ())))

    @server.tool(title="Vector search", annotations=READ_ONLY)
    async def vsearch(
        query: Annotated[str, Field(description="A natural-language question or description.")],
        limit: Limit = 10,
        minScore: MinScore = 0.0,  # noqa: N803
        collections: Collections = None,
    ) -> CallToolResult:
        """Vector (semantic) search: finds documents by meaning, not exact words."""
        return await searched("vsearch", query, base_options(limit, minScore, tuple(collections or ())))

    @server.tool(title="Get Document", annotations=READ_ONLY)
    async def get(
        file: Annotated[str, Field(description=(
            "collection/path, a path, or #docid from a search result; 'notes/a.md:120' starts at line 120, "
            "'notes/a.md:120:40' reads 40 lines from there"))],
        fromLine: Annotated[int | None, Field(ge=1, description="First line (1-based).")] = None,  # noqa: N803
        maxLines: Annotated[int | None, Field(ge=1, description="Lines to return at most.")] = None,  # noqa: N803
        lineNumbers: Annotated[bool, Field(description=(  # noqa: N803
            "Prefix each line with its number ('N: '); on by default, false for the raw text."))] = True,
    ) -> CallToolResult:
        """Read one document (or a range of its lines) by path or docid; suggests close paths when missing."""
        try:
            doc = await service.get(file, fromLine, maxLines)
        except NotFound as e:
            hint = "".join(f"\n  - {p}" for p in e.suggestions)
            return failed(f"Document not found: {file}" + (f"\n\nDid you mean one of these?{hint}" if hint else ""))
        except QmdError as e:
            return failed(f"Error: {e}")
        return CallToolResult(content=[_document(doc, lineNumbers)],
                              structured_content={k: v for k, v in doc.items() if k != "text"})

    @server.tool(title="Multi-Get Documents", annotations=READ_ONLY)
    async def multi_get(
        pattern: Annotated[str, Field(description=(
            "Globs over collection/path (notes/2025-05*.md) and/or comma-separated paths or #docids"))],
        maxLines: Annotated[int | None, Field(ge=1, description="Lines per document at most.")] = None,  # noqa: N803
        maxBytes: Annotated[int, Field(ge=1, description=(  # noqa: N803
            f"Skip documents larger than this (default {DEFAULT_MAX_BYTES}); read them with get."))
        ] = DEFAULT_MAX_BYTES,
        lineNumbers: Annotated[bool, Field(description=(  # noqa: N803
            "Prefix each line with its number ('N: '); on by default."))] = True,
    ) -> CallToolResult:
        """Read several documents at once; larger ones than maxBytes and items matching nothing are listed."""
        try:
            docs, misses = await service.multi_get_listing_misses(pattern, maxBytes, maxLines)
        except QmdError as e:
            return failed(f"Error: {e}")
        if not docs:
            return failed(f"No files matched pattern: {pattern}" + "".join(f"\n{m}" for m in misses))
        content: list[Any] = [TextContent(type="text", text="Errors:\n" + "\n".join(misses))] if misses else []
        for d in docs:
            if "skipped" in d:
                content.append(TextContent(type="text", text=(
                    f"[SKIPPED: {d['file']} - File too large ({d['size'] // 1024}KB > {maxBytes // 1024}KB). "
                    f"Read it with get, file=\"{d['file']}\".]")))
            else:
                content.append(_document(d, lineNumbers))
        listing = [{k: v for k, v in d.items() if k != "text"} for d in docs]
        return CallToolResult(content=content, structured_content={"documents": listing, "errors": misses})

    @server.tool(title="Index Status", annotations=READ_ONLY)
    async def status() -> CallToolResult:
        """The collections, documents, what still needs embedding, and whether the search server is ready."""
        text, structured = status_result(await service.status())
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)

    @server.resource(f"{URI_SCHEME}://{{collection}}/{{+path}}", name="document", title="qmd document",
                     description="A markdown document of the index, by collection and path.",
                     mime_type="text/markdown")
    async def read_document(collection: str, path: str) -> str:
        try:
            doc = await service.get(f"{collection}/{urllib.parse.unquote(path)}")
        except QmdError as e:
            raise ResourceError(str(e)) from None
        return doc["text"]

    return server


def argument_issues(e: ValidationError) -> str:
    """One line naming each bad argument, without pydantic's documentation links."""
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return ", ".join(parts)


def argument_error(tool: str, e: ValidationError) -> str:
    return f"Input validation error: Invalid arguments for tool {tool}: {argument_issues(e)}"


class DocumentServer(MCPServer):
    """An MCPServer whose resource list is the index's documents (up to ``RESOURCE_LIMIT``), read through the
    ``qmd://{collection}/{+path}`` template, and whose tools refuse arguments they do not take."""

    def __init__(self, *args: Any, service: QmdService, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = service

    async def list_resources(self) -> list[Resource]:
        docs = await self.service.documents(RESOURCE_LIMIT)
        return [Resource(uri=document_uri(d["file"]), name=d["file"], title=d["title"] or d["file"],
                         description=f"{d['docid']}, {d['size']} bytes", mime_type="text/markdown")
                for d in docs] + await super().list_resources()

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            known = set((tool.parameters or {}).get("properties", {}))
            unknown = sorted(set(arguments) - known)
            if unknown:
                return failed(f"Input validation error: Invalid arguments for tool {name}: unknown argument"
                              f"{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} (it takes "
                              f"{', '.join(sorted(known)) or 'none'})")
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            if isinstance(e.__cause__, ValidationError):
                return failed(argument_error(name, e.__cause__))
            raise


def http_app(service: QmdService, guard: Guard, host: str = "127.0.0.1") -> Any:
    """The streamable HTTP transport at ``/mcp``, tobi/qmd's ``POST /query`` (also ``/search``) and
    ``GET /health``, and ``/metrics``, behind the guard.

    The guard does what the SDK's DNS-rebinding protection would (Host and Origin), with the bearer token,
    answering a refusal as a JSON-RPC error an MCP client can show; the SDK's own check is off.
    """
    server = build_server(service)
    started = time.monotonic()

    @server.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> Response:
        ready = await service.ready()
        return JSONResponse({"status": "ok", "uptime": int(time.monotonic() - started), "version": __version__,
                             "triton": service.url, "triton_ready": ready})

    @server.custom_route("/query", methods=["POST"])
    async def rest_query(request: Request) -> Response:
        return await _rest_query(service, request)

    @server.custom_route("/search", methods=["POST"])
    async def rest_search(request: Request) -> Response:
        return await _rest_query(service, request)

    @server.custom_route("/metrics", methods=["GET"])
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(http.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, host=host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    return GuardMiddleware(_Closing(app, service), guard, door="mcp", routes=(MCP_PATH, "/query", "/search"),
                           refusal=jsonrpc_error_body)


REST_FIELDS = {"searches", "collections", "limit", "minScore", "candidateLimit", "intent", "rerank"}


async def _rest_query(service: QmdService, request: Request) -> Response:
    """tobi/qmd's REST search beside ``/mcp``: ``{"searches": [{type, query}], "collections", "limit",
    "minScore", "candidateLimit", "intent", "rerank"}`` -> ``{"results": [hit]}`` with ``file`` as a
    ``qmd://`` URI. A plain ``query`` is a ``lex`` plus a ``vec`` search of its text."""
    def bad(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as e:
        return bad(f"the body is not valid JSON: {e}")
    if not isinstance(body, dict):
        return bad("the body must be a JSON object")
    if isinstance(body.get("query"), str) and "searches" not in body:
        body = {**body, "searches": [{"type": "lex", "query": body["query"]}, {"type": "vec", "query": body["query"]}]}
        body.pop("query")
    unknown = sorted(set(body) - REST_FIELDS)
    if unknown:
        return bad(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (it takes "
                   f"{', '.join(sorted(REST_FIELDS))})")
    searches = body.get("searches")
    if not isinstance(searches, list) or not searches:
        return bad("Missing required field: searches (array)")
    try:
        typed = tuple((q.type, q.query) for q in (SubQuery.model_validate(s) for s in searches))
        options = SearchOptions(n=int(body.get("limit", 10)), min_score=float(body.get("minScore", 0.0)),
                                collections=tuple(body.get("collections") or ()),
                                candidates=int(body.get("candidateLimit") or CANDIDATES),
                                intent=str(body.get("intent", "")), rerank=bool(body.get("rerank", True)),
                                searches=typed)
        await service.ensure_server()
        hits = await service.search("query", "", options)
    except ValidationError as e:
        return bad(argument_issues(e))
    except (QmdError, TypeError, ValueError) as e:
        return bad(str(e).splitlines()[0], http.status_of(e) if isinstance(e, QmdError) else 400)
    return JSONResponse({"results": [{**mcp_hit(h), "file": document_uri(h.file)} for h in hits]})


class _Closing:
    """Closes the service's Triton client when the HTTP app shuts down (sessions share one client)."""

    def __init__(self, app: Any, service: QmdService) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: dict) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.service.aclose()
            await send(message)

        await self.app(scope, receive, closing_send)


async def serve_stdio(service: QmdService) -> None:
    """Answers one MCP client on stdin/stdout until it disconnects."""
    try:
        await build_server(service).run_stdio_async()
    finally:
        await service.aclose()
