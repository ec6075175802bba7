"""onnxruntime sessions, and the embedding model and reranker of a model repository run in-process.

Tensor names come from :mod:`qmd_triton.contracts`; the tokenization is the served one
(:class:`~qmd_triton.text.tokenization.TextEncoder` with the repository's prompt formats,
:class:`~qmd_triton.text.tokenization.PairEncoder` for the reranker).

Example:
    >>> embedder = InProcessEmbedder.from_repository(Path("model_repository"))
    >>> embedder.embed(["hello", "你好"], kind="query").shape
    (2, 384)
    >>> InProcessReranker.from_repository(Path("model_repository")).scores("batching", ["a", "b"])
    array([...], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qmd_triton.contracts import (
    ATTENTION_MASK,
    EMBED_MODEL,
    EMBEDDING,
    INPUT_IDS,
    KIND_DOCUMENT,
    LOGIT,
    RERANK_MODEL,
    TOKEN_TYPE_IDS,
)
from qmd_triton.errors import ArtifactMissing
from qmd_triton.text.tokenization import PairEncoder, TextEncoder

ONNX_FILE = "model.onnx"


def make_session(path: Path, intra_threads: int = 0, inter_threads: int = 0, spinning: bool = True,
                 arena: bool = True, mem_pattern: bool = True) -> Any:
    """An onnxruntime CPU session with the settings both the server and the baselines use.

    ``spinning=False`` stops idle worker threads from busy-waiting: inside the server they
    share the cores with Triton, the tokenizer stub and the clients. ``arena=False`` allocates
    from the heap instead of onnxruntime's CPU arena; to keep the arena but give its peak back,
    run with :func:`run_options` ``(shrink=True)`` instead (measured in perf/RESULTS.md).
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ArtifactMissing(f"{path} is missing; run `qmdctl export`")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = arena
    opts.enable_mem_pattern = mem_pattern
    if intra_threads > 0:
        opts.intra_op_num_threads = intra_threads
    if inter_threads > 0:
        opts.inter_op_num_threads = inter_threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_options(shrink: str = "") -> Any:
    """onnxruntime RunOptions; ``shrink`` (e.g. ``"cpu:0"``) returns the arena's growth after each run.

    Without it the CPU arena keeps its peak for the life of the process: one batch of 40
    long pairs grows the reranker from ~130 MB to ~1.8 GB and it stays there.
    """
    import onnxruntime as ort

    options = ort.RunOptions()
    if shrink:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", shrink)
    return options


def version_dir(repo: Path, model: str) -> Path:
    return Path(repo) / model / "1"


class InProcessEmbedder:
    """The repository's embedding model: its tokenizer settings and ONNX file, run here."""

    def __init__(self, encoder: TextEncoder, onnx_path: Path, threads: int = 0) -> None:
        self.encoder = encoder
        self.session = make_session(onnx_path, intra_threads=threads)

    @classmethod
    def from_repository(cls, repo: Path, threads: int = 0, encoder: TextEncoder | None = None,
                        buckets: str = "") -> InProcessEmbedder:
        """``encoder`` defaults to the served tokenization (prompt formats and max length of qmd_tokenize)."""
        encoder = encoder or TextEncoder.from_repository(repo, buckets=buckets)
        return cls(encoder, version_dir(repo, EMBED_MODEL.name) / ONNX_FILE, threads)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token ids -> embeddings ``[batch, dim]``."""
        return self.session.run([EMBEDDING], {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask})[0]

    def embed(self, texts: Sequence[str], kind: str = KIND_DOCUMENT) -> np.ndarray:
        ids, mask = self.encoder.encode(list(texts), kind=kind)
        return self.run(ids, mask)

    def embed_batched(self, texts: Sequence[str], kind: str = KIND_DOCUMENT, batch: int = 16) -> np.ndarray:
        """Embeddings of many texts in length-sorted batches (the fastest order on a CPU), in input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            vectors = self.embed([texts[i] for i in rows], kind)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        return out


class InProcessReranker:
    """The repository's cross-encoder: (query, passage) pairs -> logits, run here."""

    def __init__(self, pairs: PairEncoder, onnx_path: Path, threads: int = 0) -> None:
        self.pairs = pairs
        self.session = make_session(onnx_path, intra_threads=threads)
        self.inputs = {i.name for i in self.session.get_inputs()}

    @classmethod
    def from_repository(cls, repo: Path, threads: int = 0, max_length: int = 512) -> InProcessReranker:
        folder = version_dir(repo, RERANK_MODEL.name)
        return cls(PairEncoder(folder / "tokenizer.json", max_length=max_length), folder / ONNX_FILE, threads)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """Pair tokens -> logits ``[pairs]``."""
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask, TOKEN_TYPE_IDS: token_type_ids}
        return self.session.run([LOGIT], {k: v for k, v in feeds.items() if k in self.inputs})[0].reshape(-1)

    def scores(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Logits of (query, passage) for every passage, in one padded batch (as the server runs them)."""
        return self.run(*self.pairs.encode(query, list(passages)))
