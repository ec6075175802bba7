"""Transformers sentence-embedding model -> ONNX with pooling and L2 norm in the graph.

Writes ``qmd_embed_model/1/model.onnx`` (inputs ``input_ids``, ``attention_mask``,
output ``embedding``, dynamic batch and sequence axes) and the tokenizer files that
``qmd_tokenize`` reads into ``qmd_tokenize/1/``, then checks parity against the
source model in PyTorch on texts of different lengths, English and Chinese.

Example:
    >>> report = export_embedding(default_source("embedding"), Path("model_repository"))
    >>> report.max_abs_diff < 1e-4
    True
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qmd_triton.contracts import ATTENTION_MASK, EMBED_MODEL, EMBEDDING, INPUT_IDS, TOKENIZE
from qmd_triton.errors import ArtifactMissing, ExportError
from qmd_triton.exporters import redeclare
from qmd_triton.progress import Progress, silent
from qmd_triton.system.files import atomic_write_text, sha256_file, tree_fingerprint
from qmd_triton.text.tokenization import MANIFEST_FILE, TOKENIZER_FILE, TextEncoder

ARTIFACT = "model.onnx"
PARITY_TOLERANCE = 1e-4
PARITY_TEXTS = (
    "",
    "hello",
    "BM25 ranks documents by term frequency and inverse document frequency.",
    "向量搜索把文本映射到嵌入空间，再按余弦相似度排序。",
    "Triton's dynamic batcher merges requests. " * 40,
    "混合检索：BM25 与向量检索的结果用 RRF 融合，再由交叉编码器重排。" * 12,
)

@dataclass(frozen=True)
class EmbeddingExport:
    """What an export produced, as recorded in ``export.json``."""

    source: str
    source_fingerprint: str
    pooling: str
    normalize: bool
    dim: int
    max_length: int
    opset: int
    onnx_sha256: str
    onnx_bytes: int
    max_abs_diff: float
    parity_texts: int
    seconds: float
    skipped: bool = False
    model: str = ""
    languages: list[str] | None = None  # what the model reads (None: undeclared)


_PROMPT_LINE = re.compile(r'(parameters\s*\{\s*key:\s*"(query|document)_prompt",\s*value:\s*\{\s*string_value:\s*)'
                          r'"((?:[^"\\]|\\.)*)"')


def write_prompts(repo: Path, prompts: dict[str, str]) -> list[Path]:
    """Sets ``qmd_tokenize``'s ``query_prompt`` and ``document_prompt`` (``{text}`` where ``prompts`` has none) in
    its config and its alternative configs; returns the files changed. The formats a model was trained with
    (multilingual-e5: ``query: {text}`` / ``passage: {text}``) come from its registry entry."""
    changed = []
    folder = Path(repo) / TOKENIZE.name
    for path in [folder / "config.pbtxt", *sorted((folder / "configs").glob("*.pbtxt"))]:
        if not path.is_file():
            continue
        text = path.read_text()

        def sub(m: re.Match) -> str:
            value = prompts.get(m.group(2), "{text}").replace("\\", "\\\\").replace('"', '\\"')
            return f'{m.group(1)}"{value}"'

        new = _PROMPT_LINE.sub(sub, text)
        if new != text:
            atomic_write_text(path, new)  # never through a hard link into another copy
            changed.append(path)
    return changed


def source_fingerprint(source: Path) -> str:
    """Identifies a source model directory by its files' names, sizes and mtimes."""
    return tree_fingerprint(source.rglob("*"), source)


def read_pooling(source: Path) -> tuple[str, bool]:
    """Pooling mode and normalization from a sentence-transformers layout (mean + norm if absent)."""
    pooling, normalize = "mean", True
    modules = source / "modules.json"
    if modules.is_file():
        entries = json.loads(modules.read_text())
        normalize = any(e.get("type", "").endswith("Normalize") for e in entries)
        for e in entries:
            if e.get("type", "").endswith("Pooling"):
                cfg = json.loads((source / e["path"] / "config.json").read_text())
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_lasttoken"):
                    pooling = "lasttoken"
                elif cfg.get("pooling_mode_mean_tokens", True):
                    pooling = "mean"
    return pooling, normalize


def read_max_length(source: Path) -> int:
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
        ("config.json", "max_position_embeddings"),
    ):
        path = source / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and 0 < value <= 32768:
                return value
    return 512


def _wrapper(model, pooling: str, normalize: bool):
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif pooling == "lasttoken":
                last = attention_mask.sum(dim=1) - 1
                pooled = hidden[torch.arange(hidden.shape[0]), last]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled

    return SentenceEmbedding().eval()


def export_embedding(
    source: Path,
    repo: Path,
    *,
    opset: int = 17,
    force: bool = False,
    model: str = "",
    languages: Sequence[str] | None = None,
    progress: Progress = silent,
) -> EmbeddingExport:
    """Exports ``source`` into ``repo`` unless an export of the same source exists.

    ``model`` and ``languages`` (what it reads) go into the manifest; an up-to-date export gets them too.
    """
    source, repo = Path(source), Path(repo)
    if not (source / "config.json").is_file() or not (source / TOKENIZER_FILE).is_file():
        raise ArtifactMissing(f"{source} is not a transformers model directory (needs config.json and tokenizer.json)")
    model_dir = repo / EMBED_MODEL.name / "1"
    tok_dir = repo / TOKENIZE.name / "1"
    if not model_dir.parent.is_dir() or not tok_dir.parent.is_dir():
        raise ArtifactMissing(f"{repo} has no {EMBED_MODEL.name}/ and {TOKENIZE.name}/ model folders")
    fingerprint = source_fingerprint(source)
    previous = _current(model_dir, tok_dir, fingerprint, opset)
    langs = list(languages) if languages else None
    if previous and not force:
        declared = redeclare([model_dir / MANIFEST_FILE, tok_dir / MANIFEST_FILE], model, langs)
        progress(f"embedding model up to date ({model_dir / ARTIFACT})")
        return EmbeddingExport(**{**previous, "skipped": True, **declared})
    name = model or source.name

    started = time.monotonic()
    pooling, normalize = read_pooling(source)
    max_length = read_max_length(source)
    progress(f"loading {name} (pooling={pooling}, normalize={normalize}, max_length={max_length})")
    try:
        import torch
        from transformers import AutoModel
    except ImportError as e:
        raise ExportError(f"exporting needs torch and transformers: pip install -e '.[export]' ({e})") from None
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    wrapped = _wrapper(model, pooling, normalize)

    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{ARTIFACT}.tmp"
    progress(f"exporting to ONNX (opset {opset})")
    dummy = torch.ones((2, 8), dtype=torch.long)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about shape-dependent Python branches in transformers'
            # masking code; the parity check below is what tells whether the graph holds.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (dummy, torch.ones_like(dummy)),
                str(tmp),
                input_names=[INPUT_IDS, ATTENTION_MASK],
                output_names=[EMBEDDING],
                dynamic_axes={
                    INPUT_IDS: {0: "batch", 1: "sequence"},
                    ATTENTION_MASK: {0: "batch", 1: "sequence"},
                    EMBEDDING: {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"torch.onnx.export failed: {e}") from None

    progress("checking parity against the source model")
    tok_tmp = tok_dir / f".{TOKENIZER_FILE}.tmp"
    shutil.copyfile(source / TOKENIZER_FILE, tok_tmp)
    try:
        diff, dim = _parity(wrapped, tmp, tok_tmp, max_length)
    except Exception:
        tmp.unlink(missing_ok=True)
        tok_tmp.unlink(missing_ok=True)
        raise
    if diff > PARITY_TOLERANCE:
        tmp.unlink(missing_ok=True)
        tok_tmp.unlink(missing_ok=True)
        raise ExportError(f"parity check failed: max |onnx - torch| = {diff:.3g} > {PARITY_TOLERANCE}")

    os.replace(tmp, model_dir / ARTIFACT)
    os.replace(tok_tmp, tok_dir / TOKENIZER_FILE)
    target = model_dir / ARTIFACT
    report = EmbeddingExport(
        source=str(source),
        source_fingerprint=fingerprint,
        pooling=pooling,
        normalize=normalize,
        dim=dim,
        max_length=max_length,
        opset=opset,
        onnx_sha256=sha256_file(target),
        onnx_bytes=target.stat().st_size,
        max_abs_diff=diff,
        parity_texts=len(PARITY_TEXTS),
        seconds=round(time.monotonic() - started, 2),
        model=name,
        languages=langs,
    )
    manifest = json.dumps(asdict(report), indent=2)
    for d in (model_dir, tok_dir):
        atomic_write_text(d / MANIFEST_FILE, manifest + "\n")
    progress(f"wrote {target} ({report.onnx_bytes / 1e6:.1f} MB), parity max diff {diff:.2e}")
    return report


def _current(model_dir: Path, tok_dir: Path, fingerprint: str, opset: int) -> dict | None:
    """The existing manifest when it matches the source and the files are intact."""
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    target = model_dir / ARTIFACT
    if (
        manifest.get("source_fingerprint") != fingerprint
        or manifest.get("opset") != opset
        or not (tok_dir / TOKENIZER_FILE).is_file()
        or not (tok_dir / MANIFEST_FILE).is_file()
        or not target.is_file()
        or target.stat().st_size != manifest.get("onnx_bytes")
    ):
        return None
    known = {f for f in EmbeddingExport.__dataclass_fields__ if f not in ("skipped", "model", "languages")}
    return {k: v for k, v in manifest.items() if k in known}


def _parity(wrapped, onnx_path: Path, tokenizer_path: Path, max_length: int) -> tuple[float, int]:
    """Max absolute difference between ONNX Runtime and PyTorch on the parity texts."""
    import torch

    from qmd_triton.runtime.onnx import make_session

    encoder = TextEncoder(tokenizer_path, max_length, buckets="")
    ids, mask = encoder.encode(list(PARITY_TEXTS))
    session = make_session(onnx_path)
    got = session.run([EMBEDDING], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0]
    with torch.no_grad():
        want = wrapped(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return float(np.abs(got - want).max()), int(got.shape[1])
