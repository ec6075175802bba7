"""The tune sweep's logic: the grid, the choice under a budget, the config a point writes.

The tests of tune that need a copy of the exported repository: the integration tier (DESIGN.md section 6); the rest
are in tests/unit/test_tune.py.
"""

from __future__ import annotations

from pathlib import Path

from qmd_triton.bench.tune import RAGGED, apply, configure
from qmd_triton.model_config import parse_config
from qmd_triton.system.files import copy_tree_linked as copy_repo


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
