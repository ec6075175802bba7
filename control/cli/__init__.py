"""``qmdctl``: the control plane of qmd-triton.

Data goes to stdout, messages and progress to stderr. Every known failure is one
``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import __version__
from .common import QmdGroup, State
from .bench import bench, soak_cmd
from .embed import embed
from .evaluate import evaluate
from .export import export
from .index import collection, update_cmd
from .models import models
from .search import get, ls, multi_get, query, search, vsearch
from .serve import down, exporter, status, up
from .tune import tune
from .validate import placement, validate


@click.group(cls=QmdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qmdctl")
@click.option("--home", envvar="QMD_HOME", show_envvar=True, type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory: config, index, run state. [default: ~/.local/share/qmd-triton]")
@click.option("--model-repository", envvar="QMD_MODEL_REPOSITORY", show_envvar=True, type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Triton model repository. [default: the project's model_repository/]")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, model_repository: Path | None, quiet: bool) -> None:
    """Search markdown notes with BM25, vectors, query expansion and reranking, served by Triton."""
    ctx.obj = State(home, model_repository, quiet)


for command in (up, down, status, embed, export, collection, update_cmd, search, vsearch, query, get, multi_get, ls, evaluate, validate, models, exporter, placement, bench, tune, soak_cmd):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="qmdctl")
