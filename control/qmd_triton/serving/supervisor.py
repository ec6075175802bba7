"""``qmdctl supervise``: brings back a dead backend process, or a dead server, without a person.

Two ways to run it:

- **beside the local server**: ``qmdctl up`` (and every command that starts the server on demand) starts it
  in its own process group, recorded in ``$QMD_HOME/run/supervisor.json``; ``qmdctl down`` stops it before the
  server. It watches the server that ``$QMD_HOME/run/server.json`` records, and exits when none is recorded.
- **in a container**, as the entry point that runs tritonserver as its child
  (``qmdctl supervise -- tritonserver ...``): it forwards SIGTERM and SIGINT to the server, exits with the
  server's status when the server exits (the restart policy brings the container back), and stops the server
  and exits 1 when a model cannot be brought back.

Every ``interval_s`` it compares each READY model that runs in python stub processes with the instances its
config asks for (:func:`health.backend_gaps`). Triton keeps such a model READY after a stub died and fails
its requests for good, so a model short of stubs is reloaded through the repository API (unload, then load:
Triton starts new stubs and reloads the ensembles that use the model); that needs the server to run with
``--model-control-mode=explicit --load-model=*`` and the admin key. When the reload fails or the stubs do
not come back, the local supervisor restarts the server the way it was started; a server that died is
restarted too (three failed restarts in a row and it gives up, leaving the state for ``qmdctl status``).
The local supervisor also brings back the home's Milvus Lite server (the milvus index backend without a
uri) when the one recorded died.

Example:
    >>> supervise_local(Settings.load(), threading.Event(), log=print)   # until the server is stopped
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qmd_triton.errors import QmdError, ServerError, ServerUnavailable
from qmd_triton.progress import Progress
from qmd_triton.serving import health, probes, server, shm
from qmd_triton.settings import TRITON_HTTP_PORT, Settings
from qmd_triton.system import procs
from qmd_triton.system.net import http_ok

CHECK_INTERVAL_S = 2.0
RELOAD_TIMEOUT_S = 300.0
STUBS_BACK_S = 30.0  # after a reload, how long the stubs may take to appear
MAX_RESTARTS = 3
NGC_BACKENDS = "/opt/tritonserver/backends"


@dataclass
class Target:
    """A server the supervisor can see: its HTTP API, the key to its repository API, and its stubs."""

    base_url: str
    headers: dict[str, str]
    backends: set[str]  # backends whose instances run in stub processes
    stubs: Callable[[], dict[int, str]]


def reload_model(target: Target, model: str, timeout_s: float = RELOAD_TIMEOUT_S) -> None:
    """Unloads and loads ``model`` through the repository API; raises ``ServerError`` with Triton's reason."""
    for action in ("unload", "load"):
        req = urllib.request.Request(f"{target.base_url}/v2/repository/models/{model}/{action}", data=b"{}",
                                     method="POST", headers={**target.headers, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as e:
            raise ServerError(f"{action} of {model} failed: HTTP {e.code}: {health.error_text(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerError(f"{action} of {model} failed: {getattr(e, 'reason', e)}") from None


class Watcher:
    """Finds the models of one server whose backend processes died, and reloads them."""

    def __init__(self, target: Target, log: Progress) -> None:
        self.target = target
        self.log = log
        self.expected: dict[str, int] | None = None

    def gaps(self) -> dict[str, str]:
        """READY models short of stub processes; nothing until the server has been ready once."""
        t = self.target
        try:
            if self.expected is None:
                if not http_ok(f"{t.base_url}/v2/health/ready", timeout=5.0):
                    return {}
                self.expected = health.expected_backends(t.base_url, t.headers, t.backends)
            ready = {m["name"] for m in probes.repository_index(t.base_url, timeout=5.0, headers=t.headers)
                     if m["state"] == "READY"}
        except ServerUnavailable:
            return {}  # busy or going away: the next round sees it
        expected = {m: n for m, n in self.expected.items() if m in ready}
        return health.backend_gaps(expected, t.stubs())

    def heal(self, gaps: dict[str, str]) -> bool:
        """Reloads each model; True when every one has its stubs back."""
        started = time.monotonic()
        for model, why in gaps.items():
            self.log(f"{model}: {why} (its backend died); reloading it")
            self._end_siblings(model)
            try:
                reload_model(self.target, model)
            except ServerError as e:
                self.log(f"{model}: {e}")
                return False
        deadline = time.monotonic() + STUBS_BACK_S
        left = self.gaps()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = self.gaps()
        if left:
            self.log(f"still short of backends after the reload: {', '.join(f'{m} ({w})' for m, w in left.items())}")
            return False
        self.log(f"{', '.join(gaps)} reloaded, every backend process back ({time.monotonic() - started:.1f}s)")
        return True

    def _end_siblings(self, model: str) -> None:
        """Ends the model's stubs that are still alive (the server's own, proven by ``Target.stubs``).

        Triton 2.51 never finishes unloading a model while one of its instances' stub is dead and another's
        alive: the model stays UNLOADING and the live stub lingers beside the reloaded ones for good. With
        every stub of the model gone, the unload completes at once. SIGKILL, because stubs outlive SIGTERM.
        """
        siblings = [pid for pid, m in self.target.stubs().items() if m == model]
        if not siblings:
            return
        procs.signal_pids(siblings, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(m == model for m in self.target.stubs().values()):
            time.sleep(0.05)


def local_target(settings: Settings, state: server.ServerState) -> Target:
    return Target(base_url=f"http://{state.host}:{state.http_port}", headers=server.admin_headers(settings),
                  backends=health.stub_backends(state.backends), stubs=state.stubs)


def supervise_local(settings: Settings, stop: threading.Event, log: Progress,
                    interval_s: float = CHECK_INTERVAL_S) -> int:
    """Watches the server recorded under ``settings.home`` until it is stopped; the exit status."""
    watcher: Watcher | None = None
    watched: tuple[int, int] | None = None
    failures = 0
    log(f"watching the server of {settings.home} every {interval_s:g}s")
    while not stop.is_set():
        state = server.read_state(settings)
        if state is None:
            log("no server is recorded any more (stopped); exiting")
            return 0
        run_settings = server.settings_of(state, settings.home)
        revive_index(settings, log)
        if not procs.is_running(state.owned):
            log(f"tritonserver (pid {state.pid}) is gone; restarting it")
            if not _restart(run_settings, log):
                failures += 1
                if failures >= MAX_RESTARTS:
                    log(f"{failures} restarts failed in a row; giving up (see `qmdctl status`)")
                    return 1
                stop.wait(min(60.0, 5.0 * 2 ** failures))
            else:
                failures = 0
            continue
        if watched != (state.pid, state.start_ticks):
            watcher, watched = Watcher(local_target(settings, state), log), (state.pid, state.start_ticks)
        assert watcher is not None
        gaps = watcher.gaps()
        if gaps and not watcher.heal(gaps):
            log("reloading did not bring the model back; restarting the server")
            if _restart(run_settings, log):
                failures = 0
        stop.wait(interval_s)
    log("stopped")
    return 0


def revive_index(settings: Settings, log: Progress) -> bool:
    """Restarts the home's Milvus Lite server (index.backend = "milvus" without a uri) when the one recorded
    died; True when it did. The search models reconnect on their next request; nothing acknowledged is lost
    (Milvus Lite replays its write-ahead log at start)."""
    from qmd_triton.index.config import index_config
    from qmd_triton.serving import milvus_lite

    try:
        config = index_config(settings.home)
    except QmdError:
        return False
    recorded = milvus_lite.read_state(config) if config.local else None
    if recorded is None or procs.is_running(recorded.owned):
        return False
    log(f"Milvus Lite (pid {recorded.pid}) is gone; restarting it")
    try:
        state = milvus_lite.ensure_running(config, log)
    except QmdError as e:
        log(f"restarting Milvus Lite failed: {e}")
        return False
    log(f"Milvus Lite restarted (pid {state.pid if state else '?'})")
    return True


def _restart(settings: Settings, log: Progress) -> bool:
    started = time.monotonic()
    try:
        state = server.restart(settings, progress=log)
    except QmdError as e:
        log(f"restart failed: {e}")
        return False
    log(f"tritonserver restarted (pid {state.pid}, {time.monotonic() - started:.1f}s)")
    return True


def _flag(args: list[str], name: str, default: str) -> str:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return default


def supervise_child(cmd: list[str], stop: threading.Event, log: Progress, admin_key: str = "",
                    interval_s: float = CHECK_INTERVAL_S, home: Path | None = None) -> int:
    """Runs tritonserver ``cmd`` as a child and keeps its models answering; returns the exit status to use.

    SIGTERM and SIGINT (set ``stop``) are passed on to the server, which then stops its stubs itself. With a
    ``home`` and no ``shm-region-prefix-name`` in ``cmd``, the server's stubs get a region prefix of their own
    (``shm.py``), and once the server and its stubs are gone whatever regions they left in /dev/shm are
    unlinked (a Kubernetes pod keeps its /dev/shm volume across container restarts).
    """
    prefix = ""
    if home is not None and not any("shm-region-prefix-name=" in a for a in cmd):
        prefix = shm.new_prefix(home)
        cmd = [*cmd, *shm.backend_flags(prefix)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    owned = procs.identify(proc.pid, cmd[0])
    port = int(_flag(cmd, "--http-port", str(TRITON_HTTP_PORT)))
    backends = _flag(cmd, "--backend-directory", NGC_BACKENDS)
    state = server.ServerState(pid=proc.pid, pgid=proc.pid, binary=cmd[0], log="-", host="127.0.0.1",
                               http_port=port, grpc_port=0, metrics_port=0, model_repository="",
                               started_at=time.time(), start_ticks=owned.start_ticks, backends=backends,
                               shm_prefix=prefix)
    target = Target(base_url=f"http://127.0.0.1:{port}",
                    headers={server.ADMIN_HEADER: admin_key} if admin_key else {},
                    backends=health.stub_backends(backends), stubs=state.stubs)
    watcher = Watcher(target, log)
    log(f"tritonserver running (pid {proc.pid}); watching its backends every {interval_s:g}s")
    code: int | None = None
    while code is None:
        if stop.wait(interval_s):
            break
        code = proc.poll()
        if code is not None:
            break
        gaps = watcher.gaps()
        if gaps and not watcher.heal(gaps):
            log("a model cannot be brought back; stopping the server so that the container restarts")
            code = 1
            break
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # our child, still running: provably ours
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    final = proc.returncode if code is None else code
    log(f"tritonserver exited with status {proc.returncode}")
    if prefix:
        deadline = time.monotonic() + 10  # its stubs notice that their server is gone and exit
        while state.members() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not state.members() and (left := shm.release(prefix)):
            log(f"unlinked {left} shared-memory region(s) the server left in /dev/shm")
    return final if final >= 0 else 128 - final


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (the loops end at their next check)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

