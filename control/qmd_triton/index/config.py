"""Where a home's index lives: the ``[index]`` table of ``config.toml``.

The backend is chosen per home::

    [index]
    backend = "milvus"                 # "sqlite" (default) or "milvus"
    uri = "http://milvus:19530"        # empty: the home's own Milvus Lite server, started by `qmdctl up`
    token = ""                         # optional: "user:password" or an API key
    prefix = "qmd"                     # the Milvus collections are PREFIX_docs, PREFIX_chunks, PREFIX_meta, PREFIX_keys
    port = 0                           # the local Milvus Lite server's port (0: any free port)

``QMD_INDEX_BACKEND``, ``QMD_MILVUS_URI``, ``QMD_MILVUS_TOKEN`` and ``QMD_MILVUS_PREFIX`` override the file
(containers and Kubernetes set them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qmd_triton.errors import ConfigError, IndexUnavailable
from qmd_triton.settings import config_table

INDEX_FILE = "index.sqlite"  # sqlite: $QMD_HOME/index.sqlite
BACKENDS = ("sqlite", "milvus")
# milvus: the chunk vectors' ANN indexes and the BM25 analyzers of English text it can be asked for (what each
# is built with: qmd_triton.index.milvus.schema, which a unit test keeps in step)
VECTOR_INDEXES = ("HNSW", "AUTOINDEX", "IVF_FLAT", "FLAT")
ANALYZERS = ("standard", "english")

DEFAULT_PREFIX = "qmd"
LOCAL_STATE = "milvus.json"  # $QMD_HOME/run/milvus.json: the local Milvus Lite server (serving.milvus_lite)
LOCAL_DATA = "milvus"  # $QMD_HOME/milvus: its data directory
_KEYS = {"backend", "uri", "token", "prefix", "port", "vector_index", "analyzer"}
_ENV = {"QMD_INDEX_BACKEND": "backend", "QMD_MILVUS_URI": "uri", "QMD_MILVUS_TOKEN": "token",
        "QMD_MILVUS_PREFIX": "prefix", "QMD_MILVUS_VECTOR_INDEX": "vector_index", "QMD_MILVUS_ANALYZER": "analyzer"}


@dataclass(frozen=True)
class IndexConfig:
    """Where a home's index lives."""

    home: Path
    backend: str = "sqlite"
    uri: str = ""  # milvus: empty means the home's local Milvus Lite server
    token: str = ""
    prefix: str = DEFAULT_PREFIX
    port: int = 0
    vector_index: str = "HNSW"  # milvus: the chunk vectors' ANN index, fixed when the collections are created
    analyzer: str = "standard"  # milvus: the BM25 analyzer of English text, fixed when the collections are created
    file: Path | None = None  # sqlite: a file other than $home/index.sqlite (a model's index_path parameter)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"index.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not self.prefix or not self.prefix.replace("_", "").isalnum() or not self.prefix[0].isalpha():
            raise ConfigError(f"index.prefix must start with a letter and hold only letters, digits and _, "
                              f"got {self.prefix!r}")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ConfigError(f"index.port must be a port number (0: any free port), got {self.port!r}")
        if self.vector_index not in VECTOR_INDEXES:
            raise ConfigError(f"index.vector_index must be one of {', '.join(VECTOR_INDEXES)}, got "
                              f"{self.vector_index!r}")
        if self.analyzer not in ANALYZERS:
            raise ConfigError(f"index.analyzer must be one of {', '.join(ANALYZERS)}, got {self.analyzer!r}")

    @property
    def sqlite_path(self) -> Path:
        return self.file or self.home / INDEX_FILE

    @property
    def local(self) -> bool:
        """True for the milvus backend served by this home's own Milvus Lite (``qmdctl up`` starts it)."""
        return self.backend == "milvus" and not self.uri

    @property
    def local_state(self) -> Path:
        return self.home / "run" / LOCAL_STATE

    @property
    def local_data(self) -> Path:
        return self.home / LOCAL_DATA

    def resolved_uri(self) -> str:
        """The Milvus URI: the configured one, else the local server's from its state file."""
        if self.uri:
            return self.uri
        try:
            state = json.loads(self.local_state.read_text())
            return f"http://{state['host']}:{int(state['port'])}"
        except (OSError, ValueError, KeyError, TypeError):
            raise IndexUnavailable(f"the local Milvus Lite server of {self.home} is not running; `qmdctl up` "
                                   "starts it (index.backend = \"milvus\" with no index.uri)") from None

    def describe(self) -> str:
        """Where the index is, for messages and ``status``."""
        if self.backend == "sqlite":
            return str(self.sqlite_path)
        where = self.uri or f"local Milvus Lite ({self.local_data})"
        return f"milvus {where}, collections {self.prefix}_*"

    def share_with(self, home: Path) -> None:
        """Lets another home read this index (a ``qmdctl tune`` trial): the SQLite file linked into it, or the
        same Milvus named in its config.toml (start the local Milvus Lite first: :attr:`local`)."""
        home.mkdir(parents=True, exist_ok=True)
        if self.backend == "sqlite":
            if self.sqlite_path.exists():
                (home / INDEX_FILE).symlink_to(self.sqlite_path.resolve())
            return
        write_index_table(home, backend="milvus", uri=self.resolved_uri(), token=self.token, prefix=self.prefix)

    def with_(self, **changes: Any) -> IndexConfig:
        return replace(self, **changes)


def index_config(home: Path, **overrides: Any) -> IndexConfig:
    """The ``[index]`` table of ``$home/config.toml``, under the ``QMD_*`` variables and ``overrides``."""
    home = Path(home).expanduser()
    values: dict[str, Any] = dict(_read_table(home / "config.toml"))
    for var, key in _ENV.items():
        if os.environ.get(var):
            values[key] = os.environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return IndexConfig(home=home, **values)


def _read_table(path: Path) -> dict[str, Any]:
    table = config_table(path, "index", _KEYS)
    for key in ("backend", "uri", "token", "prefix", "vector_index", "analyzer"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{path}: index.{key} must be a string")
    return table


def write_index_table(home: Path, **values: Any) -> None:
    """Sets keys of the ``[index]`` table of ``$home/config.toml`` (comments and layout kept); an empty string
    removes a key."""
    import tomlkit

    from qmd_triton.system.files import atomic_write_text

    path = Path(home) / "config.toml"
    _read_table(path)  # a malformed file is one clear error
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        doc = tomlkit.document()
    table = doc.setdefault("index", tomlkit.table())
    for key, value in values.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown [index] key {key!r}")
        if value in ("", None):
            table.pop(key, None)
        else:
            table[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomlkit.dumps(doc))
