"""Languages: the scripts of a text, what each model reads, and how the query pipeline degrades without them:
stages bypassed for a language their model does not read, the fused order kept by flat or unread scores, and
the blend monotone in the fused rank (a property test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from qmd_triton.artifacts.registry import load_registry
from qmd_triton.cli import cli
from qmd_triton.errors import ConfigError
from qmd_triton.search.coverage import ModelLanguages
from qmd_triton.search.expansion import Expander, plan_expansion, prompt, shots_for
from qmd_triton.search.fusion import blend, final_order, flat
from qmd_triton.search.options import SearchOptions
from qmd_triton.serving.triton.fuse import fuse
from qmd_triton.text.scripts import check_languages, letter_counts, read_share, reads

ENGLISH = ModelLanguages("reranker", "ms-marco", ("en",))
EVERY = ModelLanguages("embedding", "multilingual-e5-small", ("*",))


def test_letters_are_counted_by_script_and_digits_and_punctuation_are_not():
    assert letter_counts("BM25 与向量检索!") == {"latin": 2, "han": 5}
    assert letter_counts("日本語のテキスト") == {"han": 3, "kana": 5}
    assert letter_counts("مرحبا بالعالم") == {"arabic": 12}
    assert letter_counts("42 + 7 = 49 ...") == {}


@pytest.mark.parametrize("languages, text, expected", [
    (("en",), "how do I configure dynamic batching", True),
    (("en",), "怎样配置动态批处理", False),
    (("en",), "Triton 动态批处理怎么配置", False),          # 6 Latin letters of 15: the Chinese words carry it
    (("en",), "how do I configure dynamic batching 的", True),  # one Han character among 30 letters
    (("en",), "كيف أضبط الدفعات الديناميكية", False),
    (("en",), "naïve café résumé", True),                   # Latin with diacritics is Latin
    (("en",), "2024-11-30 42", True),                        # no letters: every model reads it
    (("zh", "en"), "Triton 动态批处理怎么配置", True),
    (("zh",), "how do I configure dynamic batching", False),
    (("*",), "كيف أضبط الدفعات الديناميكية", True),
    (None, "怎样配置动态批处理", True),                        # undeclared: read as every script
])
def test_a_model_reads_a_text_when_its_scripts_hold_80_percent_of_the_letters(languages, text, expected):
    assert reads(languages, text) is expected


def test_read_share_is_the_covered_share_of_letters():
    assert read_share(("en",), "abcd 向量") == pytest.approx(4 / 6)


def test_unknown_languages_are_refused_with_the_known_ones_named():
    assert check_languages(["ZH", "en", "zh"]) == ("zh", "en")
    with pytest.raises(ValueError, match="unknown language 'english'"):
        check_languages(["english"])
    with pytest.raises(ValueError, match="at least one"):
        check_languages([])


def test_why_not_names_the_languages_and_the_scripts_of_the_text():
    assert ENGLISH.why_not("怎样配置动态批处理") == "ms-marco reads en; 100% of the letters are han"
    assert EVERY.label == "all languages" and ModelLanguages("reranker").label.startswith("undeclared")


def test_every_registry_model_declares_its_languages_and_the_multilingual_profile_reads_chinese():
    profiles = load_registry()
    assert {"small", "multilingual", "full"} <= set(profiles)
    for entries in profiles.values():
        assert all(e.languages for e in entries)
    assert all(e.languages == ("en",) for e in profiles["small"])
    multi = {e.role: e for e in profiles["multilingual"]}
    assert set(multi) == {"embedding", "reranker", "expansion"}
    assert all(e.source == "modelscope" for e in multi.values())
    assert all(reads(e.languages, "怎样把关键词检索和语义检索结合起来") for e in multi.values())
    assert multi["embedding"].prompts == {"query": "query: {text}", "document": "passage: {text}"}
    assert multi["expansion"].include and all(p.endswith(".gguf") for p in multi["expansion"].include)


def test_a_registry_model_without_languages_is_one_error_line(tmp_path: Path):
    reg = tmp_path / "r.toml"
    reg.write_text('[profiles.x]\n[[profiles.x.models]]\nrole = "embedding"\nname = "tiny"\nsource = "modelscope"\n'
                   'id = "acme/tiny"\n')
    with pytest.raises(ConfigError, match='model tiny: declare the languages it reads'):
        load_registry(reg)
    reg.write_text(reg.read_text() + 'languages = ["klingon"]\n')
    with pytest.raises(ConfigError, match="model tiny: unknown language 'klingon'"):
        load_registry(reg)


def test_export_refuses_an_unknown_language_with_one_line(tmp_path: Path):
    result = CliRunner().invoke(cli, ["export", "--only", "embedding", "--embedding-languages", "en,xx"],
                                env={"QMD_HOME": str(tmp_path)})
    assert result.exit_code == 2 and "unknown language 'xx'" in result.output


# --- fusion: the fused order stands when the reranker says nothing ---------------------------------------------

@given(st.floats(0.0, 1.0), st.integers(1, 199), st.integers(1, 200))
def test_blend_is_monotone_in_the_fused_rank_for_equal_rerank_scores(p: float, a: int, b: int):
    better, worse = min(a, b), max(a, b)
    assert blend(better, p) >= blend(worse, p)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60), st.floats(0.0, 1.0))
def test_blend_never_lowers_a_candidate_for_a_higher_rerank_score(ps: list[float], q: float):
    for rank, p in enumerate(ps, 1):
        assert blend(rank, max(p, q)) >= blend(rank, p)


@given(st.integers(1, 200), st.floats(0.0, 1.0), st.sampled_from(["rerank", "blend"]))
def test_equal_rerank_scores_leave_the_fused_order(n: int, p: float, fusion: str):
    order = final_order(list(range(1, n + 1)), [p] * n, fusion)
    assert [i for i, _ in order] == list(range(n))
    scores = [s for _, s in order]
    assert scores == sorted(scores, reverse=True)


@given(st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), min_size=1, max_size=50),
       st.sampled_from(["rerank", "blend"]))
def test_unread_candidates_keep_their_fused_place_and_scores_never_rise(probs, fusion):
    order = final_order(list(range(1, len(probs) + 1)), probs, fusion)
    assert sorted(i for i, _ in order) == list(range(len(probs)))
    for place, (i, _) in enumerate(order):
        if probs[i] is None and any(p is not None for p in probs):
            assert place == i
    scores = [s for _, s in order]
    assert scores == sorted(scores, reverse=True)


def test_flat_means_every_score_equal():
    assert flat([3.2, 3.2, 3.20001]) and not flat([3.2]) and not flat([3.2, 3.3])


def payload(n: int, reranked: list[int] | None, stages: dict | None = None) -> dict:
    cands = [{"docid": f"#{i:06d}", "file": f"c/{i}.md", "score": 1.0, "snippet": "", "explain": {
        "lists": {"bm25:original": i + 1}, "rrf": 0.1, "rrf_rank": i + 1}} for i in range(n)]
    out = {"plan": {"options": {"n": n, "explain": True}, "expansion": {"status": "language", "why": "x"},
                    "stages": stages or {}}, "candidates": cands}
    if reranked is not None:
        out["reranked"] = reranked
    return out


def test_fuse_keeps_the_fused_order_when_the_reranker_was_bypassed():
    hits = fuse(payload(4, [], {"rerank": {"status": "bypassed", "why": "reads en"}}), np.zeros((1, 1)), "rerank")
    assert [h["file"] for h in hits] == ["c/0.md", "c/1.md", "c/2.md", "c/3.md"]
    assert hits[0]["explain"]["stages"]["rerank"] == {"status": "bypassed", "why": "reads en"}
    assert hits[0]["explain"]["stages"]["expansion"] == {"status": "language", "why": "x"}
    assert "rerank" not in hits[0]["explain"]


def test_fuse_reorders_only_the_candidates_the_reranker_read():
    logits = np.array([[-3.0], [4.0], [1.0]], dtype=np.float32)  # for candidates 0, 2, 3
    hits = fuse(payload(4, [0, 2, 3]), logits, "rerank")
    assert [h["file"] for h in hits] == ["c/2.md", "c/1.md", "c/3.md", "c/0.md"]
    assert hits[1]["explain"]["rerank"] is None and hits[1]["score"] == hits[0]["score"]


@pytest.mark.parametrize("fusion", ["prior", "rerank", "blend"])
def test_fuse_keeps_the_fused_order_for_flat_scores(fusion: str):
    logits = np.full((12, 1), 6.9, dtype=np.float32)
    logits[5] += 5e-5  # below the flat threshold: noise, not an order
    hits = fuse(payload(12, list(range(12))), logits, fusion)
    assert [h["file"] for h in hits] == [f"c/{i}.md" for i in range(12)]
    assert hits[0]["explain"]["stages"]["rerank"]["status"] == "flat"


def test_fuse_lets_retrieval_order_long_pages_when_the_reranker_recognizes_no_answer():
    data = payload(4, [0, 1, 2, 3], {"rerank": {"status": "ran"}})
    for i, c in enumerate(data["candidates"]):
        c["explain"].update(rrf=round(0.1 / (i + 1), 5), unread=0.9)  # long pages, 128 tokens of each read
    logits = np.array([[-11.2], [-10.1], [-10.6], [-11.5]], dtype=np.float32)  # all near probability 0
    hits = fuse(data, logits, "prior")
    assert [h["file"] for h in hits] == ["c/0.md", "c/1.md", "c/2.md", "c/3.md"]
    assert "retrieval's prior decided" in hits[0]["explain"]["stages"]["rerank"]["why"]
    assert hits[0]["explain"]["prior"] == pytest.approx(3.6) and hits[0]["explain"]["logit"] == pytest.approx(-11.2)
    assert [h["file"] for h in fuse(data, logits, "rerank")] == ["c/1.md", "c/2.md", "c/0.md", "c/3.md"]
    for c in data["candidates"]:
        c["explain"]["unread"] = 0.0  # passages read whole: the cross-encoder's order, whatever retrieval said
    assert [h["file"] for h in fuse(data, logits, "prior")] == ["c/1.md", "c/2.md", "c/0.md", "c/3.md"]


def test_a_legacy_payload_without_the_reranked_list_reranks_every_candidate():
    hits = fuse(payload(2, None), np.array([[-1.0], [2.0]], dtype=np.float32), "rerank")
    assert [h["file"] for h in hits] == ["c/1.md", "c/0.md"]


# --- expansion ------------------------------------------------------------------------------------------------

class CountingEngine:
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompt, max_new_tokens, deadline):
        self.calls += 1
        return " 配置 动态批处理 参数\nvec: 动态批处理怎么配置", False


def test_an_llm_that_does_not_read_the_query_is_bypassed_with_the_reason():
    engine = CountingEngine()
    out = plan_expansion("怎样配置动态批处理", SearchOptions(), Expander(engine),
                         languages=ModelLanguages("expansion", "SmolLM2", ("en",)))
    assert out.status == "language" and engine.calls == 0 and not out.used
    assert out.why == "SmolLM2 reads en; 100% of the letters are han"
    out = plan_expansion("怎样配置动态批处理", SearchOptions(), Expander(engine),
                         languages=ModelLanguages("expansion", "Qwen2.5", ("zh", "en")))
    assert out.status == "ok" and engine.calls == 1 and out.lex == ["配置 动态批处理 参数"]


def test_a_model_that_reads_chinese_gets_a_chinese_example_and_the_english_prompt_is_unchanged():
    english = prompt("batching", shots=shots_for(("en",))).text
    assert english == prompt("batching").text and "向量" not in english
    chinese = prompt("批处理", shots=shots_for(("zh", "en"))).text
    assert chinese.count("<|im_start|>assistant") == 4 and "向量检索" in chinese


def test_the_gpu_engines_transformers_llm_declares_its_languages_beside_it(tmp_path: Path):
    from qmd_triton.exporters.decoder_onnx import link_transformers_expansion
    from qmd_triton.text.tokenization import read_manifest

    source = tmp_path / "Qwen2.5-1.5B-Instruct"
    source.mkdir()
    (tmp_path / "repo" / "qmd_expand" / "1").mkdir(parents=True)
    link_transformers_expansion(source, tmp_path / "repo", model="Qwen2.5-1.5B-Instruct", languages=["zh", "en"])
    declared = ModelLanguages.from_manifest("expansion", read_manifest(tmp_path / "repo" / "qmd_expand" / "1",
                                                                       "hf.json"))
    assert declared.languages == ("zh", "en") and declared.reads("怎样配置动态批处理")
    assert (tmp_path / "repo" / "qmd_expand" / "1" / "hf").resolve() == source.resolve()
