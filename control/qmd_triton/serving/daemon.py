"""Processes a command starts in the background (the supervisor, ``qmdctl mcp --http --daemon``): started
detached, recorded in ``$QMD_HOME/run/NAME.json`` (pid, binary, start time; output in ``NAME.log``), and
stopped later only while the recorded process is provably the one started.

Example:
    >>> owned = start_detached(settings, "mcp", ["mcp", "--http", "--port", "8181"], ready=lambda: up())
    >>> stop_detached(settings, "mcp")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from qmd_triton.errors import ServerError
from qmd_triton.progress import Progress, silent
from qmd_triton.settings import Settings
from qmd_triton.system import procs
from qmd_triton.system.net import WaitTimeout, wait_until


def record_path(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.json"


def log_path(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.log"


def detached_state(settings: Settings, name: str) -> procs.Owned | None:
    """The recorded background process, while it is provably running."""
    try:
        data = json.loads(record_path(settings, name).read_text())
        owned = procs.Owned(int(data["pid"]), str(data["binary"]), int(data["start_ticks"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return owned if procs.is_running(owned) else None


def spawn(settings: Settings, name: str, args: list[str], env: dict[str, str] | None = None) -> procs.Owned:
    """Runs ``qmdctl --home HOME ARGS`` in its own session, its output in ``run/NAME.log``, and records it."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    log = log_path(settings, name)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from qmd_triton.cli import main; main()", "--home",
                                 str(settings.home), *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    owned = procs.identify(proc.pid, sys.executable)
    record = record_path(settings, name)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({**owned.as_dict(), "log": str(log), "args": args}, indent=2))
    os.replace(tmp, record)
    return owned


def start_detached(settings: Settings, name: str, args: list[str], ready: Callable[[], bool],
                   timeout_s: float = 120.0) -> procs.Owned:
    """:func:`spawn`, refused when one runs already; returns once ``ready()`` holds (raises, after stopping
    it, when it exits or stays unready)."""
    running = detached_state(settings, name)
    if running is not None:
        raise ServerError(f"the {name} server of {settings.home} already runs (pid {running.pid}); "
                          f"`qmdctl {name} stop` stops it")
    owned = spawn(settings, name, args)
    try:
        wait_until(ready, timeout_s, give_up=lambda: None if procs.is_running(owned) else "it exited")
    except WaitTimeout as e:
        stop_detached(settings, name)
        log = log_path(settings, name)
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise ServerError(f"the {name} server did not start ({e}){': ' + tail[0] if tail else ''}; see {log}") \
            from None
    return owned


def stop_detached(settings: Settings, name: str, progress: Progress = silent, label: str = "") -> procs.Owned | None:
    """Stops the recorded background process (only while it is the one started, and never this process);
    None when none ran. Its record goes either way."""
    owned = detached_state(settings, name)
    if owned is not None and owned.pid != os.getpid():
        procs.stop_members(lambda: [owned.pid] if procs.is_running(owned) else [], timeout_s=30, leader=owned.pid)
        procs.reap(owned.pid)
        progress(f"stopped {label or f'the {name} server'} (pid {owned.pid})")
    record_path(settings, name).unlink(missing_ok=True)
    return owned
