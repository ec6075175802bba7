"""How the core reports long work without printing: callbacks that each door renders.

``Progress`` takes one human-readable message ("scanning notes (~/notes)");
``Count`` takes ``(done, total)`` for work that can be counted (chunks embedded).
The CLI writes them to stderr (a bar on a terminal, periodic lines elsewhere);
servers log them; tests collect them.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]
Count = Callable[[int, int], None]
Warn = Callable[[str], None]


def silent(_message: str) -> None:
    """A ``Progress`` that drops every message."""


def uncounted(_done: int, _total: int) -> None:
    """A ``Count`` that drops every update."""
