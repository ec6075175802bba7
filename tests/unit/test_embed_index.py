"""The embed loop and vector search over a real index, with the test double embedder (no exported model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qmd_triton.errors import ConfigError, FingerprintMismatch
from qmd_triton.index import embedders
from qmd_triton.index.collections import Collection
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.index.sqlite.vectors import VectorMatrix
from qmd_triton.index.update import update
from qmd_triton.search.options import SearchOptions
from qmd_triton.search.vectors import VectorSearch

from ..conftest import ASSETS, open_test_index
from ..fakes import HashEmbedder


def long_note(sections: int = 12) -> str:
    parts = ["# Field notes", ""]
    for s in range(sections):
        parts += [f"## Section {s}", "", f"Section {s} talks about topic{s} and keeps talking " * 8, ""]
    return "\n".join(parts)


def index(store, notes: Path, embedder: HashEmbedder) -> int:
    update(store, [Collection("notes", notes)])
    return embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=2).embedded


def test_embedders_are_found_by_name_like_plugins():
    assert "hash" in embedders.available()
    assert isinstance(embedders.load("hash"), HashEmbedder)
    with pytest.raises(ConfigError, match=r"no embedder named 'nope' \(available: .*hash"):
        embedders.load("nope")


def test_every_chunk_gets_a_vector_and_vector_search_ranks_by_meaning(tmp_path: Path, notes: Path, backend):
    embedder = embedders.load("hash")
    with open_test_index(tmp_path / "home", backend) as store:
        embedded = index(store, notes, embedder)
        counts = store.counts()
        assert counts["embedded"] == counts["chunks"] > 0 and embedded == counts["chunks"]
        hits = VectorSearch(store).search(embedder.embed_query("sourdough starter flour water"), SearchOptions(n=2))
    assert hits[0].file == "notes/recipes.md" and hits[0].score > hits[1].score


def test_an_edit_re_embeds_only_the_chunks_whose_text_changed(tmp_path: Path, notes: Path, backend):
    (notes / "long.md").write_text(long_note())
    embedder = HashEmbedder()
    with open_test_index(tmp_path / "home", backend) as store:
        index(store, notes, embedder)
        chunks = len(store.chunks_of(store.document("notes", "long.md").hash))
        assert chunks >= 6
        with (notes / "long.md").open("a") as f:
            f.write("\nOne more line at the very end.\n")
        assert index(store, notes, embedder) <= 2  # the last chunk (and its overlap neighbour), not all of them
        shutil.move(notes / "long.md", notes / "renamed.md")
        shutil.copy(notes / "recipes.md", notes / "copy-of-recipes.md")
        assert index(store, notes, embedder) == 0  # same texts, same vectors
        counts = store.counts()
        assert counts["embedded"] == counts["chunks"]


def test_vectors_of_another_embedder_are_refused_not_mixed(tmp_path: Path, notes: Path, backend):
    with open_test_index(tmp_path / "home", backend) as store:
        index(store, notes, HashEmbedder())
        with pytest.raises(FingerprintMismatch, match="embedded with a different dim than"):
            index(store, notes, HashEmbedder(dim=32))


def test_an_index_chunked_by_an_older_chunker_is_chunked_again_keeping_unchanged_vectors(tmp_path: Path, notes: Path, backend):
    import json

    from qmd_triton.index.rows import FINGERPRINT_KEY

    embedder = HashEmbedder()
    with open_test_index(tmp_path / "home", backend) as store:
        total = index(store, notes, embedder)
        old = {k: v for k, v in embedder.setup().fingerprint.items() if k != "chunker"}
        with store.transaction():
            store.set_meta(FINGERPRINT_KEY, json.dumps(old))
        assert index(store, notes, embedder) == 0  # chunked again; the same texts keep their vectors
        assert store.fingerprint() == embedder.setup().fingerprint
        counts = store.counts()
        assert counts["embedded"] == counts["chunks"] == total


def test_cleanup_drops_what_no_document_needs_and_reports_the_bytes(tmp_path: Path, notes: Path):
    embedder = HashEmbedder()
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        index(store, notes, embedder)
        (notes / "recipes.md").unlink()
        update(store, [Collection("notes", notes)])
        assert store.remember_expansion("k1", {"lex": [], "vec": [], "hyde": []})
        assert store.remember_expansion("k2", {"lex": [], "vec": [], "hyde": []})
        report = store.cleanup(keep_expansions=1)
        assert report["vectors"] >= 1 and report["expansions"] == 1
        assert report["bytes_after"] <= report["bytes_before"] and report["bytes_reclaimed"] >= 0
        counts = store.counts()
        assert counts["embedded"] == counts["chunks"]
        assert store.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == counts["chunks"]


def test_vector_search_follows_an_update_reading_only_what_changed(tmp_path: Path, notes: Path):
    embedder = HashEmbedder()
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        index(store, notes, embedder)
        vectors = VectorSearch(store)
        query = embedder.embed_query("zebra crossings painted stripes")
        assert vectors.search(query, SearchOptions(n=1))[0].file != "notes/zebra.md"
        full = len(store.vector_matrix)
        (notes / "zebra.md").write_text("# Zebra crossings\n\nPedestrians cross where the stripes are painted.\n")
        (notes / "recipes.md").unlink()
        index(store, notes, embedder)
        hits = vectors.search(query, SearchOptions(n=1))
        assert hits[0].file == "notes/zebra.md" and hits[0].snippet.startswith("# Zebra crossings")
        assert store.vector_matrix.reloads == {"full": 1, "incremental": 1}  # the update cost its own rows
        assert len(store.vector_matrix) == full  # one document gone, one come (one chunk each)
        assert all(h.file != "notes/recipes.md" for h in vectors.search(query, SearchOptions(n=10)))


def big_note(paragraphs: int = 2300) -> list[str]:
    """A long note of plain paragraphs, few headings: the case where greedy packing could cascade."""
    lines = ["# Lab journal", ""]
    for p in range(paragraphs):
        if p % 150 == 0:
            lines += [f"## Week {p // 150}", ""]
        lines += [f"Entry {p}: measured sample{p} twice; the reading was {p * 7 % 101} units and stable.", ""]
    return lines


@pytest.mark.parametrize("edit", ["word", "new line", "trailing space", "deleted line"])
def test_a_one_line_edit_of_a_450_chunk_file_re_embeds_a_handful(tmp_path: Path, notes: Path, edit: str, backend):
    lines = big_note()
    (notes / "journal.md").write_text("\n".join(lines))
    embedder = HashEmbedder(chunk_tokens=60)
    with open_test_index(tmp_path / "home", backend) as store:
        index(store, notes, embedder)
        chunks = len(store.chunks_of(store.document("notes", "journal.md").hash))
        assert chunks >= 450
        middle = len(lines) // 2 + 1  # an entry line
        if edit == "word":
            lines[middle] = lines[middle].replace("twice", "three times")
        elif edit == "new line":
            lines.insert(middle + 1, "A note added later, between two entries.")
        elif edit == "trailing space":
            lines[middle] += " "
        else:
            del lines[middle]
        (notes / "journal.md").write_text("\n".join(lines))
        assert index(store, notes, embedder) <= 6  # the edited chunk, its overlap neighbour, until both meet


def test_embed_finishes_when_update_removes_documents_while_it_runs(tmp_path: Path, notes: Path, monkeypatch):
    """`update` in another process removing documents between embed's steps: embed skips what is gone."""
    embedder = embedders.load("hash")
    path = tmp_path / "index.sqlite"
    (notes / "long.md").write_text(long_note())
    with SqliteIndex.open(path, create=True) as store:
        update(store, [Collection("notes", notes)])

    def remove_some() -> None:
        for name in ("long.md", "recipes.md"):
            (notes / name).unlink(missing_ok=True)
        with SqliteIndex.open(path) as other:  # another connection, as another process would have
            update(other, [Collection("notes", notes)])

    real_unchunked = SqliteIndex.unchunked_hashes
    real_embed = embedder.embed
    calls = {"n": 0}

    def unchunked_then_update(self):
        hashes = real_unchunked(self)
        remove_some()  # between listing the new content and chunking it
        return hashes

    def embed_then_update(texts):
        calls["n"] += 1
        if calls["n"] == 1:
            (notes / "guide" / "batching.md").unlink()
            with SqliteIndex.open(path) as other:
                update(other, [Collection("notes", notes)])  # while vectors are in flight
        return real_embed(texts)

    monkeypatch.setattr(SqliteIndex, "unchunked_hashes", unchunked_then_update)
    with SqliteIndex.open(path) as store:
        report = embed_pending(store, embedder.setup(), lambda: embed_then_update, batch_size=2, concurrency=2)
        counts = store.counts()
    assert report.embedded > 0
    assert counts["documents"] == 2 and counts["embedded"] == counts["chunks"] > 0


def live_rows(vectors: VectorMatrix) -> dict[int, tuple[str, bytes]]:
    keep = vectors.ids >= 0
    return {int(i): (h, m.tobytes()) for i, h, m in zip(vectors.ids[keep], vectors.hashes[keep], vectors.matrix[keep])}


def fresh_files(path: Path, query, n: int) -> list[str]:
    """What a reader that opens the index now finds (its own matrix, read whole)."""
    with SqliteIndex.open(path, readonly=True) as other:
        return [h.file for h in VectorSearch(other).search(query, SearchOptions(n=n))]


def test_a_followed_index_holds_exactly_what_a_fresh_read_holds_after_many_edits(tmp_path: Path, notes: Path):
    import random

    rng = random.Random(3)
    embedder = HashEmbedder()
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        index(store, notes, embedder)
        follower = VectorMatrix(store)
        follower.refresh()
        for step in range(25):
            kind = rng.choice(["add", "edit", "remove"])
            existing = sorted(notes.glob("extra*.md"))
            if kind == "add" or not existing:
                (notes / f"extra{step}.md").write_text(f"# Extra {step}\n\n" + long_note(rng.randint(1, 4)))
            elif kind == "edit":
                path = rng.choice(existing)
                path.write_text(path.read_text() + f"\nEdited at step {step}.\n")
            else:
                rng.choice(existing).unlink()
            index(store, notes, embedder)
            follower.refresh()
            fresh = VectorMatrix(store)
            fresh.refresh()
            assert live_rows(follower) == live_rows(fresh), step
            query = embedder.embed_query(f"topic{step % 12} talks")
            assert [h.file for h in VectorSearch(store).search(query, SearchOptions(n=5))] == \
                fresh_files(store.path, query, 5)
        assert follower.reloads["incremental"] >= 15  # a change larger than half the matrix reads it whole


def test_a_reader_behind_a_pruned_vector_log_reads_everything_again(tmp_path: Path, notes: Path):
    embedder = HashEmbedder()
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        index(store, notes, embedder)
        follower = VectorMatrix(store)
        follower.refresh()
        (notes / "zebra.md").write_text("# Zebra crossings\n\nPedestrians cross where the stripes are painted.\n")
        index(store, notes, embedder)
        with store.transaction():
            store.prune_vector_log(keep=0)  # the changes this reader needs are gone from the log
        follower.refresh()
        assert follower.reloads == {"full": 2, "incremental": 0}
        fresh = VectorMatrix(store)
        fresh.refresh()
        assert live_rows(follower) == live_rows(fresh)


def test_vector_search_follows_chunk_ids_that_sqlite_gave_to_other_chunks(tmp_path: Path, notes: Path):
    """Two collections removed and one of them added again: SQLite hands the freed chunk ids out again, to
    other chunks; the matrix must not keep the rows of the chunks that had them."""
    embedder = HashEmbedder()
    other = tmp_path / "other"
    shutil.copytree(ASSETS / "zh-notes" / "corpus", other)
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        for cols in ([Collection("other", other)], [Collection("other", other), Collection("notes", notes)]):
            update(store, cols)  # the other notes' chunks first: they get the lowest ids
            embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=2)
        vectors = VectorSearch(store)
        query = embedder.embed_query("sourdough starter flour water")
        assert len(vectors.search(query, SearchOptions(n=1))) == 1  # the matrix is loaded
        store.delete_collection("other")
        store.delete_collection("notes")
        update(store, [])  # no document left: every chunk goes, and the table starts its ids again
        update(store, [Collection("again", notes)])
        embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=2)
        hits = vectors.search(query, SearchOptions(n=4))
        assert hits and all(h.file.startswith("again/") for h in hits)
        fresh = VectorMatrix(store)
        fresh.refresh()
        assert live_rows(store.vector_matrix) == live_rows(fresh)
        assert fresh_files(store.path, query, 4) == [h.file for h in vectors.search(query, SearchOptions(n=4))]


def test_a_follower_reads_a_reused_chunk_id_as_the_new_chunk_without_reading_everything(tmp_path: Path,
                                                                                         notes: Path):
    """The newest chunk removed and another one added: SQLite gives the new chunk the freed id; the vector log
    has the removal and the insertion, so an incremental refresh replaces the row instead of keeping the old
    vector under the id."""
    (notes / "long.md").write_text(long_note())
    tail = tmp_path / "tail"
    tail.mkdir()
    (tail / "last.md").write_text("# Zebra crossings\n\nPedestrians cross where the stripes are painted.\n")
    embedder = HashEmbedder()
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        index(store, notes, embedder)
        update(store, [Collection("notes", notes), Collection("tail", tail)])  # the highest ids
        embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=8, concurrency=2)
        follower = VectorMatrix(store)
        follower.refresh()
        old_ids = {int(i) for i in follower.ids}
        store.delete_collection("tail")
        update(store, [Collection("notes", notes)])
        (notes / "glacier.md").write_text("# Glacier survey\n\nMeasure how far the glacier tongue retreats each spring.\n")
        index(store, notes, embedder)
        follower.refresh()
        fresh = VectorMatrix(store)
        fresh.refresh()
        assert follower.reloads["incremental"] == 1
        assert {int(i) for i in fresh.ids} - old_ids == set()  # the premise: the new chunk got a freed id
        assert live_rows(follower) == live_rows(fresh)
        query = embedder.embed_query("glacier tongue retreats each spring")
        assert VectorSearch(store).search(query, SearchOptions(n=1))[0].file == "notes/glacier.md"


@pytest.mark.parametrize("groups, in_flight", [
    ([{"kind": "KIND_CPU", "count": 3}], 2),  # shipped: one instance stays free for searches
    ([{"kind": "KIND_CPU", "count": 2}], 1),
    ([{"kind": "KIND_CPU", "count": 1}], 1),  # nothing to keep free: still embeds
    ([{"kind": "KIND_CPU", "count": 8}], 7),  # `qmdctl tune` on a bigger box
    ([{"kind": "KIND_CPU", "count": 2}, {"kind": "KIND_CPU", "count": 2}], 3),
    ([{"kind": "KIND_GPU", "count": 1, "gpus": [0]}], 2),  # a GPU batches; two keep it fed
    ([], 1),
])
def test_bulk_requests_in_flight_follow_the_served_embedder(groups: list, in_flight: int):
    from qmd_triton.serving.client import bulk_in_flight

    assert bulk_in_flight({"name": "qmd_embed_model", "instance_group": groups}) == in_flight


def test_an_index_titled_by_an_earlier_rule_is_retitled_by_update_keeping_its_vectors(tmp_path: Path, notes: Path,
                                                                                       backend):
    from qmd_triton.index.update import TITLE_RULE, TITLE_RULE_KEY

    page = "<!--\n# Copyright 2024, Example Corp. All rights reserved.\n-->\n\n# Rate limiter\n\nTake turns.\n"
    (notes / "limiter.md").write_text(page)
    embedder = HashEmbedder()
    with open_test_index(tmp_path / "home", backend) as store:
        index(store, notes, embedder)
        doc = store.document("notes", "limiter.md")
        assert doc.title == "Rate limiter"
        with store.transaction():  # what the earlier rule wrote: the licence comment's line as the title
            store.upsert_documents([("notes", "limiter.md", "Copyright 2024, Example Corp. All rights reserved.",
                                     doc.hash, page, doc.size, doc.mtime_ns)])
            store.set_meta(TITLE_RULE_KEY, "1")
        assert store.document("notes", "limiter.md").title.startswith("Copyright")
        report = update(store, [Collection("notes", notes)])
        assert store.document("notes", "limiter.md").title == "Rate limiter"
        assert report.added == report.changed == 0 and store.meta(TITLE_RULE_KEY) == TITLE_RULE
        assert embed_pending(store, embedder.setup(), lambda: embedder.embed).embedded == 0


def test_vectors_of_another_model_of_the_same_size_are_refused_until_embed_force(tmp_path: Path, notes: Path,
                                                                                  backend):
    """all-MiniLM-L6-v2 and bge-small-en-v1.5 both make 384-d vectors: only the fingerprint tells them apart."""
    from qmd_triton.index.fingerprint import EmbeddingSetup

    first = HashEmbedder()
    other = HashEmbedder()
    other._setup = EmbeddingSetup({**first.setup().fingerprint, "model": "bge-small-en-v1.5",
                                   "query_prompt": "Represent this sentence for searching relevant passages: {text}"},
                                  first.setup().count_tokens)
    with open_test_index(tmp_path / "home", backend) as store:
        index(store, notes, first)
        with pytest.raises(FingerprintMismatch, match=r"different model, query_prompt than .*`qmdctl embed --force`"):
            index(store, notes, other)
        assert store.fingerprint()["model"] == "hash"  # nothing of the other model was written
        report = embed_pending(store, other.setup(), lambda: other.embed, force=True)
        counts = store.counts()
        assert report.embedded == counts["chunks"] == counts["embedded"] and store.fingerprint()["model"] == other \
            .setup().fingerprint["model"]
