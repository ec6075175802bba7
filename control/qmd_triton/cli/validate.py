"""``qmdctl validate``: check a model repository before a server loads it."""

from __future__ import annotations

from pathlib import Path

import click

from qmd_triton.cli.common import State, emit_json, pass_state
from qmd_triton.serving.validate import TARGETS, validate_repository


@click.command("validate")
@click.argument("repo", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", type=click.Choice(TARGETS), default="local", show_default=True,
              help="Where the repository will be served: local (CPU, pytriton) or gpu (NGC image).")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="With --target gpu: check GPU indices and tensor parallel sizes against this many GPUs.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@pass_state
def validate(state: State, repo: Path | None, target: str, gpus: int | None, as_json: bool) -> None:
    """Check every config.pbtxt, artifact, ONNX file, ensemble and python model of REPO.

    Prints one line per problem, `path:field: message`, and exits with status 1 when
    there is any. REPO defaults to the configured model repository.
    """
    root = repo or state.settings().model_repository
    problems = validate_repository(root, target, gpus)
    if as_json:
        emit_json({"repository": str(root), "target": target, "problems": [p.as_dict() for p in problems]})
    else:
        for p in problems:
            click.echo(str(p))
        state.progress(f"{root}: {len(problems)} problem(s) for the {target} target")
    if problems:
        raise SystemExit(1)


@click.command("placement")
@click.option("--gpus", type=click.IntRange(min=1), required=True, help="GPUs on each server.")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Repository whose configs/gpu.pbtxt files to rewrite. [default: the configured one]")
@click.option("--embed-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="qmd_embed_model instances on each GPU.")
@click.option("--rerank-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="qmd_rerank_model instances on each GPU.")
@click.option("--expand-tp", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tensor parallel size of the vLLM expansion engine (a power of two <= --gpus).")
@pass_state
def placement(state: State, gpus: int, repo: Path | None, embed_per_gpu: int, rerank_per_gpu: int,
              expand_tp: int) -> None:
    """Spread the GPU configs over GPUS GPUs: instance groups per GPU and vLLM's tensor parallelism.

    Rewrites configs/gpu.pbtxt of qmd_embed_model, qmd_rerank_model and qmd_expand, then
    checks the repository with `validate --target gpu --gpus GPUS`.
    """
    from qmd_triton.serving.placement import place

    root = repo or state.settings().model_repository
    for path in place(root, gpus, {"qmd_embed_model": embed_per_gpu, "qmd_rerank_model": rerank_per_gpu}, expand_tp):
        click.echo(str(path))
    problems = validate_repository(root, "gpu", gpus)
    for p in problems:
        click.echo(f"Error: {p}", err=True)
    if problems:
        raise SystemExit(1)

