"""Renders docs/cli.md from the commands' own help, so the reference cannot drift.

Run ``python -m qmd_triton.cli.gendocs > docs/cli.md`` after changing a command;
``tests/unit/test_docs.py`` fails while the file differs from this output.
"""

from __future__ import annotations

import click

from qmd_triton.cli import cli

INTRO = """# qmdctl reference

Generated from the commands' `--help` by `python -m qmd_triton.cli.gendocs > docs/cli.md`.

Every option that names a `QMD_*` variable in its help also reads that variable; the order is
flag > environment variable > `$QMD_HOME/config.toml` > default. Data goes to stdout; messages and
progress go to stderr (`-q` silences them). A known failure prints one `Error: ...` line and exits 1.
"""


def iter_commands(group: click.Group, prefix: str = "qmdctl", parent: click.Context | None = None):
    settings = {**cli.context_settings, "terminal_width": 100}
    ctx = click.Context(group, info_name=prefix.split()[-1], parent=parent, **settings)
    yield prefix, group, ctx
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from iter_commands(command, f"{prefix} {name}", ctx)
        elif command is not None:
            yield f"{prefix} {name}", command, click.Context(command, info_name=name, parent=ctx, **settings)


def render() -> str:
    parts = [INTRO]
    for path, command, ctx in iter_commands(cli):
        parts.append(f"## `{path}`\n\n```text\n{command.get_help(ctx).rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
