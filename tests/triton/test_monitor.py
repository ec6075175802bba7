"""`qmdctl up --monitor`: Prometheus scrapes Triton and the exporter, loads the alert rules;
`qmdctl down` leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.ops.monitor import MONITOR_FILE
from qmd_triton.serving import server
from qmd_triton.serving.client import QmdClient
from qmd_triton.system import procs
from qmd_triton.system.net import free_ports

from ..conftest import ASSETS, Started, make_settings, need_tool


def query(url: str, promql: str) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


@pytest.fixture
def qmd(exported_repo: Path, tmp_path: Path):
    need_tool("prometheus")
    settings = make_settings(tmp_path / "home", exported_repo)
    prom_port, exporter_port = free_ports(2)
    env = {"QMD_HOME": str(settings.home), "QMD_MODEL_REPOSITORY": str(settings.model_repository),
           "QMD_HTTP_PORT": str(settings.http_port),
           "QMD_GRPC_PORT": str(settings.grpc_port), "QMD_METRICS_PORT": str(settings.metrics_port),
           "QMD_PROMETHEUS_PORT": str(prom_port), "QMD_EXPORTER_PORT": str(exporter_port)}

    def run(*args: str):
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    run.settings = settings  # type: ignore[attr-defined]
    run.prometheus = f"http://127.0.0.1:{prom_port}"  # type: ignore[attr-defined]
    run.exporter = f"http://127.0.0.1:{exporter_port}/metrics"  # type: ignore[attr-defined]
    yield run
    run("down")


def monitor_processes(settings) -> list[procs.Owned]:
    state = json.loads((settings.run_dir / MONITOR_FILE).read_text())
    return [procs.Owned(state[n]["pid"], state[n]["binary"], state[n]["start_ticks"]) for n in ("prometheus", "exporter")]


def test_prometheus_sees_inference_count_rise_and_down_leaves_nothing(qmd, tmp_path: Path, started: Started):
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    assert qmd("collection", "add", str(notes), "--name", "notes").exit_code == 0
    assert qmd("update").exit_code == 0
    result = qmd("up", "--monitor")
    assert result.exit_code == 0, result.output
    settings = qmd.settings
    monitors = monitor_processes(settings)
    assert all(procs.is_running(p) for p in monitors)  # Prometheus and the exporter
    assert len(server.server_pids(server.read_state(settings))) >= 3  # the server and its stubs

    def count() -> float:
        rows = query(qmd.prometheus, 'sum(nv_inference_count{model="qmd_embed"})')
        return float(rows[0]["value"][1]) if rows else 0.0

    deadline = time.monotonic() + 60
    while not query(qmd.prometheus, 'up{job="triton"} == 1') and time.monotonic() < deadline:
        time.sleep(0.25)  # a poll: Prometheus scrapes every 5 s (ops/monitor.py)
    start = count()
    with QmdClient(settings.url()) as client:
        client.embed([f"note {i}" for i in range(7)])
    while count() < start + 7 and time.monotonic() < deadline:
        time.sleep(0.25)  # a poll: Prometheus scrapes every 5 s (ops/monitor.py)
    assert count() >= start + 7

    rules = json.loads(urllib.request.urlopen(f"{qmd.prometheus}/api/v1/rules", timeout=5).read())
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {"QmdTritonDown", "QmdIndexStale", "QmdHighErrorRatio"} <= names
    while not query(qmd.prometheus, 'qmd_index_documents{collection="notes"}') and time.monotonic() < deadline:
        time.sleep(0.25)  # a poll: Prometheus scrapes every 5 s (ops/monitor.py)
    [docs] = query(qmd.prometheus, 'qmd_index_documents{collection="notes"}')
    assert float(docs["value"][1]) == 4
    ready = query(qmd.prometheus, 'qmd_triton_model_ready{model="qmd_query"}')
    assert ready and ready[0]["metric"]["state"] == "READY"

    down = qmd("down")
    assert down.exit_code == 0, down.output
    assert not any(procs.is_running(p) for p in monitors)
    assert len(started.procs) == 1 and started.alive() == []


def test_monitor_refuses_a_taken_prometheus_port_and_starts_nothing(qmd, started: Started):
    import socket

    port = int(qmd.prometheus.rsplit(":", 1)[1])
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = qmd("up", "--monitor")
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert errors == [f"Error: port {port} (prometheus) on 127.0.0.1 is already in use; "
                      "pick another with --prometheus-port"]
    assert not (qmd.settings.run_dir / MONITOR_FILE).exists()
    assert started.alive() == []  # the server it started first is stopped again


def test_exporter_reads_model_states_from_a_server_that_restricts_its_repository_api(copy_repo, tmp_path: Path):
    """Servers restrict the model-repository API (the local one with its home's key): the exporter uses the admin
    key, or each model's ready endpoint without one, so QmdModelNotReady still sees the models."""
    from prometheus_client import CollectorRegistry, generate_latest

    from qmd_triton.ops.prometheus import QmdCollector

    repo = copy_repo(("qmd_tokenize", "qmd_embed_model", "qmd_embed"))
    settings = make_settings(tmp_path / "home", repo)
    server.start(settings)
    key = server.admin_headers(settings)[server.ADMIN_HEADER]
    try:
        url = f"{settings.host}:{settings.http_port}"

        def ready(admin_key: str | None) -> dict[str, str]:
            registry = CollectorRegistry()
            registry.register(QmdCollector(settings, url, admin_key))
            out = {}
            for line in generate_latest(registry).decode().splitlines():
                if line.startswith("qmd_triton_model_ready{"):
                    labels, value = line.rsplit(" ", 1)
                    model = labels.split('model="', 1)[1].split('"', 1)[0]
                    state = labels.split('state="', 1)[1].split('"', 1)[0]
                    out[model] = f"{state}={float(value):g}"
            return out

        with_key = ready(key)
        assert with_key == {"qmd_embed": "READY=1", "qmd_embed_model": "READY=1", "qmd_tokenize": "READY=1"}
        without = ready(None)
        assert without["qmd_embed"] == "READY=1" and without["qmd_tokenize"] == "READY=1"
        assert without["qmd_query"] == "NOT_READY=0"  # not in this repository: the alert must see it
        assert ready("wrong")["qmd_query"] == "NOT_READY=0"
    finally:
        server.stop(settings)
