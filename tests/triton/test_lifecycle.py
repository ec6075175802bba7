"""`qmdctl up` / `down` / `status` against real tritonserver processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton import contracts
from qmd_triton.cli import cli
from qmd_triton.serving import probes, server
from qmd_triton.settings import Settings
from qmd_triton.system import procs

from ..conftest import ASSETS, Started, free_ports, make_settings


def run(settings: Settings, *args: str):
    env = {
        "QMD_HOME": str(settings.home),
        "QMD_MODEL_REPOSITORY": str(settings.model_repository),
        "QMD_HTTP_PORT": str(settings.http_port),
        "QMD_GRPC_PORT": str(settings.grpc_port),
        "QMD_METRICS_PORT": str(settings.metrics_port),
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_status_json_lists_every_model_ready(triton: Settings):
    result = run(triton, "status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ready"] and data["managed"]
    assert {m["name"]: m["state"] for m in data["models"]} == {m.name: "READY" for m in contracts.MODEL_SPECS}


def test_up_fails_with_one_line_when_server_already_runs(triton: Settings, started: Started):
    members = server.server_pids(server.read_state(triton))
    result = run(triton, "up")
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: a qmd-triton server is already running (pid ")
    assert started.procs == []  # nothing was launched
    assert server.server_pids(server.read_state(triton)) == members
    assert probes.status(triton).ready


def test_up_fails_with_one_line_when_port_is_taken(exported_repo: Path, tmp_path: Path, started: Started):
    settings = make_settings(tmp_path, exported_repo)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.grpc_port))
        blocker.listen()
        result = run(settings, "up")
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: port {settings.grpc_port} (grpc) on 127.0.0.1 is already in use; pick another with --grpc-port"
    )
    assert started.procs == []


def test_up_fails_with_one_line_when_artifact_is_missing(copy_repo, tmp_path: Path, started: Started):
    repo = copy_repo()
    (repo / "qmd_tokenize" / "1" / "tokenizer.json").unlink()
    settings = make_settings(tmp_path / "home", repo)
    result = run(settings, "up")
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: {repo}/qmd_tokenize/1/tokenizer.json is missing; run `qmdctl export` to build the models"
    )
    assert started.procs == []


def test_up_shows_server_log_and_leaves_no_process_when_a_model_fails_to_load(copy_repo, tmp_path: Path,
                                                                            started: Started):
    repo = copy_repo()
    onnx = repo / "qmd_embed_model" / "1" / "model.onnx"
    onnx.unlink()  # it is a hard link to the real export: replace, never write through it
    onnx.write_bytes(b"this is not an onnx file")
    settings = make_settings(tmp_path / "home", repo)
    result = run(settings, "up")
    assert result.exit_code == 1
    first = error_line(result)
    assert first.startswith("Error: failed to load 'qmd_embed_model' version 1")
    assert "onnxruntime could not load the model" in first
    assert "server log" in result.output and "tritonserver.log" in result.output
    assert len(started.procs) == 1 and started.alive() == []  # the server and every stub of it are gone
    assert server.read_state(settings) is None


def test_down_stops_only_the_server_it_started(triton: Settings, tmp_path: Path):
    other = make_settings(tmp_path, triton.model_repository)
    result = run(other, "down")
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: no server started by qmdctl is recorded in")
    assert probes.status(triton).ready


def test_up_then_down_leaves_no_process(exported_repo: Path, tmp_path: Path, started: Started):
    settings = make_settings(tmp_path, exported_repo)
    assert run(settings, "up").exit_code == 0
    assert len(server.server_pids(server.read_state(settings))) >= 3  # the server and one stub per python model
    assert run(settings, "status").exit_code == 0
    result = run(settings, "down")
    assert result.exit_code == 0, result.output
    assert len(started.procs) == 1 and started.alive() == []
    down = run(settings, "status")
    assert down.exit_code == 1 and "down" in down.stdout


def test_vsearch_starts_the_local_server_when_none_answers(exported_repo: Path, tmp_path: Path, started: Started):
    import shutil

    from ..conftest import ASSETS

    settings = make_settings(tmp_path / "home", exported_repo)
    shutil.copytree(ASSETS / "notes", tmp_path / "notes")
    assert run(settings, "collection", "add", str(tmp_path / "notes"), "--name", "notes").exit_code == 0
    assert run(settings, "update").exit_code == 0
    try:
        embedded = run(settings, "embed")  # the server side of indexing starts the server too
        assert embedded.exit_code == 0, embedded.output
        assert "starting the local one" in embedded.stderr and "embedding chunks" in embedded.stderr
        assert run(settings, "down").exit_code == 0
        result = run(settings, "vsearch", "how do requests get merged into one batch", "-n", "1", "--format", "files")
        assert result.exit_code == 0, result.output
        assert "starting the local one" in result.stderr
        assert result.stdout.strip().endswith("notes/guide/batching.md")
        assert server.read_state(settings) is not None  # recorded: `down` stops it
    finally:
        run(settings, "down")
    assert len(started.procs) == 2 and started.alive() == []


def test_embed_fails_with_one_line_when_no_server_answers(tmp_path: Path):
    http, grpc, metrics = free_ports(3)
    settings = Settings.load(tmp_path, http_port=http, grpc_port=grpc, metrics_port=metrics)
    for protocol in ("http", "grpc"):
        result = run(settings, "embed", "--protocol", protocol, "hello")
        assert result.exit_code == 1
        port = http if protocol == "http" else grpc
        assert error_line(result).startswith(f"Error: no Triton server answers at 127.0.0.1:{port} ({protocol})")


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_embed_cli_prints_one_vector_per_text(triton: Settings, fmt: str):
    args = ["embed", "hello", "你好"] + (["--json"] if fmt == "json" else ["--protocol", "grpc"])
    result = run(triton, *args)
    assert result.exit_code == 0, result.output
    if fmt == "json":
        rows = json.loads(result.stdout)
        assert [r["text"] for r in rows] == ["hello", "你好"]
        assert all(len(r["embedding"]) == 384 for r in rows)
    else:
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 2 and all(len(line.split()) == 384 for line in lines)


def test_sigterm_to_eval_stops_the_server_it_started_for_itself(exported_repo: Path, tmp_path: Path):
    """`qmdctl eval` starts a private server; SIGTERM (a CI runner, timeout(1), kill) arriving while it loads its
    models ends the command through its cleanup: exit status 143, one line, and no process of that server left."""
    known = tmp_path / "notes-set"  # a known-item set: the notes and one query
    shutil.copytree(ASSETS / "notes", known / "corpus")
    (known / "queries.tsv").write_text("how are concurrent inference calls grouped together\tguide/batching.md\n")
    home = tmp_path / "home"
    env = {**os.environ, "QMD_HOME": str(home), "QMD_MODEL_REPOSITORY": str(exported_repo)}
    proc = subprocess.Popen([sys.executable, "-c", "from qmd_triton.cli import main; main()", "eval", str(known),
                             "--mode", "vsearch", "--no-baseline"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    recorded: dict = {}
    try:
        deadline = time.monotonic() + 120
        while not recorded and time.monotonic() < deadline and proc.poll() is None:
            found = sorted(home.glob("eval/*/run/server.json"))
            recorded = json.loads(found[0].read_text()) if found else {}  # written whole (os.replace)
            time.sleep(0.05)
        assert recorded, "eval started no server"
        owned = procs.Owned(recorded["pid"], recorded["binary"], recorded["start_ticks"])
        assert procs.is_running(owned)
        proc.send_signal(signal.SIGTERM)  # ours: started above
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 143, err
        assert "qmdctl: terminated (SIGTERM); stopping the server this command started" in err.splitlines()
        assert not procs.is_running(owned)
        assert [p for p in procs.group_members(owned.pid) if not procs.is_zombie(p)] == []
        assert not sorted(home.glob("eval/*/run/server.json"))  # its state cleared too
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if recorded:  # whatever of the server it started is still there (the old behaviour): stopped here
            procs.stop_members(lambda: procs.group_members(recorded["pid"]), timeout_s=10, leader=recorded["pid"])
