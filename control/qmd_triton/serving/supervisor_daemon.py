"""The supervisor of a home as a background process: started beside the local server (``qmdctl up``, and every
command that starts the server on demand), found, and stopped before the server. What it does while it runs
is ``supervisor.py``; how it is spawned and recorded is ``daemon.py``.

Its record is ``$QMD_HOME/run/supervisor.json`` (pid, binary, start time), its output ``run/supervisor.log``,
and its pid also in ``run/supervisor.pid`` for systemd's ``PIDFile=``.

Example:
    >>> owned = start_supervisor(settings, progress=print)
    >>> supervisor_state(settings).pid == owned.pid
    True
    >>> stop_supervisor(settings)
    True
"""

from __future__ import annotations

from qmd_triton.progress import Progress, silent
from qmd_triton.serving import daemon
from qmd_triton.serving.tritonserver import server_environment
from qmd_triton.settings import Settings
from qmd_triton.system import procs

SUPERVISOR = "supervisor"  # its record run/supervisor.json and its log run/supervisor.log (serving/daemon.py)
SUPERVISOR_FILE = f"{SUPERVISOR}.json"
SUPERVISOR_LOG = f"{SUPERVISOR}.log"
SUPERVISOR_PID_FILE = f"{SUPERVISOR}.pid"


def supervisor_state(settings: Settings) -> procs.Owned | None:
    """The supervisor ``start_supervisor`` recorded, while it is provably running."""
    return daemon.detached_state(settings, SUPERVISOR)


def start_supervisor(settings: Settings, progress: Progress = silent) -> procs.Owned:
    """Starts ``qmdctl supervise`` for this home in its own process group (unless one runs already) and
    records it in ``$QMD_HOME/run/supervisor.json``; ``server.stop`` stops it first."""
    running = supervisor_state(settings)
    if running is not None:
        return running
    owned = daemon.spawn(settings, SUPERVISOR, ["supervise"], env=server_environment(settings))
    (settings.run_dir / SUPERVISOR_PID_FILE).write_text(f"{owned.pid}\n")  # systemd's PIDFile=
    progress(f"supervisor running (pid {owned.pid}, log {daemon.log_path(settings, SUPERVISOR)}): it brings back "
             "a dead backend or server")
    return owned


def stop_supervisor(settings: Settings, progress: Progress = silent) -> bool:
    """Stops the recorded supervisor, only while it is provably the one we started; False when none ran."""
    owned = daemon.stop_detached(settings, SUPERVISOR, progress, label="the supervisor")
    (settings.run_dir / SUPERVISOR_PID_FILE).unlink(missing_ok=True)
    return owned is not None

