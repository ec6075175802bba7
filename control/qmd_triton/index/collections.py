"""Collections: a name, a directory and glob masks, kept in ``$QMD_HOME/config.toml``.

The config file is the user's: it is rewritten with a style-preserving TOML library, so
comments, ordering and formatting survive ``collection add/remove/rename`` and ``context``.

A collection's entry::

    [collections.notes]
    path = "/home/me/notes"
    masks = ["**/*.md"]                # what to index (include)
    ignore = ["drafts/**"]             # what to leave out (exclude)
    update_cmd = "git pull --ff-only"  # run in the folder before `qmdctl update` scans it
    follow_links = false               # index symlinks that lead outside the folder

    [collections.notes.context]        # descriptions returned with every hit below a path prefix
    "/" = "Personal notes"
    "/journal/2025" = "Daily notes from 2025"

    [context]
    global = "Notes and docs of the qmd-triton team"

Example:
    >>> config = CollectionConfig(Path("~/.local/share/qmd-triton/config.toml").expanduser())
    >>> config.add("notes", Path("~/notes").expanduser(), ["**/*.md"])
    >>> [c.name for c in config.list()]
    ['notes']
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qmd_triton.errors import ConfigError, InputError
from qmd_triton.system.files import atomic_write_text

DEFAULT_MASKS = ("**/*.md",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Directories never worth scanning inside a collection (besides hidden ones).
SKIP_DIRS = frozenset({"node_modules", "__pycache__", ".venv", "venv"})
GLOBAL_CONTEXT = "global"


@dataclass(frozen=True)
class Skipped:
    """A file a scan left out, and why (said once in `update`'s report)."""

    path: str
    reason: str


@dataclass
class Scan:
    """What a collection's scan found: the files to index and what it left out."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # files that match the masks but cannot be indexed
    excluded: int = 0  # matching files under hidden or tool folders (.git, node_modules, ...), never indexed


@dataclass(frozen=True)
class Collection:
    name: str
    path: Path
    masks: tuple[str, ...] = DEFAULT_MASKS
    ignore: tuple[str, ...] = field(default=())
    update_cmd: str = ""
    follow_links: bool = False
    context: tuple[tuple[str, str], ...] = ()  # (path prefix starting with "/", description)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.masks:
            raise ConfigError(f"collection {self.name}: needs at least one glob mask")

    def matches(self, relative: str) -> bool:
        """True when a path relative to the collection root is selected by the masks."""
        rel = relative.replace(os.sep, "/")
        if any(glob_match(rel, pat) for pat in self.ignore):
            return False
        return any(glob_match(rel, pat) for pat in self.masks)

    def context_for(self, relative: str) -> list[str]:
        """The descriptions of every context prefix that holds the path, shortest prefix first."""
        path = "/" + relative.replace(os.sep, "/").lstrip("/")
        found = [(prefix, text) for prefix, text in self.context
                 if path == prefix or path.startswith(prefix.rstrip("/") + "/")]
        return [text for _, text in sorted(found, key=lambda x: len(x[0]))]

    def scan(self) -> Scan:
        """Every selected file, sorted; hidden and tool folders left out (counted), unusable files reported.

        A symlink is followed only while it stays inside the collection (unless ``follow_links``);
        a name that is not valid UTF-8, a dangling link and an unreadable folder are reported, never fatal.
        """
        root = self.path
        real_root = root.resolve()
        scan = Scan()

        def unreadable(e: OSError) -> None:
            rel = _relative(Path(e.filename), root) if e.filename else "?"
            scan.skipped.append(Skipped(printable(rel), f"unreadable folder ({e.strerror})"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
            here = Path(dirpath)
            kept = []
            for d in sorted(dirnames):
                if d in SKIP_DIRS or d.startswith("."):
                    scan.excluded += self._count_matches(here / d, root)
                else:
                    kept.append(d)
            dirnames[:] = kept
            for fname in filenames:
                full = here / fname
                rel = _relative(full, root)
                if not self.matches(rel):
                    continue
                reason = self._unusable(full, rel, real_root)
                if reason:
                    scan.skipped.append(Skipped(printable(rel), reason))
                else:
                    scan.files.append((rel, full))
        scan.files.sort()
        return scan

    def files(self) -> Iterator[tuple[str, Path]]:
        """``(relative path, absolute path)`` of every selected file, sorted."""
        yield from self.scan().files

    def _unusable(self, full: Path, rel: str, real_root: Path) -> str:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return "the file name is not valid UTF-8; rename the file"
        if full.is_symlink():
            try:
                target = full.resolve(strict=True)
            except (FileNotFoundError, RuntimeError, OSError):
                return "a symlink that leads nowhere (or to itself)"
            if not self.follow_links and not target.is_relative_to(real_root):
                return (f"a symlink to {target}, outside the collection; set follow_links = true for "
                        f"collection {self.name} to index it")
        return ""

    def _count_matches(self, folder: Path, root: Path) -> int:
        n = 0
        for dirpath, _dirs, filenames in os.walk(folder):
            for fname in filenames:
                if self.matches(_relative(Path(dirpath) / fname, root)):
                    n += 1
        return n


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (kept by the OS as surrogates) shown as ``\\xe9``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


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


def glob_match(path: str, pattern: str) -> bool:
    """Whether a ``/``-separated relative path matches a collection glob (``**/*.md``, ``guide/*.md``)."""
    return _glob_regex(pattern).fullmatch(path) is not None


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InputError(
            f"collection name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def _strings(value: Any, key: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"collections.{name}.{key} must be a list of glob patterns")
    return tuple(value)


def _prefix(prefix: str) -> str:
    """A context prefix as stored: ``/`` then the path inside the collection, no trailing slash."""
    cleaned = "/" + prefix.strip().strip("/")
    if ".." in cleaned.split("/"):
        raise InputError(f"a context path may not contain '..': {prefix!r}")
    return cleaned


class CollectionConfig:
    """Reads the ``[collections.*]`` and ``[context]`` tables of the config file and rewrites them in place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.path}: not valid TOML: {e}") from None

    def _document(self) -> Any:
        """The file as a style-preserving document (comments and layout kept)."""
        import tomlkit

        self._read()  # a malformed file is one clear error, not a tomlkit traceback
        try:
            return tomlkit.parse(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return tomlkit.document()

    def _write(self, doc: Any) -> None:
        import tomlkit

        try:
            atomic_write_text(self.path, tomlkit.dumps(doc))
        except OSError as e:
            raise ConfigError(f"cannot write {self.path}: {e.strerror or e}; the collections are unchanged") from None

    def list(self) -> list[Collection]:
        data = self._read().get("collections", {})
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: [collections] must be a table")
        out = []
        for name, entry in sorted(data.items()):
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigError(f"{self.path}: collections.{name} needs a path")
            context = entry.get("context", {})
            if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
                raise ConfigError(f"{self.path}: collections.{name}.context must map path prefixes to text")
            out.append(
                Collection(
                    name=name,
                    path=Path(entry["path"]).expanduser(),
                    masks=_strings(entry.get("masks", list(DEFAULT_MASKS)), "masks", name),
                    ignore=_strings(entry.get("ignore", []), "ignore", name),
                    update_cmd=str(entry.get("update_cmd", "")),
                    follow_links=bool(entry.get("follow_links", False)),
                    context=tuple(sorted((_prefix(k), v) for k, v in context.items())),
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
            ignore: list[str] | tuple[str, ...] = (), update_cmd: str = "") -> Collection:
        import tomlkit

        check_name(name)
        path = path.expanduser()
        try:
            path = path.resolve(strict=True)
        except FileNotFoundError:
            raise InputError(f"collection path {path} does not exist") from None
        except (RuntimeError, OSError) as e:
            raise InputError(f"collection path {path} cannot be resolved ({e})") from None
        if not path.is_dir():
            raise InputError(f"collection path {path} is not a directory")
        doc = self._document()
        cols = doc.setdefault("collections", tomlkit.table(is_super_table=True))
        if name in cols:
            raise InputError(f"a collection named {name!r} already exists (path {cols[name].get('path')})")
        collection = Collection(name, path, tuple(masks or DEFAULT_MASKS), tuple(ignore), update_cmd)
        entry = tomlkit.table()
        entry["path"] = str(path)
        entry["masks"] = list(collection.masks)
        if collection.ignore:
            entry["ignore"] = list(collection.ignore)
        if update_cmd:
            entry["update_cmd"] = update_cmd
        cols[name] = entry
        self._write(doc)
        return collection

    def set(self, name: str, **values: Any) -> Collection:
        """Changes settings of a collection (``masks``, ``ignore``, ``update_cmd``, ``follow_links``)."""
        self.get(name)
        doc = self._document()
        entry = doc["collections"][name]
        for key, value in values.items():
            if value is None:
                continue
            if value in ((), [], "") and key in entry:
                del entry[key]
            elif value not in ((), [], ""):
                entry[key] = list(value) if isinstance(value, tuple) else value
        self._write(doc)
        return self.get(name)

    def remove(self, name: str) -> None:
        self.get(name)  # raises with the known names
        doc = self._document()
        del doc["collections"][name]
        self._write(doc)

    def rename(self, old: str, new: str) -> None:
        check_name(new)
        self.get(old)
        doc = self._document()
        cols = doc["collections"]
        if new in cols:
            raise InputError(f"a collection named {new!r} already exists")
        cols[new] = cols[old]
        del cols[old]
        self._write(doc)

    # -- contexts ------------------------------------------------------------------------------------

    def global_context(self) -> str:
        value = self._read().get("context", {}).get(GLOBAL_CONTEXT, "")
        return value if isinstance(value, str) else ""

    def contexts(self) -> list[tuple[str, str]]:
        """``(target, text)`` for every context: ``/`` for the global one, ``collection/prefix`` otherwise."""
        out = [("/", self.global_context())] if self.global_context() else []
        for c in self.list():
            out += [(c.name + (prefix if prefix != "/" else ""), text) for prefix, text in c.context]
        return out

    def set_context(self, target: str, text: str) -> str:
        """Attaches a description to ``/`` (everything), a collection, or ``collection/path/prefix``."""
        import tomlkit

        if not text.strip():
            raise InputError("a context needs some text")
        doc = self._document()
        if target.strip() in ("/", ""):
            doc.setdefault("context", tomlkit.table())[GLOBAL_CONTEXT] = text
            self._write(doc)
            return "/"
        name, prefix = self._split(target)
        table = doc["collections"][name].setdefault("context", tomlkit.table())
        table[prefix] = text
        self._write(doc)
        return f"{name}{prefix if prefix != '/' else ''}"

    def remove_context(self, target: str) -> None:
        doc = self._document()
        if target.strip() in ("/", ""):
            if GLOBAL_CONTEXT not in doc.get("context", {}):
                raise InputError("there is no global context")
            del doc["context"][GLOBAL_CONTEXT]
        else:
            name, prefix = self._split(target)
            table = doc["collections"][name].get("context", {})
            if prefix not in table:
                known = ", ".join(t for t, _ in self.contexts()) or "none"
                raise InputError(f"no context on {target!r} (contexts: {known})")
            del table[prefix]
        self._write(doc)

    def _split(self, target: str) -> tuple[str, str]:
        name, _, rest = target.strip().partition("/")
        self.get(name)
        return name, _prefix(rest)


class ContextMap:
    """Contexts by collection and path prefix, for labelling hits: every description that applies to a
    document, the global one first, then its collection's from the shortest prefix to the longest."""

    SEPARATOR = " / "

    def __init__(self, global_text: str = "", collections: dict[str, Collection] | None = None) -> None:
        self.global_text = global_text
        self.collections = collections or {}

    @classmethod
    def load(cls, config_file: Path) -> ContextMap:
        """The contexts of a config file; an unreadable file has none (search never fails for a label)."""
        config = CollectionConfig(config_file)
        try:
            return cls(config.global_context(), {c.name: c for c in config.list()})
        except (ConfigError, InputError, OSError):
            return cls()

    @classmethod
    def watch(cls, config_file: Path) -> Callable[[], ContextMap]:
        """A function returning the contexts of ``config_file``, reread only when the file changes (its time,
        size or inode); a search model calls it per request."""
        last: list[Any] = [object(), cls()]

        def current() -> ContextMap:
            try:
                st = config_file.stat()
                stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                stamp = None
            if stamp != last[0]:
                last[:] = [stamp, cls.load(config_file)]
            return last[1]

        return current

    def __bool__(self) -> bool:
        return bool(self.global_text) or any(c.context for c in self.collections.values())

    def for_path(self, collection: str, path: str) -> str:
        texts = [self.global_text] if self.global_text else []
        c = self.collections.get(collection)
        if c is not None:
            texts += c.context_for(path)
        return self.SEPARATOR.join(texts)
