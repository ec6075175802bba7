"""Tracing with the local tritonserver: Triton's own trace files, and OpenTelemetry over OTLP/HTTP."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.serving.client import QmdClient

from ..conftest import make_settings


def cli_env(settings) -> dict[str, str]:
    return {"QMD_HOME": str(settings.home), "QMD_MODEL_REPOSITORY": str(settings.model_repository),
            "QMD_HTTP_PORT": str(settings.http_port), "QMD_GRPC_PORT": str(settings.grpc_port),
            "QMD_METRICS_PORT": str(settings.metrics_port)}


def test_trace_file_records_timestamps_of_each_model_of_the_ensemble(exported_repo: Path, tmp_path: Path):
    settings = make_settings(tmp_path / "home", exported_repo)
    trace = tmp_path / "trace.json"
    env = cli_env(settings)
    result = CliRunner().invoke(cli, ["up", "--trace-file", str(trace), "--trace-rate", "1"], env=env)
    assert result.exit_code == 0, result.output
    try:
        with QmdClient(settings.url()) as client:
            client.embed(["trace this request"])
        files = []
        for _ in range(40):
            files = sorted(tmp_path.glob("trace.json*"))
            if files and files[0].stat().st_size:
                break
            time.sleep(0.25)
        records = [r for f in files for r in json.loads(f.read_text())]
        models = {r.get("model_name") for r in records}
        assert {"qmd_embed", "qmd_tokenize", "qmd_embed_model"} <= models
        stamps = [t["name"] for r in records for t in r.get("timestamps", [])]
        assert "COMPUTE_START" in stamps and "REQUEST_END" in stamps
    finally:
        CliRunner().invoke(cli, ["down"], env=env)


def test_opentelemetry_traces_reach_an_otlp_http_collector(exported_repo: Path, tmp_path: Path):
    posts: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            posts.append((self.path, self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    settings = make_settings(tmp_path / "home", exported_repo)
    env = cli_env(settings)
    endpoint = f"127.0.0.1:{collector.server_address[1]}/v1/traces"
    result = CliRunner().invoke(cli, ["up", "--otel-endpoint", endpoint, "--trace-rate", "1"], env=env)
    assert result.exit_code == 0, result.output
    try:
        with QmdClient(settings.url()) as client:
            client.embed(["trace this request"])
        for _ in range(40):
            if any(b"qmd-triton" in body for _, body in posts):
                break
            time.sleep(0.25)
        assert posts and all(path == "/v1/traces" for path, _ in posts)
        assert any(b"qmd-triton" in body for _, body in posts)  # our service.name resource attribute
    finally:
        CliRunner().invoke(cli, ["down"], env=env)
        collector.shutdown()
