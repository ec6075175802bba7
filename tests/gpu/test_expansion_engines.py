"""GPU expansion engines (vLLM, DeepSpeed). Skipped unless a CUDA GPU and the engine are present."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qmd_triton.search.expansion import Expander, make_engine

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def hf_dir(exported_repo: Path) -> Path:
    from qmd_triton.artifacts.registry import default_source
    from qmd_triton.exporters.decoder_onnx import export_transformers

    return export_transformers(default_source("expansion"), exported_repo).parent


@pytest.mark.parametrize("engine", ["vllm", "deepspeed"])
def test_gpu_engine_expands_a_query_and_stops_at_the_deadline(engine: str, hf_dir: Path):
    if importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} is not installed")
    loaded = make_engine(engine, hf_dir)  # one engine per process: vLLM does not load twice
    result = Expander(loaded, max_new_tokens=64, timeout_s=30).expand("configure dynamic batching")
    assert result.status in ("ok", "empty"), result.status
    assert result.ms > 0
    if result.used:
        assert all("batching" in x.lower() or "dynamic" in x.lower() or "configure" in x.lower()
                   for x in result.lex + result.vec + result.hyde)
    hurried = Expander(loaded, max_new_tokens=512, timeout_s=0.001).expand("configure dynamic batching")
    assert hurried.status in ("timeout", "partial"), hurried.status
