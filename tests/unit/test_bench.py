"""Parsing perf_analyzer's output, concurrency specs, reports; the missing-tool error."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.bench import perf_analyzer as bench
from qmd_triton.bench.reports import write_results
from qmd_triton.cli import cli
from qmd_triton.errors import InputError

from ..conftest import ASSETS

CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait
8,28.508,4,117421,1,109,163175,2852,2,288056,382357,406025,417890,283566,6,283549
"""


@pytest.mark.parametrize("spec, want", [("8", [8]), ("1:8:2", [1, 3, 5, 7]), ("1:3", [1, 2, 3]), ("1,8,32", [1, 8, 32])])
def test_parse_concurrency(spec, want):
    assert bench.parse_concurrency(spec) == want


@pytest.mark.parametrize("spec", ["0", "8:1", "a:b", "1:8:0", ""])
def test_parse_concurrency_refuses_nonsense(spec):
    with pytest.raises(InputError, match="concurrency"):
        bench.parse_concurrency(spec)


def test_parse_composing_models_of_an_ensemble():
    splits = bench.parse_composing((ASSETS / "perf" / "perf_analyzer_ensemble.txt").read_text())
    assert [s.model for s in splits] == ["qmd_embed_model", "qmd_tokenize"]
    embed = splits[0]
    assert (embed.requests, embed.executions) == (308, 76)
    assert (embed.queue_us, embed.compute_input_us, embed.compute_infer_us, embed.compute_output_us) == (
        114983, 58, 160588, 2719)
    assert embed.total_us == 114983 + 58 + 160588 + 2719


def test_parse_composing_is_empty_for_a_plain_model():
    assert bench.parse_composing("Request concurrency: 1\n  Client:\n    Throughput: 5 infer/sec\n") == []


def test_parse_csv_reads_perf_analyzer_columns():
    [row] = bench.parse_csv(CSV)
    assert row["Concurrency"] == 8 and row["Inferences/Second"] == pytest.approx(28.508)
    assert row["p95 latency"] == 406025


def test_reports_are_written_with_a_plot(tmp_path: Path):
    splits = bench.parse_composing((ASSETS / "perf" / "perf_analyzer_ensemble.txt").read_text())
    rows = [bench.Row("qmd_embed", "grpc", c, 10.0 * c, 1e4, 2e4, 3e4 * c, 4e4, 1e4, 0, 1e4, 0, splits)
            for c in (1, 8)]
    ref = {"model": "qmd_embed", "concurrency": 8, "per_s": 80.0}
    paths = write_results(rows, {"in-process": {"per_s": 40.0, "ratio": 2.0, "reference": ref}}, tmp_path, "run")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "| qmd_embed | grpc | 8 | 80.0 |" in md and "| qmd_embed | 8 | qmd_embed_model | 115.0 |" in md
    assert "| in-process | 40.0 | 2.00 |" in md
    assert "against qmd_embed at concurrency 8 (80.0/s)" in md
    assert paths["csv"].read_text().splitlines()[0].startswith("model,protocol,concurrency,throughput")


def test_bench_without_perf_analyzer_is_one_error_line(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(bench, "checkout_path", lambda *parts: tmp_path / "nope")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("QMD_PERF_ANALYZER", raising=False)
    result = CliRunner().invoke(cli, ["bench"], env={"QMD_HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: perf_analyzer is not installed; run `make perf-tools` (scripts/install-perf-analyzer.sh) "
        "or set QMD_PERF_ANALYZER")


def test_group_rss_counts_the_given_processes():
    import os

    from qmd_triton.system.procs import group_rss_bytes

    mine = group_rss_bytes([os.getpid()])
    assert mine > 10_000_000  # at least this Python process
    assert group_rss_bytes([os.getpid(), 2**22 + 12345]) == mine  # a pid that does not exist counts nothing


def test_composing_models_with_a_response_cache_keep_their_compute_split():
    """With a cached model in the pipeline, perf_analyzer moves compute times to a cache-miss line."""
    splits = {s.model: s for s in bench.parse_composing(
        (ASSETS / "perf" / "perf_analyzer_cached_ensemble.txt").read_text())}
    rerank = splits["qmd_rerank_model"]
    assert (rerank.requests, rerank.executions) == (28, 28)  # 280 pairs in 28 requests
    assert rerank.queue_us == 2154 and rerank.compute_infer_us == 473963 and rerank.compute_output_us == 391
    expand = splits["qmd_expand"]
    assert expand.cache_hits == 29 and expand.executions == 0 and expand.compute_infer_us == 0
    assert splits["qmd_embed_model"].compute_infer_us == 8986


def test_bench_without_datasets_is_one_error_line(tmp_path: Path):
    with pytest.raises(InputError, match=r"the evaluation sets msmarco, dbpedia are not under .*nowhere: put the "
                                         r"shared datasets there or point QMD_DATASETS at the folder"):
        bench.make_inputs("qmd_embed", tmp_path / "nowhere", tmp_path / "inputs")
    assert not (tmp_path / "inputs").exists()


def test_soak_verdict_flat_only_when_memory_stops_growing_after_the_warm_up():
    from qmd_triton.bench.soak import judge_memory

    mb = 1_000_000
    warming_then_flat = [(t, (500 + min(t, 5) * 100) * mb) for t in range(0, 21)]  # grows in the first quarter
    warm, end, growth, flat = judge_memory(warming_then_flat, 0.05)
    assert (warm, end, flat) == (1000 * mb, 1000 * mb, True) and growth == 0.0
    leaking = [(t, (1000 + 10 * t) * mb) for t in range(0, 21)]  # +1% of the start every second, all the way
    warm, end, growth, flat = judge_memory(leaking, 0.05)
    assert not flat and growth == pytest.approx((1200 - 1050) / 1050)
    assert judge_memory([(0, mb)], 0.05)[3] is False  # one sample cannot show that memory is flat


def test_the_plot_starts_at_zero_shows_the_baselines_and_names_the_machine():
    import matplotlib.pyplot as plt

    from qmd_triton.bench.reports import figure

    rows = [bench.Row("qmd_embed", "grpc", c, 27.0 + c, 1e4, 2e4, 3e4 * c, 4e4, 1e4, 0, 1e4) for c in (1, 8)]
    hardware = {"cpu": "Test CPU", "cores": 2, "load_avg_1m": 1.5}
    fig = figure(rows, {"in-process onnxruntime": {"per_s": 40.0}}, hardware)
    ax = fig.axes[0]
    assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("baseline: in-process onnxruntime") for label in labels)
    assert "Test CPU, 2 cores, load average 1.5" in ax.get_title()
    plt.close(fig)


def test_bench_soak_and_tune_say_what_they_default_to():
    for command in ("bench", "soak"):
        help_text = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
        assert "Triton protocol. [default: grpc]" in help_text
    tune = CliRunner().invoke(cli, ["tune", "--help"], terminal_width=200).output
    assert "--datasets" in tune and "QMD_DATASETS" in tune


def test_perf_analyzer_install_is_skipped_when_it_is_already_there(tmp_path: Path):
    """The installed check reads the version from stderr, where perf_analyzer prints it: no reinstall."""
    import subprocess

    from ..conftest import REPO

    dest = tmp_path / "pa"
    dest.mkdir()
    (dest / "perf_analyzer").write_text("#!/bin/sh\necho 'Perf Analyzer 2.60.0' >&2\n")
    (dest / "perf_analyzer").chmod(0o755)
    script = REPO.parent / "scripts" / "install-perf-analyzer.sh"
    proc = subprocess.run(["bash", str(script), str(dest)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": "/nonexistent/python"})
    assert proc.returncode == 0 and "installing" not in proc.stderr, proc.stderr


def test_counted_progress_off_a_terminal_prints_periodic_lines(capsys):
    from qmd_triton.cli.common import CountReporter

    reporter = CountReporter("embedding chunks", quiet=False, every_s=0.0)
    reporter.tty = False
    for done in (0, 10, 20, 40):
        reporter(done, 40)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "embedding chunks: 0/40"
    assert lines[-1].startswith("embedding chunks: 40/40 (100%")
    assert len(lines) == 4


def test_eval_report_counts_stage_outcomes_and_sets_each_ablation_against_the_full_query():
    from qmd_triton.cli.evaluate import report_text

    stages = {"expansion": {"disabled": 40}, "rerank": {"ran": 38, "bypassed": 2}}
    rows = [{"mode": "query", "hit@1": 0.8, "hit@3": 0.9, "mrr@10": 0.85, "recall@10": 0.95, "stages": stages},
            {"mode": "query-no-rerank", "hit@1": 0.7, "hit@3": 0.85, "mrr@10": 0.76, "recall@10": 0.9,
             "stages": {"rerank": {"off": 40}}},
            {"mode": "vsearch", "hit@1": 0.6, "hit@3": 0.8, "mrr@10": 0.7, "recall@10": 0.9}]
    text = report_text({"set": "notes", "kind": "known-item", "documents": 60, "queries": 40, "rows": rows})
    assert "| query | expansion: disabled 40; rerank: bypassed 2, ran 38 |" in text
    assert "| query-no-rerank | 0.7000 | -0.1000 | 0.7600 | -0.0900 |" in text
    beir = [{"mode": "query", "ndcg@10": 0.84, "recall@10": 0.2, "recall@100": None, "mrr@10": 1.0}]
    assert "| query | 0.8400 | 0.2000 | n/a | 1.0000 |" in report_text(
        {"set": "msmarco", "kind": "beir", "documents": 5000, "queries": 43, "rows": beir})


def test_the_notebook_splitter_keeps_every_word_in_overlapping_windows():
    from qmd_triton.bench.baselines import split_words

    words = [f"w{i}" for i in range(450)]
    chunks = split_words(" ".join(words), size=200, overlap=40)
    assert [len(c.split()) for c in chunks] == [200, 200, 130]
    assert chunks[1].split()[0] == "w160" and chunks[-1].split()[-1] == "w449"
    assert split_words("a short passage") == ["a short passage"]


def test_an_eval_sample_keeps_every_document_judged_for_its_queries_and_names_itself():
    from qmd_triton.bench.datasets import load_set

    from ..conftest import dataset

    full = load_set(dataset("msmarco"))
    small = full.sample(queries=5, documents=700)
    kept = full.judged_queries()[:5]
    assert list(small.queries) == kept and small.judged_queries() == kept
    judged = {d for q in kept for d in full.qrels[q] if d in full.corpus}
    assert judged <= set(small.corpus) and len(small.corpus) == max(700, len(judged))
    assert small.name == f"msmarco-q5-d{len(small.corpus)}"
    assert full.sample() is full
    docs = load_set(dataset("triton-docs"))
    assert docs.sample(queries=3).judged_queries() == docs.judged_queries()[:3]
    with pytest.raises(InputError, match="--documents samples a BEIR set"):
        docs.sample(documents=10)
