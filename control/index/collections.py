"""Collections: a name, a directory and glob masks, kept in ``$QMD_HOME/config.toml``.

Example:
    >>> store = CollectionConfig(Path("~/.local/share/qmd-triton/config.toml").expanduser())
    >>> store.add("notes", Path("~/notes").expanduser(), ["**/*.md"])
    >>> [c.name for c in store.list()]
    ['notes']
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qmd_triton.errors import ConfigError, InputError

DEFAULT_MASKS = ("**/*.md",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Directories never worth scanning inside a collection.
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", ".obsidian", ".trash"})


@dataclass(frozen=True)
class Collection:
    name: str
    path: Path
    masks: tuple[str, ...] = DEFAULT_MASKS
    ignore: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.masks:
            raise ConfigError(f"collection {self.name}: needs at least one glob mask")

    def matches(self, relative: str) -> bool:
        """True when a path relative to the collection root is selected by the masks."""
        rel = relative.replace(os.sep, "/")
        if any(_glob_match(rel, pat) for pat in self.ignore):
            return False
        return any(_glob_match(rel, pat) for pat in self.masks)

    def files(self) -> Iterator[tuple[str, Path]]:
        """``(relative path, absolute path)`` of every selected file, sorted, hidden dirs skipped."""
        root = self.path
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for fname in filenames:
                full = Path(dirpath) / fname
                rel = full.relative_to(root).as_posix()
                if self.matches(rel):
                    found.append((rel, full))
        yield from sorted(found)


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**/`` spans zero or more directories, ``*`` and ``?`` stay inside one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _glob_match(path: str, pattern: str) -> bool:
    return _glob_regex(pattern).fullmatch(path) is not None


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InputError(
            f"collection name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


class CollectionConfig:
    """Reads and atomically rewrites the ``[collections.*]`` tables of the config file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.path}: not valid TOML: {e}") from None

    def list(self) -> list[Collection]:
        data = self._read().get("collections", {})
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: [collections] must be a table")
        out = []
        for name, entry in sorted(data.items()):
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigError(f"{self.path}: collections.{name} needs a path")
            out.append(
                Collection(
                    name=name,
                    path=Path(entry["path"]).expanduser(),
                    masks=tuple(entry.get("masks", DEFAULT_MASKS)),
                    ignore=tuple(entry.get("ignore", ())),
                )
            )
        return out

    def get(self, name: str) -> Collection:
        for c in self.list():
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.list()) or "none"
        raise InputError(f"no collection named {name!r} (known: {known})")

    def add(self, name: str, path: Path, masks: list[str] | tuple[str, ...] | None = None,
            ignore: list[str] | tuple[str, ...] = ()) -> Collection:
        check_name(name)
        path = path.expanduser().resolve()
        if not path.exists():
            raise InputError(f"collection path {path} does not exist")
        if not path.is_dir():
            raise InputError(f"collection path {path} is not a directory")
        data = self._read()
        cols = data.setdefault("collections", {})
        if name in cols:
            raise InputError(f"a collection named {name!r} already exists (path {cols[name].get('path')})")
        collection = Collection(name, path, tuple(masks or DEFAULT_MASKS), tuple(ignore))
        cols[name] = {"path": str(path), "masks": list(collection.masks)}
        if collection.ignore:
            cols[name]["ignore"] = list(collection.ignore)
        self._write(data)
        return collection

    def remove(self, name: str) -> None:
        data = self._read()
        if name not in data.get("collections", {}):
            self.get(name)  # raises with the known names
        del data["collections"][name]
        self._write(data)

    def rename(self, old: str, new: str) -> None:
        check_name(new)
        data = self._read()
        cols = data.get("collections", {})
        if old not in cols:
            self.get(old)
        if new in cols:
            raise InputError(f"a collection named {new!r} already exists")
        cols[new] = cols.pop(old)
        self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".toml.tmp")
        tmp.write_text(dump_toml(data), encoding="utf-8")
        os.replace(tmp, self.path)


def dump_toml(data: dict[str, Any]) -> str:
    """Serializes the config's shapes: top-level tables of scalars, lists, and sub-tables."""
    lines: list[str] = []

    def emit_table(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if scalars or not subtables:
            if lines:
                lines.append("")
            lines.append(f"[{prefix}]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
        for k, v in subtables.items():
            emit_table(f"{prefix}.{_key(k)}", v)

    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in top.items())
    for k, v in data.items():
        if isinstance(v, dict):
            emit_table(_key(k), v)
    return "\n".join(lines) + "\n"


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} to the config file")
