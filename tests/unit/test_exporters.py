"""Exporters: named tensors, parity reports, idempotence, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmd_triton.errors import ArtifactMissing
from qmd_triton.exporters import embedding_onnx, reranker_onnx


def test_embedding_export_fails_clearly_without_a_model_directory(tmp_path: Path):
    with pytest.raises(ArtifactMissing, match="is not a transformers model directory"):
        embedding_onnx.export_embedding(tmp_path, tmp_path)


def test_rename_output_refuses_a_graph_without_token_type_ids(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["input_ids"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    from qmd_triton.errors import ExportError

    with pytest.raises(ExportError, match="has no input 'attention_mask'"):
        reranker_onnx.rename_output(tmp_path / "m.onnx", tmp_path / "out.onnx")
