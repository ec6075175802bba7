"""RRF, blending, the strong-signal shortcut, expansion parsing and its fallbacks.

The tests of fusion expansion that need the reranker's exported tokenizer: the integration tier (DESIGN.md section
6); the rest are in tests/unit/test_fusion_expansion.py.
"""

from __future__ import annotations

from pathlib import Path

from qmd_triton.text.tokenization import PairEncoder


def test_pair_encoder_truncates_passages_and_keeps_a_long_query_short(exported_repo: Path):
    enc = PairEncoder(exported_repo / "qmd_rerank_model" / "1" / "tokenizer.json", max_length=128)
    ids, mask, types = enc.encode("dynamic batching " * 200, ["short passage", "long passage " * 500])
    assert ids.shape == (2, 128) and mask[1].sum() == 128
    assert types[0].max() == 1 and types[0, 0] == 0
    assert (types[1] == 0).sum() <= 128 // 4 + 2  # the query keeps at most a quarter of the window
