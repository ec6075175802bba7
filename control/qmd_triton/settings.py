"""Settings: flag > ``QMD_*`` environment variable > config file > default.

The CLI resolves flags and environment variables through Click; this module
supplies the config file layer and the defaults, so that both the CLI and
library users get the same answer.

Example:
    >>> s = Settings.load()
    >>> s.http_url
    '127.0.0.1:8000'
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from qmd_triton.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
# The source checkout this package runs from, if any (an editable install or a clone: the package is
# control/qmd_triton/ in it); None for a wheel.
PROJECT_ROOT: Path | None = next((p for p in PACKAGE_DIR.parents[:2] if (p / "pyproject.toml").is_file()), None)
# The model repository's configs and adapters as the wheel carries them (build outputs excluded).
PACKAGED_REPOSITORY = PACKAGE_DIR / "model_repository"
REPOSITORY_DIR = "model_repository"

# Default ports and limits, each defined here once: Settings, the CLI's options and the doors read them.
TRITON_HTTP_PORT = 8000  # Triton's own defaults
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
API_PORT = 18765  # `qmdctl api`, on QMD-Python's port
API_MAX_TEXTS = 2048  # texts one /embed, /v1/embeddings or /rerank request may carry
API_MAX_BODY_BYTES = 16 * 1024 * 1024
MCP_HTTP_PORT = 8181  # `qmdctl mcp --http`


def default_home() -> Path:
    """``$QMD_HOME``, else ``$XDG_DATA_HOME/qmd-triton``, else ``~/.local/share/qmd-triton``."""
    env = os.environ.get("QMD_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "qmd-triton"


def default_datasets() -> Path:
    """Where the shared evaluation sets are: ``$QMD_DATASETS``, else ``../shared/datasets`` beside the checkout
    (or beside the working directory when running from an installed wheel)."""
    env = os.environ.get("QMD_DATASETS")
    if env:
        return Path(env).expanduser()
    return (PROJECT_ROOT or Path.cwd()).parent / "shared" / "datasets"


def checkout_path(*parts: str) -> Path | None:
    """A path inside the source checkout (``perf/results``, ``.tools``), or None for an installed wheel."""
    return PROJECT_ROOT.joinpath(*parts) if PROJECT_ROOT is not None else None


def default_model_repository(home: Path) -> Path:
    """``model_repository/`` of the checkout; for an installed wheel, ``$QMD_HOME/model_repository``.

    The wheel's copy of the repository is read-only in spirit (site-packages), while
    ``qmdctl export`` writes ONNX files into the repository, so an installed package
    serves a repository under the data directory, filled from the packaged configs
    (see :func:`materialize_repository`).
    """
    if PROJECT_ROOT is not None and (PROJECT_ROOT / REPOSITORY_DIR).is_dir():
        return PROJECT_ROOT / REPOSITORY_DIR
    return home / REPOSITORY_DIR


def materialize_repository(target: Path, template: Path = PACKAGED_REPOSITORY) -> int:
    """Copies the packaged configs and adapters into ``target`` where a file is missing; returns how many.

    Files already there are left alone: a config tuned with ``qmdctl tune --apply`` survives an upgrade.
    """
    if not template.is_dir() or template.resolve() == target.resolve():
        return 0
    copied = 0
    for src in sorted(template.rglob("*")):
        if src.is_dir() or "__pycache__" in src.parts:
            continue
        dst = target / src.relative_to(template)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied += 1
    return copied


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one qmdctl invocation."""

    home: Path
    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = TRITON_HTTP_PORT
    grpc_port: int = TRITON_GRPC_PORT
    metrics_port: int = TRITON_METRICS_PORT
    protocol: str = "http"
    startup_timeout_s: float = 120.0
    request_timeout_s: float = 60.0
    models_dir: Path | None = None  # downloads; None means $QMD_HOME/models

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"{name} must be a port number between 1 and 65535, got {port!r}")
        if self.protocol not in ("http", "grpc"):
            raise ConfigError(f"protocol must be http or grpc, got {self.protocol!r}")

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).expanduser() if self.models_dir else self.home / "models"

    @property
    def index_path(self) -> Path:
        return self.home / "index.sqlite"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def eval_results(self) -> Path:
        """The latest ``qmdctl eval`` scores per set, read by the Prometheus exporter."""
        return self.home / "eval" / "last.json"

    @property
    def results_dir(self) -> Path:
        """Where benchmark reports go by default: ``perf/results`` in a checkout, else under the home."""
        return checkout_path("perf", "results") or self.home / "perf"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def url(self, protocol: str | None = None) -> str:
        return self.grpc_url if (protocol or self.protocol) == "grpc" else self.http_url

    @classmethod
    def load(cls, home: Path | None = None, **overrides: Any) -> Settings:
        """Reads ``config.toml`` under the home and applies explicit overrides.

        Overrides whose value is ``None`` are ignored, so Click options can be
        passed straight through.
        """
        home = Path(home).expanduser() if home else default_home()
        values: dict[str, Any] = {}
        values.update(_read_config(home / "config.toml"))
        values.update(_environment())
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["home"] = Path(values.get("home") or home).expanduser()
        if values.get("model_repository"):
            values["model_repository"] = Path(values["model_repository"]).expanduser()
        else:
            values["model_repository"] = default_model_repository(values["home"])
            if values["model_repository"] == values["home"] / REPOSITORY_DIR:
                materialize_repository(values["model_repository"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_SERVER_KEYS = {f.name for f in fields(Settings)} - {"home"}


# Settings without a command-line flag of their own, read from the environment (over the config file).
_ENV = {"QMD_REQUEST_TIMEOUT_S": ("request_timeout_s", float), "QMD_STARTUP_TIMEOUT": ("startup_timeout_s", float)}


def _environment() -> dict[str, Any]:
    out = {}
    for var, (key, kind) in _ENV.items():
        raw = os.environ.get(var)
        if raw:
            try:
                out[key] = kind(raw)
            except ValueError:
                raise ConfigError(f"{var} must be a number, got {raw!r}") from None
    return out


def config_table(path: Path, name: str, keys: set[str] | frozenset[str]) -> dict[str, Any]:
    """The ``[name]`` table of a TOML config file, its keys checked against ``keys``; a missing file is empty.

    A file that cannot be read or parsed, a ``name`` that is not a table or an unknown key is one ``ConfigError``
    naming the file.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [{name}]: {', '.join(unknown)}")
    return table


def _read_config(path: Path) -> dict[str, Any]:
    """The ``[server]`` table of the config file; a missing file is empty."""
    return config_table(path, "server", _SERVER_KEYS)
