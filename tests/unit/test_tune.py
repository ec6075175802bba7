"""The tune sweep's logic: the grid, the choice under a budget, the config a point writes."""

from __future__ import annotations

from pathlib import Path

from qmd_triton.bench.tune import RAGGED, Grid, Trial, apply, choose, configure
from qmd_triton.model_config import parse_config
from qmd_triton.system.files import copy_tree_linked as copy_repo


def test_grid_is_the_cartesian_product():
    points = Grid(max_batch=(8, 64), instances=(1,), queue_delay_us=(500, 2000), lengths=(RAGGED,)).points()
    assert len(points) == 4
    assert points[0] == {"max_batch": 8, "instances": 1, "queue_delay_us": 500, "lengths": RAGGED}


def test_choose_prefers_throughput_within_budget_then_lowest_p95():
    a = Trial({"id": "a"}, throughput=50, p95_ms=400)
    b = Trial({"id": "b"}, throughput=80, p95_ms=600)
    c = Trial({"id": "c"}, throughput=60, p95_ms=450)
    broken = Trial({"id": "x"}, throughput=999, p95_ms=1, failure="server did not start")
    lossy = Trial({"id": "y"}, throughput=999, p95_ms=1, errors=3)
    assert choose([a, b, c, broken, lossy], budget_ms=500) is c
    assert choose([a, b, c], budget_ms=100) is a
    assert choose([broken], budget_ms=500) is None


def test_a_point_rewrites_batching_instances_and_lengths(copy_repo, tmp_path: Path):
    repo = copy_repo()
    configure(repo, "qmd_embed_model", {"max_batch": 16, "instances": 2, "queue_delay_us": 750,
                                        "lengths": "32,128"})
    cfg = parse_config(repo / "qmd_embed_model" / "config.pbtxt")
    assert cfg.max_batch_size == 16 and cfg.dynamic_batching.max_queue_delay_microseconds == 750
    assert [g.count for g in cfg.instance_group] == [2]
    assert not any(t.allow_ragged_batch for t in cfg.input)
    tok = parse_config(repo / "qmd_tokenize" / "config.pbtxt")
    assert tok.parameters["length_buckets"].string_value == "32,128"
    assert parse_config(repo / "qmd_embed" / "config.pbtxt").max_batch_size == 16  # ensemble <= composing
    assert (repo / "qmd_embed_model" / "config.pbtxt").read_text().startswith("# Sentence embedding")


def test_apply_reports_the_files_it_changed(copy_repo):
    repo = copy_repo()
    changed = apply(repo, "qmd_embed_model", {"max_batch": 32, "instances": 1, "queue_delay_us": 2000,
                                              "lengths": RAGGED})
    assert {p.parent.name for p in changed} >= {"qmd_embed_model", "qmd_embed"}
    assert parse_config(repo / "qmd_embed_model" / "config.pbtxt").input[0].allow_ragged_batch


def test_copy_repo_links_big_files_and_copies_configs(exported_repo: Path, tmp_path: Path):
    target = copy_repo(exported_repo, tmp_path / "copy")
    onnx = target / "qmd_embed_model" / "1" / "model.onnx"
    assert onnx.stat().st_ino == (exported_repo / "qmd_embed_model" / "1" / "model.onnx").stat().st_ino
    assert (target / "qmd_embed_model" / "config.pbtxt").stat().st_ino != \
        (exported_repo / "qmd_embed_model" / "config.pbtxt").stat().st_ino


def test_a_max_batch_below_what_one_request_carries_never_wins():
    from qmd_triton.bench.tune import Trial, min_batch

    assert min_batch("qmd_embed_model") == 64 and min_batch("qmd_rerank_model") == 200
    small = Trial({"max_batch": 16, "instances": 2, "queue_delay_us": 500, "lengths": RAGGED}, 90.0, 100.0)
    big = Trial({"max_batch": 64, "instances": 2, "queue_delay_us": 500, "lengths": RAGGED}, 80.0, 100.0)
    assert choose([small, big], 500.0) is small
    assert choose([small, big], 500.0, smallest_batch=64) is big
    assert choose([small], 500.0, smallest_batch=64) is None
