"""Nothing of ours signals a process that is not provably ours: stale state files whose pid (and process group)
now belong to someone else are cleared, and that someone is left alone.

Each test starts its own dummy (`sleep`, in its own process group) to stand for the stranger, and ends it itself.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.ops.monitor import MONITOR_FILE
from qmd_triton.serving import server, supervisor_daemon
from qmd_triton.settings import Settings
from qmd_triton.system import procs


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen]:
    """A process of this test in its own group, playing one that reused a recorded pid."""
    proc = subprocess.Popen(["/bin/sleep", "300"], start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # ours: started above
        proc.wait(timeout=10)


def never_signalled(proc: subprocess.Popen) -> bool:
    """Whether no fatal signal was sent to ``proc`` up to now, known at once rather than by waiting to see it die:
    Linux fixes a process's exit signal when the first fatal signal is sent to it (before kill(2) returns), so
    ending it now with SIGUSR2, which nothing of ours sends, leaves it -SIGUSR2 only if nothing came first."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGUSR2)  # ours: started by the stranger fixture
    return proc.wait(timeout=10) == -signal.SIGUSR2


def qmd(home: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def write_server_state(settings: Settings, pid: int, ticks: int, binary: str) -> None:
    state = server.ServerState(pid=pid, pgid=pid, binary=binary, log=str(settings.run_dir / "tritonserver.log"),
                               host="127.0.0.1", http_port=1, grpc_port=2, metrics_port=3,
                               model_repository="/nowhere", started_at=time.time() - 3600, start_ticks=ticks,
                               backends=str(settings.run_dir / "backends"))
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    server._write_state(settings, state)


@pytest.mark.parametrize("case", ["other start time", "other executable", "same start time and executable name"])
def test_down_leaves_a_process_alone_when_the_recorded_pid_now_belongs_to_it(tmp_path: Path, stranger, case: str):
    settings = Settings.load(tmp_path / "home")
    ticks = procs.start_ticks(stranger.pid)
    binary = {"other start time": "/bin/sleep", "other executable": "/opt/tritonserver/bin/tritonserver",
              "same start time and executable name": "sleep-not-quite"}[case]
    write_server_state(settings, stranger.pid, ticks - 1 if case == "other start time" else ticks, binary)
    result = qmd(settings.home, "down")
    assert result.exit_code == 1
    assert f"Error: the recorded server (pid {stranger.pid}) is not running; removed its stale state" in result.output
    assert never_signalled(stranger)
    assert server.read_state(settings) is None


def test_down_leaves_a_foreign_process_group_alone(tmp_path: Path, stranger):
    """The recorded pgid is the stranger's group, and the recorded server pid is gone: its group is not ours."""
    settings = Settings.load(tmp_path / "home")
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_server_state(settings, gone.pid, 1, "/opt/tritonserver/bin/tritonserver")
    state = json.loads((settings.run_dir / server.STATE_FILE).read_text())
    state["pgid"] = stranger.pid
    state["backends"] = "/bin"  # even a backend dir that holds the stranger's executable
    state["start_ticks"] = 0
    (settings.run_dir / server.STATE_FILE).write_text(json.dumps(state))
    assert qmd(settings.home, "down").exit_code == 1
    assert never_signalled(stranger)


def test_down_leaves_a_process_alone_when_the_monitor_state_is_stale(tmp_path: Path, stranger):
    settings = Settings.load(tmp_path / "home")
    settings.run_dir.mkdir(parents=True)
    ticks = procs.start_ticks(stranger.pid)
    (settings.run_dir / MONITOR_FILE).write_text(json.dumps({
        "prometheus": {"pid": stranger.pid, "binary": "/usr/bin/prometheus", "start_ticks": ticks, "port": 1},
        "exporter": {"pid": stranger.pid, "binary": "/bin/sleep", "start_ticks": ticks - 5, "port": 2},
    }))
    started = time.monotonic()
    result = qmd(settings.home, "down")
    assert time.monotonic() - started < 10  # nothing waited for: nothing was ours
    assert result.exit_code == 1 and "Error: no server started by qmdctl is recorded" in result.output
    assert never_signalled(stranger)
    assert not (settings.run_dir / MONITOR_FILE).exists()


def test_owned_members_never_include_a_process_started_before_the_group_leader(stranger):
    ticks = procs.start_ticks(stranger.pid)
    assert procs.owned_members(stranger.pid, ticks + 1, ["/bin/sleep"]) == []
    assert procs.owned_members(stranger.pid, ticks, ["/bin/sleep"]) == [stranger.pid]
    assert not procs.is_running(procs.Owned(stranger.pid, "/bin/sleep", ticks + 1))
    assert procs.is_running(procs.Owned(stranger.pid, "/bin/sleep", ticks))


def test_down_leaves_a_process_alone_when_the_supervisor_state_is_stale(tmp_path: Path, stranger):
    settings = Settings.load(tmp_path / "home")
    settings.run_dir.mkdir(parents=True)
    ticks = procs.start_ticks(stranger.pid)
    (settings.run_dir / supervisor_daemon.SUPERVISOR_FILE).write_text(json.dumps(
        {"pid": stranger.pid, "binary": "/bin/sleep", "start_ticks": ticks - 1}))
    assert supervisor_daemon.supervisor_state(settings) is None  # not provably ours
    started = time.monotonic()
    result = qmd(settings.home, "down")
    assert time.monotonic() - started < 10
    assert result.exit_code == 1 and "Error: no server started by qmdctl is recorded" in result.output
    assert never_signalled(stranger)
    assert not (settings.run_dir / supervisor_daemon.SUPERVISOR_FILE).exists()


SIGTERM_CHILD = """
import signal, sys, time
from qmd_triton.system import procs
with procs.sigterm_as_exit("stopping what the block started"):
    try:
        print("in", flush=True)
        time.sleep(60)
    finally:
        print("cleaned up", flush=True)
print("after", flush=True)
"""


def sigterm_after(code: str, lines: list[str]) -> tuple[int, str, str]:
    """Runs ``code`` in a Python of ours, sends it SIGTERM once it printed ``lines``; its status, the rest of its
    output and its stderr."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert [proc.stdout.readline() for _ in lines] == lines
        proc.send_signal(signal.SIGTERM)  # ours: started above
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_sigterm_inside_the_block_runs_its_cleanup_and_outside_ends_the_process_as_before():
    """`sigterm_as_exit` (what eval, tune and bench hold their own server with): SIGTERM inside the block exits 143
    through its `finally`, with the block's one line; the handler is the block's only, so after it a SIGTERM ends
    the process on the spot again (a process-wide handler made the MCP stdio server hang on its stdin reader)."""
    assert sigterm_after(SIGTERM_CHILD, ["in\n"]) == (143, "cleaned up\n", "stopping what the block started\n")
    after_the_block = SIGTERM_CHILD.replace("time.sleep(60)", "pass") + "time.sleep(60)\n"
    assert sigterm_after(after_the_block, ["in\n", "cleaned up\n", "after\n"]) == (-signal.SIGTERM, "", "")


NESTED_CHILD = """
import signal, time
from qmd_triton.system import procs
with procs.sigterm_as_exit("outer"):
    try:
        with procs.sigterm_as_exit("inner"):
            try:
                print("in", flush=True)
                time.sleep(60)
            finally:
                print("inner cleanup", flush=True)
    finally:
        print("outer cleanup, SIGTERM now", "default" if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
              else "handled", flush=True)
"""


def test_sigterm_in_nested_blocks_runs_both_cleanups_once_and_leaves_the_next_sigterm_fatal():
    """eval holds its Milvus Lite in one block and its server in another inside it: a SIGTERM in the inner one
    unwinds both cleanups with one line, and a second SIGTERM during the outer cleanup would end the process."""
    assert sigterm_after(NESTED_CHILD, ["in\n"]) == (143, "inner cleanup\nouter cleanup, SIGTERM now default\n",
                                                     "inner\n")

