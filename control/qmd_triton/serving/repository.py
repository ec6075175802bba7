"""A Triton model repository on disk: its model folders, their configs and the artifacts they need.

Example:
    >>> for m in load_repository(Path("model_repository")):
    ...     print(m.name, m.backend)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmd_triton import contracts
from qmd_triton.errors import ArtifactMissing, ConfigError
from qmd_triton.model_config import CONFIG_FILE, backend_of, parse_config

GPU_CONFIG = Path("configs") / "gpu.pbtxt"
# What each backend loads from a version folder when the pipeline's contracts do not say.
DEFAULT_ARTIFACTS = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "onnxruntime_onnx": "model.onnx",
    "tensorrt_plan": "model.plan",
    "tensorrt": "model.plan",
}


@dataclass(frozen=True)
class RepoModel:
    """One model folder: its parsed config (``config.pbtxt``, or another the server is told to use)."""

    path: Path
    config: Any
    config_path: Path

    @property
    def name(self) -> str:
        return self.config.name or self.path.name

    @property
    def backend(self) -> str:
        """``python``, ``onnxruntime``, ``ensemble``, ``tensorrt_plan``, ..."""
        return backend_of(self.config)

    def versions(self) -> list[Path]:
        return sorted((p for p in self.path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))

    @property
    def model_file(self) -> str | None:
        """The file the backend loads (``model.py``, ``model.onnx``, ``model.plan``), None for ensembles."""
        default = DEFAULT_ARTIFACTS.get(self.backend)
        if default is None or self.backend == "python":
            return default
        return self.config.default_model_filename or default

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
        return (self.model_file,) if self.model_file else ()


def model_folders(repo: Path) -> list[Path]:
    """The repository's model folders (hidden and ``_`` folders are not models), sorted."""
    return sorted(p for p in Path(repo).iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def read_model(folder: Path, target: str = "local") -> RepoModel:
    """A model folder's config for a target: ``configs/gpu.pbtxt`` where the gpu target has one."""
    path = folder / CONFIG_FILE
    if target == "gpu" and (folder / GPU_CONFIG).is_file():
        path = folder / GPU_CONFIG
    return RepoModel(folder, parse_config(path), path)


def load_repository(repo: Path) -> list[RepoModel]:
    """Every model folder with a config.pbtxt, sorted by name."""
    if not Path(repo).is_dir():
        raise ConfigError(f"model repository {repo} does not exist")
    models = [read_model(folder) for folder in model_folders(repo) if (folder / CONFIG_FILE).is_file()]
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
