"""Faults of the disk and the hands, without a server: a damaged index, a full disk, a read-only home, bytes that
are not UTF-8, odd references. Each is one `Error:` line naming the right cause, and nothing is lost.

The full disk and the read-only home are real: a small tmpfs (remounted read-only) where this user may mount
one, and a file size limit (``ulimit -f``) in a child process everywhere.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qmd_triton.index.sqlite.index import SqliteIndex

from ..conftest import need, need_tool
from .test_index_cli import Qmd

WORDS = "alpha beta gamma delta batching triton server index vector query rerank model embedding note".split()


def write_notes(folder: Path, count: int, seed: int, words: int = 300, numbered: bool = False) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        body = " ".join(rng.choice(WORDS) + (str(rng.randint(0, 99999)) if numbered else "") for _ in range(words))
        (folder / f"n{seed}_{i}.md").write_text(f"# Note {seed} {i}\n\n{body}\n")


def qmdctl(home: Path, *args: str, preexec=None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """qmdctl in a child process (for limits that must not touch the test process)."""
    return subprocess.run([sys.executable, "-c", "from qmd_triton.cli import main; main()", "--home", str(home),
                           *args], capture_output=True, input=stdin, preexec_fn=preexec, timeout=300)


def error_lines(result) -> list[str]:
    text = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    return [ln for ln in text.splitlines() if ln.startswith("Error:")]


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small real file system of our own, unmounted afterwards; skips where this user cannot mount (fails in
    CI, conftest ``need``)."""
    where.mkdir(parents=True, exist_ok=True)
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    r = subprocess.run([need_tool("mount", "apt-get install mount"), "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                        str(where)], capture_output=True)
    need(r.returncode == 0, f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        # lazily: a failed statement kept alive by a traceback still holds the index file open
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def damaged(tmp_path: Path) -> Qmd:
    """An index of 300 notes whose middle pages are overwritten (the header and schema pages are intact)."""
    notes = tmp_path / "notes"
    write_notes(notes, 300, seed=1, words=400)
    q = Qmd(tmp_path / "home")
    q("collection", "add", str(notes), "--name", "n")
    q("update")
    path = q.home / "index.sqlite"
    with SqliteIndex.open(path) as store:
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = path.stat().st_size // 4096
    rng = random.Random(7)
    with path.open("r+b") as f:
        for page in range(pages // 2, pages // 2 + 20):
            f.seek(page * 4096)
            f.write(rng.randbytes(4096))
    return q


@pytest.mark.parametrize("args", [["search", "batching"], ["search", "triton", "-n", "200", "--full"], ["update"],
                                  ["multi-get", "n/*.md"]])
def test_a_damaged_index_is_one_line_naming_the_file_and_what_to_do(damaged: Qmd, args: list[str]):
    path = damaged.home / "index.sqlite"
    before = path.read_bytes()
    assert damaged.error(*args) == (
        f"Error: {path} is damaged (database disk image is malformed); restore a backup (`qmdctl index restore "
        f"BACKUP`), or move it aside (mv {path} {path}.damaged) and rebuild it with `qmdctl update` and `qmdctl embed`")
    assert path.read_bytes() == before  # left alone for whoever wants to look at it


def indexed_home(home: Path, notes: Path, count: int, seed: int) -> Qmd:
    """A home with one collection ``n`` of ``count`` generated notes, updated."""
    write_notes(notes, count, seed=seed)
    q = Qmd(home)
    q("collection", "add", str(notes), "--name", "n")
    q("update")
    return q


def test_a_full_disk_says_so_and_changes_nothing(tmp_path: Path):
    with tmpfs(tmp_path / "small", "1m") as small:
        notes = tmp_path / "notes"
        q = indexed_home(small / "home", notes, 20, seed=2)
        before = q.counts()["documents"]
        write_notes(notes, 400, seed=3, numbered=True)  # far more than the 1 MB left
        path = small / "home" / "index.sqlite"
        assert q.error("update") == (
            f"Error: the disk holding {path} is full (database or disk is full); nothing was changed: free some "
            "space and run the command again")
        assert q.counts()["documents"] == before
        assert json.loads(q("search", "batching", "--json").stdout)  # still searchable


def test_a_file_size_limit_says_so_and_changes_nothing(tmp_path: Path):
    notes = tmp_path / "notes"
    q = indexed_home(tmp_path / "home", notes, 20, seed=2)
    before = q.counts()["documents"]
    write_notes(notes, 300, seed=3, numbered=True)
    path = q.home / "index.sqlite"
    limit = path.stat().st_size + 64 * 1024

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = qmdctl(q.home, "update", preexec=small_files)
    assert result.returncode == 1
    assert error_lines(result) == [
        f"Error: {path} reached this process's file size limit (ulimit -f: {limit} bytes) (disk I/O error); "
        "nothing was changed: raise the limit and run the command again"]
    assert q.counts()["documents"] == before


def test_a_read_only_home_searches_and_says_read_only_when_asked_to_change(tmp_path: Path):
    notes = tmp_path / "notes"
    q = indexed_home(tmp_path / "home", notes, 5, seed=4)
    with tmpfs(tmp_path / "ro", "4m") as ro:
        shutil.copytree(q.home, ro / "home")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        r = Qmd(ro / "home")
        path = ro / "home" / "index.sqlite"
        assert json.loads(r("search", "batching", "--json").stdout)
        assert r("get", "n/n4_0.md").stdout.startswith("# Note 4 0")
        assert r("status", "--json", "--http-port", "1", ok=False).exit_code == 1  # no server; the index reads
        expected = (f"Error: {path} is read-only (attempt to write a readonly database): it can be searched but not "
                    "changed; give this user write access to it and to its folder, or point QMD_HOME at a writable "
                    "copy")
        (notes / "new.md").write_text("# New\n\nnew words\n")
        assert r.error("update") == expected
        assert r.error("cleanup") == expected
        assert r.error("collection", "add", str(notes), "--name", "m") == (
            f"Error: cannot write {ro / 'home' / 'config.toml'}: Read-only file system; the collections are unchanged")


@pytest.mark.parametrize("args, shown", [
    (["search", "ba\udcfftch"], "ba\\xfftch"),
    (["get", "notes/\udcff.md"], "notes/\\xff.md"),
    (["context", "add", "notes/\udcfe", "hi"], "notes/\\xfe"),
    (["--home", "/tmp/\udcff", "status"], "/tmp/\\xff"),
])
def test_arguments_that_are_not_utf8_are_one_line(tmp_path: Path, args: list[str], shown: str):
    """What Python makes of bytes like 0xff in argv (lone surrogates) is refused before anything runs."""
    result = Qmd(tmp_path / "home")(*args, ok=False)
    byte = shown.split("\\x")[1][:2]
    offset = shown.index("\\x")
    assert result.exit_code == 1
    assert [ln for ln in result.output.splitlines() if ln.startswith("Error:")] == [
        f"Error: argument '{shown}' is not valid UTF-8 (byte 0x{byte} at offset {offset}); qmdctl takes UTF-8 text"]


def test_arguments_that_are_not_utf8_are_one_line_from_a_real_argv(tmp_path: Path):
    result = subprocess.run([sys.executable, "-c", "from qmd_triton.cli import main; main()", "--home",
                             str(tmp_path), "search", os.fsdecode(b"ba\xfftch")], capture_output=True, timeout=60)
    assert result.returncode == 1
    assert error_lines(result) == [
        "Error: argument 'ba\\xfftch' is not valid UTF-8 (byte 0xff at offset 2); qmdctl takes UTF-8 text"]


def test_stdin_that_is_not_utf8_is_one_line_naming_the_line(tmp_path: Path):
    result = qmdctl(tmp_path / "home", "embed", "--stdin", stdin=b"fine\nalso fine\nbad \xfe byte\n")
    assert result.returncode == 1
    assert error_lines(result) == ["Error: standard input line 3 is not valid UTF-8 (byte 0xfe at offset 4)"]


def test_a_symlink_loop_given_to_collection_add_is_one_line(tmp_path: Path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    q = Qmd(tmp_path / "home")
    assert q.error("collection", "add", str(tmp_path / "a"), "--name", "x") == (
        f"Error: collection path {tmp_path / 'a'} cannot be resolved (Symlink loop from '{tmp_path / 'a'}')")


def test_a_line_break_in_a_get_reference_is_one_line(tmp_path: Path):
    notes = tmp_path / "notes"
    write_notes(notes, 1, seed=5)
    q = Qmd(tmp_path / "home")
    q("collection", "add", str(notes), "--name", "n")
    q("update")
    assert q.error("get", "n/n5_0.md\nrm -rf /") == (
        "Error: a reference cannot contain a line break or control character: 'n/n5_0.md\\nrm -rf /'")
