"""`qmdctl mcp` with the official MCP SDK's own client, over stdio and streamable HTTP: every tool answers, the
documents are resources, and a wrong token, Origin or Host is refused. tobi/qmd's tool calls (v2.8.3: its
arguments, defaults, result shapes and errors) are replayed verbatim on both transports, through the agent
config written for it with only the command swapped."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from qmd_triton.settings import Settings

from ..conftest import ASSETS
from ..doors import QMDCTL, TOKEN, Door, door_env, sample_notes_indexed
from .test_search import qmd

COLLECTION = "mcpnotes"
TOOLS = {"query", "search", "vsearch", "get", "multi_get", "status"}


@pytest.fixture(scope="module")
def indexed(triton: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    with sample_notes_indexed(triton, tmp_path_factory.mktemp("mcp") / "notes", COLLECTION) as settings:
        yield settings


async def exercise(session: ClientSession) -> dict:
    """Lists the tools and calls each one; returns what each answered."""
    await session.initialize()
    out: dict = {"tools": {t.name for t in (await session.list_tools()).tools}}
    only = [COLLECTION]
    out["query"] = await session.call_tool("query", {
        "searches": [{"type": "lex", "query": "sourdough"}, {"type": "vec", "query": "how do I bake bread"}],
        "intent": "baking bread at home", "collections": only, "limit": 2})
    out["query_plain"] = await session.call_tool("query", {
        "query": "how are concurrent inference requests merged", "collections": only, "limit": 2, "rerank": False})
    out["search"] = await session.call_tool("search", {"query": "batching", "collections": only})
    out["vsearch"] = await session.call_tool("vsearch", {"query": "how are concurrent inference calls grouped "
                                                                  "together", "collections": only, "limit": 3})
    docid = out["search"].structured_content["results"][0]["docid"]
    out["get"] = await session.call_tool("get", {"file": f"{COLLECTION}/recipes.md:3", "maxLines": 2,
                                                 "lineNumbers": True})
    out["get_docid"] = await session.call_tool("get", {"file": docid})
    out["get_missing"] = await session.call_tool("get", {"file": f"{COLLECTION}/nope.md"})
    out["multi_get"] = await session.call_tool("multi_get", {"pattern": f"{COLLECTION}/guide/*.md"})
    out["status"] = await session.call_tool("status", {})
    out["resources"] = [str(r.uri) for r in (await session.list_resources()).resources]
    out["templates"] = [t.uri_template for t in (await session.list_resource_templates()).resource_templates]
    out["read"] = await session.read_resource(f"qmd://{COLLECTION}/recipes.md")
    out["tobi"] = await tobi_calls(session)
    return out


async def tobi_calls(session: ClientSession) -> dict:
    """tobi/qmd's own tool calls, as an agent configured for it sends them."""
    calls = {
        "query": ("query", {"query": "how are concurrent inference requests merged", "limit": 3}),
        "searches": ("query", {"searches": [{"type": "lex", "query": "sourdough"},
                                            {"type": "vec", "query": "how do I bake bread"}],
                               "collections": [COLLECTION], "limit": 2, "minScore": 0, "rerank": True}),
        "both": ("query", {"query": "bread", "searches": [{"type": "lex", "query": "bread"}]}),
        "neither": ("query", {}),
        "v1_collection": ("query", {"query": "sourdough bread", "collection": COLLECTION, "limit": 5}),
        "v1_disagrees": ("query", {"query": "bread", "collection": COLLECTION, "collections": ["other"]}),
        "unknown_arg": ("query", {"query": "bread", "topK": 3}),
        "wrong_type": ("query", {"query": "bread", "limit": "three"}),
        "get": ("get", {"file": f"{COLLECTION}/recipes.md"}),
        "get_range": ("get", {"file": f"{COLLECTION}/recipes.md:3:2"}),
        "get_raw": ("get", {"file": f"{COLLECTION}/recipes.md", "lineNumbers": False}),
        "get_missing": ("get", {"file": f"{COLLECTION}/recipe.md"}),
        "multi_get": ("multi_get", {"pattern": f"{COLLECTION}/guide/*.md,{COLLECTION}/nope.md", "maxLines": 2}),
        "multi_get_none": ("multi_get", {"pattern": f"{COLLECTION}/nothing/*.md"}),
        "status": ("status", {}),
    }
    return {name: await session.call_tool(tool, args) for name, (tool, args) in calls.items()}


def check_tobi(out: dict) -> None:
    """Every result in the shape tobi/qmd documents."""
    for name in ("query", "searches", "v1_collection", "get", "get_range", "get_raw", "multi_get", "status"):
        assert not out[name].is_error, (name, out[name].content)
    hits = out["query"].structured_content["results"]
    assert hits and hits[0]["file"].endswith("guide/batching.md")
    for hit in hits + out["searches"].structured_content["results"]:
        assert {"docid", "file", "title", "score", "context", "line", "snippet"} <= set(hit)
        assert hit["context"] is None and hit["docid"].startswith("#") and round(hit["score"], 2) == hit["score"]
        lines = hit["snippet"].split("\n")
        assert lines[0] == f"{hit['line']}: @@ -{hit['line']},{len(lines) - 1} @@"
        assert all(ln.startswith(f"{hit['line'] + i}: ") for i, ln in enumerate(lines[1:]))
    assert out["searches"].structured_content["results"][0]["file"] == f"{COLLECTION}/recipes.md"
    assert out["query"].content[0].text.startswith('Found 3 results for "how are concurrent inference requests')
    assert {h["file"].split("/")[0] for h in out["v1_collection"].structured_content["results"]} == {COLLECTION}
    texts = {name: out[name].content[0].text for name in out if out[name].is_error}
    assert texts.pop("get_missing").startswith(f"Document not found: {COLLECTION}/recipe.md\n\nDid you mean one of "
                                               f"these?\n  - {COLLECTION}/recipes.md")
    assert texts == {
        "both": "Error: 'query' and 'searches' are mutually exclusive; provide only one",
        "neither": "Error: provide either 'query' (plain text) or 'searches' (typed sub-queries)",
        "v1_disagrees": f"Error: 'collection' ('{COLLECTION}') and 'collections' (['other']) disagree; give only "
                        "'collections'",
        "unknown_arg": "Input validation error: Invalid arguments for tool query: unknown argument 'topK' (it takes "
                       "candidateLimit, collection, collections, intent, limit, minScore, query, rerank, searches)",
        "wrong_type": "Input validation error: Invalid arguments for tool query: limit: Input should be a valid "
                      "integer, unable to parse string as an integer",
        "multi_get_none": f"No files matched pattern: {COLLECTION}/nothing/*.md\nno indexed document matches "
                          f"'{COLLECTION}/nothing/*.md'",
    }
    got = out["get"].content[0].resource
    assert got.text.startswith("1: # Sourdough bread\n2: ") and str(got.uri) == f"qmd://{COLLECTION}/recipes.md"
    assert out["get_range"].content[0].resource.text.splitlines() == [
        "3: Feed the starter the night before. Mix flour, water and salt, then fold the dough",
        "4: every half hour for two hours."]
    assert out["get_raw"].content[0].resource.text.startswith("# Sourdough bread\n")
    errors, *docs = out["multi_get"].content
    assert errors.text.startswith("Errors:\n") and f"{COLLECTION}/nope.md" in errors.text
    assert [str(d.resource.uri) for d in docs] == [f"qmd://{COLLECTION}/guide/batching.md",
                                                   f"qmd://{COLLECTION}/guide/operations.md"]
    first = docs[0].resource.text.splitlines()
    assert first[0].startswith("1: ") and first[-1].startswith("4: [... truncated ") and len(first) == 4
    status = out["status"].structured_content
    assert {"totalDocuments", "needsEmbedding", "hasVectorIndex", "collections"} <= set(status)
    assert status["hasVectorIndex"] is True and status["needsEmbedding"] == 0
    mine = next(c for c in status["collections"] if c["name"] == COLLECTION)
    assert set(mine) == {"name", "path", "pattern", "documents", "lastUpdated"} and mine["documents"] == 4
    assert mine["pattern"] == "**/*.md" and mine["lastUpdated"].endswith("Z")
    assert out["status"].content[0].text.startswith("QMD Index Status:\n  Total documents: ")


def check(out: dict) -> None:
    assert out["tools"] == TOOLS
    check_tobi(out["tobi"])
    for name in ("query", "query_plain", "search", "vsearch", "get", "get_docid", "multi_get", "status"):
        assert not out[name].is_error, (name, out[name].content)
    assert out["query"].structured_content["results"][0]["file"] == f"{COLLECTION}/recipes.md"
    assert "recipes.md" in out["query"].content[0].text
    assert out["query_plain"].structured_content["results"][0]["file"] == f"{COLLECTION}/guide/batching.md"
    assert out["search"].structured_content["results"][0]["file"] == f"{COLLECTION}/guide/batching.md"
    assert out["vsearch"].structured_content["results"][0]["file"] == f"{COLLECTION}/guide/batching.md"
    resource = out["get"].content[0].resource
    assert str(resource.uri) == f"qmd://{COLLECTION}/recipes.md" and resource.text.startswith("3: ")
    assert len(resource.text.splitlines()) == 2
    assert out["get_docid"].structured_content["file"] == f"{COLLECTION}/guide/batching.md"
    assert out["get_missing"].is_error and "Document not found: " in out["get_missing"].content[0].text
    got = sorted(str(c.resource.uri) for c in out["multi_get"].content)
    assert got == [f"qmd://{COLLECTION}/guide/batching.md", f"qmd://{COLLECTION}/guide/operations.md"]
    status = out["status"].structured_content
    assert status["triton"]["ready"] and status["index"]["collections"][COLLECTION]["documents"] == 4
    assert f"qmd://{COLLECTION}/zh/%E5%90%91%E9%87%8F%E6%A3%80%E7%B4%A2.md" in out["resources"]
    assert out["templates"] == ["qmd://{collection}/{+path}"]
    assert out["read"].contents[0].text.startswith("# Sourdough bread")


def test_stdio_session_lists_the_tools_and_gets_results_from_each(indexed: Settings):
    agent = {"mcpServers": {"qmd": {"command": "qmd", "args": ["mcp"]}}}  # tobi/qmd's documented config
    config = {**agent["mcpServers"]["qmd"], "command": QMDCTL}  # ... with only the command swapped
    params = StdioServerParameters(command=config["command"], args=config["args"], env=door_env(indexed))

    async def run() -> dict:
        async with stdio_client(params, errlog=sys.__stderr__) as (read, write), ClientSession(read, write) as session:
            return await exercise(session)

    check(asyncio.run(run()))


async def over_http(url: str, token: str | None, **headers: str) -> dict:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(headers=headers, timeout=120) as client:
        async with streamable_http_client(f"{url}/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                return await exercise(session)


@pytest.fixture(scope="module")
def mcp_http(indexed: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`qmdctl mcp --http` with a token, on a free loopback port."""
    log = tmp_path_factory.mktemp("mcp-log") / "mcp.log"
    with Door(["mcp", "--http"], door_env(indexed, QMD_API_TOKEN=TOKEN), log) as door:
        yield door.url


def test_http_session_lists_the_tools_and_gets_results_from_each(mcp_http: str):
    check(asyncio.run(over_http(mcp_http, TOKEN)))


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer not-the-token-at-all"}, 401),
    ({"Authorization": f"Bearer {TOKEN}", "Origin": "https://evil.example"}, 403),
    ({"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"}, 403),
], ids=["no-token", "wrong-token", "wrong-origin", "wrong-host"])
def test_http_refuses_a_wrong_token_origin_or_host(mcp_http: str, headers: dict, status: int):
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    r = httpx.post(f"{mcp_http}/mcp", json=initialize, headers={"Accept": "application/json, text/event-stream",
                                                                  **headers})
    assert r.status_code == status
    body = r.json()  # a JSON-RPC error an MCP client can show
    assert body["jsonrpc"] == "2.0" and body["id"] is None
    assert body["error"]["code"] == {401: -32001, 403: -32003}[status]
    assert body["error"]["message"].startswith({401: "Unauthorized: ", 403: "Forbidden: "}[status])


@pytest.mark.parametrize("token, headers", [(None, {}), ("not-the-token-at-all", {}),
                                            (TOKEN, {"Origin": "https://evil.example"})],
                         ids=["no-token", "wrong-token", "wrong-origin"])
def test_the_sdk_client_cannot_open_a_session_without_the_right_token_and_origin(mcp_http: str, token, headers):
    def leaves(e: BaseException):
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                yield from leaves(inner)
        else:
            yield e

    with pytest.raises(BaseException) as refused:  # noqa: B017 - the SDK raises its error inside task groups
        asyncio.run(asyncio.wait_for(over_http(mcp_http, token, **headers), timeout=60))
    why = "Forbidden: Origin" if headers else "Unauthorized: "
    assert any(type(e).__name__ == "MCPError" and why in str(e) for e in leaves(refused.value)), refused.value


def test_health_and_metrics_answer_without_a_token(mcp_http: str):
    health = httpx.get(f"{mcp_http}/health").json()
    assert health["status"] == "ok" and isinstance(health["uptime"], int)  # tobi/qmd's shape
    assert 'qmd_http_requests_total{door="mcp"' in httpx.get(f"{mcp_http}/metrics").text


def test_rest_query_beside_mcp_answers_tobi_qmds_body(mcp_http: str):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"searches": [{"type": "lex", "query": "batching"}, {"type": "vec", "query": "how are requests merged"}],
            "collections": [COLLECTION], "limit": 2}
    r = httpx.post(f"{mcp_http}/query", json=body, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert hits[0]["file"] == f"qmd://{COLLECTION}/guide/batching.md" and hits[0]["context"] is None
    assert httpx.post(f"{mcp_http}/search", json=body, headers=auth, timeout=120).json()["results"] == hits
    missing = httpx.post(f"{mcp_http}/query", json={"limit": 2}, headers=auth)
    assert missing.status_code == 400 and missing.json() == {"error": "Missing required field: searches (array)"}
    odd = httpx.post(f"{mcp_http}/query", json={**body, "top_k": 2}, headers=auth)
    assert odd.status_code == 400 and odd.json()["error"].startswith("unknown field top_k")
    assert httpx.post(f"{mcp_http}/query", json=body).status_code == 401


def test_mcp_http_daemon_starts_in_the_background_and_stop_stops_it(indexed: Settings, tmp_path: Path):
    import subprocess

    from qmd_triton.serving import daemon
    from qmd_triton.system.net import free_ports

    port = free_ports(1)[0]
    env = door_env(indexed, QMD_HOST="127.0.0.1")  # tobi/qmd's variable for the address
    started = subprocess.run([QMDCTL, "mcp", "--http", "--daemon", "--port", str(port)], env=env,
                             capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith(f"qmd MCP server on http://127.0.0.1:{port}/mcp (pid ")
        owned = daemon.detached_state(indexed, "mcp")
        assert owned is not None
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
        again = subprocess.run([QMDCTL, "mcp", "--http", "--daemon", "--port", str(port)], env=env,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and again.stderr.strip().splitlines()[-1] == (
            f"Error: port {port} on 127.0.0.1 is already in use; pick another with --port")
        assert "qmd MCP server on" not in again.stderr + again.stdout  # no banner before the error
    finally:
        stopped = subprocess.run([QMDCTL, "mcp", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and f"stopped the mcp server (pid {owned.pid})" in stopped.stderr
    assert daemon.detached_state(indexed, "mcp") is None
    none = subprocess.run([QMDCTL, "mcp", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 0 and "no MCP server started with --daemon runs" in none.stderr


def test_mcp_http_refuses_to_start_beyond_loopback_without_a_token(indexed: Settings, tmp_path: Path):
    import subprocess

    r = subprocess.run([QMDCTL, "mcp", "--http", "--host", "0.0.0.0", "--port", "9"], env=door_env(indexed),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("Error: refusing to serve on 0.0.0.0:9 without a token: "
                                                        "set QMD_API_TOKEN")


def test_stdio_server_starts_the_local_triton_when_none_answers(exported_repo: Path, tmp_path: Path):
    from qmd_triton.serving import probes, server

    from ..conftest import make_settings

    settings = make_settings(tmp_path / "home", exported_repo)
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    qmd(settings, "collection", "add", str(notes), "--name", "fresh")
    qmd(settings, "update")
    assert not probes.status(settings).live
    params = StdioServerParameters(command=QMDCTL, args=["mcp"], env=door_env(settings))

    async def run():
        async with stdio_client(params, errlog=sys.__stderr__) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await session.call_tool("search", {"query": "sourdough", "limit": 1})

    try:
        result = asyncio.run(run())
        assert not result.is_error, result.content
        assert result.structured_content["results"][0]["file"] == "fresh/recipes.md"
        assert probes.status(settings).managed  # started by the MCP server, recorded in this home
    finally:
        if server.read_state(settings) is not None:
            server.stop(settings)
