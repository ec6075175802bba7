"""`qmdctl validate`: broken repositories give their exact messages; the shipped one is clean.

The tests of validate that need the exported repository: the integration tier (DESIGN.md section 6); the rest are in
tests/unit/test_validate.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli

from ..conftest import REPO


def run_validate(*args: str):
    return CliRunner().invoke(cli, ["validate", *args], catch_exceptions=False)


@pytest.mark.parametrize("target", ["local", "gpu"])
def test_the_shipped_repository_validates_clean(exported_repo: Path, target: str):
    result = run_validate(str(REPO), "--target", target, "--json")
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)["problems"] == []


def test_gpu_target_reads_the_gpu_configs_and_local_refuses_them(tmp_path: Path, exported_repo: Path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "qmd_embed_model", repo / "qmd_embed_model", symlinks=True,
                    copy_function=lambda s, d: Path(d).symlink_to(s) if s.endswith(".onnx") else shutil.copy2(s, d))
    gpu_config = (repo / "qmd_embed_model" / "configs" / "gpu.pbtxt").read_text()
    (repo / "qmd_embed_model" / "config.pbtxt").write_text(gpu_config)
    lines = run_validate(str(repo), "--target", "local").stdout.splitlines()
    assert lines == ["repo/qmd_embed_model/config.pbtxt:instance_group: KIND_GPU on the local target (no GPU); use KIND_CPU"]
    assert run_validate(str(repo), "--target", "gpu").exit_code == 0
