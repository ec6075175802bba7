"""The client examples in docs/clients.md and the README run as written against a live server, gateway and MCP
server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from qmd_triton.settings import PROJECT_ROOT, Settings

from ..conftest import need_tool
from ..doors import Door, door_env
from .test_query import indexed  # noqa: F401 - the notes index the examples search

DOC = (PROJECT_ROOT / "docs" / "clients.md").read_text()
README = (PROJECT_ROOT / "README.md").read_text()


def blocks(lang: str, text: str = DOC) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def block_with(lang: str, needle: str, text: str = DOC) -> str:
    [found] = [b for b in blocks(lang, text) if needle in b]
    return found


@pytest.fixture(scope="module")
def doors(indexed: Settings, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """`qmdctl api` and `qmdctl mcp --http` on free loopback ports, standing in for 18765 and 8181."""
    log = tmp_path_factory.mktemp("doors")
    with Door(["api"], door_env(indexed), log / "api.log") as api, \
            Door(["mcp", "--http"], door_env(indexed), log / "mcp.log") as mcp:
        yield {"api": api.port, "mcp": mcp.port}


def localize(code: str, settings: Settings, doors: dict | None = None) -> str:
    code = (code.replace("127.0.0.1:8000", settings.http_url).replace("127.0.0.1:8001", settings.grpc_url)
            .replace("localhost:8000", settings.http_url))
    if doors:
        code = (code.replace("127.0.0.1:18765", f"127.0.0.1:{doors['api']}")
                .replace("localhost:18765", f"127.0.0.1:{doors['api']}")
                .replace("127.0.0.1:8181", f"127.0.0.1:{doors['mcp']}")
                .replace("localhost:8181", f"127.0.0.1:{doors['mcp']}"))
    return code


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example_runs(indexed: Settings, doors: dict, index: int, capsys):  # noqa: F811
    scope: dict = {}
    code = localize(blocks("python")[index], indexed, doors)
    exec(compile(code, f"clients.md[python {index}]", "exec"), scope)
    if "hits" in scope:
        assert isinstance(scope["hits"], list) and scope["hits"]
    if "vectors" in scope:
        assert scope["vectors"].shape == (2, 384)
    if "embeddings" in scope or "embedded" in scope:
        assert [len(v) for v in scope.get("embeddings") or scope["embedded"]] == [384, 384]
    if "scores" in scope:
        assert scope["scores"].shape == (2,) and scope["scores"][0] > 0.5 > scope["scores"][1]
    if "hits" in scope and "api" in scope:
        assert ".md:" in capsys.readouterr().out


def test_curl_example_runs(indexed: Settings):  # noqa: F811
    need_tool("curl", "apt-get install curl")
    script = localize(block_with("bash", "/v2/models/qmd_query/infer"), indexed)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    hits = json.loads(out)
    assert hits and all("explain" in h for h in hits)


def test_gateway_curl_examples_run(indexed: Settings, doors: dict):  # noqa: F811
    need_tool("curl", "apt-get install curl")
    commands = localize(block_with("bash", "localhost:18765/vsearch"), indexed, doors).strip().splitlines()
    out = [subprocess.run(["bash", "-c", c], capture_output=True, text=True, timeout=120, check=True).stdout
           for c in commands]
    assert json.loads(out[0])["results"]
    assert out[1].startswith('{"embeddings":[[')
    assert [r["index"] for r in json.loads(out[2])] == [0, 1]


def test_mcp_rest_curl_example_runs(indexed: Settings, doors: dict):  # noqa: F811
    need_tool("curl", "apt-get install curl")
    script = localize(block_with("bash", "localhost:8181/query"), indexed, doors)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    hits = json.loads(out)["results"]
    assert hits and hits[0]["file"].startswith("qmd://")


def test_mcp_client_configurations_are_json(doors: dict):
    configs = [json.loads(b) for b in blocks("json")]
    assert [c["mcpServers"]["qmd"].get("args") for c in configs] == [["mcp"], None]
    assert configs[1]["mcpServers"]["qmd"]["url"].endswith("/mcp")


def test_readme_curl_example_runs(indexed: Settings):  # noqa: F811
    need_tool("curl", "apt-get install curl")
    [script] = [b for b in blocks("bash", README) if b.lstrip().startswith("curl")]
    out = subprocess.run(["bash", "-c", localize(script, indexed)], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    response = json.loads(out)
    assert "error" not in response, response
    hits = json.loads(response["outputs"][0]["data"][0])
    assert 0 < len(hits) <= 3 and hits[0]["file"].endswith(".md")


def test_docs_name_every_gateway_route_and_mcp_tool():
    from qmd_triton.api.app import ROUTES

    for route in ROUTES:
        if route not in ("/docs", "/openapi.json"):
            assert f"`{route}`" in DOC or f"{route}`" in DOC, route
    for tool in ("query", "search", "vsearch", "get", "multi_get", "status"):
        assert f"`{tool}`" in DOC, tool
    assert Path(PROJECT_ROOT / "deploy" / "nginx" / "render.sh").is_file()
