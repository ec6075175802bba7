"""Files: content hashes, atomic writes, and copies of model trees that share their large files.

Example:
    >>> sha256_file(Path("model_repository/qmd_embed_model/1/model.onnx"))[:12]
    'be79ebd25084'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

LINK_ABOVE_BYTES = 1_000_000


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tree_fingerprint(paths: Iterable[Path], root: Path) -> str:
    """Identifies a set of files by their names (relative to ``root``), sizes and mtimes; cheap, no reads."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(paths):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def link_or_copy(src: str, dst: str) -> None:
    """Hard-links files above 1 MB (model weights), copies the rest; a copy where a link is refused."""
    import shutil


    if os.path.getsize(src) > LINK_ABOVE_BYTES:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def copy_tree_linked(src: Path, dst: Path, names: Iterable[str] | None = None,
                     ignore: Iterable[str] = ("__pycache__",)) -> Path:
    """A working copy of a tree (``names``: only these top-level entries) whose weights are hard links.

    Configs are real copies, so they can be rewritten; never write through a linked weight file
    (unlink it and write a new one).
    """
    import shutil

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        if names is not None and entry.name not in names:
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name, copy_function=link_or_copy,
                            ignore=shutil.ignore_patterns(*ignore))
        elif entry.is_file():
            link_or_copy(str(entry), str(dst / entry.name))
    return dst


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a file so that a reader sees the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written temporary file behind
        raise
