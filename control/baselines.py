"""What a user would run instead of the server, measured on the same texts in the same run.

* ``onnxruntime_best``: the same ONNX file in-process, same thread count, every batch size
  in corpus order and length-sorted; the best is the reference (the limit for qmd_embed).
* ``sentence_transformers``: the same model through sentence-transformers (PyTorch).
* ``without_dynamic_batching``: a repository copy whose embedding model has no dynamic
  batcher (and no ragged batching), for the server to be measured against itself.

Example:
    >>> onnxruntime_best(Path("model_repository"), texts, threads=2)["per_s"]
    100.2
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from .repository import parse_config


def onnxruntime_best(repo: Path, texts: Sequence[str], threads: int = 2,
                     batch_sizes: Sequence[int] = (1, 8, 16, 32, 64)) -> dict:
    from .tokenization import TextEncoder
    from .triton_models.onnx_backend import make_session

    encoder = TextEncoder.from_dir(repo / "qmd_tokenize" / "1", buckets="")
    session = make_session(repo / "qmd_embed_model" / "1" / "model.onnx", intra_threads=threads)
    runs = []
    for order in ("corpus", "length-sorted"):
        items = sorted(texts, key=len) if order == "length-sorted" else list(texts)
        for b in batch_sizes:
            ids, mask = encoder.encode(items[:b])
            session.run(None, {"input_ids": ids, "attention_mask": mask})  # warm-up
            started = time.perf_counter()
            for i in range(0, len(items), b):
                ids, mask = encoder.encode(items[i : i + b])
                session.run(None, {"input_ids": ids, "attention_mask": mask})
            runs.append({"batch": b, "order": order, "per_s": len(items) / (time.perf_counter() - started)})
    best = max(runs, key=lambda r: r["per_s"])
    return {"per_s": best["per_s"], "best": best, "runs": runs, "threads": threads}


def sentence_transformers(source: Path, texts: Sequence[str], threads: int = 2, batch_size: int = 32) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(source), device="cpu")
    model.encode(list(texts[:batch_size]), batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(list(texts), batch_size=batch_size)
    return {"per_s": len(texts) / (time.perf_counter() - started), "batch": batch_size, "threads": threads}


def without_dynamic_batching(repo: Path, target: Path) -> Path:
    """A copy of ``repo`` (large files hard-linked) whose embedding path does not batch across requests."""
    from google.protobuf import text_format

    def link_or_copy(src: str, dst: str) -> None:
        if os.path.getsize(src) > 1_000_000:
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    if target.exists():
        shutil.rmtree(target)
    for name in ("qmd_tokenize", "qmd_embed_model", "qmd_embed"):
        shutil.copytree(repo / name, target / name, copy_function=link_or_copy,
                        ignore=shutil.ignore_patterns("__pycache__", "configs"))
    for name in ("qmd_tokenize", "qmd_embed_model"):
        path = target / name / "config.pbtxt"
        cfg = parse_config(path)
        cfg.ClearField("dynamic_batching")
        for t in cfg.input:
            t.allow_ragged_batch = False
        path.write_text("# dynamic batching off: the baseline the batcher is measured against\n"
                        + text_format.MessageToString(cfg))
    return target
