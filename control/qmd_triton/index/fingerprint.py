"""The embedding fingerprint: what an index's vectors were made with, and what a repository serves.

An index remembers the model (its ONNX file's hash), its dimension, the prompt formats and
the chunking its vectors were made with. ``embed`` refuses to mix vectors of two setups and
``qmd_retrieve`` refuses to search an index made with another model than the one it serves.

Example:
    >>> setup = embedding_setup(Path("model_repository"))
    >>> setup.fingerprint["dim"], setup.chunk_tokens
    (384, 254)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmd_triton.contracts import TOKENIZE
from qmd_triton.errors import ArtifactMissing, FingerprintMismatch
from qmd_triton.text.chunking import CHUNK_OVERLAP, CHUNKER_VERSION, chunk_size_for
from qmd_triton.text.tokenization import TextEncoder, read_manifest

Counter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class EmbeddingSetup:
    """What the index must agree on with the embedding model: its fingerprint, and how it counts tokens
    (chunks are cut so that each fits the model's window whole)."""

    fingerprint: dict
    count_tokens: Counter

    @property
    def id(self) -> str:
        return fingerprint_id(self.fingerprint)

    @property
    def chunk_tokens(self) -> int:
        return int(self.fingerprint["chunk_tokens"])


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def embedding_setup(repo: Path) -> EmbeddingSetup:
    """Reads the model repository: export manifest, tokenizer config and prompt formats."""
    version_dir = repo / TOKENIZE.name / "1"
    manifest = read_manifest(version_dir)
    if not manifest:
        raise ArtifactMissing(f"{version_dir}/export.json is missing; run `qmdctl export`")
    encoder = TextEncoder.from_repository(repo)
    prompts = encoder.prompts
    prompt_tokens = encoder.count_tokens(prompts.document.replace("{text}", ""))
    fp = {
        "model": str(manifest.get("onnx_sha256", ""))[:16],
        "source": Path(str(manifest.get("source", ""))).name,
        "dim": int(manifest.get("dim", 0)),
        "max_length": encoder.max_length,
        "query_prompt": prompts.query,
        "document_prompt": prompts.document,
        "chunk_tokens": chunk_size_for(encoder.max_length, prompt_tokens),
        "chunk_overlap": CHUNK_OVERLAP,
        "chunker": CHUNKER_VERSION,
    }
    return EmbeddingSetup(fp, encoder.count_many)


def fingerprint_difference(stored: dict, served: dict) -> list[str]:
    """The fingerprint keys whose values differ (empty when the two agree)."""
    return sorted(k for k in set(stored) | set(served) if stored.get(k) != served.get(k))


def only_chunking_differs(stored: dict, served: dict) -> bool:
    """True when the vectors are the model's and only the chunker changed: re-chunking is enough, and chunks
    whose text is unchanged keep their vectors."""
    return fingerprint_difference(stored, served) == ["chunker"]


def mismatch(stored: dict, served: dict, what: str) -> FingerprintMismatch:
    diff = fingerprint_difference(stored, served)
    if diff == ["chunker"]:
        return FingerprintMismatch(f"the index was chunked by an older chunker than {what}; run `qmdctl embed` "
                                   "to chunk it again (unchanged chunks keep their vectors)")
    return FingerprintMismatch(f"the index was embedded with a different {', '.join(diff)} than {what}; "
                               "run `qmdctl embed --force` to embed it again")


def check_fingerprint(index: Any, setup: EmbeddingSetup, what: str = "the model repository has") -> None:
    """Raises ``FingerprintMismatch`` when the index holds vectors of another setup."""
    stored = index.fingerprint()
    if stored is not None and fingerprint_id(stored) != setup.id:
        raise mismatch(stored, setup.fingerprint, what)
