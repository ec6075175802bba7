"""`qmdctl models` against a loopback fake ModelScope hub, and the shipped registry."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.system.net import free_ports

from ..fakehub import FakeHub

WEIGHTS = bytes(range(256)) * 2000  # 512 KB, deterministic


def registry(tmp_path: Path, model_id: str = "acme/tiny-embed", files: dict[str, str] | None = None) -> Path:
    lines = ['[profiles.test]', 'description = "fixture"', '', '[[profiles.test.models]]', 'role = "embedding"',
             'name = "tiny"', 'languages = ["en"]', 'source = "modelscope"', f'id = "{model_id}"', 'revision = "v1.0"', f'size = {len(WEIGHTS)}']
    if files:
        lines.append("files = { " + ", ".join(f'"{k}" = "{v}"' for k, v in files.items()) + " }")
    path = tmp_path / "registry.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def hub(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "mscache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with FakeHub() as h:
        h.models["acme/tiny-embed"] = {"config.json": b'{"hidden_size": 8}', "model.safetensors": WEIGHTS,
                                       "tokenizer/tokenizer.json": b'{"version": "1.0"}'}
        yield h


def run(tmp_path: Path, *args: str):
    env = {"QMD_HOME": str(tmp_path / "qmd"), "MODELSCOPE_CACHE": str(tmp_path / "mscache")}
    return CliRunner().invoke(cli, ["models", *args], env=env, catch_exceptions=False)


def models_args(tmp_path: Path, reg: Path, hub: FakeHub | None = None, endpoint: str | None = None) -> list[str]:
    args = ["--profile", "test", "--registry", str(reg), "--models-dir", str(tmp_path / "models")]
    if hub or endpoint:
        args += ["--endpoint", endpoint or hub.endpoint]
    return args


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_download_then_check_is_ok(hub: FakeHub, tmp_path: Path):
    reg = registry(tmp_path)
    result = run(tmp_path, "download", *models_args(tmp_path, reg, hub))
    assert result.exit_code == 0, result.output
    assert "tiny" in result.stdout and " OK " in result.stdout
    checked = run(tmp_path, "check", "--json", *models_args(tmp_path, reg))
    assert checked.exit_code == 0
    [row] = json.loads(checked.stdout)
    assert row["status"] == "OK" and row["size"] == sum(len(b) for b in hub.models["acme/tiny-embed"].values())
    assert (tmp_path / "models" / "acme" / "tiny-embed" / "tokenizer" / "tokenizer.json").is_file()
    assert any("Revision=v1.0" in path for path, _ in hub.requests)


def test_flipping_one_byte_makes_check_say_corrupt(hub: FakeHub, tmp_path: Path):
    reg = registry(tmp_path)
    assert run(tmp_path, "download", *models_args(tmp_path, reg, hub)).exit_code == 0
    weights = tmp_path / "models" / "acme" / "tiny-embed" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    checked = run(tmp_path, "check", *models_args(tmp_path, reg))
    assert checked.exit_code == 1
    assert "corrupt" in checked.stdout and "model.safetensors: sha256 differs" in checked.stdout


def test_unknown_model_is_one_error_line_and_nothing_checks_ok(hub: FakeHub, tmp_path: Path):
    reg = registry(tmp_path, model_id="acme/nope")
    result = run(tmp_path, "download", *models_args(tmp_path, reg, hub))
    assert result.exit_code == 1
    assert error_line(result) == f"Error: acme/nope@v1.0 is not on the hub at {hub.endpoint} (HTTP 404)"
    checked = run(tmp_path, "check", *models_args(tmp_path, reg))
    assert checked.exit_code == 1 and "missing" in checked.stdout


def test_a_checksum_mismatch_fails_and_leaves_nothing_that_checks_ok(hub: FakeHub, tmp_path: Path):
    hub.lie.add("model.safetensors")
    reg = registry(tmp_path)
    result = run(tmp_path, "download", *models_args(tmp_path, reg, hub))
    assert result.exit_code == 1
    line = error_line(result)
    assert "model.safetensors" in line and "mismatch" in line.lower() and "expected 0000000000" in line
    checked = run(tmp_path, "check", "--json", *models_args(tmp_path, reg))
    assert checked.exit_code == 1 and json.loads(checked.stdout)[0]["status"] != "OK"


def test_the_registry_sha256_is_enforced_too(hub: FakeHub, tmp_path: Path):
    reg = registry(tmp_path, files={"model.safetensors": "ab" * 32})
    result = run(tmp_path, "download", *models_args(tmp_path, reg, hub))
    assert result.exit_code == 1
    assert "checksum mismatch for model.safetensors (expected abababababab" in error_line(result)
    assert not (tmp_path / "models" / "acme" / "tiny-embed" / "model.safetensors").exists()


def test_a_download_cut_halfway_resumes_where_it_stopped(hub: FakeHub, tmp_path: Path):
    hub.cut.add("model.safetensors")
    reg = registry(tmp_path)
    result = run(tmp_path, "download", *models_args(tmp_path, reg, hub))
    assert result.exit_code == 0, result.output
    ranges = [rng for path, rng in hub.requests if "FilePath=model.safetensors" in path]
    assert ranges[-1] == f"bytes={len(WEIGHTS) // 2}-"  # the second request asked only for the rest
    weights = tmp_path / "models" / "acme" / "tiny-embed" / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == hashlib.sha256(WEIGHTS).hexdigest()
    assert run(tmp_path, "check", *models_args(tmp_path, reg)).exit_code == 0


def test_a_hub_that_is_down_is_one_error_line_within_seconds(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "mscache"))
    (port,) = free_ports(1)
    reg = registry(tmp_path)
    started = time.monotonic()
    result = run(tmp_path, "download", *models_args(tmp_path, reg, endpoint=f"http://127.0.0.1:{port}"))
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert error_line(result).startswith(f"Error: cannot reach the ModelScope hub at http://127.0.0.1:{port}:")
    checked = run(tmp_path, "check", *models_args(tmp_path, reg))
    assert checked.exit_code == 1 and "missing" in checked.stdout


def test_the_small_profile_is_installed_and_verifies(tmp_path: Path):
    result = run(tmp_path, "check", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["role"], r["name"]) for r in rows][:2] == [("embedding", "all-MiniLM-L6-v2"),
                                                          ("embedding", "bge-small-en-v1.5")]
    assert [r["role"] for r in rows[2:]] == ["reranker", "expansion"]
    assert all(r["status"] == "OK" and r["size"] > 1_000_000 for r in rows)


def test_models_list_shows_both_profiles():
    rows = json.loads(CliRunner().invoke(cli, ["models", "list", "--json"]).stdout)
    profiles = {(r["profile"], r["role"]) for r in rows}
    assert {("small", "embedding"), ("full", "embedding"), ("full", "reranker"), ("full", "expansion")} <= profiles
    assert all(r["source"] == "modelscope" and "/" in r["id"] for r in rows if r["profile"] == "full")


def test_a_malformed_registry_is_one_error_line(tmp_path: Path):
    bad = tmp_path / "r.toml"
    bad.write_text("[profiles.x\n")
    result = run(tmp_path, "check", "--registry", str(bad), "--profile", "x")
    assert result.exit_code == 1 and error_line(result).startswith(f"Error: {bad}: not valid TOML")
    assert os.path.exists(bad)
