"""A small real perf_analyzer run against the session server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qmd_triton.settings import Settings

from ..conftest import dataset
from .test_search import indexed, qmd  # noqa: F401 - indexed: the notes index the search bench queries


@pytest.fixture(autouse=True)
def shared_sets() -> None:
    """Every benchmark here draws its inputs from the shared sets."""
    dataset("msmarco")
    dataset("dbpedia")


def test_bench_measures_qmd_embed_with_perf_analyzer(triton: Settings, tmp_path: Path):
    out = tmp_path / "results"
    result = qmd(triton, "bench", "--concurrency", "1,4", "--measurement-ms", "1000", "--no-baselines",
                 "--out", str(out), "--protocol", "grpc")
    data = json.loads(next(out.glob("*.json")).read_text())
    rows = data["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert all(r["throughput"] > 0 and r["errors"] == 0 and r["p50_us"] <= r["p95_us"] <= r["p99_us"] for r in rows)
    assert {s["model"] for s in rows[1]["composing"]} == {"qmd_tokenize", "qmd_embed_model"}
    assert "| qmd_embed | grpc | 4 |" in result.stdout
    assert next(out.glob("*.png")).stat().st_size > 1000


def test_bench_measures_a_search_pipeline_over_http(indexed, tmp_path: Path):  # noqa: F811
    triton, _ = indexed
    out = tmp_path / "results"
    qmd(triton, "bench", "qmd_search", "--concurrency", "2", "--measurement-ms", "1000", "--out", str(out),
        "--protocol", "http")
    [row] = json.loads(next(out.glob("*.json")).read_text())["rows"]
    assert row["model"] == "qmd_search" and row["protocol"] == "http" and row["throughput"] > 0


def test_tune_runs_a_small_real_sweep_and_marks_the_best(triton: Settings, tmp_path: Path):
    result = qmd(triton, "tune", "qmd_embed_model", "--max-batch", "32,64", "--instances", "1",
                 "--queue-delay-us", "1000", "--lengths", "ragged", "--measurement-ms", "800",
                 "--concurrency", "4", "--budget-ms", "100000", "--json")
    data = json.loads(result.stdout)
    assert [t["point"]["max_batch"] for t in data["trials"]] == [32, 64]
    assert all(t["throughput"] > 0 and not t["failure"] for t in data["trials"]), data["trials"]
    # 32 is measured but can never win: `qmdctl embed` sends 64 texts in one request
    assert data["min_batch"] == 64 and data["best"]["point"]["max_batch"] == 64


def test_soak_samples_server_memory_and_finds_it_flat(triton: Settings, tmp_path: Path):
    out = tmp_path / "soak"
    result = qmd(triton, "soak", "qmd_embed", "--seconds", "10", "--concurrency", "2", "--sample-s", "0.5",
                 "--tolerance", "0.10", "--out", str(out), ok=False)
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["errors"] == 0 and report["throughput"] > 0
    assert len(report["samples"]) >= 12 and all(rss > 100_000_000 for _, rss in report["samples"])
    # the server's memory after the warm-up grows by less than 10% (a leak would fail this)
    assert report["flat"], f"server memory grew {report['growth']:+.1%} after the warm-up: {report['samples']}"
    assert result.exit_code == 0, result.output
