"""The production front door for real: Debian's nginx with the rendered deploy/nginx template in front of the real
tritonserver, the gateway and the MCP endpoint, on loopback ports. Every route refuses a request without the
token or with a wrong one (401) and serves one with the right token."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from qmd_triton.settings import PROJECT_ROOT, Settings
from qmd_triton.system.net import free_ports

from ..conftest import need_tool
from ..doors import TOKEN, Door, door_env
from .test_search import qmd

NGINX_DIR = PROJECT_ROOT / "deploy" / "nginx"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}}
INFER = {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["sourdough bread"]},
                    {"name": "options", "shape": [1], "datatype": "BYTES", "data": ["{\"n\": 1}"]}]}


def tool(name: str) -> str:
    return need_tool(name)  # in CI a missing one fails instead of skipping


@pytest.fixture(scope="module")
def front(triton: Settings, tmp_path_factory: pytest.TempPathFactory):
    """nginx (TLS, the token) -> tritonserver, `qmdctl api` and `qmdctl mcp --http`, all on loopback."""
    nginx, openssl = tool("nginx"), tool("openssl")
    work = tmp_path_factory.mktemp("nginx")
    notes = work / "notes"
    shutil.copytree(Path(__file__).parents[1] / "assets" / "notes", notes)
    qmd(triton, "collection", "add", str(notes), "--name", "ngxnotes")
    qmd(triton, "update")
    qmd(triton, "embed")
    key, cert = work / "key.pem", work / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=qmd.test"], check=True, capture_output=True)
    env = door_env(triton, QMD_API_TOKEN=TOKEN)
    with Door(["api"], env, work / "api.log") as api, Door(["mcp", "--http"], env, work / "mcp.log") as mcp:
        (port,) = free_ports(1)
        rendered = subprocess.run(
            ["sh", str(NGINX_DIR / "render.sh")], capture_output=True, text=True, check=True,
            env={"PATH": os.environ["PATH"], "QMD_API_TOKEN": TOKEN, "QMD_TRITON_HTTP": triton.http_url,
                 "QMD_TRITON_GRPC": triton.grpc_url, "QMD_GATEWAY": f"127.0.0.1:{api.port}",
                 "QMD_MCP": f"127.0.0.1:{mcp.port}", "QMD_NGINX_LISTEN": f"127.0.0.1:{port}",
                 "QMD_SERVER_NAME": "qmd.test", "QMD_TLS_CERT": str(cert), "QMD_TLS_KEY": str(key)}).stdout
        (work / "qmd.conf").write_text(rendered)
        (work / "logs").mkdir()
        (work / "nginx.conf").write_text(f"pid {work}/nginx.pid;\nerror_log {work}/logs/error.log;\nevents {{}}\n"
                                         f"http {{ access_log off; include {work}/qmd.conf; }}\n")
        proc = subprocess.Popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "nginx did not listen"
                    time.sleep(0.1)
            yield {"url": f"https://127.0.0.1:{port}", "port": port, "cert": cert}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            qmd(triton, "collection", "remove", "ngxnotes")


ROUTES = {
    "gateway /vsearch": ("POST", "/vsearch", {"query": "sourdough bread", "top_k": 1}, "results"),
    "gateway /embed": ("POST", "/embed", {"texts": ["a text"]}, "embeddings"),
    "gateway /v1/embeddings": ("POST", "/v1/embeddings", {"input": "a text", "model": "qmd-embed"}, "data"),
    "triton infer": ("POST", "/v2/models/qmd_vsearch/infer", INFER, "outputs"),
    "triton health": ("GET", "/v2/health/ready", None, None),
    "mcp initialize": ("POST", "/mcp", INITIALIZE, "event: message"),
}


def call(front: dict, route: str, token: str | None) -> httpx.Response:
    method, path, body, _ = ROUTES[route]
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, front["url"] + path, json=body, headers=headers, verify=False, timeout=120)


@pytest.mark.parametrize("route", list(ROUTES))
def test_nginx_refuses_no_token_and_a_wrong_token_and_serves_the_right_one(front: dict, route: str):
    missing = call(front, route, None)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert call(front, route, "not-the-token-at-all").status_code == 401
    served = call(front, route, TOKEN)
    assert served.status_code == 200, served.text
    expected = ROUTES[route][3]
    assert expected is None or expected in served.text


def test_nginx_guards_grpc_the_same_way(front: dict):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{front['port']}", ssl=True,
                                              root_certificates=str(front["cert"]),
                                              channel_args=[("grpc.ssl_target_name_override", "qmd.test")])

    def infer(headers: dict):
        inputs = []
        for name, value in (("query", b"sourdough bread"), ("options", b'{"n": 1}')):
            t = grpcclient.InferInput(name, [1], "BYTES")
            t.set_data_from_numpy(np.array([value], dtype=np.object_))
            inputs.append(t)
        return client.infer("qmd_vsearch", inputs, headers=headers, client_timeout=60)

    for headers in ({}, {"authorization": "Bearer not-the-token-at-all"}):
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            infer(headers)
    assert b"ngxnotes/recipes.md" in infer({"authorization": f"Bearer {TOKEN}"}).as_numpy("results")[0]


def test_nginx_does_not_route_private_apis(front: dict):
    for path in ("/metrics", "/v2/repository/index", "/v2/logging", "/v2/models/qmd_expand/infer"):
        r = httpx.post(front["url"] + path, headers={"Authorization": f"Bearer {TOKEN}"}, verify=False)
        assert r.status_code == 404, path
