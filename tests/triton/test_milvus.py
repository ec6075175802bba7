"""The Triton models on the milvus backend: `qmdctl up` starts a Milvus Lite server beside tritonserver,
`qmd_search`, `qmd_vsearch` (through `qmd_retrieve`) and `qmd_query` answer from it as the CLI does, and a
killed Milvus Lite fails requests with one line until it is back, with nothing lost.

A tritonserver of its own (free loopback ports) on a home whose ``[index]`` says ``backend = "milvus"``; the
session's server keeps the sqlite backend (test_search.py, test_query.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from qmd_triton.errors import InferenceError
from qmd_triton.index.config import index_config, write_index_table
from qmd_triton.serving import milvus_lite, probes, server
from qmd_triton.serving.supervisor import revive_index
from qmd_triton.system import procs

from ..conftest import ASSETS, make_settings
from .test_search import an_edit_reaches_the_served_models, qmd, served


@pytest.fixture(scope="module")
def on_milvus(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """`qmdctl up` on a milvus home (no supervisor, so the kill below stays down until the test revives it);
    the notes indexed and embedded through the CLI; `qmdctl down` at the end."""
    home = tmp_path_factory.mktemp("milvus_served")
    write_index_table(home, backend="milvus")
    settings = make_settings(home, exported_repo)
    notes = home / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    up = qmd(settings, "up", "--no-supervise")
    assert "starting Milvus Lite" in up.stderr
    try:
        qmd(settings, "collection", "add", str(notes), "--name", "notes")
        qmd(settings, "update")
        qmd(settings, "embed")
        yield settings, notes
    finally:
        lite = milvus_lite.read_state(index_config(home))
        triton = server.read_state(settings)
        qmd(settings, "down", ok=False)
        milvus_lite.stop(index_config(home), timeout_s=10)  # in case `down` failed half-way
    assert lite is not None and not procs.is_running(lite.owned)
    assert triton is not None and not procs.is_running(triton.owned)


def test_up_starts_milvus_lite_beside_the_server_and_status_reports_the_index(on_milvus):
    settings, _ = on_milvus
    state = milvus_lite.running(index_config(settings.home))
    assert state is not None and Path(state.data_dir) == settings.home / "milvus"
    assert not (settings.home / "index.sqlite").exists()
    index = json.loads(qmd(settings, "status", "--json").stdout)["index"]
    assert index["backend"] == "milvus" and index["path"].startswith("milvus local Milvus Lite")
    assert index["documents"] == 4 and index["embedded"] == index["chunks"] > 0


def test_served_search_vsearch_and_query_answer_from_milvus_as_the_cli_does(on_milvus):
    settings, _ = on_milvus
    for query in ("dynamic batching queue delay", "向量检索", "ports"):
        assert served(settings, "qmd_search", query) == json.loads(qmd(settings, "search", query, "--json").stdout)
    assert served(settings, "qmd_search", "向量检索")[0]["file"] == "notes/zh/向量检索.md"
    hits = served(settings, "qmd_vsearch", "how are concurrent inference calls grouped together")
    assert hits[0]["file"] == "notes/guide/batching.md" and hits[0]["score"] > hits[-1]["score"]
    cli_hits = json.loads(qmd(settings, "vsearch", "baking bread in a pot", "--json").stdout)
    assert cli_hits[0]["file"] == "notes/recipes.md"
    assert [h["file"] for h in cli_hits] == [h["file"] for h in served(settings, "qmd_vsearch", "baking bread in a pot")]
    hits = served(settings, "qmd_query", "how are concurrent inference requests merged into a batch",
                  {"n": 3, "expand": False, "explain": True})
    assert hits[0]["file"] == "notes/guide/batching.md" and "rerank" in hits[0]["explain"]
    hits = served(settings, "qmd_query", "向量检索", {"n": 2, "expand": False})
    assert "notes/zh/向量检索.md" in [h["file"] for h in hits]  # jieba words on the BM25 side
    got = json.loads(qmd(settings, "get", "notes/recipes.md", "--json").stdout)
    assert got["file"] == "notes/recipes.md" and got["text"].startswith("# Sourdough bread")
    assert qmd(settings, "get", got["docid"]).stdout == qmd(settings, "get", "notes/recipes.md").stdout


def test_an_edit_reaches_the_served_models_without_a_restart(on_milvus):
    an_edit_reaches_the_served_models(*on_milvus)


def test_a_killed_milvus_lite_fails_requests_with_one_line_and_comes_back_with_everything(on_milvus):
    settings, _ = on_milvus
    config = index_config(settings.home)
    before = {m: served(settings, m, "sourdough starter batching") for m in ("qmd_search", "qmd_vsearch")}
    state = milvus_lite.running(config)
    assert state is not None  # the one `up` started for this module
    os.kill(state.pid, signal.SIGKILL)
    procs.reap(state.pid, wait_s=10)
    for model in ("qmd_search", "qmd_vsearch"):
        with pytest.raises(InferenceError) as e:
            served(settings, model, "sourdough starter batching")
        message = str(e.value)
        assert "cannot reach the index in milvus local Milvus Lite" in message and "\n" not in message.strip()
        assert "Traceback" not in message
    assert probes.status(settings).ready  # the models stay loaded; only their requests failed
    logged: list[str] = []
    assert revive_index(settings, logged.append)  # what the supervisor does every few seconds
    assert any("Milvus Lite (pid" in line and "is gone; restarting it" in line for line in logged)
    after = {m: served(settings, m, "sourdough starter batching") for m in before}
    assert after == before
    assert json.loads(qmd(settings, "status", "--json").stdout)["index"]["documents"] == 4
