"""Exporters: named tensors, parity reports, idempotence, clear errors.

The tests of exporters that need the exported models of the repository and an export with parity: the integration
tier (DESIGN.md section 6); the rest are in tests/unit/test_exporters.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qmd_triton.artifacts.registry import default_source
from qmd_triton.exporters import decoder_onnx, embedding_onnx, reranker_onnx


def _graph_io(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in g.input], [o.name for o in g.output]


def test_embedding_export_is_skipped_when_source_is_unchanged(exported_repo: Path):
    again = embedding_onnx.export_embedding(default_source("embedding"), exported_repo)
    assert again.skipped and again.max_abs_diff < 1e-5 and again.dim == 384
    assert _graph_io(exported_repo / "qmd_embed_model" / "1" / "model.onnx") == (
        ["input_ids", "attention_mask"], ["embedding", "embedding_raw"])


def test_prepared_reranker_keeps_its_inputs_and_names_its_output_logit(exported_repo: Path):
    manifest = json.loads((exported_repo / "qmd_rerank_model" / "1" / "export.json").read_text())
    assert manifest["kind"] == "prepared-onnx" and manifest["max_abs_diff"] == 0.0
    assert _graph_io(exported_repo / "qmd_rerank_model" / "1" / "model.onnx") == (
        ["input_ids", "attention_mask", "token_type_ids"], ["logit"])


def test_decoder_export_picks_the_next_token_transformers_picks(exported_repo: Path):
    manifest = json.loads((exported_repo / "qmd_expand" / "1" / "export.json").read_text())
    assert manifest["precision"] == "int8"
    assert manifest["agreement"] >= decoder_onnx.PARITY_AGREEMENT
    genai = exported_repo / "qmd_expand" / "1" / "genai"
    config = json.loads((genai / "genai_config.json").read_text())
    assert config["model"]["type"] == "llama" and (genai / "model.onnx").is_file()


def test_the_expansion_engine_reuses_the_prompt_prefix_and_stops_when_the_answer_is_complete(exported_repo: Path):
    """A request pays for its own words: the fixed prefix is read once; a rewound cache answers the same."""
    import time

    from qmd_triton.search.expansion import GenaiEngine, finished, prompt

    engine = GenaiEngine(exported_repo / "qmd_expand" / "1", threads=2)
    asked = prompt("sourdough starter feeding schedule")
    first, cut = engine.generate(asked, 64, time.monotonic() + 60)
    assert not cut
    again, _ = engine.generate(prompt("how do I configure dynamic batching"), 64, time.monotonic() + 60)
    third, _ = engine.generate(asked, 64, time.monotonic() + 60)
    assert third == first  # the rewound cache holds only the prefix: the earlier request left nothing behind
    assert first.count("\n\n") == 0  # generation stopped at the end of the answer
    assert finished(" a\nvec: b\n\n") and not finished(" a\nvec: b")
    cut_text, was_cut = engine.generate(prompt("x" * 5000), 64, time.monotonic())  # a deadline already passed
    assert was_cut and cut_text == ""


@pytest.fixture
def tiny_cross_encoder(tmp_path: Path, exported_repo: Path) -> Path:
    """A small randomly initialised BERT cross-encoder saved as a Hugging Face directory."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, num_labels=1)
    out = tmp_path / "tiny-ce"
    BertForSequenceClassification(cfg).save_pretrained(str(out))
    shutil.copyfile(exported_repo / "qmd_rerank_model" / "1" / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_hf_cross_encoder_exports_with_parity(tiny_cross_encoder: Path, tmp_path: Path, fp16: bool):
    repo = tmp_path / "repo"
    (repo / "qmd_rerank_model").mkdir(parents=True)
    report = reranker_onnx.export_reranker(tiny_cross_encoder, repo, fp16=fp16)
    assert report.kind == ("hf-fp16" if fp16 else "hf-fp32")
    assert report.max_abs_diff < (5e-2 if fp16 else 1e-4)
    model = repo / "qmd_rerank_model" / "1" / "model.onnx"
    assert _graph_io(model) == (["input_ids", "attention_mask", "token_type_ids"], ["logit"])
    assert (repo / "qmd_rerank_model" / "1" / "tokenizer.json").is_file()
    again = reranker_onnx.export_reranker(tiny_cross_encoder, repo, fp16=fp16)
    assert again.skipped
