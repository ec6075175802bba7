"""BM25 over a real SQLite FTS5 index: the pruned top-k search returns exactly what scoring every match does."""

from __future__ import annotations

import random

import pytest

from qmd_triton.index.collections import Collection
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.index.update import update
from qmd_triton.search.lexical import search_bm25
from qmd_triton.search.options import SearchOptions

COMMON = ["the", "of", "a", "is", "and", "notes", "server"]  # in most documents
MIDDLE = [f"topic{i}" for i in range(12)]  # in a tenth or so
RARE = [f"rarity{i}" for i in range(40)]  # in one to three


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("bm25") / "notes"
    folder.mkdir()
    rng = random.Random(7)
    for d in range(400):
        words = [w for w in COMMON if rng.random() < 0.8] * rng.randint(1, 4)
        words += [w for w in MIDDLE if rng.random() < 0.1] * rng.randint(1, 3)
        words += [w for w in RARE if rng.random() < 0.04]
        words += [f"filler{rng.randint(0, 3000)}" for _ in range(rng.randint(5, 120))]
        rng.shuffle(words)
        title = " ".join(rng.sample(COMMON + MIDDLE, 2))
        (folder / f"doc{d:03d}.md").write_text(f"# {title}\n\n{' '.join(words)}\n", encoding="utf-8")
    with SqliteIndex.open(folder.parent / "index.sqlite", create=True) as s:
        update(s, [Collection("notes", folder)])
        yield s


def queries(n: int) -> list[list[str]]:
    rng = random.Random(11)
    out = [["the"], ["the", "of", "a"], ["rarity3"], ["nothingmatches"], ["the", "nothingmatches"]]
    while len(out) < n:
        out.append(rng.sample(COMMON, rng.randint(0, 3)) + rng.sample(MIDDLE, rng.randint(0, 2))
                   + rng.sample(RARE, rng.randint(0, 2)) or ["of"])
    return out


@pytest.mark.parametrize("limit", [1, 5, 40])
def test_pruned_bm25_equals_scoring_every_match(store: SqliteIndex, limit: int):
    for terms in queries(120):
        pruned = store.bm25(terms, limit)
        full = store.bm25(terms, limit, exhaustive=True)
        assert [d.path for d, _ in pruned] == [d.path for d, _ in full], terms
        assert [s for _, s in pruned] == pytest.approx([s for _, s in full], rel=1e-9), terms


def test_filters_and_exclusions_apply_to_the_pruned_search(store: SqliteIndex):
    terms = ["the", "topic1", "rarity5"]
    excluded = store.bm25(terms, 10, exclude=["topic2"])
    full = store.bm25(terms, 10, exclude=["topic2"], exhaustive=True)
    assert [d for d, _ in excluded] == [d for d, _ in full] and len(full) == 10
    assert not {d.id for d, _ in excluded} & store.matching(["topic2"])
    assert store.bm25(terms, 10, collections=["elsewhere"]) == []


def test_a_rare_word_outranks_documents_holding_only_common_ones(store: SqliteIndex):
    hits = search_bm25(store, "the of a rarity7", SearchOptions(n=3))
    holders = {d.path for d, _ in store.bm25(["rarity7"], 50)}
    assert holders and hits[0].path in holders
