"""Processes we start, and proof that a pid is still one of them before anything signals it.

A pid in a state file may have been reused by an unrelated process since it was
written. A process is ours only when its pid, its start time (``/proc/PID/stat``
field 22, in clock ticks since boot) and its executable all match what was
recorded when we started it. Groups are signalled member by member, and only the
members that prove to be ours.

Example:
    >>> proc = subprocess.Popen([binary, ...], start_new_session=True)
    >>> me = identify(proc.pid, binary)
    >>> is_running(me)
    True
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def process_group(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields and len(fields) > 2 else None


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == "Z"


def argv(pid: int) -> list[str]:
    """A process's command line, or [] when it is gone, a zombie or not readable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def executable(pid: int) -> str | None:
    """argv[0] of a process (what it was started as), or None when it is gone or not readable."""
    args = argv(pid)
    return args[0] if args else None


@dataclass(frozen=True)
class Owned:
    """A process we started: enough to recognise it later and never mistake another for it."""

    pid: int
    binary: str
    start_ticks: int

    def as_dict(self) -> dict:
        return asdict(self)


def identify(pid: int, binary: str) -> Owned:
    """Records a process we just started (call right after ``Popen``)."""
    ticks = start_ticks(pid)
    return Owned(pid, binary, ticks if ticks is not None else -1)


def is_running(owned: Owned) -> bool:
    """True when the pid still belongs to the process we recorded, alive (not a zombie)."""
    ticks = start_ticks(owned.pid)
    if ticks is None or (owned.start_ticks >= 0 and ticks != owned.start_ticks) or is_zombie(owned.pid):
        return False
    return executable(owned.pid) == owned.binary


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_group(int(entry.name)) == pgid:
            out.append(int(entry.name))
    return out


def owned_members(pgid: int, since_ticks: int, binaries: Iterable[str]) -> list[int]:
    """Members of a group we started that are provably ours: started no earlier than its leader,
    running one of the executables (or from inside one of the folders) we launch there."""
    allowed = tuple(binaries)
    out = []
    for pid in group_members(pgid):
        ticks = start_ticks(pid)
        exe = executable(pid) or ""
        if ticks is not None and ticks >= since_ticks and any(exe == b or exe.startswith(b.rstrip("/") + "/")
                                                               for b in allowed):
            out.append(pid)
    return out


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap(pid: int, wait_s: float = 0.0) -> None:
    """Collects the exit status of a child of ours so it does not linger as a zombie, waiting up to
    ``wait_s`` for it to exit; a pid that is not our child is left alone."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def stop_members(members: Callable[[], list[int]], timeout_s: float = 30.0, leader: int | None = None) -> bool:
    """Stops ``members()``: SIGTERM to the leader first (a server stops and reaps its own children), then to
    whatever outlived it, SIGKILL to what is left after ``timeout_s``; True when none is left.

    ``leader`` is signalled first and reaped (when it is our child) only if it is one of the members or
    already a zombie: a pid that is not provably ours is never waited on either.
    """
    first = members()
    if leader is not None and leader not in first and not is_zombie(leader):
        leader = None

    def left() -> list[int]:
        if leader is not None:
            reap(leader)
        return [p for p in members() if not is_zombie(p)]

    def wait(until: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not until():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    deadline = time.monotonic() + timeout_s
    if leader is not None and leader in first:
        signal_pids([leader], signal.SIGTERM)
        wait(lambda: leader not in left(), timeout_s)
    signal_pids(left(), signal.SIGTERM)
    if not wait(lambda: not left(), max(1.0, deadline - time.monotonic())):
        signal_pids(left(), signal.SIGKILL)
        wait(lambda: not left(), 5.0)
    if leader is not None:
        reap(leader, wait_s=5.0)
    return not left()


def group_rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of the given processes (a server and its backend stubs)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


@contextmanager
def sigterm_as_exit(message: str) -> Iterator[None]:
    """Within the block, SIGTERM (kill, timeout(1), systemd, a CI runner) prints ``message`` on stderr and raises
    ``SystemExit(143)`` instead of ending the process on the spot, so the ``finally`` blocks it unwinds through
    run and what the block started is stopped. A second SIGTERM ends the process at once, also in the cleanup of
    an enclosing block. The handler is the block's only: a long-running command keeps its own way of stopping.
    Outside the main thread (where Python sets no handler) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def terminated(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        fired.append(signum)
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        # once it fired the process is on its way out: an outer block's handler is not armed again
        signal.signal(signal.SIGTERM, signal.SIG_DFL if fired or previous is None else previous)
