"""ONNX -> TensorRT plan for a token model (``qmd_embed_model``, ``qmd_rerank_model``).

Plans are tied to the TensorRT version and GPU they are built with, so production
builds them inside the serving image (the compose file's one-shot ``export`` service).
One optimization profile per length bucket that the GPU target pads to (``plan_shape``:
``qmd_tokenize``'s buckets for the embedder, ``qmd_retrieve``'s rerank buckets for the
reranker, each up to its longest sequence): profile *i* covers sequence lengths from
bucket *i-1* + 1 to bucket *i*, batch 1 to the GPU config's ``max_batch_size``, optimum
at half the batch and the bucket's length. The target repository's GPU config
(``configs/gpu.pbtxt``, loaded with ``--model-config-name=gpu``) is switched to
``platform: "tensorrt_plan"`` on ``KIND_GPU``, without ragged batching.

Example:
    >>> export_tensorrt(Path("model_repository"), Path("/models"), "qmd_embed_model", fp16=True)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qmd_triton.contracts import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS, TOKENIZE
from qmd_triton.errors import ArtifactMissing, ExportError
from qmd_triton.model_config import parse_config
from qmd_triton.progress import Progress, silent

PLAN = "model.plan"
TOKEN_MODELS = ("qmd_embed_model", "qmd_rerank_model")
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)

@dataclass(frozen=True)
class PlanExport:
    model: str
    plan: str
    plan_bytes: int
    profiles: list[tuple[int, int]]  # (min length, max length) per profile
    max_batch_size: int
    fp16: bool
    int8: bool
    seconds: float


def profiles_for(buckets: Sequence[int]) -> list[tuple[int, int]]:
    """(min, max) sequence lengths per optimization profile, one per bucket."""
    out, low = [], 1
    for b in sorted(set(buckets)):
        out.append((low, b))
        low = b + 1
    return out


def _target_config(repo: Path, model: str):
    """The config a GPU server loads for ``model``: ``configs/gpu.pbtxt`` where there is one."""
    gpu = repo / model / "configs" / "gpu.pbtxt"
    return parse_config(gpu if gpu.is_file() else repo / model / "config.pbtxt")


def plan_shape(repo: Path, model: str) -> tuple[int, tuple[int, ...]]:
    """(max batch, length buckets) that a plan must cover on the GPU target.

    The batch is the GPU config's ``max_batch_size``. The lengths are the buckets the
    GPU target pads to, up to the longest sequence it can send: ``qmd_tokenize``'s
    ``length_buckets`` and ``max_length`` (capped by the exported model's limit) for
    the embedder; ``qmd_retrieve``'s ``rerank_length_buckets`` and ``rerank_max_length``
    for the reranker. The longest sequence is always a bucket, so no input falls
    outside every optimization profile.
    """
    from qmd_triton.text.tokenization import parse_buckets, read_manifest

    repo = Path(repo)
    max_batch = _target_config(repo, model).max_batch_size
    if model == "qmd_embed_model":
        cfg, owner = _target_config(repo, "qmd_tokenize"), "qmd_tokenize"
        spec = cfg.parameters["length_buckets"].string_value
        requested = int(cfg.parameters["max_length"].string_value or 0)
    else:
        cfg, owner = _target_config(repo, "qmd_retrieve"), model
        spec = cfg.parameters["rerank_length_buckets"].string_value
        requested = int(cfg.parameters["rerank_max_length"].string_value or 0)
    exported = int(read_manifest(repo / owner / "1").get("max_length") or 0)
    longest = min([v for v in (requested, exported) if v > 0] or [512])
    return max_batch, parse_buckets(spec if spec.strip() else list(DEFAULT_BUCKETS), longest)


def tensorrt_config(config_text: str, max_batch_size: int) -> str:
    """The config of a model switched to a TensorRT plan on GPUs (text format)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    cfg.backend = ""
    cfg.platform = "tensorrt_plan"
    cfg.max_batch_size = max_batch_size
    cfg.ClearField("parameters")
    cfg.ClearField("optimization")
    for t in cfg.input:
        t.allow_ragged_batch = False
    del cfg.instance_group[:]
    cfg.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU)
    header = "# TensorRT plan built by `qmdctl export --tensorrt` (one optimization profile per length bucket).\n"
    return header + text_format.MessageToString(cfg)


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ExportError(f"TensorRT is not installed here ({e}); build plans inside the NGC Triton image "
                          "(docker compose run export) where its TensorRT matches the server's") from None
    return trt


class _Calibrator:
    """INT8 entropy calibration from token batches (``[N, L]`` int64 per input name)."""

    def __init__(self, trt, batches: list[dict[str, np.ndarray]], cache: Path) -> None:
        import torch  # a CUDA tensor is the simplest device buffer here

        base = trt.IInt8EntropyCalibrator2

        class Calibrator(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.batches = iter(batches)
                self.keep: list = []

            def get_batch_size(self) -> int:
                return int(next(iter(batches[0].values())).shape[0])

            def get_batch(self, names):
                try:
                    batch = next(self.batches)
                except StopIteration:
                    return None
                self.keep = [torch.from_numpy(batch[n]).cuda() for n in names]
                return [int(t.data_ptr()) for t in self.keep]

            def read_calibration_cache(self):
                return cache.read_bytes() if cache.is_file() else None

            def write_calibration_cache(self, data) -> None:
                cache.write_bytes(bytes(data))

        self.instance = Calibrator()


def build_plan(onnx_path: Path, plan_path: Path, inputs: Sequence[str], max_batch_size: int,
               buckets: Sequence[int], *, fp16: bool = True, int8: bool = False,
               calibration: list[dict[str, np.ndarray]] | None = None,
               workspace_gb: float = 4.0) -> list[tuple[int, int]]:
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        if not calibration:
            raise ExportError("INT8 needs calibration batches (token ids of representative texts)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _Calibrator(trt, calibration, plan_path.with_suffix(".calib")).instance
    profiles = profiles_for(buckets)
    for low, high in profiles:
        profile = builder.create_optimization_profile()
        for name in inputs:
            profile.set_shape(name, (1, low), (max(1, max_batch_size // 2), high), (max_batch_size, high))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build a plan from {onnx_path}")
    plan_path.write_bytes(bytes(serialized))
    return profiles


def calibration_batches(repo: Path, model: str, batch: int = 8, length: int = 128) -> list[dict[str, np.ndarray]]:
    """INT8 calibration input: paragraphs of the project's own docs, tokenized as the server would."""
    from qmd_triton.settings import checkout_path
    from qmd_triton.text.tokenization import PairEncoder, TextEncoder

    docs = checkout_path("docs")
    if docs is None or not docs.is_dir():
        raise ExportError("INT8 calibration reads the project's docs/ folder: build INT8 plans from a checkout")
    texts = [p.strip() for f in sorted(docs.glob("*.md"))
             for p in f.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    out = []
    for i in range(0, len(texts) - batch + 1, batch):
        chunk = texts[i : i + batch]
        if model == "qmd_embed_model":
            encoder = TextEncoder.from_dir(repo / TOKENIZE.name / "1", max_length=length, buckets=[length])
            ids, mask = encoder.encode(chunk)
            out.append({INPUT_IDS: ids, ATTENTION_MASK: mask})
        else:
            enc = PairEncoder(repo / model / "1" / "tokenizer.json", max_length=length, buckets=[length])
            ids, mask, types = enc.encode("how does the search work", chunk)
            out.append({INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: types})
    return out


def export_tensorrt(source_repo: Path, target_repo: Path, model: str, *, fp16: bool = True, int8: bool = False,
                    buckets: Sequence[int] | None = None, progress: Progress = silent) -> PlanExport:
    """Builds ``target_repo/model/1/model.plan`` from the source repository's ONNX file and switches its config."""
    if model not in TOKEN_MODELS:
        raise ExportError(f"TensorRT plans are built for {', '.join(TOKEN_MODELS)}, not {model!r}")
    src = Path(source_repo) / model
    onnx_path = src / "1" / "model.onnx"
    if not onnx_path.is_file():
        raise ArtifactMissing(f"{onnx_path} is missing; run `qmdctl export` first")
    trt = _tensorrt()
    started = time.monotonic()
    cfg = parse_config(src / "config.pbtxt")
    inputs = [t.name for t in cfg.input]
    max_batch, target_buckets = plan_shape(Path(source_repo), model)
    buckets = target_buckets if buckets is None else buckets
    dst = Path(target_repo) / model
    (dst / "1").mkdir(parents=True, exist_ok=True)
    progress(f"building a TensorRT {trt.__version__} plan for {model} "
             f"({'fp16' if fp16 else 'fp32'}{' + int8' if int8 else ''}, buckets {list(buckets)})")
    tmp = dst / "1" / f".{PLAN}.tmp"
    calibration = calibration_batches(Path(source_repo), model) if int8 else None
    profiles = build_plan(onnx_path, tmp, inputs, max_batch, buckets, fp16=fp16, int8=int8,
                          calibration=calibration)
    tmp.replace(dst / "1" / PLAN)
    # The GPU target's config (`--model-config-name=gpu`); config.pbtxt only where the target has none.
    switched = tensorrt_config((src / "config.pbtxt").read_text(), max_batch)
    (dst / "configs").mkdir(exist_ok=True)
    (dst / "configs" / "gpu.pbtxt").write_text(switched)
    if not (dst / "config.pbtxt").is_file():
        (dst / "config.pbtxt").write_text(switched)
    if (src / "1" / "tokenizer.json").is_file():
        shutil.copy2(src / "1" / "tokenizer.json", dst / "1" / "tokenizer.json")
    plan = dst / "1" / PLAN
    progress(f"wrote {plan} ({plan.stat().st_size / 1e6:.1f} MB, {len(profiles)} profiles)")
    return PlanExport(model, str(plan), plan.stat().st_size, profiles, max_batch, fp16, int8,
                      round(time.monotonic() - started, 1))
