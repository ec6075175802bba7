"""Chinese notes on the real server: the full query never ranks worse than its own parts.

The set is the project's own (tests/assets/zh-notes: Chinese and mixed notes, known-item queries in
queries.tsv, the layout of `qmdctl eval`'s known-item sets). With the default English models the pipeline
bypasses what does not read Chinese (expansion, vectors, rerank); with the Chinese embedding fixture
(m3e-small) the vectors run and the English reranker is still bypassed. Either way `query` must put the
expected note first at least as often as `search` and `query --no-rerank`.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest

from qmd_triton.settings import Settings

from ..conftest import ASSETS, make_settings
from .test_search import qmd, served

SET = ASSETS / "zh-notes"
COLLECTION = "zh"


def known_items() -> list[tuple[str, str]]:
    with (SET / "queries.tsv").open(encoding="utf-8") as f:
        return [(row["query"], f"{COLLECTION}/{row['expected_file']}") for row in csv.DictReader(f, delimiter="\t")]


def hit_at_1(settings: Settings, model: str, options: dict | None = None) -> tuple[float, list[str]]:
    """The share of queries whose expected note is first, and the queries that missed."""
    missed = []
    for query, expected in known_items():
        hits = served(settings, model, query, {"n": 5, "collections": [COLLECTION], **(options or {})})
        if not hits or hits[0]["file"] != expected:
            missed.append(query)
    return 1 - len(missed) / len(known_items()), missed


def index_set(settings: Settings, root: Path, *extra: str) -> None:
    notes = root / "zh-corpus"
    shutil.copytree(SET / "corpus", notes)
    qmd(settings, *extra, "collection", "add", str(notes), "--name", COLLECTION)
    qmd(settings, *extra, "update")
    qmd(settings, *extra, "embed")


@pytest.fixture(scope="module")
def english(triton: Settings, tmp_path_factory: pytest.TempPathFactory):
    """The set and the English notes, indexed on the session's server (the default English models)."""
    root = tmp_path_factory.mktemp("zh")
    shutil.copytree(ASSETS / "notes", root / "en")
    qmd(triton, "collection", "add", str(root / "en"), "--name", "en")
    index_set(triton, root)
    yield triton
    for name in (COLLECTION, "en"):
        qmd(triton, "collection", "remove", name)


def test_the_set_is_a_real_known_item_set():
    items = known_items()
    assert len(items) >= 15 and len({q for q, _ in items}) == len(items)
    assert all((SET / "corpus" / f.split("/", 1)[1]).is_file() for _, f in items)


def test_english_models_query_ranks_chinese_notes_at_least_as_well_as_its_parts(english: Settings):
    search, _ = hit_at_1(english, "qmd_search")
    no_rerank, _ = hit_at_1(english, "qmd_query", {"rerank": False})
    full, missed = hit_at_1(english, "qmd_query")
    assert search >= 0.8, "BM25 with CJK bigrams should find most notes"
    assert full >= search and full >= no_rerank, (search, no_rerank, full, missed)


def test_stages_a_model_cannot_read_are_bypassed_and_explained(english: Settings):
    hits = served(english, "qmd_query", "小猫什么时候打疫苗", {"n": 3, "explain": True})
    stages = hits[0]["explain"]["stages"]
    assert hits[0]["file"] == f"{COLLECTION}/生活/养猫.md"
    assert stages["expansion"]["status"] == "language" and "reads en" in stages["expansion"]["why"]
    assert stages["vectors"]["status"] == "bypassed" and "han" in stages["vectors"]["why"]
    assert stages["rerank"]["status"] == "bypassed" and "fused order stands" in stages["rerank"]["why"]
    assert "rerank" not in hits[0]["explain"] and set(hits[0]["explain"]["lists"]) == {"bm25:original"}
    out = qmd(english, "query", "小猫什么时候打疫苗", "-n", "1", "--explain").stdout
    assert out.startswith(f"{COLLECTION}/生活/养猫.md:") and "stages:" in out and "rerank     bypassed (" in out


def test_an_english_query_reranks_english_notes_and_leaves_chinese_passages_in_place(english: Settings):
    hits = served(english, "qmd_query", "docker compose GPU NGC nvidia-smi", {"n": 10, "explain": True,
                                                                             "expand": False})
    by_file = {h["file"]: h["explain"] for h in hits}
    deploy = by_file[f"{COLLECTION}/工作/部署笔记.md"]
    assert deploy["rerank"] is None and deploy["stages"]["rerank"]["status"] in ("partial", "bypassed")
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    english_hits = served(english, "qmd_query", "how are concurrent inference requests merged into a batch",
                          {"n": 3, "explain": True, "collections": ["en"]})
    assert english_hits[0]["file"] == "en/guide/batching.md" and english_hits[0]["explain"]["rerank"] > 0.5
    assert english_hits[0]["explain"]["stages"]["vectors"] == {"status": "ran"}
    # the English notes include one Chinese note (zh/向量检索.md): the only candidate left unread
    stage = english_hits[0]["explain"]["stages"]["rerank"]
    assert stage == {"status": "ran"} or (stage["status"] == "partial" and stage["why"].startswith("1 of "))


def test_status_counts_what_ran_and_what_was_bypassed(english: Settings):
    served(english, "qmd_query", "红烧肉怎么做才不腻", {"n": 1})
    import json

    data = json.loads(qmd(english, "status", "--json").stdout)
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages["rerank"]["languages"] == ["en"] and stages["rerank"]["counts"].get("bypassed", 0) >= 1
    assert stages["expansion"]["counts"].get("language", 0) >= 1
    text = qmd(english, "status").stdout
    assert "rerank     ms-marco-MiniLM-L-12-v2 (INT8 ONNX): en;" in text and "bypassed" in text


def test_the_gateway_and_the_mcp_query_tool_inherit_the_bypass(english: Settings, tmp_path: Path):
    """`/query` and the MCP `query` tool run qmd_query: a Chinese query gets the same fused order as qmdctl's."""
    import asyncio

    import httpx
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from ..doors import QMDCTL, Door, door_env

    items = known_items()
    served_first = [served(english, "qmd_query", q, {"n": 3, "collections": [COLLECTION]})[0]["file"]
                    for q, _ in items]
    with Door(["api"], door_env(english), tmp_path / "api.log") as door:
        gateway_first = []
        for query, _ in items:
            r = httpx.post(f"{door.url}/query", json={"query": query, "top_k": 3, "collections": [COLLECTION]},
                           timeout=120)
            assert r.status_code == 200, r.text
            gateway_first.append(r.json()["results"][0]["file"])
    assert gateway_first == served_first

    async def mcp_first() -> list[str]:
        params = StdioServerParameters(command=QMDCTL, args=["mcp"], env=door_env(english))
        async with stdio_client(params, errlog=sys.__stderr__) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            out = []
            for query, _ in items:
                result = await session.call_tool("query", {"query": query, "limit": 3, "collections": [COLLECTION]})
                assert not result.is_error, result.content
                out.append(result.structured_content["results"][0]["file"])
            return out

    assert asyncio.run(mcp_first()) == served_first


def test_chinese_embedder_query_ranks_chinese_notes_at_least_as_well_as_its_parts(chinese_repo, tmp_path: Path):
    """m3e-small (the offline Chinese fixture) exported by `qmdctl export` with the languages it reads (once for
    the session: conftest ``chinese_repo``)."""
    from qmd_triton.serving import server

    repo, exported = chinese_repo
    assert "languages: zh, en" in exported
    settings = make_settings(tmp_path / "home", repo)
    where = ("--model-repository", str(repo))
    server.start(settings)
    try:
        index_set(settings, tmp_path, *where)
        search, _ = hit_at_1(settings, "qmd_search")
        vsearch, _ = hit_at_1(settings, "qmd_vsearch")
        no_rerank, _ = hit_at_1(settings, "qmd_query", {"rerank": False})
        full, missed = hit_at_1(settings, "qmd_query")
        assert vsearch >= 0.7, "m3e-small reads Chinese: vector search alone finds most notes"
        assert full >= search and full >= no_rerank, (search, vsearch, no_rerank, full, missed)
        hit = served(settings, "qmd_query", "小猫什么时候打疫苗", {"n": 1, "explain": True})[0]
        assert hit["explain"]["stages"]["vectors"] == {"status": "ran"}
        assert hit["explain"]["stages"]["rerank"]["status"] == "bypassed"
    finally:
        server.stop(settings)
