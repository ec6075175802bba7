"""Which expansion a query gets: typed searches, none, the index's cache, or the LLM; exclusions respected."""

from __future__ import annotations

from pathlib import Path

from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.search.expansion import Expander, plan_expansion
from qmd_triton.search.options import SearchOptions, split_typed


class Scripted:
    """An engine that answers with fixed text and records the prompts it was given."""

    name = "scripted"

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def generate(self, prompt, max_new_tokens: int, deadline: float) -> tuple[str, bool]:
        self.prompts.append(prompt.text)
        return self.answer, False


def test_an_expansion_is_cached_in_the_index_whatever_n(tmp_path: Path):
    engine = Scripted(" batching requests triton\nvec: how are requests batched\n")
    expander = Expander(engine)
    with SqliteIndex.open(tmp_path / "index.sqlite", create=True) as store:
        first = plan_expansion("request batching", SearchOptions(n=2), expander, engine_id="e", index=store)
        again = plan_expansion("request  batching", SearchOptions(n=9), expander, engine_id="e", index=store)
        other = plan_expansion("request batching", SearchOptions(), expander, engine_id="other-model", index=store)
    assert first.status == "ok" and first.lex == ["batching requests triton"]
    assert again.status == "cached" and again.lex == first.lex and again.vec == first.vec
    assert other.status == "ok"  # another engine or model expands again
    assert len(engine.prompts) == 2


def test_typed_searches_replace_the_llm_and_intent_reaches_the_prompt():
    engine = Scripted(" unused\n")
    expander = Expander(engine)
    typed = plan_expansion("q", SearchOptions(searches=(("lex", "gpu batching"), ("vec", "how do batches form"))),
                           expander)
    assert (typed.status, typed.lex, typed.vec) == ("caller", ["gpu batching"], ["how do batches form"])
    assert engine.prompts == []
    plan_expansion("triton batching", SearchOptions(intent="the Triton inference server"), expander)
    assert "triton batching\n(meaning: the Triton inference server)<|im_end|>" in engine.prompts[0]
    assert split_typed("lex: a b\nvec: what is a\nplain words") == ("plain words", (("lex", "a b"), ("vec", "what is a")))
    assert split_typed("lex: a b\nvec: what is a")[0] == "what is a"


def test_excluded_words_never_reach_the_llm_and_lines_holding_them_are_dropped():
    engine = Scripted(" aaron biography\nlex: aaron moses brother\nvec: who was aaron\n")
    result = plan_expansion("aaron -moses", SearchOptions(), Expander(engine))
    assert "moses" not in engine.prompts[0].rsplit("<|im_start|>user\n", 1)[1]
    assert result.lex == ["aaron biography"] and result.vec == ["who was aaron"]


def test_a_request_that_does_not_say_gets_the_servers_default_and_may_ask_either_way():
    engine = Scripted(" batching requests triton\n")
    expander = Expander(engine)
    off = plan_expansion("request batching", SearchOptions(), expander, by_default=False)
    assert off.status == "disabled" and "off by default" in off.why and not engine.prompts
    asked = plan_expansion("request batching", SearchOptions(expand=True), expander, by_default=False)
    assert asked.status == "ok" and asked.lex == ["batching requests triton"]
    refused = plan_expansion("request batching", SearchOptions(expand=False), expander, by_default=True)
    assert refused.status == "disabled" and "--no-expand" in refused.why
    assert plan_expansion("request batching", SearchOptions(), expander, by_default=True).status == "ok"
    assert SearchOptions.from_json('{"expand": null}').expand is None
