from pathlib import Path

import pytest

from qmd_triton.errors import ConfigError
from qmd_triton.serving.repository import load_repository


def test_load_repository_raises_when_folder_does_not_exist(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_repository(tmp_path / "nope")
