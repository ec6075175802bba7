"""RRF, blending, the strong-signal shortcut, expansion parsing and its fallbacks."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from qmd_triton.errors import ArtifactMissing, ConfigError
from qmd_triton.search.expansion import EngineOptions, Expander, chatml, make_engine, parse
from qmd_triton.search.fusion import (
    BONUS_FIRST,
    BONUS_TOP3,
    PRIOR_WEIGHT,
    RankedList,
    blend,
    blend_weight,
    final_order,
    prior,
    rrf,
    strong_signal,
)
from qmd_triton.search.hybrid import clamp_candidates
from qmd_triton.search.options import SearchOptions


def test_rrf_weights_original_lists_twice_and_adds_rank_bonus():
    fused = rrf([
        RankedList("bm25:original", 2.0, ["a", "b", "c", "d"]),
        RankedList("vec:vec1", 1.0, ["d", "c"]),
    ])
    scores = {f.key: f.score for f in fused}
    assert scores["a"] == pytest.approx(2 / 61 + BONUS_FIRST)
    assert scores["d"] == pytest.approx(2 / 64 + 1 / 61 + BONUS_FIRST)
    assert scores["c"] == pytest.approx(2 / 63 + 1 / 62 + BONUS_TOP3)
    assert [f.key for f in fused] == ["d", "a", "c", "b"]
    assert fused[0].ranks == {"bm25:original": 4, "vec:vec1": 1}


def test_rrf_keeps_only_the_top_of_each_list():
    fused = rrf([RankedList("bm25:original", 2.0, [str(i) for i in range(50)])], top=20)
    assert len(fused) == 20


def test_blend_trusts_retrieval_more_at_the_top():
    assert [blend_weight(r) for r in (1, 3, 4, 10, 11)] == [0.75, 0.75, 0.60, 0.60, 0.40]
    assert blend(1, 0.0) == pytest.approx(0.75)
    assert blend(11, 0.0) == pytest.approx(0.4 / 11)
    # where the weight drops the raw formula would let rank 11 pass rank 10 on an equal score: bounded by it
    assert 0.4 / 11 + 0.6 > 0.6 / 10 + 0.4
    assert blend(11, 1.0) == pytest.approx(blend(10, 1.0)) == pytest.approx(0.6 / 10 + 0.4)


def test_final_order_by_reranker_blend_or_rrf():
    ranks, logits = [1, 2, 3], [-2.2, 2.2, 0.0]  # probabilities 0.1, 0.9, 0.5
    assert [i for i, _ in final_order(ranks, logits, "rerank")] == [1, 2, 0]
    assert [i for i, _ in final_order(ranks, logits, "blend")] == [0, 1, 2]
    assert [i for i, _ in final_order(ranks, None, "rerank")] == [0, 1, 2]
    with pytest.raises(ValueError, match="fusion must be one of"):
        final_order(ranks, logits, "max")


def test_prior_weighs_retrieval_by_how_much_of_the_document_the_reranker_did_not_read():
    ranks, rrf_scores = [1, 2, 3], [0.10, 0.06, 0.03]
    logits = [-11.0, -10.2, -10.6]  # a reranker that recognized no answer: its order is noise
    long_pages = [prior(s, 0.10, unread=0.95) for s in rrf_scores]
    assert [i for i, _ in final_order(ranks, logits, "prior", long_pages)] == [0, 1, 2]  # the fused order stands
    assert [i for i, _ in final_order(ranks, logits, "rerank")] == [1, 2, 0]
    read_whole = [prior(s, 0.10, unread=0.0) for s in rrf_scores]
    assert read_whole == [0.0, 0.0, 0.0]  # a passage read whole: the cross-encoder alone decides
    assert [i for i, _ in final_order(ranks, logits, "prior", read_whole)] == [1, 2, 0]
    confident = [-3.0, 6.0, -2.0]  # a clear answer outweighs any prior (PRIOR_WEIGHT logits at most)
    assert [i for i, _ in final_order(ranks, confident, "prior", long_pages)][0] == 1
    assert prior(0.10, 0.10, 1.0) == PRIOR_WEIGHT and prior(0.05, 0.0, 1.0) == 0.0
    with pytest.raises(ValueError, match="one prior per candidate"):
        final_order(ranks, logits, "prior")


def test_strong_signal_needs_a_high_score_and_a_lead():
    assert strong_signal([0.9, 0.7])
    assert not strong_signal([0.9, 0.8])
    assert not strong_signal([0.8, 0.1])
    assert strong_signal([0.86])
    assert not strong_signal([])


def test_candidate_limit_is_clamped_between_n_and_200():
    assert clamp_candidates(SearchOptions(n=10, candidates=100000)) == 200
    assert clamp_candidates(SearchOptions(n=10, candidates=3)) == 10
    assert clamp_candidates(SearchOptions(n=5, candidates=40)) == 40


def test_parse_keeps_lines_with_a_query_term_and_drops_the_rest():
    text = (
        "lex: configure dynamic batching triton\n"
        "vec: how do I set up dynamic batching\n"
        "hyde: Set max_queue_delay_microseconds in the dynamic_batching block.\n"
        "lex: the capital of australia\n"  # no query term
        "sourdough starter feeding\n"  # no prefix
        "vec: how do I set up dynamic batching\n"  # duplicate
        "lex: configure dynamic batching\n"  # the query itself
    )
    e = parse(text, "configure dynamic batching")
    assert e.lex == ["configure dynamic batching triton"]
    assert e.vec == ["how do I set up dynamic batching"]
    assert e.hyde == ["Set max_queue_delay_microseconds in the dynamic_batching block."]


def test_parse_of_nonsense_uses_nothing():
    e = parse("lex: a way to extract data\nvec: a way to extract data", "向量检索是什么")
    assert not e.used


def test_chatml_prompt_ends_inside_the_first_answer_line():
    prompt = chatml("my query")
    assert prompt.endswith("<|im_start|>user\nmy query<|im_end|>\n<|im_start|>assistant\nlex:")
    assert prompt.count("<|im_start|>assistant") == 3


class RaisingEngine:
    name = "broken"

    def generate(self, prompt, max_new_tokens, deadline):
        raise RuntimeError("CUDA error: device-side assert triggered")


class SlowEngine:
    """Emits a line, then nothing useful until the deadline has passed."""

    name = "slow"

    def generate(self, prompt, max_new_tokens, deadline):
        while time.monotonic() <= deadline:
            time.sleep(0.01)
        return " dynamic batching delay\nvec: how long does dyn", True


def test_a_failing_engine_degrades_to_the_original_query():
    e = Expander(RaisingEngine()).expand("dynamic batching")
    assert not e.used and e.status == "error: CUDA error: device-side assert triggered"


def test_a_slow_engine_is_cut_at_the_deadline_and_what_is_complete_is_used():
    started = time.monotonic()
    e = Expander(SlowEngine(), timeout_s=0.2).expand("dynamic batching")
    assert time.monotonic() - started < 2
    assert e.lex == ["dynamic batching delay"] and e.status == "partial"


class CutEngine:
    """Cut by the deadline in the middle of a line that, complete or not, shares the query's words."""

    name = "cut"

    def __init__(self, text: str) -> None:
        self.text = text

    def generate(self, prompt, max_new_tokens, deadline):
        return self.text, True


def test_expansion_drops_the_line_the_deadline_interrupted_when_the_engine_is_cut():
    e = Expander(CutEngine(" dynamic batching delay\nvec: how does dynamic batch")).expand("dynamic batching")
    assert e.status == "partial" and e.lex == ["dynamic batching delay"] and e.vec == []
    e = Expander(CutEngine(" dynamic batch")).expand("dynamic batching")
    assert e.status == "timeout" and not e.used


def test_unknown_or_missing_engines_fail_with_one_message(tmp_path: Path):
    with pytest.raises(ConfigError, match="engine must be one of onnxruntime, vllm, deepspeed, none"):
        make_engine("llamacpp", tmp_path)
    for engine in ("vllm", "deepspeed"):
        if importlib.util.find_spec(engine) is None:
            with pytest.raises(ConfigError, match=f"engine {engine} is not installed"):
                make_engine(engine, tmp_path)
        else:  # the engines' venv (make test-engines): the next thing missing is the exported model
            with pytest.raises(ArtifactMissing, match=r"hf/config.json is missing; run `qmdctl export --expansion-hf`"):
                make_engine(engine, tmp_path, options=EngineOptions(device="cpu"))
    assert make_engine("none", tmp_path) is None


def test_engine_options_keep_the_gpu_defaults_and_read_a_cpu_override_from_the_config():
    from qmd_triton.serving.triton.expand import engine_options

    def config(**params: str) -> dict:
        return {"parameters": {k: {"string_value": v} for k, v in params.items()}}

    assert engine_options(config()) == EngineOptions(device="cuda", dtype="auto", tensor_parallel_size=1,
                                                     gpu_memory_utilization=0.3)
    cpu = engine_options(config(device="cpu", dtype="float32", max_model_len="1024", kv_cache_memory_bytes="268435456"))
    assert (cpu.device, cpu.dtype, cpu.max_model_len, cpu.kv_cache_memory_bytes) == ("cpu", "float32", 1024, 1 << 28)


@pytest.mark.parametrize(("params", "message"), [
    ({"device": "tpu"}, "device must be one of cuda, cpu, got 'tpu'"),
    ({"dtype": "fp8"}, "dtype must be one of auto, float16, bfloat16, float32, got 'fp8'"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size must be at least 1, got 0"),
    ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be in \(0, 1\], got 1.5"),
])
def test_engine_options_refuse_a_bad_setting_with_one_line(params: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        EngineOptions(**params)


