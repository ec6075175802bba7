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


def test_a_request_slower_than_the_client_timeout_says_so_and_names_the_setting(tmp_path, monkeypatch):
    """A hung server is not a missing one: the message says it timed out and how to allow more."""
    import socket
    import threading

    from qmd_triton.errors import RequestTimeout
    from qmd_triton.serving.client import QmdClient

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)], daemon=True).start()
    monkeypatch.setenv("QMD_REQUEST_TIMEOUT_S", "0.5")
    settings = Settings.load(tmp_path)
    assert settings.request_timeout_s == 0.5
    port = listener.getsockname()[1]
    for protocol in ("http", "grpc"):
        with QmdClient(f"127.0.0.1:{port}", protocol, settings.request_timeout_s) as client:
            with pytest.raises(RequestTimeout, match=r"qmd_search did not answer within 0.5s at .*: the server is "
                                                     r"up but busy.*request_timeout_s.*QMD_REQUEST_TIMEOUT_S"):
                client.search("qmd_search", "batching", "")
    listener.close()


def test_the_cli_shows_the_default_ports_and_limits_that_the_code_uses(tmp_path: Path):
    from click.testing import CliRunner

    from qmd_triton import settings
    from qmd_triton.cli import cli

    def shown(*command: str) -> str:
        result = CliRunner().invoke(cli, [*command, "--help"], env={"QMD_HOME": str(tmp_path)}, terminal_width=400)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    api, mcp, up = shown("api"), shown("mcp"), shown("up")
    assert f"Port to listen on. [env var: QMD_API_PORT; default: {settings.API_PORT}]" in api
    assert f"[default: {settings.API_MAX_TEXTS}" in api.split("--max-texts", 1)[1].split("--max-body-mb")[0]
    assert f"default: {settings.API_MAX_BODY_BYTES / 2**20}" in api.split("--max-body-mb", 1)[1]
    assert f"Port to listen on. [env var: QMD_MCP_PORT; default: {settings.MCP_HTTP_PORT}]" in mcp
    for text in (api, mcp, up):
        for port in (settings.TRITON_HTTP_PORT, settings.TRITON_GRPC_PORT, settings.TRITON_METRICS_PORT):
            assert f"[default: {port}]" in text
    s = Settings.load(tmp_path)
    assert (s.http_port, s.grpc_port, s.metrics_port) == (settings.TRITON_HTTP_PORT, settings.TRITON_GRPC_PORT,
                                                          settings.TRITON_METRICS_PORT)
