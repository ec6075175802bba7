"""Which stages of the hybrid query run for a text, given the languages their models read.

Each exported model's manifest (``export.json``) records the languages its registry entry
declares. The rule (``qmd_triton.text.scripts``): a model reads a text when the scripts of
its languages hold at least 80% of the text's letters. ``qmd_expand`` bypasses the expansion
LLM for a query it does not read; ``qmd_retrieve`` leaves out the vector list of a query text
the embedder does not read, skips the reranker for a query it does not read, and sends it
only the candidates whose passages it reads (the others keep their fused place, see
``fusion.final_order``). A model whose manifest declares nothing (an export made before
languages were recorded, or a custom source exported without ``--*-languages``) is taken to
read every script, which is how the pipeline behaved before.

Example:
    >>> langs = repository_languages(Path("model_repository"))
    >>> langs["reranker"].reads("怎样配置动态批处理")
    False
    >>> langs["reranker"].why_not("怎样配置动态批处理")
    'ms-marco-MiniLM-L-12-v2 (INT8 ONNX) reads en; 100% of the letters are han'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmd_triton.contracts import EMBED_MODEL, EXPAND, RERANK_MODEL
from qmd_triton.text.scripts import ANY, READ_SHARE, letter_counts, read_share, scripts_of
from qmd_triton.text.tokenization import read_manifest

ROLES = ("expansion", "embedding", "reranker")
STAGES = {"expansion": "expansion", "embedding": "vectors", "reranker": "rerank"}  # role -> stage it runs
MODEL_DIRS = {"expansion": EXPAND.name, "embedding": EMBED_MODEL.name, "reranker": RERANK_MODEL.name}


@dataclass(frozen=True)
class ModelLanguages:
    """A model of the pipeline and the languages it declares (None: undeclared, read as every script)."""

    role: str
    name: str = ""
    languages: tuple[str, ...] | None = None

    @classmethod
    def from_manifest(cls, role: str, manifest: dict[str, Any]) -> ModelLanguages:
        raw = manifest.get("languages")
        languages = tuple(str(x) for x in raw) if isinstance(raw, list) and raw else None
        name = str(manifest.get("model") or "") or Path(str(manifest.get("source") or role)).name
        return cls(role=role, name=name, languages=languages)

    @property
    def label(self) -> str:
        if self.languages is None:
            return "undeclared (read as every script)"
        return "all languages" if ANY in self.languages else ", ".join(self.languages)

    def share(self, text: str) -> float:
        return read_share(self.languages, text)

    def reads(self, text: str) -> bool:
        return self.share(text) >= READ_SHARE

    def why_not(self, text: str) -> str:
        """Why this model does not read ``text``: its languages and the scripts that are not theirs."""
        scripts = scripts_of(self.languages or (ANY,)) or frozenset()
        counts = letter_counts(text)
        total = sum(counts.values()) or 1
        foreign = [(n, s) for s, n in counts.items() if s not in scripts]
        foreign.sort(reverse=True)
        share = sum(n for n, _ in foreign) / total
        names = ", ".join(s for _, s in foreign[:2])
        return f"{self.name or self.role} reads {self.label}; {share:.0%} of the letters are {names}"

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "languages": list(self.languages) if self.languages else None,
                "stage": STAGES[self.role]}


def repository_languages(repo: Path) -> dict[str, ModelLanguages]:
    """Role -> the languages of the model exported into ``repo`` (undeclared where nothing is recorded)."""
    return {role: ModelLanguages.from_manifest(role, read_manifest(Path(repo) / MODEL_DIRS[role] / "1"))
            for role in ROLES}


def stage(status: str, why: str = "") -> dict[str, str]:
    """One stage's record in a plan or a payload: ``ran``, ``bypassed`` (with why), ``partial`` or ``off``."""
    return {"status": status, "why": why} if why else {"status": status}
