"""The qmdctl exporter's metrics: index counts, staleness, eval scores, scrape errors."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from qmd_triton.bench.evaluation import record
from qmd_triton.cli import cli
from qmd_triton.index.config import index_config
from qmd_triton.index.factory import open_index
from qmd_triton.ops.prometheus import QmdCollector
from qmd_triton.settings import Settings
from qmd_triton.system.net import free_ports

from ..conftest import ASSETS


def scrape(settings: Settings, triton_url: str | None = None) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(QmdCollector(settings, triton_url))
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_exporter_reports_index_counts_pending_chunks_and_eval_scores(tmp_path: Path):
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    env = {"QMD_HOME": str(tmp_path / "home")}
    for args in (["collection", "add", str(notes), "--name", "notes"], ["update"]):
        assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    settings = Settings.load(tmp_path / "home")
    record(settings, {"set": "msmarco", "rows": [{"mode": "search", "ndcg@10": 0.7191, "recall@10": 0.22}]})
    m = scrape(settings)
    assert m['qmd_index_documents{collection="notes"}'] == 4
    assert m["qmd_index_chunks_pending"] == 4  # four documents not chunked yet
    assert 0 <= m['qmd_index_seconds_since_update{collection="notes"}'] < 60
    assert m['qmd_eval_score{metric="ndcg@10",mode="search",set="msmarco"}'] == 0.7191


def test_exporter_counts_errors_when_triton_is_down(tmp_path: Path):
    (port,) = free_ports(1)
    settings = Settings.load(tmp_path / "home")
    m = scrape(settings, f"127.0.0.1:{port}")
    assert m['qmd_exporter_scrape_errors_total{source="triton"}'] == 1
    assert not any(k.startswith("qmd_triton_model_ready") for k in m)


def test_staleness_is_per_collection_and_a_never_updated_collection_is_infinitely_stale(tmp_path: Path):
    import time

    env = {"QMD_HOME": str(tmp_path / "home")}
    for name in ("old", "fresh", "never"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.md").write_text(f"# {name}\n")
        assert CliRunner().invoke(cli, ["collection", "add", str(tmp_path / name), "--name", name], env=env).exit_code == 0
    assert CliRunner().invoke(cli, ["update", "-c", "old"], env=env).exit_code == 0
    with open_index(index_config(tmp_path / "home")) as index:  # "old" was updated an hour ago, not waited for
        index.mark_updated("old", when=time.time() - 3600)
    assert CliRunner().invoke(cli, ["update", "-c", "fresh"], env=env).exit_code == 0
    m = scrape(Settings.load(tmp_path / "home"))
    old = m['qmd_index_seconds_since_update{collection="old"}']
    fresh = m['qmd_index_seconds_since_update{collection="fresh"}']
    assert old >= fresh + 3500  # each collection has its own clock: updating "fresh" left "old" alone
    assert m['qmd_index_seconds_since_update{collection="never"}'] == float("inf")
