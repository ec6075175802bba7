"""Starts, finds and stops the local tritonserver (the one in the ``nvidia-pytriton`` wheel).

``start`` assembles a backend directory (``tritonserver.py``: pytriton's python backend, the stub for the
running Python, the project's Python-based ``onnxruntime`` backend), checks ports and artifacts, launches the
server in its own process group on 127.0.0.1, records its pid and log file in ``$QMD_HOME/run/server.json``
and waits until it is ready. ``stop`` ends only a server whose state file it wrote. The supervisor that
``start`` may launch beside it is ``supervisor_daemon.py``; what ``qmdctl status`` reads from a server is
``probes.py``.

Example:
    >>> info = start(Settings.load(), progress=print)
    >>> probes.status(Settings.load()).ready
    True
    >>> stop(Settings.load())
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qmd_triton.errors import ServerError
from qmd_triton.progress import Progress, silent
from qmd_triton.serving import shm
from qmd_triton.serving.repository import require_artifacts
from qmd_triton.serving.supervisor_daemon import (
    SUPERVISOR_LOG,
    start_supervisor,
    stop_supervisor,
    supervisor_state,
)
from qmd_triton.serving.tritonserver import STUB, assemble_backends, pytriton_dir, server_environment
from qmd_triton.settings import Settings
from qmd_triton.system import procs
from qmd_triton.system.net import WaitTimeout, http_ok, port_in_use, wait_until

STATE_FILE = "server.json"
LOG_FILE = "tritonserver.log"
PID_FILE = "tritonserver.pid"
LOCK_FILE = "start.lock"
KEY_FILE = "admin.key"
BACKENDS_DIR = "backends"
# The header that opens the restricted APIs (HTTP; gRPC prefixes it with triton-grpc-protocol-), here and in
# the compose file and the Kubernetes manifests.
ADMIN_HEADER = "admin-key"
# APIs only an operator needs: shared memory (a client that registers a backend's region can abort the
# server), model load/unload, the repository index, log and trace settings.
RESTRICTED_APIS = "shared-memory,model-repository,logging,trace"
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
_TAIL_LINES = 15


@dataclass(frozen=True)
class ServerState:
    """What ``start`` records about a server it launched."""

    pid: int
    pgid: int
    binary: str
    log: str
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    model_repository: str
    started_at: float
    start_ticks: int = -1  # the leader's start time (clock ticks since boot): proves a pid is still ours
    backends: str = ""  # the backend directory its python stubs run from
    # how it was started (log_verbose, cache_bytes, extra_args, startup_timeout_s): a restart repeats it
    options: dict = field(default_factory=dict)
    shm_prefix: str = ""  # the prefix of its stubs' regions in /dev/shm (serving/shm.py), unlinked once it is gone

    @property
    def owned(self) -> procs.Owned:
        return procs.Owned(self.pid, self.binary, self.start_ticks)

    def members(self) -> list[int]:
        """The server and the backend stubs of its process group that are provably ours."""
        if not procs.is_running(self.owned):
            return sorted(self.stubs())  # orphans of a server that died: only stubs that name it
        # The leader, and its children that have not yet become a stub (forked, still the server's binary).
        forks = [p for p in procs.owned_members(self.pgid, max(self.start_ticks, 0), [self.binary])
                 if procs.parent(p) == self.pid]
        return sorted({self.pid, *forks, *self.stubs()})

    def stubs(self) -> dict[int, str]:
        """The python backend stubs of this server, by pid, with the model each serves.

        A stub is ours only when it is in the server's process group, started no earlier than the server,
        runs from the recorded backend directory and names the server's pid as its parent on its command
        line (the stub's sixth argument), so a reused group or pid never qualifies.
        """
        if not self.backends:
            return {}
        out = {}
        for pid in procs.owned_members(self.pgid, max(self.start_ticks, 0), [self.backends]):
            args = procs.argv(pid)
            if len(args) > 5 and Path(args[0]).name == STUB and args[5] == str(self.pid):
                out[pid] = stub_model(args)
        return out


def stub_model(args: list[str]) -> str:
    """The model a backend stub serves, from its command line (``<repo>/<model>/<version>/model.py``)."""
    return Path(args[1]).parent.parent.name if len(args) > 1 else ""


def read_state(settings: Settings) -> ServerState | None:
    path = settings.run_dir / STATE_FILE
    try:
        return ServerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)  # a torn or foreign file is not a server we started
        return None


def _log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The server log's error lines (``E...``), else its last lines; tables left out."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    errors = [line for line in text if line[:1] == "E" and line[1:5].isdigit()]
    chosen = errors or [line for line in text if not line.startswith(("|", "+"))]
    return "\n".join(line[:400] for line in chosen[-lines:])


def _load_failure(path: Path) -> str | None:
    """The first model-load error in a server log, as one line."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("E") and re.search(r"failed to load '[^']+' version", line):
            message = line.split("] ", 1)[-1].strip().strip('"')
            # The python backend appends the stub's traceback as escaped newlines.
            return message.split("\\n")[0].strip()
    for line in lines:
        if "error while loading shared libraries" in line:
            return line.strip()
    return None


def run_dir(settings: Settings) -> Path:
    """``$QMD_HOME/run``, made if needed; one clear error where the home cannot be written."""
    try:
        settings.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServerError(f"cannot write {settings.run_dir} ({e.strerror or e}): starting a server needs a writable "
                          "QMD_HOME; start it from one (qmdctl --home DIR up) or point --http-port at a running one"
                          ) from None
    return settings.run_dir


def admin_key(settings: Settings) -> str:
    """The key of this home's restricted APIs, made on first use (``$QMD_HOME/run/admin.key``, mode 0600).

    The local server gets it on its command line; ``qmdctl`` commands (status, the supervisor, the exporter of
    ``up --monitor``) read it from the file.
    """
    path = settings.run_dir / KEY_FILE
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    run_dir(settings)
    key = secrets.token_hex(16)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    try:
        os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def admin_headers(settings: Settings) -> dict[str, str]:
    """Headers that open a server's restricted APIs: ``QMD_ADMIN_KEY``, else this home's key file if any."""
    key = os.environ.get("QMD_ADMIN_KEY") or ""
    if not key:
        try:
            key = (settings.run_dir / KEY_FILE).read_text().strip()
        except OSError:
            key = ""
    return {ADMIN_HEADER: key} if key else {}


def restricted_api_flags(key: str) -> list[str]:
    """Triton flags that put the operator APIs behind the ``admin-key`` header, on HTTP and on gRPC."""
    return [f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={key}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={key}"]


@contextmanager
def start_lock(settings: Settings, progress: Progress = silent) -> Iterator[None]:
    """One start at a time per home: a second ``qmdctl`` that wants the server waits for the first."""
    run_dir(settings)
    with (settings.run_dir / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("another qmdctl is starting the server; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(
    settings: Settings,
    *,
    log_verbose: int = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    extra_args: tuple[str, ...] = (),
    supervise: bool = False,
    progress: Progress = silent,
) -> ServerState:
    """Launches tritonserver and waits until it is ready; raises ``ServerError`` otherwise.

    ``supervise`` also starts ``qmdctl supervise`` beside it, which brings back a dead backend or server.
    """
    back = _wait_for_supervisor(settings, progress)
    if back is not None:
        return back
    with start_lock(settings, progress):
        _start_index(settings, progress)
        state = _start(settings, log_verbose, cache_bytes, extra_args, progress)
        if supervise:
            start_supervisor(settings, progress)
        return state


@contextmanager
def private(settings: Settings, progress: Progress = silent) -> Iterator[ServerState]:
    """A server one command starts for itself (``qmdctl eval``, ``tune``, ``bench --baselines``), stopped however
    the command ends: it returns, fails, is interrupted by Ctrl-C, or gets SIGTERM (turned into an exit that runs
    this ``finally``: status 143, one line), also while the server is still loading its models."""
    with procs.sigterm_as_exit("qmdctl: terminated (SIGTERM); stopping the server this command started"):
        try:
            yield start(settings, progress=progress)
        finally:
            try:
                stop(settings)
            except ServerError:  # none recorded (a failed start cleaned up after itself) or it died: nothing left
                pass


def _serving(settings: Settings) -> ServerState | None:
    """The recorded server, while it runs and is ready."""
    state = read_state(settings)
    if state is None or not procs.is_running(state.owned):
        return None
    return state if http_ok(f"http://{state.host}:{state.http_port}/v2/health/ready", timeout=2.0) else None


def _wait_for_supervisor(settings: Settings, progress: Progress) -> ServerState | None:
    """When this home's supervisor runs but its server is down or not ready (it died and is being brought
    back), waits for the supervisor to bring it back and returns it; None when there is nothing to wait for.
    Starting a second server then, or stopping the supervisor, would fight the restart."""
    sup = supervisor_state(settings)
    if sup is None or _serving(settings) is not None:
        return None
    progress(f"the supervisor (pid {sup.pid}) is bringing this home's server back; waiting for it")
    try:
        wait_until(lambda: _serving(settings) is not None, settings.startup_timeout_s,
                   give_up=lambda: None if procs.is_running(sup) else "the supervisor exited")
    except WaitTimeout as e:
        raise ServerError(f"the supervisor (pid {sup.pid}) did not bring the server back within "
                          f"{settings.startup_timeout_s:.0f}s ({e}); see {settings.run_dir / SUPERVISOR_LOG} and "
                          "`qmdctl status`") from None
    state = _serving(settings)
    assert state is not None
    progress(f"the server is back (pid {state.pid}), kept up by its supervisor (pid {sup.pid})")
    return state


def ensure_running(settings: Settings, progress: Progress = silent, warn: Progress = silent) -> bool:
    """Starts the local server (supervised) when nothing answers at the configured address; True when it
    started one.

    Several commands may call this at once: one starts the server, the others wait for it
    and find it ready.
    """
    if http_ok(f"http://{settings.http_url}/v2/health/ready", timeout=2.0):
        recorded = read_state(settings)
        if recorded is None or recorded.http_port != settings.http_port:
            warn(f"the server at {settings.http_url} was not started from {settings.home}; "
                 "it searches the index of the home it was started with")
        return False
    with start_lock(settings, progress):
        state = read_state(settings)
        if state is not None and procs.is_running(state.owned):
            # another command started it while this one waited for the lock
            try:
                wait_until(lambda: http_ok(f"http://{settings.http_url}/v2/health/ready"), settings.startup_timeout_s,
                           give_up=lambda: None if procs.is_running(state.owned) else "the server exited")
                return False
            except WaitTimeout as e:
                raise ServerError(f"the local server (pid {state.pid}) is running but not ready: {e}; "
                                  f"see {state.log}") from None
        progress(f"no server answers at {settings.url()}; starting the local one")
        _start_index(settings, progress)
        _start(settings, 0, DEFAULT_CACHE_BYTES, (), progress)
        start_supervisor(settings, progress)
        return True


def _start_index(settings: Settings, progress: Progress) -> None:
    """The home's Milvus Lite server, where its index lives there (``index.backend = "milvus"``, no uri): the
    search models reach it through the address it records in ``$QMD_HOME/run/milvus.json``."""
    from qmd_triton.index.config import index_config
    from qmd_triton.serving import milvus_lite

    milvus_lite.ensure_running(index_config(settings.home), progress)


def _start(settings: Settings, log_verbose: int, cache_bytes: int, extra_args: tuple[str, ...],
           progress: Progress) -> ServerState:
    state = read_state(settings)
    if state and procs.is_running(state.owned):
        raise ServerError(
            f"a qmd-triton server is already running (pid {state.pid}, http {state.host}:{state.http_port}); "
            "run `qmdctl down` first"
        )
    if state:
        _stop_members(state, timeout=1)  # stubs orphaned by a server that died (they outlive SIGTERM)
        _release_regions(state)
        _clear_state(settings)
    ports = {"http": settings.http_port, "grpc": settings.grpc_port, "metrics": settings.metrics_port}
    if len(set(ports.values())) != len(ports):
        raise ServerError(f"the http, grpc and metrics ports must differ, got {ports}")
    for name, port in ports.items():
        if port_in_use(settings.host, port):
            raise ServerError(
                f"port {port} ({name}) on {settings.host} is already in use; pick another with --{name}-port"
            )
    require_artifacts(settings.model_repository)

    run = run_dir(settings)
    backends = assemble_backends(run / BACKENDS_DIR)
    root = pytriton_dir()
    binary = str(root / "bin" / "tritonserver")
    log_path = run / LOG_FILE
    if log_path.exists():
        os.replace(log_path, run / (LOG_FILE + ".1"))
    prefix = shm.new_prefix(settings.home)
    cmd = [
        binary,
        f"--model-repository={settings.model_repository.resolve()}",
        f"--backend-directory={backends}",
        f"--cache-directory={root / 'caches'}",
        f"--cache-config=local,size={cache_bytes}",
        f"--http-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.host}",
        f"--metrics-port={settings.metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=10",
        f"--log-verbose={log_verbose}",
        "--backend-config=python,shm-default-byte-size=4194304",
        "--backend-config=python,shm-growth-byte-size=4194304",
        *shm.backend_flags(prefix),  # applies to the Python-based onnxruntime backend's stubs too (seen)
        # every model at start, as "none" would; explicit so that the supervisor can reload a model whose
        # backend process died (POST /v2/repository/models/NAME/unload, then /load)
        "--model-control-mode=explicit",
        "--load-model=*",
        *restricted_api_flags(admin_key(settings)),
        *extra_args,
    ]
    progress(f"starting tritonserver on {settings.host} (http {settings.http_port}, grpc {settings.grpc_port})")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(settings),
            start_new_session=True,
        )
    owned = procs.identify(proc.pid, binary)
    state = ServerState(
        pid=proc.pid,
        pgid=proc.pid,
        binary=binary,
        log=str(log_path),
        host=settings.host,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        metrics_port=settings.metrics_port,
        model_repository=str(settings.model_repository.resolve()),
        started_at=time.time(),
        start_ticks=owned.start_ticks,
        backends=str(backends),
        options={"log_verbose": log_verbose, "cache_bytes": cache_bytes, "extra_args": list(extra_args),
                 "startup_timeout_s": settings.startup_timeout_s},
        shm_prefix=prefix,
    )
    _write_state(settings, state)

    def failed() -> str | None:
        code = proc.poll()
        if code is not None:
            return _load_failure(log_path) or f"tritonserver exited with status {code}"
        # Triton would exit on its own once every model was tried; a stub that cannot
        # start can keep it waiting for minutes, so stop at the first load failure.
        return _load_failure(log_path)

    try:
        wait_until(lambda: http_ok(f"http://{settings.http_url}/v2/health/ready"), settings.startup_timeout_s,
                   interval_s=0.25, give_up=failed, note=lambda _s: progress("waiting for models to load ..."))
    except WaitTimeout as e:
        _stop_members(state, timeout=5)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # A stub the server was still launching can show up after the first sweep (briefly under a shell
        # or loader it execs from): sweep until the group the server led is empty, for a few seconds.
        deadline = time.monotonic() + 10
        while procs.group_members(state.pgid) and time.monotonic() < deadline:
            _stop_members(state, timeout=2)
            time.sleep(0.2)
        _release_regions(state)
        _clear_state(settings)
        reason = str(e)
        if reason.startswith("not ready after"):
            reason = f"tritonserver was {reason}"
        raise ServerError(f"{reason}\nserver log {log_path}:\n{_log_tail(log_path)}") from None
    progress(f"tritonserver ready (pid {proc.pid}, log {log_path})")
    return state


def _write_state(settings: Settings, state: ServerState) -> None:
    path = settings.run_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)
    (settings.run_dir / PID_FILE).write_text(f"{state.pid}\n")  # for systemd's PIDFile=


def _clear_state(settings: Settings) -> None:
    (settings.run_dir / STATE_FILE).unlink(missing_ok=True)
    (settings.run_dir / PID_FILE).unlink(missing_ok=True)


def _stop_members(state: ServerState, timeout: float = 30.0) -> None:
    """SIGTERM to the server and its stubs (only those provably ours), SIGKILL after ``timeout``."""
    procs.stop_members(state.members, timeout_s=timeout, leader=state.pid)


def _release_regions(state: ServerState) -> int:
    """Unlinks the server's shared-memory regions once none of its processes is left (a server that exits
    cleanly unlinks its own; one killed leaves them in /dev/shm for good); how many were left."""
    if not state.shm_prefix or procs.is_running(state.owned) or state.members():
        return 0
    return shm.release(state.shm_prefix)


def settings_of(state: ServerState, home: Path) -> Settings:
    """The settings a recorded server was started with (what a restart uses)."""
    return Settings.load(home, model_repository=Path(state.model_repository), host=state.host,
                         http_port=state.http_port, grpc_port=state.grpc_port, metrics_port=state.metrics_port,
                         startup_timeout_s=state.options.get("startup_timeout_s"))


def restart(settings: Settings, progress: Progress = silent) -> ServerState:
    """Stops the recorded server (only processes provably its own) and starts it again the way it was
    started; what the supervisor does when a reload cannot bring a model back. The supervisor is left alone."""
    with start_lock(settings, progress):
        state = read_state(settings)
        options = state.options if state else {}
        if state is not None:
            # Orphaned stubs of a dead server outlive SIGTERM and serve nobody: SIGKILL after a second.
            _stop_members(state, timeout=30 if procs.is_running(state.owned) else 1)
            _release_regions(state)
            _clear_state(settings)
        return _start(settings, int(options.get("log_verbose", 0)),
                      int(options.get("cache_bytes", DEFAULT_CACHE_BYTES)), tuple(options.get("extra_args", ())),
                      progress)


def server_pids(state: ServerState) -> list[int]:
    """The running processes of a server we started: tritonserver and its python backend stubs."""
    return state.members()


def stop(settings: Settings, progress: Progress = silent) -> ServerState:
    """Stops the server that ``start`` recorded; never touches any other process."""
    stop_supervisor(settings, progress)  # first, or it would bring the server back
    state = read_state(settings)
    if state is None:
        raise ServerError(f"no server started by qmdctl is recorded in {settings.run_dir / STATE_FILE}")
    if not procs.is_running(state.owned):
        _stop_members(state, timeout=1)  # stubs orphaned by a crashed server: only those provably ours
        _release_regions(state)
        _clear_state(settings)
        raise ServerError(f"the recorded server (pid {state.pid}) is not running; removed its stale state")
    progress(f"stopping tritonserver (pid {state.pid})")
    _stop_members(state)
    _release_regions(state)
    _clear_state(settings)
    return state
