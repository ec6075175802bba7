"""`qmdctl mcp` with the official MCP SDK's own client, over stdio and streamable HTTP: every tool answers, the
documents are resources, and a wrong token, Origin or Host is refused."""

from __future__ import annotations

import asyncio
import shutil
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
    return out


def check(out: dict) -> None:
    assert out["tools"] == TOOLS
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
    assert out["get_missing"].is_error and "not in the index" in out["get_missing"].content[0].text
    got = sorted(str(c.resource.uri) for c in out["multi_get"].content)
    assert got == [f"qmd://{COLLECTION}/guide/batching.md", f"qmd://{COLLECTION}/guide/operations.md"]
    status = out["status"].structured_content
    assert status["triton"]["ready"] and status["index"]["collections"][COLLECTION]["documents"] == 4
    assert f"qmd://{COLLECTION}/zh/%E5%90%91%E9%87%8F%E6%A3%80%E7%B4%A2.md" in out["resources"]
    assert out["templates"] == ["qmd://{collection}/{+path}"]
    assert out["read"].contents[0].text.startswith("# Sourdough bread")


def test_stdio_session_lists_the_tools_and_gets_results_from_each(indexed: Settings):
    params = StdioServerParameters(command=QMDCTL, args=["mcp"], env=door_env(indexed))

    async def run() -> dict:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
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
    assert r.status_code == status and r.json()["error"]["code"] == status


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
    assert any(type(e).__name__ == "MCPError" and "error response" in str(e) for e in leaves(refused.value))


def test_health_and_metrics_answer_without_a_token(mcp_http: str):
    assert httpx.get(f"{mcp_http}/health").json()["status"] == "ok"
    assert 'qmd_http_requests_total{door="mcp"' in httpx.get(f"{mcp_http}/metrics").text


def test_mcp_http_refuses_to_start_beyond_loopback_without_a_token(indexed: Settings, tmp_path: Path):
    import subprocess

    r = subprocess.run([QMDCTL, "mcp", "--http", "--host", "0.0.0.0", "--port", "9"], env=door_env(indexed),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("Error: refusing to serve on 0.0.0.0:9 without a token: "
                                                        "set QMD_API_TOKEN")


def test_stdio_server_starts_the_local_triton_when_none_answers(exported_repo: Path, tmp_path: Path):
    from qmd_triton.serving import server

    from ..conftest import make_settings

    settings = make_settings(tmp_path / "home", exported_repo)
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    qmd(settings, "collection", "add", str(notes), "--name", "fresh")
    qmd(settings, "update")
    assert not server.status(settings).live
    params = StdioServerParameters(command=QMDCTL, args=["mcp"], env=door_env(settings))

    async def run():
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await session.call_tool("search", {"query": "sourdough", "limit": 1})

    try:
        result = asyncio.run(run())
        assert not result.is_error, result.content
        assert result.structured_content["results"][0]["file"] == "fresh/recipes.md"
        assert server.status(settings).managed  # started by the MCP server, recorded in this home
    finally:
        if server.read_state(settings) is not None:
            server.stop(settings)
