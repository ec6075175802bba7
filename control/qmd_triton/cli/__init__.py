"""``qmdctl``: the control plane of qmd-triton.

Data goes to stdout, messages and progress to stderr. Every known failure is one
``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from qmd_triton import __version__
from qmd_triton.cli.common import QmdGroup, State

# command -> "module:function"; a command's module is imported only when it runs (or for --help),
# so `qmdctl search` does not pay for the server, bench and export code.
COMMANDS = {
    "api": "doors:api",
    "bench": "bench:bench",
    "cleanup": "index:cleanup_cmd",
    "collection": "index:collection",
    "context": "index:context",
    "down": "serve:down",
    "embed": "embed:embed",
    "eval": "evaluate:evaluate_cmd",
    "export": "export:export",
    "get": "search:get",
    "health": "serve:health",
    "index": "index:index_group",
    "ls": "search:ls",
    "mcp": "doors:mcp",
    "metrics-exporter": "serve:metrics_exporter",
    "models": "models:models",
    "multi-get": "search:multi_get",
    "placement": "validate:placement",
    "query": "search:query",
    "search": "search:search",
    "soak": "bench:soak",
    "status": "serve:status",
    "supervise": "serve:supervise",
    "tune": "tune:tune",
    "up": "serve:up",
    "update": "index:update_cmd",
    "validate": "validate:validate",
    "vsearch": "search:vsearch",
    "watch": "index:watch_cmd",
}


class LazyGroup(QmdGroup):
    """The top-level group: commands are listed from :data:`COMMANDS` and imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"qmd_triton.cli.{module}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qmdctl")
@click.option("--home", envvar="QMD_HOME", show_envvar=True, type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Data directory: config, index, run state. [default: ~/.local/share/qmd-triton]")
@click.option("--model-repository", envvar="QMD_MODEL_REPOSITORY", show_envvar=True,
              type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Triton model repository. [default: model_repository/ of the checkout, or "
                   "$QMD_HOME/model_repository for an installed package]")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, model_repository: Path | None, quiet: bool) -> None:
    """Search markdown notes with BM25, vectors, query expansion and reranking, served by Triton."""
    ctx.obj = State(home, model_repository, quiet)


def main() -> None:
    cli(prog_name="qmdctl")
