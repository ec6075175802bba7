"""`qmdctl validate`: broken repositories give their exact messages; the shipped one is clean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli

from ..conftest import ASSETS

BROKEN = ASSETS / "broken"
CASES = sorted(p.name for p in BROKEN.iterdir() if p.is_dir())
_ELEM = {"int64": 7, "int32": 6, "float": 1}


def write_onnx(spec_path: Path, root: Path) -> None:
    """A one-node ONNX graph with the inputs and outputs the case describes."""
    import onnx
    from onnx import helper

    spec = json.loads(spec_path.read_text())

    def info(name: str, elem: str, shape: list[int]):
        return helper.make_tensor_value_info(name, _ELEM[elem], [None if d == -1 else d for d in shape])

    inputs = [info(*i) for i in spec["inputs"]]
    outputs = [info(*o) for o in spec["outputs"]]
    nodes = [helper.make_node("Cast", [spec["inputs"][0][0]], ["cast"], to=1),
             helper.make_node("ReduceMean", ["cast"], [spec["outputs"][0][0]], keepdims=1, axes=[1])]
    model = helper.make_model(helper.make_graph(nodes, "fixture", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(root / spec["path"]))


def run_validate(*args: str):
    return CliRunner().invoke(cli, ["validate", *args], catch_exceptions=False)


def test_there_are_at_least_twelve_broken_repositories():
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES)
def test_validate_reports_the_exact_problems(case: str, tmp_path: Path, monkeypatch):
    shutil.copytree(BROKEN / case, tmp_path / case)
    if (tmp_path / case / "onnx.json").is_file():
        write_onnx(tmp_path / case / "onnx.json", tmp_path / case)
    monkeypatch.chdir(tmp_path / case)
    result = run_validate(str(tmp_path / case / "repo"), "--target", "local")
    assert result.exit_code == 1
    expected = (BROKEN / case / "expected.txt").read_text().splitlines()
    assert sorted(result.stdout.splitlines()) == sorted(expected)
