"""Expected CPU latency of the `multilingual` profile's models, beside the `small` profile's, in one run.

ModelScope cannot be reached from the machines this project is built on, so the multilingual profile's
models are built here from their published shapes with random weights (compute depends on the shapes, not
on the weights) and exported by the project's own exporters and onnxruntime-genai's builder:

    multilingual-e5-small   BERT, vocab 250037, 12 layers, hidden 384, 12 heads, FFN 1536
    bge-reranker-base       XLM-RoBERTa, vocab 250002, 12 layers, hidden 768, 12 heads, FFN 3072, one label
    Qwen2.5-0.5B-Instruct   Qwen2, vocab 151936, 24 layers, hidden 896, 14 heads (2 KV), FFN 4864, tied embeddings

The small profile's real exports (the checkout's model_repository) run beside them in the same process,
measure by measure, so the ratios hold under whatever else the machine is doing. Measured, median of REPEATS:
one query embedded (16 tokens), 32 chunks embedded (254 tokens: MiniLM's window; 510: e5's), 20 (query,
passage) pairs of 160 tokens reranked in one batch (the CPU rerank budget: 20 candidates, each cut to its best
128-token window), the expansion decoder's prefill of a 260-token prompt and its time per generated token
after it, and the ONNX sizes.

Usage: .venv/bin/python perf/multilingual_latency.py [WORKDIR]   (default /tmp/qmd-multilingual-latency)
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qmd_triton.artifacts.registry import default_source
from qmd_triton.exporters.decoder_onnx import _build, _write_transformers
from qmd_triton.exporters.embedding_onnx import export_embedding
from qmd_triton.exporters.reranker_onnx import export_reranker
from qmd_triton.runtime.onnx import make_session
from qmd_triton.settings import checkout_path

REPEATS = 5
THREADS = 2


def tokenizer_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("embedding")  # m3e-small's tokenizer (ids < 21128): lengths are what count
    return Path(next(iter(spec.submodule_search_locations))) / "m3e-small"


def build_sources(work: Path) -> dict[str, Path]:
    import shutil

    import torch
    from transformers import (
        BertConfig,
        BertModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    out = {}
    tok = tokenizer_dir()
    e5 = work / "src" / "e5-small"
    if not (e5 / "config.json").is_file():
        BertModel(BertConfig(vocab_size=250037, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=1536, max_position_embeddings=512)).save_pretrained(str(e5))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(tok / name, e5 / name)
    out["embedding"] = e5
    rr = work / "src" / "bge-reranker-base"
    if not (rr / "config.json").is_file():
        # type_vocab_size 2 (bge's is 1): the stand-in tokenizer marks the passage as segment 1; same compute
        XLMRobertaForSequenceClassification(XLMRobertaConfig(
            vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=514, type_vocab_size=2, num_labels=1, pad_token_id=1)).save_pretrained(str(rr))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(tok / name, rr / name)
    out["reranker"] = rr
    qwen = work / "src" / "qwen2.5-0.5b"
    if not (qwen / "config.json").is_file():
        smol = work / "src" / "smollm2-hf"
        if not (smol / "config.json").is_file():
            _write_transformers(default_source("expansion"), smol)
        Qwen2ForCausalLM(Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
            rope_theta=1000000.0)).save_pretrained(str(qwen))
        for p in smol.iterdir():  # the builder wants a tokenizer beside the weights
            if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "generation")):
                shutil.copyfile(p, qwen / p.name)
    out["expansion"] = qwen
    return out


def export(work: Path, sources: dict[str, Path]) -> Path:
    repo = work / "repo"
    for model in ("qmd_embed_model", "qmd_tokenize", "qmd_rerank_model", "qmd_expand"):
        (repo / model / "1").mkdir(parents=True, exist_ok=True)
    export_embedding(sources["embedding"], repo, progress=print)
    export_reranker(sources["reranker"], repo, progress=print)
    genai = repo / "qmd_expand" / "1" / "genai"
    if not (genai / "genai_config.json").is_file():
        print("building the int8 decoder of the Qwen2.5-0.5B shape (minutes)")
        _build(sources["expansion"], genai, "int8", work / "cache")
    return repo


def median_ms(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def encoder_ms(path: Path, batch: int, length: int, pair: bool = False) -> float:
    session = make_session(path, intra_threads=THREADS, inter_threads=1)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (batch, length)).astype(np.int64),
             "attention_mask": np.ones((batch, length), np.int64)}
    if pair or "token_type_ids" in {i.name for i in session.get_inputs()}:
        feeds["token_type_ids"] = np.zeros((batch, length), np.int64)
    return median_ms(lambda: session.run(None, feeds))


def decoder_ms(genai_dir: Path, prompt_tokens: int = 260, new_tokens: int = 32) -> tuple[float, float]:
    """Median prefill time of a ``prompt_tokens`` prompt and median time per generated token after it."""
    import onnxruntime_genai as og

    config = og.Config(str(genai_dir))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": THREADS,
                                                                         "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    prefill, per_token = [], []
    for i in range(4):  # the first run warms up
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_tokens + new_tokens + 1, do_sample=False)
        gen = og.Generator(model, params)
        started = time.perf_counter()
        gen.append_tokens(list(range(1000, 1000 + prompt_tokens)))
        read = time.perf_counter()
        for _ in range(new_tokens):
            gen.generate_next_token()
        if i:
            prefill.append((read - started) * 1000)
            per_token.append((time.perf_counter() - read) * 1000 / new_tokens)
    return statistics.median(prefill), statistics.median(per_token)


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/qmd-multilingual-latency")
    repos = {"small": checkout_path("model_repository"), "multilingual": export(work, build_sources(work))}

    def files(repo: Path) -> tuple[Path, Path, Path]:
        return (repo / "qmd_embed_model" / "1" / "model.onnx", repo / "qmd_rerank_model" / "1" / "model.onnx",
                repo / "qmd_expand" / "1" / "genai")

    measures = {
        "embed 1 query (16 tokens), ms": lambda p, r: encoder_ms(files(r)[0], 1, 16),
        "embed 32 chunks of 254 tokens, ms": lambda p, r: encoder_ms(files(r)[0], 32, 254),
        "embed 32 chunks of the window (254 / 510 tokens), ms":
            lambda p, r: encoder_ms(files(r)[0], 32, 254 if p == "small" else 510),
        # the CPU rerank budget (search/options.py CANDIDATES, qmd_retrieve's rerank_passage_tokens): 20 pairs,
        # each a short query and a 128-token window of its chunk
        "rerank 20 pairs of 160 tokens (a 128-token window), ms":
            lambda p, r: encoder_ms(files(r)[1], 20, 160, pair=True),
    }
    rows: dict[str, dict[str, float]] = {}
    for name, measure in measures.items():  # both profiles side by side, measure by measure
        rows[name] = {p: measure(p, r) for p, r in repos.items()}
    decoder = {p: decoder_ms(files(r)[2]) for p, r in repos.items()}
    rows["expansion prefill of a 260-token prompt, ms"] = {p: v[0] for p, v in decoder.items()}
    rows["expansion decoder, ms per generated token"] = {p: v[1] for p, v in decoder.items()}
    for i, name in enumerate(("embedding", "reranker", "expansion")):
        rows[f"{name} ONNX, MB"] = {p: size_mb(files(r)[i]) for p, r in repos.items()}
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} cores, {THREADS} threads")
    print("| measure | small | multilingual | ratio |\n|---|---|---|---|")
    for name, v in rows.items():
        print(f"| {name} | {v['small']:.0f} | {v['multilingual']:.0f} | {v['multilingual'] / v['small']:.1f}x |")


if __name__ == "__main__":
    main()
