"""The client examples in docs/clients.md and the README run as written against a live server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from qmd_triton.settings import PROJECT_ROOT, Settings

from .test_query import indexed  # noqa: F401 - the notes index the examples search

DOC = (PROJECT_ROOT / "docs" / "clients.md").read_text()
README = (PROJECT_ROOT / "README.md").read_text()


def blocks(lang: str, text: str = DOC) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def localize(code: str, settings: Settings) -> str:
    return (code.replace("127.0.0.1:8000", settings.http_url).replace("127.0.0.1:8001", settings.grpc_url)
            .replace("localhost:8000", settings.http_url))


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example_runs(indexed: Settings, index: int, capsys):  # noqa: F811
    scope: dict = {}
    exec(compile(localize(blocks("python")[index], indexed), f"clients.md[python {index}]", "exec"), scope)
    if "hits" in scope:
        assert isinstance(scope["hits"], list) and scope["hits"]
    if "vectors" in scope:
        assert scope["vectors"].shape == (2, 384)
    if index == 0:
        assert ".md:" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_example_runs(indexed: Settings):  # noqa: F811
    script = localize(blocks("bash")[0], indexed)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    hits = json.loads(out)
    assert hits and all("explain" in h for h in hits)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_example_runs(indexed: Settings):  # noqa: F811
    [script] = [b for b in blocks("bash", README) if b.lstrip().startswith("curl")]
    out = subprocess.run(["bash", "-c", localize(script, indexed)], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    response = json.loads(out)
    assert "error" not in response, response
    hits = json.loads(response["outputs"][0]["data"][0])
    assert 0 < len(hits) <= 3 and hits[0]["file"].endswith(".md")
