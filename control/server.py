"""Starts, finds and stops the local tritonserver (the one in the ``nvidia-pytriton`` wheel).

``start`` assembles a backend directory (pytriton's python backend, the stub for
the running Python, the project's Python-based ``onnxruntime`` backend), checks
ports and artifacts, launches the server in its own process group on 127.0.0.1,
records its pid and log file in ``$QMD_HOME/run/server.json`` and waits until it
is ready. ``stop`` ends only a server whose state file it wrote.

Example:
    >>> info = start(Settings.load(), progress=print)
    >>> status(Settings.load()).ready
    True
    >>> stop(Settings.load())
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ServerError, ServerUnavailable
from .repository import require_artifacts
from .settings import Settings

STATE_FILE = "server.json"
LOG_FILE = "tritonserver.log"
PID_FILE = "tritonserver.pid"
BACKENDS_DIR = "backends"
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
_TAIL_LINES = 15

Progress = Callable[[str], None]


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


@dataclass
class ServerStatus:
    """Liveness and per-model state, as ``qmdctl status`` shows it."""

    url: str
    live: bool
    ready: bool
    managed: bool
    pid: int | None = None
    log: str | None = None
    models: list[dict] = field(default_factory=list)


def pytriton_dir() -> Path:
    """``<site-packages>/pytriton/tritonserver`` of the installed wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("tritonserver is not installed; `pip install nvidia-pytriton==0.7.0`")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"{root}/bin/tritonserver is missing; reinstall nvidia-pytriton")
    return root


def project_backends_dir() -> Path:
    """The project's Python-based backends shipped inside the package."""
    return Path(__file__).resolve().parent / "triton_backends"


def assemble_backends(target: Path) -> Path:
    """Builds the ``--backend-directory`` for the local server and returns it.

    Rebuilt on every start (cheap: links and one small copy) so that an upgraded
    wheel or project never leaves a stale stub behind.
    """
    root = pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"pytriton ships no python backend stub for Python {version}")
    if target.exists():
        shutil.rmtree(target)
    python = target / "python"
    python.mkdir(parents=True)
    # Copies, not links: Triton refuses backend libraries that resolve outside the backend dir.
    for f in (root / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, python / f.name)
    shutil.copy2(stub, python / stub.name)
    for backend in project_backends_dir().iterdir():
        if (backend / "model.py").is_file():
            (target / backend.name).mkdir()
            shutil.copy2(backend / "model.py", target / backend.name / "model.py")
    return target


def server_environment(settings: Settings | None = None) -> dict[str, str]:
    """PATH led by this venv's bin (the stub finds site-packages through it) and libpython on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # The copied stub loses its RPATH to the wheel's bundled libraries (libcudart, ...).
    bundled = str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, bundled, env.get("LD_LIBRARY_PATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    if settings is not None:
        # The search models find the index the way the CLI does: through QMD_HOME.
        env["QMD_HOME"] = str(settings.home.resolve())
    return env


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports the kernel hands out now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def read_state(settings: Settings) -> ServerState | None:
    path = settings.run_dir / STATE_FILE
    try:
        return ServerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)  # a torn or foreign file is not a server we started
        return None


def _alive(state: ServerState) -> bool:
    """True when the recorded pid is still our tritonserver (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return cmdline == state.binary


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


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


def start(
    settings: Settings,
    *,
    log_verbose: int = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    extra_args: tuple[str, ...] = (),
    progress: Progress = lambda _m: None,
) -> ServerState:
    """Launches tritonserver and waits until it is ready; raises ``ServerError`` otherwise."""
    state = read_state(settings)
    if state and _alive(state):
        raise ServerError(
            f"a qmd-triton server is already running (pid {state.pid}, http {state.host}:{state.http_port}); "
            "run `qmdctl down` first"
        )
    ports = {"http": settings.http_port, "grpc": settings.grpc_port, "metrics": settings.metrics_port}
    if len(set(ports.values())) != len(ports):
        raise ServerError(f"the http, grpc and metrics ports must differ, got {ports}")
    for name, port in ports.items():
        if port_in_use(settings.host, port):
            raise ServerError(
                f"port {port} ({name}) on {settings.host} is already in use; pick another with --{name}-port"
            )
    require_artifacts(settings.model_repository)

    run = settings.run_dir
    run.mkdir(parents=True, exist_ok=True)
    backends = assemble_backends(run / BACKENDS_DIR)
    root = pytriton_dir()
    binary = str(root / "bin" / "tritonserver")
    log_path = run / LOG_FILE
    if log_path.exists():
        os.replace(log_path, run / (LOG_FILE + ".1"))
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
    )
    _write_state(settings, state)
    ready_url = f"http://{settings.http_url}/v2/health/ready"
    deadline = time.monotonic() + settings.startup_timeout_s
    last_note = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            _kill_group(state.pgid)
            _clear_state(settings)
            reason = _load_failure(log_path) or f"tritonserver exited with status {code}"
            raise ServerError(f"{reason}\nserver log {log_path}:\n{_log_tail(log_path)}")
        failure = _load_failure(log_path)
        if failure:
            # Triton would exit on its own once every model was tried; a stub that
            # cannot start can keep it waiting for minutes, so stop it now.
            _terminate(state, timeout=5)
            _clear_state(settings)
            raise ServerError(f"{failure}\nserver log {log_path}:\n{_log_tail(log_path)}")
        if _http_ok(ready_url):
            progress(f"tritonserver ready (pid {proc.pid}, log {log_path})")
            return state
        if time.monotonic() > deadline:
            _terminate(state)
            _clear_state(settings)
            raise ServerError(
                f"tritonserver was not ready after {settings.startup_timeout_s:.0f}s; "
                f"server log {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() - last_note > 10:
            progress("waiting for models to load ...")
            last_note = time.monotonic()
        time.sleep(0.25)


def _write_state(settings: Settings, state: ServerState) -> None:
    path = settings.run_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)
    (settings.run_dir / PID_FILE).write_text(f"{state.pid}\n")  # for systemd's PIDFile=


def _clear_state(settings: Settings) -> None:
    (settings.run_dir / STATE_FILE).unlink(missing_ok=True)
    (settings.run_dir / PID_FILE).unlink(missing_ok=True)


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _terminate(state: ServerState, timeout: float = 30.0) -> None:
    """SIGTERM to the server's process group (server and stubs), SIGKILL after ``timeout``."""
    _kill_group(state.pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(state.pid)
        if not _group_alive(state.pgid):
            return
        time.sleep(0.1)
    _kill_group(state.pgid, signal.SIGKILL)
    for _ in range(50):
        _reap(state.pid)
        if not _group_alive(state.pgid):
            return
        time.sleep(0.1)


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in a process group (the server and its backend stubs)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
                total += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def stop(settings: Settings, progress: Progress = lambda _m: None) -> ServerState:
    """Stops the server that ``start`` recorded; never touches any other process."""
    state = read_state(settings)
    if state is None:
        raise ServerError(f"no server started by qmdctl is recorded in {settings.run_dir / STATE_FILE}")
    if not _alive(state):
        _kill_group(state.pgid)  # stubs orphaned by a crashed server share its group
        _clear_state(settings)
        raise ServerError(f"the recorded server (pid {state.pid}) is not running; removed its stale state")
    progress(f"stopping tritonserver (pid {state.pid})")
    _terminate(state)
    _clear_state(settings)
    return state


def status(settings: Settings) -> ServerStatus:
    """Liveness, readiness and each model's state from the server's HTTP API."""
    state = read_state(settings)
    managed = bool(state and _alive(state))
    host, port = (state.host, state.http_port) if managed and state else (settings.host, settings.http_port)
    base = f"http://{host}:{port}"
    result = ServerStatus(
        url=f"{host}:{port}",
        live=_http_ok(f"{base}/v2/health/live"),
        ready=_http_ok(f"{base}/v2/health/ready"),
        managed=managed,
        pid=state.pid if managed and state else None,
        log=state.log if managed and state else None,
    )
    if result.live:
        result.models = repository_index(base)
    return result


def repository_index(base_url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> list[dict]:
    """``POST /v2/repository/index``: name, version, state and reason of every model.

    ``headers`` carries the key of a server started with ``--http-restricted-api=model-repository:KEY=VALUE``.
    """
    req = urllib.request.Request(f"{base_url}/v2/repository/index", data=b"{}", method="POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            entries = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServerUnavailable(f"cannot read the model index from {base_url}: {e}") from None
    return [
        {
            "name": e.get("name", ""),
            "version": e.get("version", ""),
            "state": e.get("state", "UNKNOWN"),
            "reason": e.get("reason", ""),
        }
        for e in sorted(entries, key=lambda e: e.get("name", ""))
    ]
