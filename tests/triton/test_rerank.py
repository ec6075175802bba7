"""qmd_rerank, the text-level reranking ensemble (qmd_pair_tokenize -> qmd_rerank_model), called as any Triton
client would: the same logits as the in-process reranker on the same pairs, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from qmd_triton.contracts import LOGIT, QUERY, RERANK, RERANK_MAX_PAIRS, TEXTS
from qmd_triton.errors import InferenceError
from qmd_triton.runtime.onnx import InProcessReranker
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings

from ..conftest import ASSETS

QUERY_TEXT = "how do requests get batched together"
PASSAGES = [p.read_text() for p in sorted((ASSETS / "notes").rglob("*.md"))] + [
    "Dynamic batching merges requests into one batch.", "Bread needs flour, water and salt.", "", "短文本",
    "The server merges concurrent inference calls into one batch. " * 200]


def rerank(settings: Settings, query: str, texts: list[str], protocol: str = "http") -> np.ndarray:
    column = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    with QmdClient(settings.url(protocol), protocol) as client:
        out = client.infer(RERANK.name, {QUERY: np.array([query.encode()], dtype=np.object_), TEXTS: column},
                           [LOGIT])
    return out[LOGIT]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_rerank_logits_equal_the_in_process_reranker_on_the_same_pairs(triton: Settings, protocol: str):
    served = rerank(triton, QUERY_TEXT, PASSAGES, protocol)
    assert served.shape == (len(PASSAGES), 1)
    reference = InProcessReranker.from_repository(triton.model_repository, threads=2).scores(QUERY_TEXT, PASSAGES)
    assert np.abs(served.reshape(-1) - reference).max() < 1e-4
    assert int(np.argmax(served)) == len(PASSAGES) - 5  # "Dynamic batching merges requests into one batch."


@pytest.mark.parametrize("query, texts, message", [
    ("", ["a"], "query is empty"),
    ("batching", [], "texts is empty"),
    ("batching", ["a"] * (RERANK_MAX_PAIRS + 1), f"qmd_rerank takes at most {RERANK_MAX_PAIRS}"),
    ("x" * 20000, ["a"], "the limit is 16384"),
], ids=["empty-query", "no-texts", "too-many", "long-query"])
def test_bad_rerank_requests_get_clear_errors(triton: Settings, query: str, texts: list[str], message: str):
    with pytest.raises(InferenceError, match=message):
        rerank(triton, query, texts)
    assert rerank(triton, "batching", ["a"]).shape == (1, 1)
