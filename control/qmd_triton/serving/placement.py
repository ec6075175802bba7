"""Multi-GPU placement: the GPU configs (``configs/gpu.pbtxt``) spread over N GPUs.

``qmd_embed_model`` and ``qmd_rerank_model`` get one instance group per GPU (``count``
instances pinned to it); ``qmd_expand``'s vLLM engine gets ``tensor_parallel_size``
GPUs. ``qmdctl validate --target gpu --gpus N`` checks the result.

Example:
    >>> place(Path("model_repository"), gpus=4, per_gpu={"qmd_embed_model": 2}, tensor_parallel=2)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from qmd_triton.errors import InputError
from qmd_triton.model_config import leading_comments, parse_config

GPU_CONFIG = Path("configs") / "gpu.pbtxt"
GPU_MODELS = ("qmd_embed_model", "qmd_rerank_model")
PER_GPU = {"qmd_embed_model": 1, "qmd_rerank_model": 1}


def _write(path: Path, cfg, header: str) -> None:
    from google.protobuf import text_format

    path.write_text(header + text_format.MessageToString(cfg))


def place(repo: Path, gpus: int, per_gpu: Mapping[str, int] | None = None, tensor_parallel: int = 1) -> list[Path]:
    """Rewrites the GPU configs for ``gpus`` GPUs; returns the files written."""
    from tritonclient.grpc import model_config_pb2

    if gpus < 1:
        raise InputError(f"--gpus must be at least 1, got {gpus}")
    if tensor_parallel < 1 or tensor_parallel > gpus or tensor_parallel & (tensor_parallel - 1):
        raise InputError(f"tensor parallel size must be a power of two between 1 and {gpus}, got {tensor_parallel}")
    counts = {**PER_GPU, **(per_gpu or {})}
    written = []
    for model in GPU_MODELS:
        path = repo / model / GPU_CONFIG
        if not path.is_file():
            raise InputError(f"{path} does not exist: this repository has no GPU config for {model}")
        cfg = parse_config(path)
        del cfg.instance_group[:]
        for gpu in range(gpus):
            cfg.instance_group.add(name=f"{model}_gpu{gpu}", count=counts[model],
                                   kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, gpus=[gpu])
        _write(path, cfg, leading_comments(path))
        written.append(path)
    expand = repo / "qmd_expand" / GPU_CONFIG
    if expand.is_file():
        cfg = parse_config(expand)
        cfg.parameters["tensor_parallel_size"].string_value = str(tensor_parallel)
        _write(expand, cfg, leading_comments(expand))
        written.append(expand)
    return written


def check_placement(cfg, gpus: int) -> list[tuple[str, str]]:
    """(field, message) problems of one config against a GPU count."""
    out = []
    for g in cfg.instance_group:
        bad = [i for i in g.gpus if i < 0 or i >= gpus]
        if bad:
            out.append(("instance_group",
                        f"{g.name or 'group'} uses GPU {bad[0]}, but there are {gpus} (0-{gpus - 1})"))
    if "tensor_parallel_size" in cfg.parameters:
        raw = cfg.parameters["tensor_parallel_size"].string_value
        try:
            tp = int(raw)
        except ValueError:
            return out + [("parameters.tensor_parallel_size", f"must be an integer, got {raw!r}")]
        if tp < 1 or tp > gpus:
            out.append(("parameters.tensor_parallel_size", f"{tp} GPUs asked for, {gpus} available"))
    return out
