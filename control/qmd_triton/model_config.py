"""Triton ``config.pbtxt`` files: parsed with protobuf's text format, rewritten keeping their comments.

Every reader of a model config (the index's fingerprint, the server's repository
checks, ``validate``, ``tune``, ``placement``, the TensorRT exporter) goes through
here, so a syntax error is always reported the same way: ``file:line:column: why``.

Example:
    >>> cfg = parse_config(Path("model_repository/qmd_tokenize/config.pbtxt"))
    >>> string_parameters(cfg)["length_buckets"]
    ''
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qmd_triton.errors import ConfigError

CONFIG_FILE = "config.pbtxt"


class ConfigSyntaxError(ConfigError):
    """A config.pbtxt that protobuf's text format cannot parse, with where and why."""

    def __init__(self, path: Path, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path, self.line, self.column, self.message = path, line, column, message


def parse_config(path: Path) -> Any:
    """config.pbtxt -> ``ModelConfig`` protobuf; a syntax error names file and line."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ConfigSyntaxError(path, e.GetLine(), e.GetColumn(), str(e).split(" : ", 1)[-1]) from None


def leading_comments(path: Path) -> str:
    """The comment lines a config starts with (kept when a tool rewrites the config)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def write_config(path: Path, config: Any, header: str | None = None) -> None:
    """Writes a ``ModelConfig`` in text format, keeping the file's leading comments (or ``header``)."""
    from google.protobuf import text_format

    if header is None:
        header = leading_comments(path) if Path(path).is_file() else ""
    Path(path).write_text(header + text_format.MessageToString(config), encoding="utf-8")


def string_parameters(config: Any) -> dict[str, str]:
    """The ``parameters { key: ... value { string_value: ... } }`` entries of a config."""
    return {k: v.string_value for k, v in config.parameters.items()}


def backend_of(config: Any) -> str:
    """``python``, ``onnxruntime``, ``ensemble``, ``tensorrt_plan``, ...: what serves the model."""
    if config.platform == "ensemble":
        return "ensemble"
    return config.platform or config.backend
