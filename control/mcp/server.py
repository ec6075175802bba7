"""The MCP server (``qmdctl mcp``): qmd's search and documents as tools and resources for agents, on the official
``mcp`` SDK, over stdio or streamable HTTP.

Tools (the shapes of tobi/qmd's MCP server, so an agent configured for one can use the other):

- ``query``: typed sub-queries ``searches`` (``lex``/``vec``/``hyde``) and/or a plain ``query``, ``intent``,
  ``limit``, ``minScore``, ``candidateLimit``, ``collections``, ``rerank`` -> ranked hits (hybrid pipeline)
- ``search`` (BM25), ``vsearch`` (vectors): ``query``, ``limit``, ``minScore``, ``collections`` -> ranked hits
- ``get``: ``file`` (path, collection/path or #docid; ``file.md:120`` starts at line 120), ``fromLine``,
  ``maxLines``, ``lineNumbers`` -> the document as an embedded resource
- ``multi_get``: ``pattern`` (globs, comma-separated references), ``maxLines``, ``maxBytes``, ``lineNumbers``
  -> documents as embedded resources (larger ones listed as skipped)
- ``status`` -> the collections, the index counts and whether the search server is ready

Search results come twice, as MCP recommends: a short text summary (one line per hit) and
``structuredContent: {"results": [hit, ...]}``. Documents are also resources, ``qmd://COLLECTION/PATH``
(listed from the index; read with the template ``qmd://{collection}/{+path}``). Every call goes through
:class:`~qmd_triton.serving.service.QmdService`, which starts the local Triton server when none answers.

Example:
    >>> server = build_server(QmdService(Settings.load()))
    >>> server.run("stdio")
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, EmbeddedResource, Resource, TextContent, TextResourceContents, ToolAnnotations
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from qmd_triton import __version__
from qmd_triton.errors import QmdError
from qmd_triton.search.options import CANDIDATES, MAX_RESULTS, MAX_SEARCHES, Hit, SearchOptions
from qmd_triton.serving import http
from qmd_triton.serving.http import Guard, GuardMiddleware
from qmd_triton.serving.service import QmdService, hits_json

URI_SCHEME = "qmd"
MCP_PATH = "/mcp"
DEFAULT_HTTP_PORT = 8181
RESOURCE_LIMIT = 1000  # documents listed as resources; the template reads any of them
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)


class SubQuery(BaseModel):
    """One typed sub-query of the ``query`` tool."""

    type: Annotated[str, Field(pattern="^(lex|vec|hyde)$", description=(
        "lex: BM25 keywords (\"a phrase\" and -word allowed); vec: a natural-language question for vector "
        "search; hyde: a short hypothetical answer passage, embedded"))]
    query: Annotated[str, Field(min_length=1, description="The text of this sub-query.")]


Limit = Annotated[int, Field(ge=1, le=MAX_RESULTS, description="Results to return (default 10).")]
MinScore = Annotated[float, Field(ge=0, le=1, description="Drop results scoring below this (0-1).")]
Collections = Annotated[list[str] | None, Field(description="Search only these collections.")]


def document_uri(file: str) -> str:
    """``qmd://collection/path`` with each path segment percent-encoded (slashes kept)."""
    return f"{URI_SCHEME}://" + "/".join(urllib.parse.quote(part) for part in file.split("/"))


def summary(hits: list[Hit], query: str) -> str:
    """One line per hit, what an agent reads before deciding what to ``get``."""
    if not hits:
        return f'No results for "{query}"'
    lines = [f'{len(hits)} result{"s" if len(hits) != 1 else ""} for "{query}":']
    lines += [f"{h.to_dict()['docid']} {h.score:.0%} {h.file}:{h.line} - {h.title}" for h in hits]
    return "\n".join(lines)


def numbered(text: str, first: int) -> str:
    return "".join(f"{first + i}: {line}\n" for i, line in enumerate(text.splitlines()))


def _document(doc: dict[str, Any], line_numbers: bool) -> EmbeddedResource:
    text = numbered(doc["text"], doc["from"]) if line_numbers else doc["text"]
    if doc.get("context"):
        text = f"<!-- Context: {doc['context']} -->\n\n{text}"
    return EmbeddedResource(type="resource", resource=TextResourceContents(
        uri=document_uri(doc["file"]), text=text, mime_type="text/markdown"))


def build_server(service: QmdService) -> MCPServer:
    """An MCPServer with qmd's tools and document resources, every call served by ``service``."""
    server = DocumentServer(
        "qmd", version=__version__, service=service, log_level="WARNING",
        instructions=(
            "qmd searches the user's markdown notes and docs. Use `query` for the best results: typed "
            "sub-queries (lex for exact terms, vec for questions, hyde for a hypothetical answer), the first "
            "weighted most, with an `intent` saying what the words mean here. `search` is keyword-only and "
            "fast, `vsearch` by meaning. Then read documents with `get` (path or #docid from a result, "
            "`file.md:120` starts at line 120) or several with `multi_get`. `status` lists the collections."))

    async def searched(mode: str, query: str, options: SearchOptions) -> CallToolResult:
        try:
            await service.ensure_server()
            hits = await service.search(mode, query, options)
        except QmdError as e:
            raise ToolError(str(e).splitlines()[0]) from None
        shown = query or "; ".join(q for _, q in options.searches)
        return CallToolResult(content=[TextContent(type="text", text=summary(hits, shown))],
                              structured_content={"results": hits_json(hits)})

    def base_options(limit: int, min_score: float, collections: list[str] | None, **extra: Any) -> SearchOptions:
        try:
            return SearchOptions(n=limit, min_score=min_score, collections=tuple(collections or ()), **extra)
        except QmdError as e:
            raise ToolError(str(e)) from None

    @server.tool(title="Query", annotations=READ_ONLY)
    async def query(
        searches: Annotated[list[SubQuery] | None, Field(max_length=MAX_SEARCHES, description=(
            "Typed sub-queries (lex/vec/hyde), best signal first; they replace the LLM's expansion."))] = None,
        query: Annotated[str, Field(description=(
            "A plain query, expanded by the server's LLM when no searches are given and the server expands by default "
            "(its GPU configs; not on the CPU); may also hold lines "
            "starting with lex:, vec: or hyde:."))] = "",
        intent: Annotated[str, Field(description=(
            "What the query means, to tell apart words with several senses (e.g. 'the Triton inference "
            "server'); used by expansion and reranking, never searched on its own."))] = "",
        limit: Limit = 10,
        minScore: MinScore = 0.0,  # noqa: N803 - tobi/qmd's argument names
        candidateLimit: Annotated[int, Field(ge=1, le=200, description=(  # noqa: N803
            f"Candidates the cross-encoder reranks (default {CANDIDATES}; fewer is faster)."))] = CANDIDATES,
        collections: Collections = None,
        rerank: Annotated[bool, Field(description="Rerank with the cross-encoder (default true).")] = True,
    ) -> CallToolResult:
        """Search the notes with the full pipeline: typed sub-queries or LLM expansion, BM25 and vector search,
        reciprocal rank fusion, cross-encoder reranking. The best tool for most questions."""
        typed = tuple((s.type, s.query) for s in searches or ())
        if not query.strip() and not typed:
            raise ToolError("give searches (typed sub-queries) or a query")
        options = base_options(limit, minScore, collections, candidates=candidateLimit, rerank=rerank,
                               intent=intent, searches=typed)
        return await searched("query", query, options)

    @server.tool(title="Keyword search", annotations=READ_ONLY)
    async def search(
        query: Annotated[str, Field(description='Keywords; "a phrase" must appear as written, -word excludes.')],
        limit: Limit = 10,
        minScore: MinScore = 0.0,  # noqa: N803
        collections: Collections = None,
    ) -> CallToolResult:
        """BM25 full-text search: fast, exact words (CJK text works too)."""
        return await searched("search", query, base_options(limit, minScore, collections))

    @server.tool(title="Vector search", annotations=READ_ONLY)
    async def vsearch(
        query: Annotated[str, Field(description="A natural-language question or description.")],
        limit: Limit = 10,
        minScore: MinScore = 0.0,  # noqa: N803
        collections: Collections = None,
    ) -> CallToolResult:
        """Vector (semantic) search: finds documents by meaning, not exact words."""
        return await searched("vsearch", query, base_options(limit, minScore, collections))

    @server.tool(title="Get document", annotations=READ_ONLY)
    async def get(
        file: Annotated[str, Field(description=(
            "collection/path, a path, or #docid from a search result; 'notes/a.md:120' starts at line 120"))],
        fromLine: Annotated[int | None, Field(ge=1, description="First line (1-based).")] = None,  # noqa: N803
        maxLines: Annotated[int | None, Field(ge=1, description="Lines to return at most.")] = None,  # noqa: N803
        lineNumbers: Annotated[bool, Field(description="Prefix each line with its number.")] = False,  # noqa: N803
    ) -> CallToolResult:
        """Read one document (or a range of its lines) by path or docid; suggests close paths when missing."""
        try:
            doc = await service.get(file, fromLine, maxLines)
        except QmdError as e:
            raise ToolError(str(e)) from None
        return CallToolResult(content=[_document(doc, lineNumbers)],
                              structured_content={k: v for k, v in doc.items() if k != "text"})

    @server.tool(title="Get documents", annotations=READ_ONLY)
    async def multi_get(
        pattern: Annotated[str, Field(description=(
            "Globs over collection/path (notes/2025-05*.md) and/or comma-separated paths or #docids"))],
        maxLines: Annotated[int | None, Field(ge=1, description="Lines per document at most.")] = None,  # noqa: N803
        maxBytes: Annotated[int, Field(ge=1, description="Skip documents larger than this.")] = 10240,  # noqa: N803
        lineNumbers: Annotated[bool, Field(description="Prefix each line with its number.")] = False,  # noqa: N803
    ) -> CallToolResult:
        """Read several documents at once; documents larger than maxBytes are listed as skipped (use `get`)."""
        try:
            docs = await service.multi_get(pattern, maxBytes, maxLines)
        except QmdError as e:
            raise ToolError(str(e)) from None
        content: list[Any] = []
        for d in docs:
            if "skipped" in d:
                content.append(TextContent(type="text", text=f"[skipped {d['file']} ({d['docid']}): {d['skipped']} "
                                                             f"> maxBytes {maxBytes}; read it with get]"))
            else:
                content.append(_document(d, lineNumbers))
        listing = [{k: v for k, v in d.items() if k != "text"} for d in docs]
        return CallToolResult(content=content, structured_content={"documents": listing})

    @server.tool(title="Index status", annotations=READ_ONLY)
    async def status() -> CallToolResult:
        """The collections, documents, chunks and share embedded, and whether the search server is ready."""
        st = await service.status()
        index = st["index"] or {}
        lines = [f"qmd {st['version']}: search server {'ready' if st['triton']['ready'] else 'not ready'} "
                 f"at {st['triton']['url']}",
                 f"{index.get('documents', 0)} documents, {index.get('chunks', 0)} chunks, "
                 f"{index.get('embedded_share', 0):.0%} embedded"]
        for name, c in sorted((index.get("collections") or {}).items()):
            lines.append(f"  {name}: {c['documents']} documents ({c.get('path') or '?'})")
        return CallToolResult(content=[TextContent(type="text", text="\n".join(lines))], structured_content=st)

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


class DocumentServer(MCPServer):
    """An MCPServer whose resource list is the index's documents (up to ``RESOURCE_LIMIT``), read through the
    ``qmd://{collection}/{+path}`` template."""

    def __init__(self, *args: Any, service: QmdService, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = service

    async def list_resources(self) -> list[Resource]:
        docs = await self.service.documents(RESOURCE_LIMIT)
        return [Resource(uri=document_uri(d["file"]), name=d["file"], title=d["title"] or d["file"],
                         description=f"{d['docid']}, {d['size']} bytes", mime_type="text/markdown")
                for d in docs] + await super().list_resources()



def http_app(service: QmdService, guard: Guard, host: str = "127.0.0.1") -> Any:
    """The streamable HTTP transport at ``/mcp`` plus ``/health`` and ``/metrics``, behind the guard.

    The guard does what the SDK's DNS-rebinding protection would (Host and Origin), with the bearer token and
    the same 403/401 JSON answers as the gateway, so the SDK's own check is off.
    """
    server = build_server(service)

    @server.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> Response:
        ready = await service.ready()
        return JSONResponse({"status": "ok", "version": __version__, "triton": service.url, "triton_ready": ready})

    @server.custom_route("/metrics", methods=["GET"])
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(http.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, host=host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    return GuardMiddleware(_Closing(app, service), guard, door="mcp", routes=(MCP_PATH,))


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
