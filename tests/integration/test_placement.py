"""Multi-GPU placement of the GPU configs, checked by validate --target gpu --gpus N."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.model_config import parse_config


def test_placement_spreads_instances_and_sets_tensor_parallelism(copy_repo):
    repo = copy_repo()
    result = CliRunner().invoke(cli, ["placement", "--gpus", "4", "--repo", str(repo), "--embed-per-gpu", "2",
                                      "--expand-tp", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    embed = parse_config(repo / "qmd_embed_model" / "configs" / "gpu.pbtxt")
    assert [(list(g.gpus), g.count) for g in embed.instance_group] == [([0], 2), ([1], 2), ([2], 2), ([3], 2)]
    rerank = parse_config(repo / "qmd_rerank_model" / "configs" / "gpu.pbtxt")
    assert [list(g.gpus) for g in rerank.instance_group] == [[0], [1], [2], [3]]
    expand = parse_config(repo / "qmd_expand" / "configs" / "gpu.pbtxt")
    assert expand.parameters["tensor_parallel_size"].string_value == "2"
    assert expand.parameters["engine"].string_value == "vllm"


def test_validate_catches_a_placement_for_more_gpus_than_the_server_has(copy_repo):
    repo = copy_repo()
    assert CliRunner().invoke(cli, ["placement", "--gpus", "2", "--repo", str(repo), "--expand-tp", "2"]).exit_code == 0
    result = CliRunner().invoke(cli, ["validate", str(repo), "--target", "gpu", "--gpus", "1"])
    assert result.exit_code == 1
    assert sorted(result.stdout.splitlines()) == [
        "repo/qmd_embed_model/configs/gpu.pbtxt:instance_group: qmd_embed_model_gpu1 uses GPU 1, but there are 1 (0-0)",
        "repo/qmd_expand/configs/gpu.pbtxt:parameters.tensor_parallel_size: 2 GPUs asked for, 1 available",
        "repo/qmd_rerank_model/configs/gpu.pbtxt:instance_group: qmd_rerank_model_gpu1 uses GPU 1, but there are 1 (0-0)",
    ]
    assert CliRunner().invoke(cli, ["validate", str(repo), "--target", "gpu", "--gpus", "2"]).exit_code == 0


def test_placement_refuses_a_tensor_parallel_size_that_does_not_fit(copy_repo):
    repo = copy_repo()
    result = CliRunner().invoke(cli, ["placement", "--gpus", "4", "--repo", str(repo), "--expand-tp", "3"])
    assert result.exit_code == 1
    assert "Error: tensor parallel size must be a power of two between 1 and 4, got 3" in result.output
    assert parse_config(repo / "qmd_expand" / "configs" / "gpu.pbtxt").parameters[
        "tensor_parallel_size"].string_value == "1"


def test_placement_keeps_the_config_comments(copy_repo):
    repo = copy_repo()
    CliRunner().invoke(cli, ["placement", "--gpus", "2", "--repo", str(repo)])
    assert (repo / "qmd_embed_model" / "configs" / "gpu.pbtxt").read_text().startswith("# GPU target")
    assert Path(repo).is_dir()
