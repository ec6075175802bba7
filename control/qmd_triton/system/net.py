"""The local network: free ports, whether a URL answers, waiting until one does.

Example:
    >>> http, grpc, metrics = free_ports(3)
    >>> wait_until_ok(f"http://127.0.0.1:{http}/v2/health/ready", timeout_s=30, alive=proc.poll)
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable


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
    """True when ``host:port`` cannot be bound now (an IPv6 address or a name binds in its own family)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError:
            return True
    return False


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


def http_ok(url: str, timeout: float = 1.0, headers: dict[str, str] | None = None) -> bool:
    """True when ``GET url`` answers 200 within the timeout."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class WaitTimeout(Exception):
    """``wait_until`` ran out of time."""


def wait_until(check: Callable[[], bool], timeout_s: float, *, interval_s: float = 0.2,
               give_up: Callable[[], str | None] = lambda: None,
               note: Callable[[float], None] = lambda _elapsed: None, note_every_s: float = 10.0) -> None:
    """Polls ``check`` until it is true.

    ``give_up`` returns a reason to stop early (a process that exited), raised as ``WaitTimeout``
    with that reason; ``note`` is called every ``note_every_s`` with the seconds waited so far.
    """
    started = last_note = time.monotonic()
    while True:
        reason = give_up()
        if reason:
            raise WaitTimeout(reason)
        if check():
            return
        now = time.monotonic()
        if now - started > timeout_s:
            raise WaitTimeout(f"not ready after {timeout_s:.0f}s")
        if now - last_note >= note_every_s:
            note(now - started)
            last_note = now
        time.sleep(interval_s)
