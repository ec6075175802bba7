"""The doors a test starts as real processes (``qmdctl api``, ``qmdctl mcp --http``), on free loopback ports,
stopped by the test that started them (and only those)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qmd_triton.settings import Settings
from qmd_triton.system.net import free_ports

QMDCTL = str(Path(sys.executable).parent / "qmdctl")
TOKEN = "test-token-0123456789abcdef"


def door_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a qmdctl that uses the test's server and home; no token unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMD_")}
    env.update({"QMD_HOME": str(settings.home), "QMD_MODEL_REPOSITORY": str(settings.model_repository),
                "QMD_HTTP_PORT": str(settings.http_port),
                "QMD_GRPC_PORT": str(settings.grpc_port), "QMD_METRICS_PORT": str(settings.metrics_port)})
    env.update(extra)
    return env


class Door:
    """One ``qmdctl`` door process listening on ``port``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = port or free_ports(1)[0]
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([QMDCTL, *args, "--port", str(self.port)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                with socket.create_connection((host, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{args[0]} did not listen on {self.port}:\n{log.read_text()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Door:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def sample_notes_indexed(settings: Settings, folder: Path, collection: str) -> Iterator[Settings]:
    """The sample notes copied to ``folder``, indexed and embedded as ``collection`` in the test server's home
    for the block; the collection is removed after it."""
    import shutil

    from .conftest import ASSETS
    from .triton.test_search import qmd

    shutil.copytree(ASSETS / "notes", folder)
    qmd(settings, "collection", "add", str(folder), "--name", collection)
    qmd(settings, "update")
    qmd(settings, "embed")
    try:
        yield settings
    finally:
        qmd(settings, "collection", "remove", collection)
