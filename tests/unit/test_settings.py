from pathlib import Path

import pytest

from qmd_triton.errors import ConfigError
from qmd_triton.settings import Settings


def test_settings_read_config_file_when_no_override(tmp_path: Path):
    (tmp_path / "config.toml").write_text("[server]\nhttp_port = 9100\n")
    assert Settings.load(tmp_path).http_port == 9100


def test_settings_override_beats_config_file(tmp_path: Path):
    (tmp_path / "config.toml").write_text("[server]\nhttp_port = 9100\n")
    assert Settings.load(tmp_path, http_port=9200).http_port == 9200


def test_settings_raise_one_line_when_config_is_malformed(tmp_path: Path):
    (tmp_path / "config.toml").write_text("[server\nhttp_port = ")
    with pytest.raises(ConfigError, match=r"config.toml: not valid TOML"):
        Settings.load(tmp_path)


def test_settings_raise_when_config_has_unknown_key(tmp_path: Path):
    (tmp_path / "config.toml").write_text("[server]\nhtp_port = 1\n")
    with pytest.raises(ConfigError, match="unknown key.*htp_port"):
        Settings.load(tmp_path)


def test_settings_raise_when_port_out_of_range(tmp_path: Path):
    with pytest.raises(ConfigError, match="http_port must be a port number"):
        Settings.load(tmp_path, http_port=70000)
