"""Shared fixtures: the exported model repository and a real tritonserver on free loopback ports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from qmd_triton import server
from qmd_triton.server import free_ports
from qmd_triton.settings import PROJECT_ROOT, Settings

REPO = PROJECT_ROOT / "model_repository"
ASSETS = Path(__file__).parent / "assets"
SHARED = PROJECT_ROOT.parent / "shared"


def make_settings(home: Path, repo: Path = REPO, **kw) -> Settings:
    http, grpc, metrics = free_ports(3)
    return Settings.load(
        home, model_repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, startup_timeout_s=90, **kw
    )


@pytest.fixture(scope="session")
def exported_repo() -> Path:
    """The project's model repository with every model exported (each export is idempotent)."""
    from qmd_triton.exporters import decoder_onnx, embedding_onnx, reranker_onnx

    embedding_onnx.export_embedding(embedding_onnx.default_source(), REPO)
    reranker_onnx.export_reranker(reranker_onnx.default_source(), REPO)
    decoder_onnx.export_decoder(decoder_onnx.default_gguf(), REPO)
    return REPO


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
                shutil.copytree(src, target / src.name, copy_function=_link_or_copy)
        return target

    return _copy


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.getsize(src) > 1_000_000:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def tritonserver_pids() -> set[int]:
    """Every running tritonserver and python backend stub on this machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if cmd.endswith(b"tritonserver") or cmd.endswith(b"triton_python_backend_stub"):
                pids.add(int(entry.name))
    return pids


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = None
    for item in items:
        if "tests/triton/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.triton)
        if item.get_closest_marker("gpu"):
            gpu = _cuda() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA); run on the device machine"))


def processes_of(home: Path) -> set[int]:
    """Processes whose command line names this QMD home: its server, stubs, Prometheus, exporter."""
    needle = str(home).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids
