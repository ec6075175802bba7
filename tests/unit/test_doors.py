"""The doors for programs without a Triton server: the guard (token, Host, Origin), the gateway's errors when
Triton is down or too slow, the request models, and the refusal to listen beyond loopback without a token."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from qmd_triton.api.app import create_app
from qmd_triton.api.models import QueryRequest, SearchRequest
from qmd_triton.cli import cli
from qmd_triton.errors import (
    ConfigError,
    IndexMissing,
    InferenceError,
    InputError,
    NotFound,
    RequestTimeout,
    ServerUnavailable,
)
from qmd_triton.search.options import typed_query
from qmd_triton.serving.http import Guard, status_of
from qmd_triton.serving.service import QmdService
from qmd_triton.settings import Settings
from qmd_triton.system.net import free_ports

TOKEN = "unit-token-0123456789abcdef"


def test_guard_on_loopback_passes_local_callers_without_a_token():
    guard = Guard.for_bind("127.0.0.1", 18765, token=None)
    assert guard.refuse("/vsearch", {"host": "127.0.0.1:18765"}) is None
    assert guard.refuse("/vsearch", {"host": "localhost:18765", "origin": "http://localhost:3000"}) is None


@pytest.mark.parametrize("headers, reason", [
    ({"host": "evil.example:18765"}, "host"),
    ({"host": "127.0.0.1:18765", "origin": "https://evil.example"}, "origin"),
    ({"host": "127.0.0.1:18765", "origin": "http://localhost.evil.example"}, "origin"),
], ids=["rebound-host", "foreign-origin", "lookalike-origin"])
def test_guard_on_loopback_refuses_foreign_hosts_and_origins_with_403(headers: dict, reason: str):
    status, why, message = Guard.for_bind("127.0.0.1", 18765, token=None).refuse("/vsearch", headers)
    assert (status, why) == (403, reason) and "not allowed" in message


def test_guard_refuses_to_listen_beyond_loopback_without_a_token():
    with pytest.raises(ConfigError, match=r"^refusing to serve on 0.0.0.0:18765 without a token: set QMD_API_TOKEN"):
        Guard.for_bind("0.0.0.0", 18765, token=None)
    with pytest.raises(ConfigError, match="refusing"):
        Guard.for_bind("10.1.2.3", 18765, token="   ")


@pytest.mark.parametrize("token, message", [("short", "is 5 characters; use at least 16"),
                                            ("has spaces inside it!", "may hold only")],
                         ids=["short", "odd-characters"])
def test_guard_refuses_unusable_tokens(token: str, message: str):
    with pytest.raises(ConfigError, match=message):
        Guard.for_bind("0.0.0.0", 18765, token=token)


@pytest.mark.parametrize("headers, expected", [
    ({}, (401, "no_token")),
    ({"authorization": "Bearer wrong-token-0123456789"}, (401, "wrong_token")),
    ({"authorization": f"Basic {TOKEN}"}, (401, "wrong_token")),
    ({"authorization": f"Bearer {TOKEN}"}, None),
    ({"authorization": f"bearer {TOKEN}"}, None),
], ids=["none", "wrong", "basic", "right", "lowercase-scheme"])
def test_guard_with_a_token_checks_the_bearer(headers: dict, expected):
    guard = Guard.for_bind("0.0.0.0", 18765, token=TOKEN)
    refused = guard.refuse("/vsearch", {"host": "search.example.com", **headers})
    assert (refused[:2] if refused else None) == expected


def test_health_and_metrics_need_no_token_but_keep_the_origin_check():
    guard = Guard.for_bind("0.0.0.0", 18765, token=TOKEN)
    assert guard.refuse("/health", {"host": "x"}) is None and guard.refuse("/metrics", {"host": "x"}) is None
    assert guard.refuse("/health", {"host": "x", "origin": "https://evil.example"})[0] == 403


@pytest.mark.parametrize("error, status", [
    (NotFound("x"), 404), (InputError("x"), 400), (RequestTimeout("x"), 504), (ServerUnavailable("x"), 503),
    (IndexMissing("x"), 503), (InferenceError("x"), 502), (ConfigError("x"), 500), (RuntimeError("x"), 500)])
def test_errors_map_to_http_statuses(error: Exception, status: int):
    assert status_of(error) == status


def test_query_request_needs_a_query_or_typed_searches():
    with pytest.raises(ValueError, match="give a query or typed searches"):
        QueryRequest(top_k=3)
    opts = QueryRequest(searches=[{"type": "lex", "query": "x"}], intent="i", top_k=3).options()
    assert opts.searches == (("lex", "x"),) and opts.intent == "i" and opts.n == 3


def test_search_request_takes_qmd_python_and_tobi_qmd_spellings():
    a = SearchRequest.model_validate({"query": "q", "top_k": 3, "min_score": 0.2, "collection": "notes"})
    b = SearchRequest.model_validate({"query": "q", "limit": 3, "minScore": 0.2, "collections": ["notes"]})
    assert a.options() == b.options() and a.options().collections == ("notes",)


def test_typed_query_takes_typed_lines_and_searches():
    assert typed_query("lex: a\nvec: b c") == ("b c", (("lex", "a"), ("vec", "b c")))
    assert typed_query("", [("lex", "x")]) == ("x", (("lex", "x"),))
    assert typed_query("plain", [("hyde", "h")]) == ("plain", (("hyde", "h"),))
    with pytest.raises(InputError, match="query is empty"):
        typed_query("  ")


@pytest.fixture
def silent_triton() -> Iterator[int]:
    """A port that accepts connections and never answers: a Triton that is up but stuck."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for s in held:
            s.close()
        sock.close()


def gateway(tmp_path: Path, triton_port: int, timeout_s: float = 60.0) -> TestClient:
    # the unit tier's repository without exported files (tests/unit/conftest.py), as on a fresh clone
    settings = Settings.load(tmp_path / "home", model_repository=os.environ["QMD_MODEL_REPOSITORY"],
                             request_timeout_s=timeout_s)
    service = QmdService(settings, triton_url=f"127.0.0.1:{triton_port}")
    return TestClient(create_app(service, Guard.for_bind("127.0.0.1", 18765, token=None)),
                      base_url="http://127.0.0.1:18765")


@pytest.mark.parametrize("path, body", [("/vsearch", {"query": "x"}), ("/query", {"query": "x"}),
                                        ("/embed", {"texts": ["x"]}),
                                        ("/rerank", {"query": "q", "documents": [{"content": "x"}]}),
                                        ("/v1/embeddings", {"input": "x"}),
                                        ("/rerank", {"query": "q", "texts": ["x"]}), ("/embed", {"inputs": "x"})])
def test_gateway_answers_503_when_triton_is_down(tmp_path: Path, path: str, body: dict):
    (dead,) = free_ports(1)
    with gateway(tmp_path, dead) as client:
        r = client.post(path, json=body)
        assert r.status_code == 503, r.text
        if "texts" in body and path == "/rerank" or "inputs" in body:  # TEI's form: TEI's shape
            assert r.json()["error_type"] == "Unhealthy" and "no Triton server answers" in r.json()["error"]
        else:
            assert r.json()["error"]["type"] == "unavailable" and "no Triton server answers" in r.json()["detail"]
        assert client.get("/health").status_code == 503


def test_gateway_answers_504_when_triton_does_not_answer_in_time(tmp_path: Path, silent_triton: int):
    with gateway(tmp_path, silent_triton, timeout_s=0.5) as client:
        r = client.post("/vsearch", json={"query": "x"})
        assert r.status_code == 504 and "did not answer within 0.5s" in r.json()["error"]["message"]


def test_gateway_refuses_a_missing_index_for_documents_with_a_clear_error(tmp_path: Path):
    (dead,) = free_ports(1)
    with gateway(tmp_path, dead) as client:
        r = client.post("/get", json={"file": "notes/a.md"})
        assert r.status_code == 503 and "qmdctl" in r.json()["error"]["message"]


@pytest.mark.parametrize("command", [["api"], ["mcp", "--http"]])
def test_doors_refuse_to_listen_beyond_loopback_without_a_token(tmp_path: Path, command: list[str], monkeypatch):
    monkeypatch.delenv("QMD_API_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), *command, "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "Error: refusing to serve on 0.0.0.0:" + ("18765" if command == ["api"] else "8181") + " without a token: "
        "set QMD_API_TOKEN (callers send 'Authorization: Bearer <token>'; make one with: openssl rand -hex 32)")
