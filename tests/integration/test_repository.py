"""The tests of repository that need the exported repository's artifacts: the integration tier (DESIGN.md section 6);
the rest are in tests/unit/test_repository.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qmd_triton.errors import ArtifactMissing, ConfigError
from qmd_triton.serving.repository import load_repository, missing_artifacts, require_artifacts


def test_require_artifacts_names_missing_onnx_and_the_fix(copy_repo):
    repo = copy_repo()
    (repo / "qmd_embed_model" / "1" / "model.onnx").unlink()
    with pytest.raises(ArtifactMissing, match=r"qmd_embed_model/1/model.onnx is missing; run `qmdctl export`"):
        require_artifacts(repo)


def test_missing_artifacts_is_empty_when_exported(exported_repo: Path):
    assert missing_artifacts(exported_repo) == []


def test_load_repository_reports_file_and_line_when_pbtxt_is_malformed(copy_repo):
    repo = copy_repo(("qmd_tokenize",))
    (repo / "qmd_tokenize" / "config.pbtxt").write_text('name: "qmd_tokenize"\nbackend: "python"\nmax_batch_size: [\n')
    with pytest.raises(ConfigError, match=r"qmd_tokenize/config.pbtxt:3:\d+: "):
        load_repository(repo)
