"""The home's own Milvus Lite server: the milvus backend on one machine.

A Milvus Lite data directory opens in one process only, so the CLI and every Triton model instance share it
through ``milvus-lite server`` (gRPC, the API of Milvus Standalone) on 127.0.0.1. ``qmdctl up`` starts it
beside tritonserver when the home's ``[index]`` says ``backend = "milvus"`` with no ``uri``; ``qmdctl down``
stops it; the CLI's index commands start it when it is not running (as ``vsearch`` starts Triton). It is
recorded in ``$QMD_HOME/run/milvus.json`` (pid, start time, port); like the server, it is signalled only while
its pid, start time and executable still match that record.

Example:
    >>> state = ensure_running(index_config(home))
    >>> state.port
    40123
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from qmd_triton.errors import ServerError
from qmd_triton.index.config import IndexConfig
from qmd_triton.progress import Progress, silent
from qmd_triton.system import procs
from qmd_triton.system.net import WaitTimeout, free_ports, port_in_use, wait_until

LOG_FILE = "milvus-lite.log"
LOCK_FILE = "milvus.lock"
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0  # replaying a large write-ahead log at start takes a while


@dataclass(frozen=True)
class MilvusLiteState:
    pid: int
    binary: str
    start_ticks: int
    host: str
    port: int
    data_dir: str
    log: str
    started_at: float

    @property
    def owned(self) -> procs.Owned:
        return procs.Owned(self.pid, self.binary, self.start_ticks)

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"


def read_state(config: IndexConfig) -> MilvusLiteState | None:
    try:
        return MilvusLiteState(**json.loads(config.local_state.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None


def running(config: IndexConfig) -> MilvusLiteState | None:
    """The recorded server while it is provably the one this home started."""
    state = read_state(config)
    return state if state is not None and procs.is_running(state.owned) else None


def _answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _lock(config: IndexConfig) -> Iterator[None]:
    run = config.local_state.parent
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServerError(f"cannot write {run} ({e.strerror or e}): the local Milvus Lite needs a writable "
                          "QMD_HOME") from None
    with (run / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_running(config: IndexConfig, progress: Progress = silent) -> MilvusLiteState | None:
    """Starts the home's Milvus Lite server unless it runs; None for a backend that needs none (sqlite, or a
    Milvus at a configured URI)."""
    if not config.local:
        return None
    state = running(config)
    if state is not None and _answers(state.host, state.port):
        return state
    with _lock(config):
        state = running(config)
        if state is None:
            return _start(config, progress)
        try:
            wait_until(lambda: _answers(state.host, state.port), STARTUP_TIMEOUT_S,
                       give_up=lambda: None if procs.is_running(state.owned) else "Milvus Lite exited")
        except WaitTimeout as e:
            raise ServerError(f"the local Milvus Lite (pid {state.pid}) is running but does not answer: {e}; "
                              f"see {state.log}") from None
        return state


def _start(config: IndexConfig, progress: Progress) -> MilvusLiteState:
    try:
        import milvus_lite  # noqa: F401
    except ImportError:
        raise ServerError("the milvus backend needs Milvus Lite here: pip install 'qmd-triton[milvus]'") from None
    port = config.port or free_ports(1, HOST)[0]
    if port_in_use(HOST, port):
        raise ServerError(f"port {port} on {HOST} is already in use; set another index.port (0: any free port)")
    data = config.local_data
    data.mkdir(parents=True, exist_ok=True)
    log_path = config.local_state.parent / LOG_FILE
    if log_path.exists():
        os.replace(log_path, log_path.with_suffix(".log.1"))
    binary = sys.executable
    progress(f"starting Milvus Lite on {HOST}:{port} (data {data})")
    with log_path.open("ab") as log:
        proc = subprocess.Popen([binary, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host", HOST,
                                 "--port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    owned = procs.identify(proc.pid, binary)
    state = MilvusLiteState(pid=proc.pid, binary=binary, start_ticks=owned.start_ticks, host=HOST, port=port,
                            data_dir=str(data), log=str(log_path), started_at=time.time())
    tmp = config.local_state.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, config.local_state)
    try:
        wait_until(lambda: _answers(HOST, port), STARTUP_TIMEOUT_S, interval_s=0.2,
                   give_up=lambda: None if proc.poll() is None else f"Milvus Lite exited with status {proc.poll()}")
    except WaitTimeout as e:
        procs.stop_members(lambda: [proc.pid] if procs.is_running(owned) else [], timeout_s=5, leader=proc.pid)
        config.local_state.unlink(missing_ok=True)
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-10:]) if log_path.exists() else ""
        raise ServerError(f"Milvus Lite did not start: {e}\nlog {log_path}:\n{tail}") from None
    progress(f"Milvus Lite ready (pid {proc.pid}, log {log_path})")
    return state


def stop(config: IndexConfig, progress: Progress = silent, timeout_s: float = 30.0) -> bool:
    """Stops the recorded server (only while it is provably ours); False when none ran."""
    state = read_state(config)
    if state is None:
        return False
    ours = procs.is_running(state.owned)
    if ours:
        progress(f"stopping Milvus Lite (pid {state.pid})")
        procs.stop_members(lambda: [state.pid] if procs.is_running(state.owned) else [], timeout_s=timeout_s,
                           leader=state.pid)
    config.local_state.unlink(missing_ok=True)
    return ours
