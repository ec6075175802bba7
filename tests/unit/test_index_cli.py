"""Collections, update, search, get, multi-get, ls and their errors, through the CLI (no server)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.index import update as index_update
from qmd_triton.index.config import index_config
from qmd_triton.index.factory import open_index

from ..conftest import use_backend


class Qmd:
    """Runs qmdctl with its own QMD_HOME (on the given index backend)."""

    def __init__(self, home: Path, backend: tuple[str, str] = ("sqlite", "")) -> None:
        self.home = use_backend(home, *backend)
        self.backend = backend[0]

    def __call__(self, *args: str, ok: bool = True):
        result = CliRunner().invoke(cli, list(args), env={"QMD_HOME": str(self.home)}, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def error(self, *args: str) -> str:
        result = self(*args, ok=False)
        assert result.exit_code == 1, result.output
        lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
        assert len(lines) == 1, result.output
        return lines[0]

    def counts(self) -> dict:
        with open_index(index_config(self.home)) as store:
            return store.counts()


@pytest.fixture
def qmd(tmp_path: Path, notes: Path, backend: tuple[str, str]) -> Qmd:
    q = Qmd(tmp_path / "home", backend)
    q("collection", "add", str(notes), "--name", "notes")
    q("update")
    return q


def test_collection_add_list_rename_remove(tmp_path: Path, notes: Path, backend):
    q = Qmd(tmp_path / "home", backend)
    q("collection", "add", str(notes), "--name", "notes", "--mask", "guide/*.md")
    rows = json.loads(q("collection", "list", "--json").stdout)
    assert rows == [{"name": "notes", "path": str(notes), "masks": ["guide/*.md"], "ignore": [], "update_cmd": "",
                     "follow_links": False, "documents": 0}]
    q("update")
    q("collection", "rename", "notes", "kb")
    assert [r["name"] for r in json.loads(q("collection", "list", "--json").stdout)] == ["kb"]
    assert json.loads(q("search", "batcher", "--json").stdout)[0]["file"] == "kb/guide/batching.md"
    assert q.error("collection", "rename", "kb", "bad name!").startswith("Error: collection name 'bad name!' must be")
    q("collection", "remove", "kb")
    assert q.counts()["documents"] == 0
    assert json.loads(q("collection", "list", "--json").stdout) == []


def test_collection_add_fails_when_path_does_not_exist(tmp_path: Path):
    q = Qmd(tmp_path / "home")
    assert q.error("collection", "add", str(tmp_path / "nope"), "--name", "x") == (
        f"Error: collection path {tmp_path / 'nope'} does not exist"
    )


def test_update_reports_added_changed_removed_and_skips_binary_files(qmd: Qmd, notes: Path):
    assert qmd.counts()["documents"] == 4
    (notes / "recipes.md").write_text("# Sourdough bread\n\nNow with rye flour and caraway.\n")
    (notes / "guide" / "operations.md").unlink()
    (notes / "new.md").write_text("# New note\n\nFresh content.\n")
    (notes / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0")
    (notes / "latin1.md").write_bytes("caf\xe9 au lait".encode("latin-1"))
    result = qmd("update", "--json")
    report = json.loads(result.stdout)
    assert (report["added"], report["changed"], report["removed"]) == (1, 1, 1)
    assert sorted(report["skipped"]) == ["notes/image.md", "notes/latin1.md"]
    assert "Warning: skipped notes/image.md: binary file" in result.stderr
    assert "Warning: skipped notes/latin1.md: not UTF-8 (byte 0xe9 at offset 3)" in result.stderr
    assert qmd.counts()["documents"] == 4
    assert json.loads(qmd("search", "caraway", "--json").stdout)[0]["file"] == "notes/recipes.md"
    assert json.loads(qmd("search", "gRPC ports", "--json").stdout) == []


def test_update_survives_a_file_removed_between_scan_and_read(qmd: Qmd, notes: Path, monkeypatch):
    victim = notes / "recipes.md"
    victim.write_text("# Sourdough bread\n\nchanged so that it must be read again\n")
    real = index_update.read_document

    def vanish_then_read(path: Path):
        if path == victim:
            victim.unlink()
        return real(path)

    monkeypatch.setattr(index_update, "read_document", vanish_then_read)
    result = qmd("update", "--json")
    assert "Warning: skipped notes/recipes.md: removed while indexing" in result.stderr
    assert json.loads(result.stdout)["removed"] == 1
    assert qmd.counts()["documents"] == 3


def sqlite_only(qmd: Qmd, why: str) -> None:
    if qmd.backend != "sqlite":
        pytest.skip(f"sqlite backend only: {why}")


def test_a_failing_update_changes_nothing(qmd: Qmd, notes: Path, monkeypatch):
    sqlite_only(qmd, "Milvus has no transactions across rows (test_milvus_backend.py: the next update completes)")
    from qmd_triton.index.sqlite.index import SqliteIndex

    before = qmd.counts()
    for i in range(5):
        (notes / f"extra{i}.md").write_text(f"# Extra {i}\n\nzyxquark{i}\n")
    calls = {"n": 0}
    real = SqliteIndex.upsert_document

    def fail_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqliteIndex, "upsert_document", fail_on_third)
    with pytest.raises(RuntimeError, match="disk went away"):
        qmd("update", ok=False)
    monkeypatch.undo()
    assert qmd.counts()["documents"] == before["documents"]
    assert json.loads(qmd("search", "zyxquark0", "--json").stdout) == []


def test_a_reader_sees_the_index_before_or_after_an_update_never_between(qmd: Qmd, notes: Path, monkeypatch):
    sqlite_only(qmd, "Milvus has no transactions across rows")
    import threading
    import time

    from qmd_triton.index.sqlite.index import SqliteIndex

    before = qmd.counts()["documents"]
    for i in range(60):
        (notes / f"batch{i}.md").write_text(f"# Batch {i}\n\nwordling{i}\n")
    real = SqliteIndex.upsert_document

    def slow(self, *args, **kwargs):
        time.sleep(0.005)  # a long write transaction, so the reader runs in the middle of it
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqliteIndex, "upsert_document", slow)
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            with SqliteIndex.open(qmd.home / "index.sqlite") as store:
                seen.append(store.counts()["documents"])
                seen.append(len(store.bm25(["wordling0", "wordling59"], 10, None)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        qmd("update")
    finally:
        done.set()
        reader.join()
    documents, hits = seen[0::2], seen[1::2]
    assert len(documents) > 3  # the reader was not locked out while the update ran
    assert set(documents) <= {before, before + 60}
    assert set(hits) <= {0, 2}  # FTS rows and documents land together
    assert qmd.counts()["documents"] == before + 60


def test_search_finds_chinese_document_with_chinese_query(qmd: Qmd):
    hits = json.loads(qmd("search", "向量检索", "--json").stdout)
    assert hits[0]["file"] == "notes/zh/向量检索.md"
    assert hits[0]["title"] == "向量检索入门"
    hits = json.loads(qmd("search", "交叉编码器重排", "--json").stdout)
    assert hits[0]["file"] == "notes/zh/向量检索.md" and "交叉编码器" in hits[0]["snippet"]


def test_search_ranks_the_matching_english_document_first(qmd: Qmd):
    hits = json.loads(qmd("search", "merge requests into one batch", "-n", "2", "--json").stdout)
    assert hits[0]["file"] == "notes/guide/batching.md"
    assert hits[0]["title"] == "Dynamic batching on Triton"
    assert len(hits) <= 2 and 0 < hits[0]["score"] <= 1


def test_search_filters_by_collection_and_min_score(qmd: Qmd, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "batch.md").write_text("# Batch cooking\n\nCook one big batch of rice for the week.\n")
    qmd("collection", "add", str(other), "--name", "kitchen")
    qmd("update")
    files = [h["file"] for h in json.loads(qmd("search", "batch", "-c", "kitchen", "--json").stdout)]
    assert files == ["kitchen/batch.md"]
    assert json.loads(qmd("search", "batch", "--min-score", "1.0", "--json").stdout) == []
    assert qmd.error("search", "batch", "-c", "nope") == "Error: unknown collection 'nope' (known: kitchen, notes)"


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "Error: query is empty"),
        ("   ", "Error: query is empty"),
        ("x" * (1 << 20), "Error: query is 1048576 bytes; the limit is 16384"),
    ],
    ids=["empty", "blank", "1MB"],
)
def test_search_rejects_bad_queries_and_leaves_the_index_intact(qmd: Qmd, query: str, message: str):
    before = qmd.counts()
    assert qmd.error("search", query) == message
    assert qmd.counts() == before


def test_search_rejects_zero_results(qmd: Qmd):
    assert qmd.error("search", "batch", "-n", "0") == "Error: n must be a positive integer, got 0"


def test_output_formats_parse(qmd: Qmd):
    query = ["search", "dynamic batching", "-n", "3"]
    rows = list(csv.DictReader(io.StringIO(qmd(*query, "--format", "csv").stdout)))
    assert rows[0]["file"] == "notes/guide/batching.md" and rows[0]["docid"].startswith("#")
    root = ET.fromstring(qmd(*query, "--format", "xml").stdout)
    assert root[0].get("file") == "notes/guide/batching.md"
    assert qmd(*query, "--format", "files").stdout.splitlines()[0] == "notes/guide/batching.md"
    assert "**Dynamic batching on Triton**" in qmd(*query, "--format", "md").stdout
    assert "notes/guide/batching.md:" in qmd(*query).stdout
    full = json.loads(qmd(*query, "--full", "--json").stdout)[0]
    assert full["body"].startswith("---\ntitle: Dynamic batching on Triton")
    numbered = qmd(*query, "--line-numbers").stdout
    assert f"{full['line']:>5}  " in numbered


def test_get_by_path_docid_and_line_range(qmd: Qmd, notes: Path):
    by_path = qmd("get", "notes/recipes.md").stdout
    assert by_path.startswith("# Sourdough bread")
    docid = json.loads(qmd("get", "notes/recipes.md", "--json").stdout)["docid"]
    assert qmd("get", docid).stdout == by_path
    assert qmd("get", str(notes / "recipes.md")).stdout == by_path
    assert qmd("get", "notes/recipes.md:3:2").stdout == (
        "Feed the starter the night before. Mix flour, water and salt, then fold the dough\n"
        "every half hour for two hours.\n"
    )
    assert qmd("get", "notes/recipes.md:6", "--line-numbers").stdout.startswith("    6  ## Baking")


@pytest.mark.parametrize("args", [["get", "notes/recipes.md:1:0"], ["multi-get", "notes/recipes.md:1:0"],
                                  ["multi-get", "notes/guide/*.md,notes/recipes.md:2:0"]])
def test_a_reference_asking_for_zero_lines_is_refused_like_lines_0(qmd: Qmd, args: list[str]):
    ref = args[1].split(",")[-1]
    assert qmd.error(*args) == f"Error: {ref!r} asks for 0 lines; the count after FROM: is at least 1 (TARGET:FROM:COUNT)"
    assert qmd("get", "notes/recipes.md", "-l", "1").stdout == "# Sourdough bread\n"


def test_get_fails_with_one_line_for_paths_outside_collections(qmd: Qmd, tmp_path: Path):
    outside = tmp_path / "elsewhere.md"
    outside.write_text("# Not indexed\n")
    assert qmd.error("get", str(outside)).startswith(f"Error: {outside} is not inside any collection (collections: notes")
    assert qmd.error("get", "#ffffff") == "Error: no document with docid #ffffff"
    assert qmd.error("get", "notes/recipes.md:99") == "Error: line 99 is past the end of the document (9 lines)"


def test_multi_get_by_glob_and_list_with_max_bytes(qmd: Qmd):
    docs = json.loads(qmd("multi-get", "notes/guide/*.md", "--json").stdout)
    assert [d["file"] for d in docs] == ["notes/guide/batching.md", "notes/guide/operations.md"]
    result = qmd("multi-get", "notes/guide/batching.md,notes/guide/operations.md", "--max-bytes", "300")
    assert "==> notes/guide/operations.md" in result.stdout
    assert "skipped notes/guide/batching.md: 734 bytes > --max-bytes 300" in result.stderr


def test_ls_lists_collections_and_files(qmd: Qmd):
    assert qmd("ls").stdout.startswith("notes/  4 documents")
    listed = qmd("ls", "notes/guide").stdout.splitlines()
    assert [ln.split()[0] for ln in listed] == ["notes/guide/batching.md", "notes/guide/operations.md"]


def test_corrupt_index_gives_one_line_and_is_left_alone(qmd: Qmd):
    sqlite_only(qmd, "a damaged file")
    index = qmd.home / "index.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(str(index) + suffix).unlink(missing_ok=True)
    index.write_bytes(b"definitely not sqlite" * 100)
    message = qmd.error("search", "batch")
    assert message.startswith(f"Error: {index} is not a readable qmd-triton index")
    assert index.read_bytes() == b"definitely not sqlite" * 100


def test_missing_index_says_how_to_make_one(tmp_path: Path, backend):
    q = Qmd(tmp_path / "home", backend)
    assert q.error("search", "x").startswith("Error: no index ")
    assert "run `qmdctl update`" in q.error("search", "x")


def test_status_shows_index_counts_without_server(qmd: Qmd):
    result = qmd("status", "--json", "--http-port", "1", ok=False)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ready"] is False
    assert data["index"]["documents"] == 4 and data["index"]["collections"]["notes"]["documents"] == 4


def test_update_fails_with_one_line_when_a_collection_directory_vanished(qmd: Qmd, notes: Path):
    before = qmd.counts()
    shutil.rmtree(notes)
    assert qmd.error("update") == f"Error: collection notes: path {notes} does not exist or is not a directory"
    assert qmd.counts() == before


def test_a_word_every_document_shares_still_ranks_them(tmp_path: Path, backend):
    """SQLite's IDF is 0 for a term in half the rows or more; search must still order by it."""
    notes = tmp_path / "topic"
    notes.mkdir()
    (notes / "a.md").write_text("# Queues\n\nBatching once here, then other words about queues and delays.\n")
    (notes / "b.md").write_text("# Batching\n\nBatching, batching and more batching: the batcher merges requests.\n")
    (notes / "c.md").write_text("# Ports\n\nThe server listens on ports; batching is mentioned in passing.\n")
    q = Qmd(tmp_path / "home", backend)
    q("collection", "add", str(notes), "--name", "topic")
    q("update")
    hits = json.loads(q("search", "batching", "--json").stdout)
    assert [h["file"] for h in hits][0] == "topic/b.md"  # title and three mentions
    assert len(hits) == 3 and all(h["score"] > 0.1 for h in hits)


# -- everyday use (issue: what the docs promise holds, what tobi/qmd users expect) ---------------------


def test_a_file_whose_whole_text_is_touch_is_indexed_and_updated_like_any_other(qmd: Qmd, notes: Path):
    (notes / "odd.md").write_text("touch")
    assert json.loads(qmd("update", "--json").stdout)["added"] == 1
    assert qmd("get", "notes/odd.md").stdout == "touch"
    (notes / "recipes.md").write_text("touch")
    assert json.loads(qmd("update", "--json").stdout)["changed"] == 1
    assert qmd("get", "notes/recipes.md").stdout == "touch"


def test_collection_commands_keep_the_comments_of_the_config_file(tmp_path: Path, notes: Path):
    q = Qmd(tmp_path / "home")
    config = tmp_path / "home" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# my qmd settings\n[server]\nhttp_port = 8000  # the usual port\n\n# notes below\n")
    q("collection", "add", str(notes), "--name", "notes")
    q("collection", "rename", "notes", "kb")
    q("context", "add", "kb/guide", "How-to guides")
    text = config.read_text()
    assert "# my qmd settings" in text and "# the usual port" in text and "# notes below" in text
    assert "[collections.kb]" in text and '"/guide" = "How-to guides"' in text
    q("collection", "remove", "kb")
    assert "# my qmd settings" in config.read_text()


def test_multi_get_takes_line_ranges_mixes_globs_and_refs_and_refuses_what_matches_nothing(qmd: Qmd):
    docs = json.loads(qmd("multi-get", "notes/guide/*.md,notes/recipes.md:3:2", "--json").stdout)
    assert [d["file"] for d in docs] == ["notes/guide/batching.md", "notes/guide/operations.md", "notes/recipes.md"]
    assert docs[2]["from"] == 3 and docs[2]["text"].count("\n") == 2
    assert qmd.error("multi-get", "notes/nothing/*.md") == "Error: no indexed document matches 'notes/nothing/*.md'"
    assert qmd.error("multi-get", "notes/guide/*.md,notes/missing.md").startswith(
        "Error: notes/missing.md is not in the index")
    limited = qmd("multi-get", "notes/guide/*.md", "--max-lines", "2").stdout
    assert "(truncated)" in limited
    root = ET.fromstring(qmd("multi-get", "notes/recipes.md", "--format", "xml").stdout)
    assert root[0].get("file") == "notes/recipes.md" and "Sourdough" in root[0].text
    assert "## Sourdough bread" in qmd("multi-get", "notes/recipes.md", "--format", "md").stdout


def test_docids_are_the_shortest_unique_prefix_and_any_unique_prefix_finds_the_document(tmp_path: Path, backend):
    notes = tmp_path / "clash"
    notes.mkdir()
    q = Qmd(tmp_path / "home", backend)
    # find two texts whose sha256 share their first 6 hex digits (a birthday search over short texts)
    import hashlib

    seen: dict[str, str] = {}
    pair = None
    i = 0
    while pair is None:
        text = f"# note {i}\n"
        prefix = hashlib.sha256(text.encode()).hexdigest()[:6]
        if prefix in seen:
            pair = (seen[prefix], text)
        seen[prefix] = text
        i += 1
    for n, text in enumerate(pair):
        (notes / f"n{n}.md").write_text(text)
    q("collection", "add", str(notes), "--name", "clash")
    q("update")
    hits = json.loads(q("search", "note", "--json").stdout)
    ids = [h["docid"] for h in hits]
    assert len(ids) == 2 and all(len(d) > 7 for d in ids) and ids[0] != ids[1]  # longer than #xxxxxx
    for h in hits:
        assert json.loads(q("get", h["docid"], "--json").stdout)["file"] == h["file"]
    assert q.error("get", ids[0][:7]).startswith(f"Error: docid {ids[0][:7]} is ambiguous: #")
    with open_index(index_config(tmp_path / "home")) as store:
        assert len(store.unique_docids([store.documents()[0].hash])[store.documents()[0].hash]) == len(ids[0]) - 1


def test_get_suggests_the_closest_paths_when_it_misses(qmd: Qmd):
    message = qmd.error("get", "notes/guide/batchng.md")
    assert "did you mean notes/guide/batching.md" in message
    assert qmd.error("get", "notes/recipes.md\nrm -rf").startswith(
        "Error: a reference cannot contain a line break or control character")


def test_minus_words_and_phrases_exclude_documents_from_search(qmd: Qmd):
    both = [h["file"] for h in json.loads(qmd("search", "starter dough", "--json").stdout)]
    assert "notes/recipes.md" in both
    without = [h["file"] for h in json.loads(qmd("search", "starter dough -sourdough", "--json").stdout)]
    assert "notes/recipes.md" not in without
    phrase = json.loads(qmd("search", '"dynamic batching"', "--json").stdout)
    assert phrase[0]["file"] == "notes/guide/batching.md"
    assert qmd.error("search", "--", "-sourdough").startswith("Error: the query only excludes")


@pytest.mark.parametrize("query", ["*", '"', "(", ")", "''", "\\", "%", "_", "* %"])
def test_a_query_of_symbols_only_says_it_has_no_word_not_that_it_excludes(qmd: Qmd, query: str):
    assert qmd.error("search", "--", query) == (
        f"Error: the query {query!r} has no word to search for (only punctuation or symbols; `*` and `%` are not "
        "wildcards here); give at least one word")


def test_update_counts_what_it_leaves_out_and_says_why(qmd: Qmd, notes: Path):
    (notes / "node_modules" / "pkg").mkdir(parents=True)
    (notes / "node_modules" / "pkg" / "README.md").write_text("# vendored\n")
    (notes / ".hidden").mkdir()
    (notes / ".hidden" / "secret.md").write_text("# hidden\n")
    (notes / "outside.md").symlink_to("/etc/hostname")
    (notes / "dangling.md").symlink_to(notes / "nowhere.md")
    (notes / "inside-link.md").symlink_to(notes / "recipes.md")
    bad_name = os.fsencode(str(notes)) + b"/caf\xe9.md"
    with open(bad_name, "wb") as f:
        f.write(b"# latin-1 name\n")
    result = qmd("update", "--json")
    report = json.loads(result.stdout)
    assert report["excluded"] == 2 and report["added"] == 1  # the link inside the collection is indexed
    assert sorted(report["skipped"]) == ["notes/caf\\xe9.md", "notes/dangling.md", "notes/outside.md"]
    assert "Warning: skipped notes/outside.md: a symlink to /etc/hostname, outside the collection" in result.stderr
    assert "the file name is not valid UTF-8" in result.stderr
    assert "2 excluded" in qmd("update").stdout or json.loads(qmd("update", "--json").stdout)["excluded"] == 2
    assert json.loads(qmd("search", "hostname", "--json").stdout) == []


def test_update_cmd_runs_in_the_collection_folder_before_the_scan(tmp_path: Path, notes: Path):
    q = Qmd(tmp_path / "home")
    q("collection", "add", str(notes), "--name", "notes", "--update-cmd", "printf '# pulled\\n' > pulled.md")
    report = json.loads(q("update", "--json").stdout)
    assert report["added"] == 5 and (notes / "pulled.md").is_file()
    q("collection", "set", "notes", "--update-cmd", "exit 3")
    result = q("update")
    assert "Warning: notes: `exit 3` exited with status 3; scanning the files as they are" in result.stderr


def test_contexts_come_back_with_every_hit_below_them(qmd: Qmd):
    qmd("context", "add", "/", "The team's notes")
    qmd("context", "add", "notes/guide", "Operating guides for the search service")
    hits = {h["file"]: h for h in json.loads(qmd("search", "batching recipes sourdough", "--json").stdout)}
    assert hits["notes/guide/batching.md"]["context"] == "The team's notes / Operating guides for the search service"
    assert hits["notes/recipes.md"]["context"] == "The team's notes"
    listed = json.loads(qmd("context", "list", "--json").stdout)
    assert {"target": "notes/guide", "text": "Operating guides for the search service"} in listed
    qmd("context", "rm", "notes/guide")
    assert qmd.error("context", "rm", "notes/guide").startswith("Error: no context on 'notes/guide'")


def test_a_running_server_labels_hits_with_contexts_added_after_it_started(qmd: Qmd):
    from qmd_triton.index.factory import ServedIndex

    served = ServedIndex(index_config(qmd.home))  # what qmd_search and qmd_retrieve hold for their lifetime
    assert served.contexts().for_path("notes", "guide/batching.md") == ""
    qmd("context", "add", "notes/guide", "Operating guides")
    assert served.contexts().for_path("notes", "guide/batching.md") == "Operating guides"
    (qmd.home / "config.toml").write_text("[[collection\n", encoding="utf-8")  # a half-written edit
    assert served.contexts().for_path("notes", "guide/batching.md") == ""  # unlabelled, never a failed search


def test_all_full_path_and_no_color(qmd: Qmd, notes: Path):
    every = json.loads(qmd("search", "the", "--all", "-n", "1", "--json").stdout)
    assert len(every) == 3  # every English note: --all outranks -n
    lines = qmd("search", "sourdough", "--full-path", "--format", "files").stdout.splitlines()
    assert lines == [str(notes / "recipes.md")]
    assert "\x1b[" not in qmd("search", "sourdough").stdout  # not a terminal: no colors
