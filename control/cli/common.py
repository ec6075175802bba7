"""What every qmdctl command shares: settings, option bundles, error mapping, output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import QmdError
from ..settings import Settings


class QmdGroup(click.Group):
    """Maps known failures (``QmdError``) to one ``Error: ...`` line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QmdError as e:
            raise click.ClickException(str(e)) from None


class State:
    """Per-invocation context: global flags and lazily resolved settings."""

    def __init__(self, home: Path | None, repo: Path | None, quiet: bool) -> None:
        self.home, self.repo, self.quiet = home, repo, quiet

    def settings(self, **overrides: Any) -> Settings:
        return Settings.load(self.home, model_repository=self.repo, **overrides)

    def progress(self, message: str) -> None:
        """Messages and progress go to stderr; ``-q`` silences them."""
        if not self.quiet:
            click.echo(message, err=True)


pass_state = click.make_pass_decorator(State)


def server_options(f: Callable) -> Callable:
    """``--host``, ``--http-port``, ``--grpc-port``, ``--metrics-port``, each with a QMD_* variable."""
    options = [
        click.option("--host", envvar="QMD_HOST", show_envvar=True, default=None, help="Address the server binds to. [default: 127.0.0.1]"),
        click.option("--http-port", envvar="QMD_HTTP_PORT", show_envvar=True, type=int, default=None, help="HTTP port. [default: 8000]"),
        click.option("--grpc-port", envvar="QMD_GRPC_PORT", show_envvar=True, type=int, default=None, help="gRPC port. [default: 8001]"),
        click.option(
            "--metrics-port", envvar="QMD_METRICS_PORT", show_envvar=True, type=int, default=None, help="Metrics port. [default: 8002]"
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def protocol_option(f: Callable) -> Callable:
    return click.option(
        "--protocol",
        envvar="QMD_PROTOCOL", show_envvar=True,
        type=click.Choice(["http", "grpc"]),
        default=None,
        help="Triton protocol. [default: http]",
    )(f)


def server_settings(state: State, kwargs: dict[str, Any]) -> Settings:
    keys = ("host", "http_port", "grpc_port", "metrics_port", "protocol")
    return state.settings(**{k: kwargs.pop(k, None) for k in keys})


def emit_json(data: Any, indent: int | None = 2) -> None:
    click.echo(json.dumps(data, indent=indent, ensure_ascii=False, default=str))

