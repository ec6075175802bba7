"""The index schema: a version-1 file (as the first release wrote it) is migrated, never rebuilt."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from qmd_triton.errors import IndexCorrupt
from qmd_triton.index.sqlite import migrations
from qmd_triton.index.sqlite.index import SqliteIndex


def write_v1_index(path: Path) -> np.ndarray:
    """A version-1 index with two documents, three chunks and their vectors; returns the vectors."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("BEGIN;\n" + migrations.SCHEMA_V1
                       + "INSERT INTO meta VALUES ('schema_version', '1');\nCOMMIT;")
    vectors = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)
    docs = [("a" * 64, "# A\n\nalpha beta\n", ["# A", "alpha beta"]), ("b" * 64, "# B\n\ngamma\n", ["gamma"])]
    chunk_id = 0
    for doc_id, (h, body, chunks) in enumerate(docs, 1):
        conn.execute("INSERT INTO content VALUES (?, ?)", (h, body))
        conn.execute("INSERT INTO documents VALUES (?, 'notes', ?, ?, ?, 10, 1, ?)",
                     (doc_id, f"{h[0]}.md", h[0].upper(), h, time.time()))
        conn.execute("INSERT INTO fts (rowid, title, body) VALUES (?, ?, ?)", (doc_id, h[0].upper(), body))
        conn.execute("INSERT INTO chunked VALUES (?)", (h,))
        for seq, text in enumerate(chunks):
            chunk_id += 1
            conn.execute("INSERT INTO chunks VALUES (?, ?, ?, 1, 3, 2, ?)", (chunk_id, h, seq, text))
            conn.execute("INSERT INTO vectors VALUES (?, ?)", (chunk_id, vectors[chunk_id - 1].tobytes()))
    conn.close()
    return vectors


def test_a_version_1_index_is_migrated_and_keeps_every_vector(tmp_path: Path):
    path = tmp_path / "index.sqlite"
    vectors = write_v1_index(path)
    messages: list[str] = []
    with SqliteIndex.open(path, progress=messages.append) as store:
        assert store.meta("schema_version") == str(migrations.SCHEMA_VERSION)
        matrix, ids, _ = store.load_vectors()
        assert np.array_equal(matrix, vectors)  # no chunk needs embedding again
        chunks = [store.chunks_by_id(ids.tolist())[i] for i in ids.tolist()]
        assert [c.text for c in chunks] == ["# A", "alpha beta", "gamma"]
        assert all(c.text_hash == migrations.text_hash(c.text) for c in chunks)
        assert store.pending_chunks() == []
        counts = store.counts()
        assert (counts["documents"], counts["chunks"], counts["embedded"]) == (2, 3, 3)
        assert [d.path for d, _ in store.bm25(["gamma"], 5)] == ["b.md"]
    assert messages == [f"migrating {path} from index schema 1 to 2 (embeddings keyed by chunk text)",
                        f"migrating {path} from index schema 2 to 3 (an expansion cache)",
                        f"migrating {path} from index schema 3 to 4 (a log of changed vectors (servers follow an "
                        "update by reading only what changed))"]
    with SqliteIndex.open(path, progress=messages.append) as store:
        vectors_before = store.vector_log_position()
        with store.transaction():
            store.add_vectors([(migrations.text_hash("gamma"), np.zeros(8, dtype=np.float32))])
        assert store.vector_changes(vectors_before) == ([3], vectors_before + 1)  # the migrated triggers log it
    assert len(messages) == 3  # a migrated index is not migrated again


def test_a_failing_migration_leaves_the_version_1_index_as_it_was(tmp_path: Path, monkeypatch):
    path = tmp_path / "index.sqlite"
    write_v1_index(path)
    before = path.read_bytes()

    def broken(conn):
        conn.execute("DROP TABLE vectors")
        raise RuntimeError("disk went away mid-migration")

    monkeypatch.setitem(migrations.MIGRATIONS, 2, ("test step", broken))
    with pytest.raises(RuntimeError, match="mid-migration"):
        SqliteIndex.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone() == (3,)
    conn.close()
    assert len(before) > 0


def test_an_index_from_a_newer_qmdctl_is_refused_with_one_line(tmp_path: Path):
    path = tmp_path / "index.sqlite"
    SqliteIndex.open(path, create=True).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(IndexCorrupt, match=r"was written by a newer qmdctl \(index schema 99\); this one reads "
                                           r"schema 4 and older: upgrade qmd-triton"):
        SqliteIndex.open(path)


def test_reading_an_old_index_without_write_access_says_how_to_migrate(tmp_path: Path):
    path = tmp_path / "index.sqlite"
    write_v1_index(path)
    with pytest.raises(IndexCorrupt, match=r"has index schema 1; open it for writing once \(`qmdctl update`\)"):
        SqliteIndex.open(path, readonly=True)


def test_a_new_index_is_created_at_the_current_schema(tmp_path: Path):
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        assert store.meta("schema_version") == str(migrations.SCHEMA_VERSION)
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"embeddings", "expansions"} <= tables and "vectors" not in tables
