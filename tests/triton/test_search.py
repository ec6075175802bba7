"""BM25 and vector search served by the real tritonserver, over an index the CLI builds."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.errors import InferenceError
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.fingerprint import embedding_setup
from qmd_triton.index.rows import FINGERPRINT_KEY
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings

from ..conftest import ASSETS


def qmd(settings: Settings, *args: str, ok: bool = True):
    env = {
        "QMD_HOME": str(settings.home),
        "QMD_MODEL_REPOSITORY": str(settings.model_repository),  # the test's copy, never the checkout's
        "QMD_HTTP_PORT": str(settings.http_port),
        "QMD_GRPC_PORT": str(settings.grpc_port),
        "QMD_METRICS_PORT": str(settings.metrics_port),
    }
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def indexed(triton: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    """The assets' notes as collection ``notes`` in the served index, embedded."""
    notes = tmp_path_factory.mktemp("served") / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    qmd(triton, "collection", "add", str(notes), "--name", "notes")
    qmd(triton, "update")
    qmd(triton, "embed")
    yield triton, notes
    qmd(triton, "collection", "remove", "notes")


def served(settings: Settings, model: str, query: str, options: dict | str | None = None, protocol: str = "http"):
    opts = options if isinstance(options, str) else json.dumps(options or {})
    with QmdClient(settings.url(protocol), protocol) as client:
        return client.search(model, query, opts)


def test_embed_fills_every_chunk_and_status_reports_it(indexed):
    settings, _ = indexed
    data = json.loads(qmd(settings, "status", "--json").stdout)
    index = data["index"]
    assert index["documents"] == 4 and index["chunks"] >= 4
    assert index["embedded"] == index["chunks"] and index["embedded_share"] == 1.0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_vsearch_finds_the_document_by_meaning(indexed, protocol: str):
    settings, _ = indexed
    hits = served(settings, "qmd_vsearch", "how are concurrent inference calls grouped together", protocol=protocol)
    assert hits[0]["file"] == "notes/guide/batching.md"
    assert hits[0]["score"] > hits[-1]["score"]


def test_vsearch_cli_prints_the_same_hits(indexed):
    settings, _ = indexed
    cli_hits = json.loads(qmd(settings, "vsearch", "baking bread in a pot", "--json").stdout)
    assert cli_hits[0]["file"] == "notes/recipes.md"
    assert [h["file"] for h in cli_hits] == [h["file"] for h in served(settings, "qmd_vsearch", "baking bread in a pot")]


def test_served_search_equals_the_cli_search(indexed):
    settings, _ = indexed
    for query in ("dynamic batching queue delay", "向量检索", "ports"):
        cli_hits = json.loads(qmd(settings, "search", query, "--json").stdout)
        assert served(settings, "qmd_search", query) == cli_hits
    assert served(settings, "qmd_search", "向量检索")[0]["file"] == "notes/zh/向量检索.md"


def an_edit_reaches_the_served_models(settings: Settings, notes: Path) -> None:
    """Rewrites notes/recipes.md, updates and embeds: the running server's qmd_search and qmd_vsearch answer
    from the edit at once; the file and the index are put back after."""
    target = notes / "recipes.md"
    original = target.read_text()
    query = "grafana observability dashboards"
    assert served(settings, "qmd_search", query) == []
    before = served(settings, "qmd_vsearch", query)
    try:
        target.write_text("# Observability\n\nGrafana dashboards show latency, throughput and observability panels.\n")
        qmd(settings, "update")
        qmd(settings, "embed")
        assert served(settings, "qmd_search", query)[0]["file"] == "notes/recipes.md"
        assert served(settings, "qmd_vsearch", query)[0]["file"] == "notes/recipes.md"
        assert not before or before[0]["file"] != "notes/recipes.md"
    finally:
        target.write_text(original)
        qmd(settings, "update")
        qmd(settings, "embed")
    assert served(settings, "qmd_search", query) == []


def test_editing_a_file_changes_results_without_restarting_the_server(indexed):
    an_edit_reaches_the_served_models(*indexed)


@pytest.mark.parametrize(
    "model, query, options, message",
    [
        ("qmd_vsearch", "", {}, "query is empty"),
        ("qmd_search", "  ", {}, "query is empty"),
        ("qmd_vsearch", "x" * (1 << 20), {}, "query is 1048576 bytes; the limit is 16384"),
        ("qmd_vsearch", "batching", "{not json", "options is not valid JSON"),
        ("qmd_search", "batching", {"collections": ["nope"]}, "unknown collection 'nope'"),
        ("qmd_vsearch", "batching", {"collections": ["nope"]}, "unknown collection 'nope'"),
        ("qmd_vsearch", "batching", {"n": 0}, "n must be a positive integer"),
        ("qmd_search", "batching", {"colections": ["x"]}, "unknown option"),
    ],
    ids=["empty", "blank", "1MB", "bad-json", "unknown-collection-bm25", "unknown-collection-vec", "n0", "typo"],
)
def test_bad_requests_get_clear_errors_and_the_server_stays_ready(indexed, model, query, options, message):
    settings, _ = indexed
    with pytest.raises(InferenceError, match=message):
        served(settings, model, query, options)
    with QmdClient(settings.url()) as client:
        assert client.is_ready()
    assert served(settings, "qmd_search", "batching")


def test_vsearch_refuses_an_index_embedded_with_another_model(indexed):
    settings, _ = indexed
    with SqliteIndex.open(settings.index_path) as store:
        saved = store.meta(FINGERPRINT_KEY)
        fp = json.loads(saved)
        with store.transaction():
            store.set_meta(FINGERPRINT_KEY, json.dumps({**fp, "model": "0000deadbeef0000"}, sort_keys=True))
    try:
        with pytest.raises(InferenceError, match=r"embedded with a different model than this server's model"):
            served(settings, "qmd_vsearch", "batching")
        result = qmd(settings, "embed", ok=False)
        assert result.exit_code == 1 and "run `qmdctl embed --force`" in result.output
    finally:
        with SqliteIndex.open(settings.index_path) as store, store.transaction():
            store.set_meta(FINGERPRINT_KEY, saved)
    assert served(settings, "qmd_vsearch", "batching")


def test_embedding_resumes_after_an_interrupt(indexed, tmp_path: Path):
    settings, _ = indexed
    home = tmp_path / "home"
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"n{i}.md").write_text(f"# Note {i}\n\n" + f"Paragraph about topic {i} and its details. " * 30)
    own = Settings.load(home, http_port=settings.http_port, grpc_port=settings.grpc_port,
                        metrics_port=settings.metrics_port)
    qmd(own, "collection", "add", str(docs), "--name", "docs")
    qmd(own, "update")
    setup = embedding_setup(settings.model_repository)
    stop = threading.Event()

    def make():
        client = QmdClient(settings.url())

        def embed(texts):
            stop.set()  # interrupt after the first batch
            return client.embed(list(texts))

        return embed

    with SqliteIndex.open(own.index_path) as store:
        first = embed_pending(store, setup, make, batch_size=2, concurrency=1, stop=stop)
        counts = store.counts()
        assert 0 < first.embedded < counts["chunks"] == 12
        assert counts["embedded"] == first.embedded
        stop = threading.Event()
        second = embed_pending(store, setup, lambda: (lambda t: QmdClient(settings.url()).embed(list(t))),
                               batch_size=4, concurrency=2)
        assert first.embedded + second.embedded == 12
        assert store.counts()["embedded"] == 12
        matrix, ids, _ = store.load_vectors()
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5) and len(ids) == 12


def test_vsearch_finds_chinese_document_with_a_chinese_capable_model(chinese_repo, tmp_path: Path):
    from qmd_triton.serving import server

    from ..conftest import make_settings

    repo, _ = chinese_repo  # exported once for the session (conftest)
    report = json.loads((repo / "qmd_embed_model" / "1" / "export.json").read_text())
    assert report["max_abs_diff"] < 1e-4
    settings = make_settings(tmp_path / "home", repo)
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    qmd(settings, "--model-repository", str(repo), "collection", "add", str(notes), "--name", "notes")
    qmd(settings, "update")
    server.start(settings)
    try:
        qmd(settings, "--model-repository", str(repo), "embed")
        assert served(settings, "qmd_vsearch", "怎样把关键词检索和语义检索结合起来")[0]["file"] == "notes/zh/向量检索.md"
    finally:
        server.stop(settings)
