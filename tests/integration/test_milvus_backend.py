"""What only the milvus backend has: its own Milvus Lite process, no transactions, jieba, URIs that can be wrong.

The tests that every backend must pass (update, search, get, embed) are parametrized over both backends in
test_index_cli.py and test_embed_index.py; these are about Milvus itself. Every Milvus Lite here is a real one:
the session's (conftest ``milvus_uri``) or one a test starts in its own home and stops again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.errors import ConfigError
from qmd_triton.index.collections import Collection
from qmd_triton.index.config import IndexConfig, index_config, write_index_table
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.factory import open_index
from qmd_triton.index.update import update
from qmd_triton.search.lexical import search_bm25
from qmd_triton.search.options import SearchOptions
from qmd_triton.search.vectors import VectorSearch
from qmd_triton.serving import milvus_lite
from qmd_triton.system import procs
from qmd_triton.system.net import free_ports

from ..conftest import open_test_index
from ..fakes import HashEmbedder


def qmdctl(home: Path, *args: str):
    return CliRunner().invoke(cli, list(args), env={"QMD_HOME": str(home)}, catch_exceptions=False)


def snapshot(index, embedder: HashEmbedder) -> dict:
    """What a user would miss if it were lost: documents, chunks and vectors, BM25 and vector answers, the
    fingerprint and the expansion cache."""
    counts = index.counts()
    return {
        "documents": [(d.collection, d.path, d.hash) for d in index.documents()],
        "counts": {k: counts[k] for k in ("documents", "chunks", "embedded")},
        "bm25": [h.file for h in search_bm25(index, "sourdough batching 向量检索", SearchOptions(n=10))],
        "vsearch": [h.file for h in VectorSearch(index).search(embedder.embed_query("bread flour starter"),
                                                               SearchOptions(n=4))],
        "fingerprint": index.fingerprint(),
        "expansion": index.cached_expansion("k1"),
    }


def test_killing_milvus_lite_loses_no_indexed_data(tmp_path: Path, notes: Path):
    """SIGKILL (no shutdown, no flush) right after the last acknowledged write; the restarted server has it all."""
    home = tmp_path / "home"
    home.mkdir()
    write_index_table(home, backend="milvus")
    config = index_config(home)
    state = milvus_lite.ensure_running(config)  # this test's own Milvus Lite
    assert state is not None and procs.is_running(state.owned)
    embedder = HashEmbedder()
    try:
        with open_index(config, create=True) as index:
            update(index, [Collection("notes", notes)])
            embed_pending(index, embedder.setup(), lambda: embedder.embed, batch_size=4, concurrency=1)
            # writes after embed's flush: only the write-ahead log holds these when the process dies
            (notes / "late.md").write_text("# Late note\n\nwritten just before the kill: sourdough again\n")
            update(index, [Collection("notes", notes)])
            embed_pending(index, embedder.setup(), lambda: embedder.embed, batch_size=4, concurrency=1)
            index.remember_expansion("k1", {"lex": ["a"], "vec": ["b"]})
            before = snapshot(index, embedder)
        assert ("notes", "late.md") in {(c, p) for c, p, _ in before["documents"]}
        assert before["counts"]["embedded"] == before["counts"]["chunks"] > 0

        assert procs.is_running(state.owned)  # ours: pid, start time and executable as recorded
        os.kill(state.pid, signal.SIGKILL)
        procs.reap(state.pid, wait_s=10)
        assert not procs.is_running(state.owned)

        restarted = milvus_lite.ensure_running(config)
        assert restarted is not None and restarted.pid != state.pid
        with open_index(config) as index:
            assert snapshot(index, embedder) == before
    finally:
        milvus_lite.stop(config, timeout_s=10)
    assert not procs.is_running(state.owned)


def test_a_failed_update_is_completed_by_the_next(tmp_path: Path, notes: Path, milvus_uri: str, monkeypatch):
    """Milvus has no transactions across rows: an update that fails half-way leaves some files written; the next
    update compares the files with what the index holds and completes it (on sqlite a failed update changes
    nothing: test_index_cli.py)."""
    from qmd_triton.index.milvus.index import MilvusIndex

    for i in range(6):
        (notes / f"extra{i}.md").write_text(f"# Extra {i}\n\nzyxquark{i}\n")
    real = MilvusIndex.upsert_documents

    def in_threes_failing_at_the_second(self, items):
        for n, start in enumerate(range(0, len(items), 3)):
            if n == 1:
                raise RuntimeError("network went away")
            real(self, items[start : start + 3])

    with open_test_index(tmp_path / "home", ("milvus", milvus_uri)) as index:
        monkeypatch.setattr(MilvusIndex, "upsert_documents", in_threes_failing_at_the_second)
        with pytest.raises(RuntimeError, match="network went away"):
            update(index, [Collection("notes", notes)])
        monkeypatch.undo()
        assert index.counts()["documents"] == 3
        report = update(index, [Collection("notes", notes)])
        assert (report.added, report.changed, report.removed) == (7, 0, 0)
        assert index.counts()["documents"] == 10
        assert [h.file for h in search_bm25(index, "zyxquark5", SearchOptions())] == ["notes/extra5.md"]


def test_chinese_goes_through_jieba_words_not_bigrams(tmp_path: Path, milvus_uri: str):
    """On milvus the CJK text is segmented by jieba: a query word finds the document that holds it, and a
    bigram that straddles two words (``量检`` in ``向量检索``) is not a word."""
    notes = tmp_path / "zh"
    notes.mkdir()
    (notes / "a.md").write_text("# 向量检索入门\n\n向量检索把文本变成向量，再用近邻搜索找到相似的段落。\n")
    (notes / "b.md").write_text("# 重排\n\n交叉编码器对候选文档重新打分，排序更准确。\n")
    (notes / "c.md").write_text("# Mixed\n\nBM25 与 embedding 结合：混合检索。\n")
    with open_test_index(tmp_path / "home", ("milvus", milvus_uri)) as index:
        update(index, [Collection("zh", notes)])
        assert [h.file for h in search_bm25(index, "向量", SearchOptions())] == ["zh/a.md"]
        assert [h.file for h in search_bm25(index, "交叉编码器", SearchOptions())][0] == "zh/b.md"
        assert {h.file for h in search_bm25(index, "检索", SearchOptions())} == {"zh/a.md", "zh/c.md"}
        assert search_bm25(index, "embedding 混合检索", SearchOptions())[0].file == "zh/c.md"


def test_a_milvus_that_is_down_or_a_bad_uri_is_one_clear_line(tmp_path: Path):
    home = tmp_path / "home"
    (port,) = free_ports(1)
    cases = {
        f"http://127.0.0.1:{port}": f"Error: cannot reach the index in milvus http://127.0.0.1:{port}",
        "bogus://nowhere": "Error: index.uri 'bogus://nowhere' is not a Milvus URI",
    }
    for uri, start in cases.items():
        write_index_table(home, backend="milvus", uri=uri)
        for args in (("search", "anything"), ("ls", "notes"), ("get", "#abcdef")):
            result = qmdctl(home, *args)
            lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
            assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(start), (args, result.output)
            assert "Traceback" not in result.output


def test_migrate_moves_the_index_both_ways_without_embedding_again(tmp_path: Path, notes: Path, milvus_uri: str):
    home = tmp_path / "home"
    embedder = HashEmbedder()
    with open_index(index_config(home), create=True) as index:  # sqlite, the default
        update(index, [Collection("notes", notes)])
        embed_pending(index, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=1)
        before = snapshot(index, embedder)
    prefix = "mig" + uuid.uuid4().hex[:8]  # collections of its own on a Milvus that outlives the session
    out = qmdctl(home, "index", "migrate", "--to", "milvus", "--uri", milvus_uri, "--prefix", prefix, "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["documents"] == len(before["documents"]) and report["vectors"] == before["counts"]["embedded"]
    config = index_config(home)
    assert (config.backend, config.uri, config.prefix) == ("milvus", milvus_uri, prefix)
    with open_index(config) as index:
        after = snapshot(index, embedder)
        assert index.pending_chunks() == []  # nothing left to embed
    assert after == before
    (home / "index.sqlite").unlink()
    out = qmdctl(home, "index", "migrate", "--to", "sqlite")
    assert out.exit_code == 0, out.output
    assert index_config(home).backend == "sqlite"
    with open_index(index_config(home)) as index:
        back = snapshot(index, embedder)
    assert back == before


def test_the_local_server_is_started_by_a_command_and_stopped_by_down(tmp_path: Path, notes: Path):
    """index.backend = "milvus" with no uri: the first index command starts the home's Milvus Lite, `down`
    stops it (and only it: nothing else is signalled)."""
    home = tmp_path / "home"
    home.mkdir()
    write_index_table(home, backend="milvus")
    assert qmdctl(home, "collection", "add", str(notes), "--name", "notes").exit_code == 0
    result = qmdctl(home, "update")
    assert result.exit_code == 0, result.output
    assert "starting Milvus Lite" in result.stderr
    state = milvus_lite.running(IndexConfig(home=home, backend="milvus"))
    try:
        assert state is not None and Path(state.data_dir) == home / "milvus"
        hits = json.loads(qmdctl(home, "search", "sourdough", "--json").stdout)
        assert hits[0]["file"] == "notes/recipes.md"
        result = qmdctl(home, "down")
        assert result.exit_code == 0, result.output
        assert "stopped Milvus Lite" in result.stderr
        assert not procs.is_running(state.owned)
        assert milvus_lite.running(IndexConfig(home=home, backend="milvus")) is None
    finally:
        milvus_lite.stop(IndexConfig(home=home, backend="milvus"), timeout_s=10)


@pytest.mark.parametrize("vector_index", ["HNSW", "AUTOINDEX", "IVF_FLAT", "FLAT"])
def test_each_vector_index_finds_what_the_exact_sqlite_scan_finds(tmp_path: Path, notes: Path, milvus_uri: str,
                                                                   vector_index: str):
    embedder = HashEmbedder()
    answers = {}
    for backend in ("sqlite", "milvus"):
        home = tmp_path / backend
        home.mkdir()
        if backend == "milvus":
            write_index_table(home, backend="milvus", uri=milvus_uri, prefix="v" + uuid.uuid4().hex[:10],
                              vector_index=vector_index)
        try:
            with open_index(index_config(home), create=True) as index:
                update(index, [Collection("notes", notes)])
                embed_pending(index, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=1)
                answers[backend] = [(h.file, round(h.score, 4)) for h in VectorSearch(index).search(
                    embedder.embed_query("the bread and the batching of the server"), SearchOptions(n=4, min_score=0.0))]
        except ConfigError as e:  # a Milvus that does not build this index (the C++ Milvus Lite: no HNSW)
            assert f"does not build {vector_index} indexes" in str(e) and "index.vector_index" in str(e)
            pytest.skip(f"this Milvus has no {vector_index}: {e}")
    assert answers["milvus"] == answers["sqlite"] and len(answers["sqlite"]) >= 3


def test_the_english_analyzer_stems_where_milvus_has_it_else_one_line_naming_the_setting(
        tmp_path: Path, notes: Path, milvus_uri: str):
    home = tmp_path / "home"
    write_index_table(home, backend="milvus", uri=milvus_uri, prefix="e" + uuid.uuid4().hex[:10], analyzer="english")
    assert qmdctl(home, "collection", "add", str(notes), "--name", "notes").exit_code == 0
    result = qmdctl(home, "update")
    if result.exit_code == 0:  # Milvus Standalone, the C++ Milvus Lite: "baked" and "baking" are one word
        hits = json.loads(qmdctl(home, "search", "baked", "--json").stdout)
        assert [h["file"] for h in hits] == ["notes/recipes.md"]
        return
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "has no 'english' analyzer" in lines[0] and 'index.analyzer = "standard"' in lines[0]
    write_index_table(home, analyzer="standard")  # the remedy the line names
    assert qmdctl(home, "update").exit_code == 0
    assert json.loads(qmdctl(home, "search", "baked", "--json").stdout) == []  # no stemming: no match
    assert [h["file"] for h in json.loads(qmdctl(home, "search", "baking", "--json").stdout)] == ["notes/recipes.md"]


def test_an_unknown_vector_index_or_analyzer_is_one_line(tmp_path: Path, monkeypatch):
    for var in ("QMD_MILVUS_VECTOR_INDEX", "QMD_MILVUS_ANALYZER"):  # they would win over the file
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[index]\nbackend = "milvus"\nvector_index = "DISKANN"\n')
    result = qmdctl(home, "status", "--http-port", "1")
    assert "Error: index.vector_index must be one of HNSW, AUTOINDEX, IVF_FLAT, FLAT, got 'DISKANN'" in result.output
    (home / "config.toml").write_text('[index]\nbackend = "milvus"\nanalyzer = "porter"\n')
    result = qmdctl(home, "search", "x")
    assert "Error: index.analyzer must be one of standard, english, got 'porter'" in result.output


def test_migrate_again_is_refused_then_replace_leaves_one_copy_of_everything(tmp_path: Path, notes: Path,
                                                                             milvus_uri: str):
    home = tmp_path / "home"
    embedder = HashEmbedder()
    with open_index(index_config(home), create=True) as index:
        update(index, [Collection("notes", notes)])
        embed_pending(index, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=1)
        before = snapshot(index, embedder)
    prefix = "rep" + uuid.uuid4().hex[:8]
    args = ("index", "migrate", "--to", "milvus", "--uri", milvus_uri, "--prefix", prefix, "--no-switch")
    assert qmdctl(home, *args).exit_code == 0
    again = qmdctl(home, *args)
    assert again.exit_code == 1 and "already holds documents" in again.output and "--replace" in again.output
    out = qmdctl(home, *args, "--replace")
    assert out.exit_code == 0, out.output
    target = index_config(home, backend="milvus", uri=milvus_uri, prefix=prefix)
    with open_index(target) as index:
        assert snapshot(index, embedder) == before  # counts and hits: no row twice (the copy is plain inserts)


def _holders(index, content_hash: str) -> list[tuple[str, str]]:
    return [(d.collection, d.path) for d in index.documents_by_hash([content_hash]).get(content_hash, [])]


@pytest.fixture(params=["query", "search"])
def reads_by_id(request: pytest.FixtureRequest, monkeypatch) -> str:
    """Rows by primary key are read by a query on Milvus Lite 3 and by a filtered search on Milvus's C++ engine
    (MilvusIndex._by_ids): both ways run here, on the session's Milvus."""
    from qmd_triton.index.milvus import index as milvus_index

    monkeypatch.setattr(milvus_index, "_python_engine", lambda client: request.param == "query")
    return request.param


def test_a_hits_documents_follow_edits_copies_deletes_and_renames(tmp_path: Path, notes: Path, milvus_uri: str,
                                                                  reads_by_id: str):
    """A vector hit is a chunk of some content; the documents shown for it come through the keys map (by
    primary key). After every kind of change the map must name exactly the documents that hold the content."""
    embedder = HashEmbedder()
    recipes = notes / "recipes.md"
    with open_test_index(tmp_path / "home", ("milvus", milvus_uri)) as index:
        assert index._search_by_id == (reads_by_id == "search")
        update(index, [Collection("notes", notes)])
        embed_pending(index, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=1)
        old = index.document("notes", "recipes.md").hash
        assert _holders(index, old) == [("notes", "recipes.md")]

        shutil.copy(recipes, notes / "copy.md")  # the same content at a second path
        update(index, [Collection("notes", notes)])
        assert _holders(index, old) == [("notes", "copy.md"), ("notes", "recipes.md")]
        hits = VectorSearch(index).search(embedder.embed_query(recipes.read_text()), SearchOptions(n=2))
        assert {h.file for h in hits} == {"notes/copy.md", "notes/recipes.md"} and hits[0].score > 0.99

        recipes.write_text(recipes.read_text() + "\nA new line about rye.\n")  # edited: a new content
        (notes / "copy.md").unlink()
        update(index, [Collection("notes", notes)])
        new = index.document("notes", "recipes.md").hash
        assert new != old and _holders(index, old) == [] and _holders(index, new) == [("notes", "recipes.md")]
        assert index.unique_docids([new])[new] == new[:6]
        assert [d.path for d in index.documents_by_docid(new[:8])] == ["recipes.md"]

        index.rename_collection("notes", "kitchen")
        assert _holders(index, new) == [("kitchen", "recipes.md")]
        assert index.body(new) == recipes.read_text()
        index.delete_collection("kitchen")
        assert _holders(index, new) == [] and index.documents_by_docid(new[:8]) == []


def test_an_update_killed_between_the_keys_map_and_the_rows_hides_no_document(tmp_path: Path, notes: Path,
                                                                              milvus_uri: str, monkeypatch):
    """The map is written before a document's rows and cleaned after them: an update that dies in between
    leaves the old content findable, the next update completes it, and `cleanup` drops what was left stale."""
    from qmd_triton.index.milvus.index import MilvusIndex

    recipes = notes / "recipes.md"
    with open_test_index(tmp_path / "home", ("milvus", milvus_uri)) as index:
        update(index, [Collection("notes", notes)])
        old = index.document("notes", "recipes.md").hash
        recipes.write_text("# Recipes\n\nnothing but zyxquark now\n")
        real = MilvusIndex._write

        def dies_writing_documents(self, table, rows):
            if table == self.docs:
                raise RuntimeError("killed")
            real(self, table, rows)

        monkeypatch.setattr(MilvusIndex, "_write", dies_writing_documents)
        with pytest.raises(RuntimeError, match="killed"):
            update(index, [Collection("notes", notes)])
        monkeypatch.undo()
        assert _holders(index, old) == [("notes", "recipes.md")]  # the rows still hold the old content
        assert [h.file for h in search_bm25(index, "sourdough", SearchOptions())][0] == "notes/recipes.md"

        update(index, [Collection("notes", notes)])
        new = index.document("notes", "recipes.md").hash
        assert _holders(index, new) == [("notes", "recipes.md")] and _holders(index, old) == []

        doc = index.document("notes", "guide/batching.md")
        index._edit_keys(add=[(doc.hash, index.document("notes", "recipes.md").id)])  # a writer died: stale
        assert _holders(index, doc.hash) == [("notes", "guide/batching.md")]
        index.cleanup()
        assert index._keys_of([doc.hash])[int(doc.hash[:6], 16)] == {doc.hash: [doc.id]}


def test_a_content_held_by_more_documents_than_a_keys_row_names_is_read_by_its_key(tmp_path: Path, notes: Path,
                                                                                   milvus_uri: str, monkeypatch,
                                                                                   reads_by_id: str):
    from qmd_triton.index.milvus import schema

    monkeypatch.setattr(schema, "ENTRIES_MAX", 200)  # ~6 document ids per row instead of ~3,000
    for i in range(8):
        shutil.copy(notes / "recipes.md", notes / f"copy{i}.md")
    with open_test_index(tmp_path / "home", ("milvus", milvus_uri)) as index:
        update(index, [Collection("notes", notes)])
        h = index.document("notes", "recipes.md").hash
        assert index._keys_of([h])[int(h[:6], 16)][h] is None  # too many for the row: marked
        assert len(_holders(index, h)) == 9
        assert index.body(h) == (notes / "recipes.md").read_text()
        assert len(index.documents_by_docid(h[:6])) == 9


def test_an_index_from_before_the_keys_map_gets_it_when_opened(tmp_path: Path, notes: Path, milvus_uri: str):
    from qmd_triton.index.milvus.schema import KEYS_BUILT

    embedder = HashEmbedder()
    home = tmp_path / "home"
    with open_test_index(home, ("milvus", milvus_uri)) as index:
        update(index, [Collection("notes", notes)])
        embed_pending(index, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=1)
        before = snapshot(index, embedder)
        index.client.drop_collection(index.keys)  # as an index written before the map
        index._delete_meta([KEYS_BUILT])
    with open_index(index_config(home)) as index:
        assert snapshot(index, embedder) == before
        assert index.meta(KEYS_BUILT) == "1"


def test_a_bulk_load_keeps_every_document_of_a_content_written_in_separate_batches(tmp_path: Path, milvus_uri: str,
                                                                                   reads_by_id: str):
    """`index migrate` writes as a bulk load, batch by batch: a content whose documents arrive in different
    batches (a copied file) must keep all of them, as must documents whose hashes share the first 6 hex."""
    body = "# Same\n\nthe very same text\n"
    h = hashlib.sha256(body.encode()).hexdigest()
    twin = h[:6] + "f" * 58  # another content under the same prefix
    with open_test_index(tmp_path / "home", ("milvus", milvus_uri)) as index, index.bulk_load():
        index.upsert_documents([("a", "one.md", "Same", h, body, len(body), 0)])
        index.upsert_documents([("b", "two.md", "Same", h, body, len(body), 0)])
        index.upsert_documents([("b", "twin.md", "Twin", twin, "# Twin\n", 7, 0)])
    with open_test_index(tmp_path / "home", ("milvus", milvus_uri), create=False) as index:
        assert _holders(index, h) == [("a", "one.md"), ("b", "two.md")]
        assert _holders(index, twin) == [("b", "twin.md")]
        n = len(os.path.commonprefix([h, twin])) + 1
        assert index.unique_docids([h, twin]) == {h: h[:n], twin: twin[:n]}
