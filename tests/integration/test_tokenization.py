"""The tests of tokenization that need the exported tokenizers: the integration tier (DESIGN.md section 6); the rest
are in tests/unit/test_tokenization.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qmd_triton.text.tokenization import TextEncoder


@pytest.fixture(scope="module")
def encoder(exported_repo: Path) -> TextEncoder:
    return TextEncoder.from_dir(exported_repo / "qmd_tokenize" / "1", buckets="16,32,64,128")


def test_encode_pads_to_bucket_with_mask_when_texts_differ_in_length(encoder: TextEncoder):
    ids, mask = encoder.encode(["hello", "a somewhat longer sentence with several more tokens in it"])
    assert ids.shape == (2, 16) and ids.dtype == np.int64
    assert mask[0].sum() == 3  # [CLS] hello [SEP]
    assert (ids[0, 3:] == encoder.pad_id).all()


def test_encode_gives_special_tokens_only_when_text_is_empty(encoder: TextEncoder):
    ids, mask = encoder.encode([""])
    assert mask.sum() == 2


def test_encode_truncates_exactly_when_text_is_one_megabyte(encoder: TextEncoder):
    text = ("Markdown notes, 笔记与文档。 " * 60000)[: 1 << 20]
    ids, mask = encoder.encode([text])
    assert mask.sum() == encoder.max_length
    # The pre-cut of huge inputs must not change the tokens: compare with the full text.
    full = encoder._tok.encode(text).ids
    assert ids[0, : encoder.max_length].tolist() == full


def test_encode_handles_chinese_text(encoder: TextEncoder):
    ids, mask = encoder.encode(["向量搜索"])
    assert mask.sum() > 2


PATHOLOGICAL = {
    "no spaces": "x" * 200_000,
    "accented, no spaces": "é" * 200_000,
    "long words": ("x" * 150 + " ") * 1500,
    "blank runs": ("word" + " " * 999) * 300,
    "long words between CJK punctuation": ("ab" * 3000 + "。") * 40,
    "symbols": "€" * 100_000,
    "long words, then prose": "y" * 150_000 + " and then some ordinary prose follows" * 100,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_encode_is_exact_when_text_has_few_tokens_for_its_length(encoder: TextEncoder, name: str):
    text = PATHOLOGICAL[name]
    ids, mask = encoder.encode([text])
    full = encoder._tok.encode(text).ids
    assert ids[0, : mask[0].sum()].tolist() == full


def test_encode_reads_no_more_of_a_2mb_text_without_spaces_than_of_2mb_of_prose(encoder: TextEncoder):
    prose = ("Markdown notes about dynamic batching and model instances. " * 40000)[: 2 << 20]
    bound = 128 * encoder.max_length
    cut = encoder._cut
    assert len(cut.bounded(prose)) <= 6 * encoder.max_length
    for text in ("x" * (2 << 20), "é" * (2 << 20), ("x" * 150 + " ") * 14000):
        bounded = cut.bounded(text)
        assert len(bounded) <= bound  # a few dozen kB tokenized, never the 2 MB
        assert encoder.encode([text])[0][0, :3].tolist() == encoder.encode([bounded])[0][0, :3].tolist()
    assert len(cut.bounded("x" * (2 << 20))) <= len(cut.bounded(prose))
    assert len(cut.bounded("€" * (2 << 20))) == bound  # symbols: cut at the bound (one unknown token either way)


def test_pair_encoder_bounds_a_passage_without_spaces(exported_repo: Path):
    from qmd_triton.text.tokenization import PairEncoder

    pairs = PairEncoder(exported_repo / "qmd_rerank_model" / "1" / "tokenizer.json", max_length=512)
    ids, mask, _ = pairs.encode("batching", ["x" * (2 << 20), "short passage"])
    full = pairs._tok.encode("batching", "x" * (2 << 20)).ids
    assert ids[0, : mask[0].sum()].tolist() == full
    assert len(pairs._cut.bounded("x" * (2 << 20))) < 1000
