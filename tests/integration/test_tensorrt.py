"""TensorRT plans: config switch and profiles here; the build itself on a GPU (gpu marker).

The tests of tensorrt that need the exported ONNX models: the integration tier (DESIGN.md section 6); the rest are
in tests/unit/test_tensorrt.py.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.exporters.onnx_tensorrt import export_tensorrt, tensorrt_config
from qmd_triton.serving.validate import validate_repository

from ..conftest import REPO


def test_switched_config_validates_on_gpu_and_is_refused_locally(tmp_path: Path, exported_repo: Path):
    repo = tmp_path / "repo"
    (repo / "qmd_embed_model" / "1").mkdir(parents=True)
    (repo / "qmd_embed_model" / "config.pbtxt").write_text(
        tensorrt_config((REPO / "qmd_embed_model" / "config.pbtxt").read_text(), 64))
    (repo / "qmd_embed_model" / "1" / "model.plan").write_bytes(b"plan bytes")
    text = (repo / "qmd_embed_model" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "KIND_GPU" in text and "allow_ragged_batch" not in text
    assert validate_repository(repo, "gpu") == []
    local = [str(p) for p in validate_repository(repo, "local")]
    assert "repo/qmd_embed_model/config.pbtxt:backend: 'tensorrt_plan' is not available on the local target " \
           "(TensorRT plans are built and served in the NGC image; use --target gpu)" in local


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_export_without_tensorrt_is_one_error_line(tmp_path: Path, exported_repo: Path):
    result = CliRunner().invoke(cli, ["export", "--only", "embedding", "--tensorrt", str(tmp_path / "trt")],
                                env={"QMD_HOME": str(tmp_path), "QMD_MODEL_REPOSITORY": str(exported_repo)},
                                catch_exceptions=False)
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert errors == ["Error: TensorRT is not installed here (No module named 'tensorrt'); build plans inside the NGC "
                      "Triton image (docker compose run export) where its TensorRT matches the server's"]


@pytest.mark.gpu
def test_embedding_plan_matches_onnxruntime(tmp_path: Path, exported_repo: Path):
    trt = pytest.importorskip("tensorrt")
    import torch

    from qmd_triton.runtime.onnx import make_session
    from qmd_triton.text.tokenization import TextEncoder

    target = tmp_path / "gpu-repo"
    shutil.copytree(exported_repo / "qmd_tokenize", target / "qmd_tokenize")
    report = export_tensorrt(exported_repo, target, "qmd_embed_model", fp16=True, buckets=[16, 64, 256])
    assert report.profiles == [(1, 16), (17, 64), (65, 256)]
    enc = TextEncoder.from_dir(exported_repo / "qmd_tokenize" / "1", buckets="")
    ids, mask = enc.encode(["hello world", "向量检索", "dynamic batching merges requests " * 5])
    want = make_session(exported_repo / "qmd_embed_model" / "1" / "model.onnx").run(
        ["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(report.plan).read_bytes())
    ctx = engine.create_execution_context()
    profile = next(i for i, (lo, hi) in enumerate(report.profiles) if lo <= ids.shape[1] <= hi)
    stream = torch.cuda.current_stream()
    ctx.set_optimization_profile_async(profile, stream.cuda_stream)
    tensors = {"input_ids": torch.from_numpy(ids).cuda(), "attention_mask": torch.from_numpy(mask).cuda(),
               "embedding": torch.empty((3, 384), dtype=torch.float32, device="cuda")}
    for name in ("input_ids", "attention_mask"):
        ctx.set_input_shape(name, tuple(ids.shape))
    for name, t in tensors.items():
        ctx.set_tensor_address(name, t.data_ptr())
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    got = tensors["embedding"].cpu().numpy()
    assert np.abs(got - want).max() < 2e-2  # fp16


def test_plans_cover_every_length_and_batch_the_gpu_target_sends(tmp_path: Path, exported_repo: Path):
    """The profiles reach the longest sequence each GPU config can send, at the GPU config's max batch."""
    from qmd_triton.exporters.onnx_tensorrt import plan_shape
    from qmd_triton.model_config import parse_config

    embed_batch, embed_buckets = plan_shape(exported_repo, "qmd_embed_model")
    assert embed_batch == parse_config(REPO / "qmd_embed_model" / "configs" / "gpu.pbtxt").max_batch_size
    assert embed_buckets == (16, 32, 64, 128, 256)  # MiniLM reads 256 tokens: the last bucket is its window
    rerank_batch, rerank_buckets = plan_shape(exported_repo, "qmd_rerank_model")
    assert rerank_batch == parse_config(REPO / "qmd_rerank_model" / "configs" / "gpu.pbtxt").max_batch_size
    assert rerank_buckets == (64, 128, 256, 512)  # qmd_retrieve pads pairs up to rerank_max_length 512

    # A long-context model (bge-m3 reads 8192) gets a profile up to its window, and a GPU config's own
    # max_batch_size wins over the local one.
    repo = tmp_path / "repo"
    for name in ("qmd_tokenize", "qmd_embed_model"):
        shutil.copytree(exported_repo / name, repo / name, ignore=shutil.ignore_patterns("*.onnx"))
    manifest = repo / "qmd_tokenize" / "1" / "export.json"
    manifest.write_text(manifest.read_text().replace('"max_length": 256', '"max_length": 8192'))
    gpu = repo / "qmd_embed_model" / "configs" / "gpu.pbtxt"
    gpu.write_text(gpu.read_text().replace("max_batch_size: 64", "max_batch_size: 32"))
    assert plan_shape(repo, "qmd_embed_model") == (32, (16, 32, 64, 128, 256, 8192))
