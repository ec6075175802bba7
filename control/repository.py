"""Reading a Triton model repository: configs parsed with protobuf, artifacts checked.

Example:
    >>> for m in load_repository(Path("model_repository")):
    ...     print(m.name, m.backend)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contracts
from .errors import ArtifactMissing, ConfigError

CONFIG_FILE = "config.pbtxt"


def parse_config(path: Path) -> Any:
    """config.pbtxt -> ``ModelConfig`` protobuf; a syntax error names file and line."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ConfigSyntaxError(path, e.GetLine(), e.GetColumn(), str(e).split(" : ", 1)[-1]) from None


class ConfigSyntaxError(ConfigError):
    """A config.pbtxt that protobuf's text format cannot parse, with where and why."""

    def __init__(self, path: Path, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path, self.line, self.column, self.message = path, line, column, message


def leading_comments(path: Path) -> str:
    """The comment lines a config starts with (kept when a tool rewrites the config)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass(frozen=True)
class RepoModel:
    """One model folder: its parsed config and where it lives."""

    path: Path
    config: Any

    @property
    def name(self) -> str:
        return self.config.name or self.path.name

    @property
    def backend(self) -> str:
        """``python``, ``onnxruntime``, ``ensemble``, ``tensorrt_plan``, ..."""
        if self.config.platform == "ensemble":
            return "ensemble"
        if self.config.platform:
            return self.config.platform
        return self.config.backend

    def versions(self) -> list[Path]:
        return sorted((p for p in self.path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))

    def required_artifacts(self) -> tuple[str, ...]:
        """Files each version folder must hold for the server to load the model."""
        try:
            spec = contracts.model(self.name)
        except KeyError:
            spec = None
        if spec is not None and spec.artifacts:
            if self.backend == "tensorrt_plan":  # the same model served as a TensorRT plan
                return tuple("model.plan" if a == "model.onnx" else a for a in spec.artifacts)
            return spec.artifacts
        default = self.config.default_model_filename
        return {
            "python": ("model.py",),
            "onnxruntime": (default or "model.onnx",),
            "onnxruntime_onnx": (default or "model.onnx",),
            "tensorrt_plan": (default or "model.plan",),
        }.get(self.backend, ())


def load_repository(repo: Path) -> list[RepoModel]:
    """Every model folder with a config.pbtxt, sorted by name."""
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} does not exist")
    models = []
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cfg = folder / CONFIG_FILE
        if cfg.is_file():
            models.append(RepoModel(folder, parse_config(cfg)))
    if not models:
        raise ConfigError(f"model repository {repo} holds no model (no */config.pbtxt)")
    return models


def missing_artifacts(repo: Path) -> list[Path]:
    """Artifact paths that a server would need and that are absent."""
    missing = []
    for m in load_repository(repo):
        versions = m.versions()
        if not versions:
            missing.append(m.path / "1")
            continue
        for v in versions:
            missing.extend(v / a for a in m.required_artifacts() if not (v / a).is_file())
    return missing


def require_artifacts(repo: Path) -> None:
    """Raises one clear error naming the first missing artifact and how to make it."""
    missing = missing_artifacts(repo)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ArtifactMissing(f"{missing[0]} is missing{more}; run `qmdctl export` to build the models")
