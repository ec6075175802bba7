"""A plain wheel (`pip install .`, not editable) in a fresh virtual environment serves a vsearch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from qmd_triton.system.net import free_ports

from ..conftest import ASSETS, REPO

EXPORTED = ("model.onnx", "tokenizer.json", "export.json", "generation.json")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + (proc.stderr if "-v" in cmd else "")


def source_tree(target: Path) -> Path:
    """The checkout's source files (tracked and new, not ignored: no exported weights, venv or build output),
    copied to ``target``: the build writes its build/ and egg-info there, never into the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO.parent,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO.parent / name
        if src.is_file():  # a file deleted but not yet staged is listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    source = source_tree(tmp_path_factory.mktemp("source"))
    log = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(source)], cwd=out)
    # a folder left out of `packages` makes setuptools print a screenful that reads like an error
    assert "would be ignored" not in log and "is absent from the `packages`" not in log
    [built] = list(out.glob("qmd_triton-*.whl"))
    return built


def test_the_wheel_carries_the_repository_configs_and_backends_but_no_weights(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "qmd_triton/model_repository/qmd_query/config.pbtxt" in names
    assert "qmd_triton/model_repository/qmd_retrieve/1/model.py" in names
    assert "qmd_triton/serving/backends/onnxruntime/model.py" in names
    assert "qmd_triton/ops/alert_rules/qmd-alerts.yml" in names
    assert "qmd_triton/artifacts/models.toml" in names
    assert not [n for n in names if n.endswith((".onnx", ".plan", "tokenizer.json", "export.json"))]
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]


@pytest.mark.timeout(1500)
def test_a_fresh_venv_with_the_wheel_answers_a_vsearch(wheel: Path, exported_repo: Path, tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QMD_", "PYTHON", "VIRTUAL_ENV"))}
    # pip too runs without the caller's PYTHONPATH: a checkout on it would count as qmd-triton already installed
    # --no-compile: no bytecode for all of the dependencies up front (~7 s here); what runs compiles as it imports
    run([str(py), "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[cpu]"], cwd=tmp_path, env=env)
    home = tmp_path / "home"
    http, grpc, metrics = free_ports(3)
    env.update(QMD_HOME=str(home), QMD_HTTP_PORT=str(http), QMD_GRPC_PORT=str(grpc), QMD_METRICS_PORT=str(metrics),
               PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    qmdctl = str(env_dir / "bin" / "qmdctl")
    shutil.copytree(ASSETS / "notes", tmp_path / "notes")
    run([qmdctl, "collection", "add", str(tmp_path / "notes"), "--name", "notes"], cwd=tmp_path, env=env)
    repo = home / "model_repository"  # the installed package's repository, filled from the wheel
    assert (repo / "qmd_query" / "config.pbtxt").is_file()
    for src in exported_repo.glob("*/1/*"):  # the exported weights: what `qmdctl export` would write here
        if src.name in EXPORTED:
            os.link(src, repo / src.relative_to(exported_repo))
        elif src.name == "genai":  # the expansion LLM's decoder folder
            shutil.copytree(src, repo / src.relative_to(exported_repo), copy_function=os.link)
    run([qmdctl, "update"], cwd=tmp_path, env=env)
    try:
        run([qmdctl, "embed"], cwd=tmp_path, env=env)  # starts the server from the fresh venv
        state = json.loads((home / "run" / "server.json").read_text())
        assert state["model_repository"] == str(repo.resolve())
        assert state["backends"].startswith(str(home))
        hits = json.loads(run([qmdctl, "vsearch", "how are concurrent inference calls grouped together", "--json"],
                              cwd=tmp_path, env=env))
        assert hits[0]["file"] == "notes/guide/batching.md"
        # the venv (whose python the server's stubs run) imports the installed package, not the checkout
        where = run([str(py), "-c", "import qmd_triton; print(qmd_triton.__file__)"], cwd=tmp_path, env=env)
        assert where.strip().startswith(str(env_dir))
    finally:
        subprocess.run([qmdctl, "down"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
