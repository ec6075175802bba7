"""`qmdctl index backup` / `index restore` on both backends, and a long-lived reader (what a server model holds)
following a restore made by the command or by copying a backup over the file in place (no server here: the
live-server version is tests/triton/test_faults.py)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.index.collections import Collection
from qmd_triton.index.config import index_config
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.factory import open_index
from qmd_triton.index.sqlite.connection import header_problem
from qmd_triton.index.sqlite.handle import IndexHandle
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.index.update import update
from qmd_triton.search.options import SearchOptions
from qmd_triton.search.vectors import VectorSearch

from ..conftest import open_test_index, use_backend
from ..fakes import HashEmbedder

NOTE = "# Axolotl\n\nThe axolotl regrows a lost limb within weeks and keeps its larval gills for life.\n"


def qmd(home: Path, *args: str):
    return CliRunner().invoke(cli, list(args), env={"QMD_HOME": str(home)}, catch_exceptions=False)


def index(home: Path, backend: tuple[str, str], notes: Path) -> None:
    embedder = HashEmbedder()
    with open_test_index(home, backend) as store:
        update(store, [Collection("notes", notes)])
        embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=1)


def state(home: Path) -> tuple[list[tuple[str, str]], int, list[str]]:
    """Documents (collection, path), chunks with vectors, and the files a vector search ranks first."""
    with open_index(index_config(home)) as store:
        docs = sorted((d.collection, d.path) for d in store.documents())
        embedded = store.counts()["embedded"]
        hits = VectorSearch(store).search(HashEmbedder().embed_query("axolotl regrows a lost limb"), SearchOptions(n=3))
    return docs, embedded, [h.file for h in hits]


def test_a_backup_restores_what_it_held_on_each_backend_and_into_the_other(tmp_path: Path, notes: Path, backend):
    home = use_backend(tmp_path / "home", *backend)
    index(home, backend, notes)
    before = state(home)
    made = qmd(home, "index", "backup", str(tmp_path / "b.sqlite"))
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith(f"backed up {len(before[0])} documents, ")
    with SqliteIndex.open(tmp_path / "b.sqlite", readonly=True) as copy:  # a backup is a SQLite index file
        assert sorted((d.collection, d.path) for d in copy.documents()) == before[0]

    (notes / "axolotl.md").write_text(NOTE)
    index(home, backend, notes)
    changed = state(home)
    assert changed[0] == sorted([*before[0], ("notes", "axolotl.md")]) and changed[2][0] == "notes/axolotl.md"

    restored = qmd(home, "index", "restore", str(tmp_path / "b.sqlite"))
    assert restored.exit_code == 0, restored.output
    assert state(home) == before
    assert "axolotl" not in qmd(home, "search", "axolotl").stdout  # nothing of the newer index is left

    other = tmp_path / "other-home"  # the same file restores into a home on the default backend, made by it
    assert qmd(other, "index", "restore", str(tmp_path / "b.sqlite")).exit_code == 0
    assert state(other) == before


@pytest.mark.parametrize("damage", ["random bytes", "cut short", "not an index"])
def test_a_damaged_or_foreign_backup_is_one_line_and_changes_nothing(tmp_path: Path, notes: Path, damage: str):
    home = tmp_path / "home"
    index(home, ("sqlite", ""), notes)
    bad = tmp_path / "bad.sqlite"
    if damage == "random bytes":
        bad.write_bytes(bytes(range(256)) * 64)
    elif damage == "cut short":
        assert qmd(home, "index", "backup", str(bad)).exit_code == 0
        with bad.open("r+b") as f:
            f.truncate(bad.stat().st_size // 2)
    else:
        sqlite3.connect(bad).execute("CREATE TABLE t (x)").connection.close()
    live = home / "index.sqlite"
    held = live.read_bytes()
    result = qmd(home, "index", "restore", str(bad))
    assert result.exit_code == 1
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert str(bad) in line and ("nothing was changed" in line or "not a qmd-triton index" in line)
    assert live.read_bytes() == held


def test_backup_refuses_to_overwrite_or_copy_onto_the_index_and_leaves_no_partial_file(tmp_path: Path, notes: Path):
    home = tmp_path / "home"
    index(home, ("sqlite", ""), notes)
    target = tmp_path / "b.sqlite"
    target.write_text("keep me")
    result = qmd(home, "index", "backup", str(target))
    assert result.exit_code == 1 and f"Error: {target} exists; name a new file or pass --force" in result.output
    assert target.read_text() == "keep me"
    assert qmd(home, "index", "backup", str(target), "--force").exit_code == 0
    onto = qmd(home, "index", "backup", str(home / "index.sqlite"), "--force")
    assert onto.exit_code == 1 and "is the index itself" in onto.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.sqlite", "home", "notes"]
    empty = qmd(tmp_path / "empty", "index", "backup", str(tmp_path / "c.sqlite"))
    assert empty.exit_code == 1 and "no index in" in empty.output and "to back up" in empty.output


def test_a_restore_over_a_damaged_index_brings_it_back(tmp_path: Path, notes: Path):
    home = tmp_path / "home"
    index(home, ("sqlite", ""), notes)
    before = state(home)
    assert qmd(home, "index", "backup", str(tmp_path / "b.sqlite")).exit_code == 0
    live = home / "index.sqlite"
    with live.open("r+b") as f:
        f.truncate(live.stat().st_size // 2)
    assert "it was cut short" in (header_problem(live) or "")
    status = qmd(home, "status", "--json")
    assert status.exit_code == 1 and "is damaged (" in status.stdout
    assert qmd(home, "index", "restore", str(tmp_path / "b.sqlite")).exit_code == 0
    assert header_problem(live) is None and state(home) == before


@pytest.mark.parametrize("how", ["cp", "restore"])
def test_a_long_lived_reader_follows_a_restore_at_its_next_request(tmp_path: Path, notes: Path, how: str):
    """What a server model holds: a handle on the file and the vectors in memory. After a backup is put back
    in place (same inode), the next request reads the restored index, vectors included."""
    home = tmp_path / "home"
    index(home, ("sqlite", ""), notes)
    backup = tmp_path / "b.sqlite"
    assert qmd(home, "index", "backup", str(backup)).exit_code == 0
    live = home / "index.sqlite"
    handle = IndexHandle(live)
    query = HashEmbedder().embed_query("axolotl regrows a lost limb")

    def served() -> list[str]:  # as qmd_retrieve serves: the handle's index, whose matrix follows it
        return [h.file for h in VectorSearch(handle.get()).search(query, SearchOptions(n=3))]

    first = served()
    (notes / "axolotl.md").write_text(NOTE)
    index(home, ("sqlite", ""), notes)
    assert served()[0] == "notes/axolotl.md"  # followed the update incrementally
    inode = live.stat().st_ino
    if how == "cp":
        shutil.copyfile(backup, live)
    else:
        assert qmd(home, "index", "restore", str(backup)).exit_code == 0
    assert live.stat().st_ino == inode
    assert served() == first
    assert handle.get().counts()["documents"] == 4
    handle.close()


def test_a_reader_reloads_when_another_indexs_copy_is_put_in_place_at_the_same_log_position(tmp_path: Path):
    """A copy of a different index whose vector log is as long as the reader's: the log is another index's
    history, so the reader reads every vector again instead of finding "nothing changed"."""
    mine, theirs = tmp_path / "mine-notes", tmp_path / "their-notes"
    for folder, topic in ((mine, "sourdough bread and flour"), (theirs, "axolotl limbs and gills")):
        folder.mkdir()
        for i in range(3):
            (folder / f"note-{i}.md").write_text(f"# Note {i}\n\nA short note {i} about {topic}.\n")
    home, other = tmp_path / "home", tmp_path / "other"
    index(home, ("sqlite", ""), mine)
    index(other, ("sqlite", ""), theirs)
    live = home / "index.sqlite"
    with SqliteIndex.open(other / "index.sqlite") as o, SqliteIndex.open(live) as m:
        assert o.vector_log_position() == m.vector_log_position()  # the same shape of history
    handle = IndexHandle(live)
    reader = handle.get()
    query = HashEmbedder().embed_query("axolotl regrows a lost limb")
    before = [h.score for h in VectorSearch(reader).search(query, SearchOptions(n=3))]
    assert qmd(other, "index", "backup", str(tmp_path / "other.sqlite")).exit_code == 0
    shutil.copyfile(tmp_path / "other.sqlite", live)
    store = handle.get()
    assert store is reader  # the same inode: reconnected, not reopened (its vector matrix kept)
    after = VectorSearch(store).search(query, SearchOptions(n=3))
    with SqliteIndex.open(live, readonly=True) as other:
        fresh = VectorSearch(other).search(query, SearchOptions(n=3))
    assert [(h.file, round(h.score, 5)) for h in after] == [(h.file, round(h.score, 5)) for h in fresh]
    assert max(h.score for h in after) > max(before)  # their axolotl notes, not my bread's vectors
    handle.close()
