"""``qmdctl validate``: check a model repository before a server loads it."""

from __future__ import annotations

from pathlib import Path

import click

from ..validate import TARGETS, validate_repository
from .common import State, emit_json, pass_state


@click.command("validate")
@click.argument("repo", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", type=click.Choice(TARGETS), default="local", show_default=True,
              help="Where the repository will be served: local (CPU, pytriton) or gpu (NGC image).")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@pass_state
def validate(state: State, repo: Path | None, target: str, as_json: bool) -> None:
    """Check every config.pbtxt, artifact, ONNX file, ensemble and python model of REPO.

    Prints one line per problem, `path:field: message`, and exits with status 1 when
    there is any. REPO defaults to the configured model repository.
    """
    root = repo or state.settings().model_repository
    problems = validate_repository(root, target)
    if as_json:
        emit_json({"repository": str(root), "target": target, "problems": [p.as_dict() for p in problems]})
    else:
        for p in problems:
            click.echo(str(p))
        state.progress(f"{root}: {len(problems)} problem(s) for the {target} target")
    if problems:
        raise SystemExit(1)
