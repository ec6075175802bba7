"""The one index interface: both backends implement all of it, with its signatures, and nothing above the
index opens a backend (the import-linter contract, checked on a copy with a planted import)."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qmd_triton.index.interface import Index
from qmd_triton.index.milvus.index import MilvusIndex
from qmd_triton.index.sqlite.index import SqliteIndex

from ..conftest import REPO

ROOT = REPO.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def interface_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(Index).items()
            if inspect.isfunction(member) and not name.startswith("_")}


@pytest.mark.parametrize("backend", [SqliteIndex, MilvusIndex], ids=lambda c: c.backend)
def test_each_backend_implements_every_method_of_the_interface_with_its_signature(backend):
    assert issubclass(backend, Index) and not inspect.isabstract(backend), backend.__abstractmethods__
    assert backend.backend in ("sqlite", "milvus")
    for name, wanted in interface_methods().items():
        got = inspect.signature(getattr(backend, name))
        params = list(got.parameters.values())
        # the interface's parameters, in order, with the same kinds; a backend may add keyword-only options
        assert [(p.name, p.kind) for p in params[: len(wanted.parameters)]] == \
            [(p.name, p.kind) for p in wanted.parameters.values()], f"{backend.__name__}.{name}{got}"
        extra = params[len(wanted.parameters):]
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in extra), \
            f"{backend.__name__}.{name}{got}: extra parameters must be keyword-only with defaults"


def test_the_interface_covers_vector_search_and_says_what_is_optional():
    methods = interface_methods()
    assert "nearest_chunks" in methods and "nearest_chunks" in Index.__abstractmethods__
    optional = {"bodies", "chunks_of_many", "complete_chunks", "bulk_load", "size_on_disk"}
    assert optional <= set(methods) and not optional & Index.__abstractmethods__


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree / "control")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def test_a_backend_imported_above_the_index_fails_the_lint(tmp_path: Path):
    if not LINT_IMPORTS.exists():
        pytest.fail(f"lint-imports is not installed beside {sys.executable} (the dev extra has it)")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "control", tree / "control", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    clean = lint(tree)
    assert clean.returncode == 0, clean.stdout[-2000:]
    (tree / "control" / "qmd_triton" / "search" / "planted.py").write_text(
        "from qmd_triton.index.milvus.index import MilvusIndex  # noqa: F401\n")
    planted = lint(tree)
    assert planted.returncode != 0
    assert "only the index factory opens a backend" in planted.stdout
    assert "qmd_triton.search.planted -> qmd_triton.index.milvus.index" in planted.stdout
