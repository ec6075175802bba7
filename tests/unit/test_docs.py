"""The docs stay true: the CLI reference is the commands' own help, and every command has help."""

from pathlib import Path

import click
import pytest

from qmd_triton.cli import cli
from qmd_triton.cli.gendocs import iter_commands, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_cli_reference_matches_the_commands_help():
    assert (DOCS / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: python -m qmd_triton.cli.gendocs > docs/cli.md"
    )


@pytest.mark.parametrize("path, command", [(p, c) for p, c, _ in iter_commands(cli)], ids=lambda v: str(v))
def test_every_command_has_help_text_and_a_docs_section(path: str, command: click.Command):
    assert command.help and len(command.help.strip()) > 10
    assert f"## `{path}`" in (DOCS / "cli.md").read_text()
