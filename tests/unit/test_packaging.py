"""The distribution: every package folder and model folder is in pyproject's list; Python claims the truth."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from ..conftest import REPO

ROOT = REPO.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_dirs() -> dict[str, Path]:
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def test_every_package_folder_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    source = ROOT / PYPROJECT["tool"]["setuptools"]["package-dir"][""]
    found = set()
    for init in (source / "qmd_triton").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(source).parts))
    for backend in (source / "qmd_triton" / "serving" / "backends").iterdir():
        if (backend / "model.py").is_file():
            found.add(f"qmd_triton.serving.backends.{backend.name}")
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_the_import_path_is_the_folder_path():
    """A reader follows `qmd_triton.index.sqlite.index` to control/qmd_triton/index/sqlite/index.py: no links, and only
    data folders (no Python code) are mapped from elsewhere."""
    import qmd_triton.index.sqlite.index

    source = ROOT / "control"
    assert [p for p in source.rglob("*") if p.is_symlink()] == []
    assert Path(qmd_triton.index.sqlite.index.__file__).resolve() == source / "qmd_triton" / "index" / "sqlite" / "index.py"
    for name, folder in package_dirs().items():
        if name:
            assert not list(folder.rglob("*.py")) or all(p.name == "model.py" for p in folder.rglob("*.py")), name


def test_every_model_folder_ships_in_the_wheel():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    for model in sorted(p for p in REPO.iterdir() if (p / "config.pbtxt").is_file()):
        assert f"qmd_triton.model_repository.{model.name}" in listed, model.name
        if (model / "configs").is_dir():
            assert f"qmd_triton.model_repository.{model.name}.configs" in listed, f"{model.name}/configs"


def test_requires_python_admits_this_interpreter_and_nothing_older_than_tomllib():
    spec = PYPROJECT["project"]["requires-python"]
    assert spec.startswith(">=3.11")  # tomllib, used by the settings and the registry, is 3.11+
    assert sys.version_info >= (3, 11)


def test_the_embedders_that_ship_are_declared_as_entry_points():
    from importlib import import_module

    points = PYPROJECT["project"]["entry-points"]["qmd_triton.embedders"]
    assert set(points) == {"triton", "onnxruntime"}
    for target in points.values():
        module, attr = target.split(":")
        assert hasattr(import_module(module), attr), target
