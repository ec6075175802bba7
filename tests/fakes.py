"""Test doubles for what cannot run in a unit test: an embedding model.

``HashEmbedder`` is registered as the embedder ``hash`` (tests/conftest.py), the way a
package would add one through the ``qmd_triton.embedders`` entry points. Its vectors are
sums of hashed word vectors, so texts that share words are close: enough for index and
search tests to check behaviour without an exported model or a server.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from qmd_triton.index.fingerprint import EmbeddingSetup
from qmd_triton.text.chunking import CHUNKER_VERSION

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    name = "hash"

    def __init__(self, _settings: Any = None, dim: int = 64, chunk_tokens: int = 120) -> None:
        self.dim = dim
        self.calls: list[int] = []  # texts per embed() call
        self._setup = EmbeddingSetup(
            fingerprint={"model": "hash", "source": "tests/fakes.py", "dim": dim, "max_length": chunk_tokens + 2,
                         "query_prompt": "{text}", "document_prompt": "{text}", "chunk_tokens": chunk_tokens,
                         "chunk_overlap": 0.15, "chunker": CHUNKER_VERSION},
            count_tokens=lambda texts: [len(_WORD.findall(t)) for t in texts],
        )

    def setup(self) -> EmbeddingSetup:
        return self._setup

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in _WORD.findall(text.lower()):
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            v += np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)
