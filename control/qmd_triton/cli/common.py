"""What every qmdctl command shares: settings, option bundles, error mapping, progress and output."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from qmd_triton.errors import QmdError
from qmd_triton.index.collections import CollectionConfig
from qmd_triton.index.config import IndexConfig, index_config
from qmd_triton.index.factory import exists, open_index
from qmd_triton.index.interface import Index
from qmd_triton.settings import TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT, Settings

PERIODIC_S = 10.0  # off a terminal, a counted task reports a line this often


class QmdGroup(click.Group):
    """Maps known failures (``QmdError``) to one ``Error: ...`` line and exit 1."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            check_argument(arg)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QmdError as e:
            raise click.ClickException(str(e)) from None


def check_argument(arg: str) -> None:
    """Command-line arguments must be UTF-8 text: Python keeps other bytes as lone surrogates, which no
    index, file name or request can carry."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = arg.encode("utf-8", "surrogateescape")
        shown = raw.decode("utf-8", "backslashreplace")
        offset = len(arg[: e.start].encode("utf-8", "surrogateescape"))
        raise click.ClickException(f"argument '{shown}' is not valid UTF-8 (byte 0x{raw[offset]:02x} at offset "
                                   f"{offset}); qmdctl takes UTF-8 text") from None


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

    def warn(self, message: str) -> None:
        """Warnings go to stderr even with ``-q``."""
        click.echo(f"Warning: {message}", err=True)

    def counter(self, label: str) -> CountReporter:
        """A ``(done, total)`` callback: a bar on a terminal, a line every few seconds elsewhere."""
        return CountReporter(label, self.quiet)


class CountReporter:
    """Renders counted progress on stderr; use as a context manager so a bar is closed."""

    def __init__(self, label: str, quiet: bool, every_s: float = PERIODIC_S) -> None:
        self.label, self.quiet, self.every_s = label, quiet, every_s
        self.tty = sys.stderr.isatty()
        self._bar: Any = None
        self._done = 0
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.quiet or not total:
            return
        if self.tty:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True,
                                              show_eta=True)
                self._bar.__enter__()
            self._bar.update(done - self._done)
        else:
            now = time.monotonic()
            if done == 0 and self._last == 0.0:
                click.echo(f"{self.label}: 0/{total}", err=True)
                self._last = now
            elif now - self._last >= self.every_s or done >= total:
                rate = done / (now - self._started) if now > self._started else 0.0
                eta = f", about {(total - done) / rate:.0f}s left" if rate and done < total else ""
                click.echo(f"{self.label}: {done}/{total} ({done / total:.0%}, {rate:.1f}/s{eta})", err=True)
                self._last = now
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> CountReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


pass_state = click.make_pass_decorator(State)


def collections_of(settings: Settings) -> CollectionConfig:
    return CollectionConfig(settings.config_file)


def index_of(settings: Settings, progress: Callable[[str], None] | None = None) -> IndexConfig:
    """The home's index configuration; for the milvus backend without a uri, its Milvus Lite server is
    started when it is not running (as `vsearch` starts Triton)."""
    config = index_config(settings.home)
    if config.local:
        from qmd_triton.serving import milvus_lite

        milvus_lite.ensure_running(config, progress or (lambda m: click.echo(m, err=True)))
    return config


def open_home_index(settings: Settings, create: bool = False) -> Index:
    """The home's index on its backend (``[index]`` of config.toml)."""
    return open_index(index_of(settings), create=create)


def index_exists(settings: Settings) -> bool:
    return exists(index_of(settings))


def server_options(f: Callable) -> Callable:
    """``--host``, ``--http-port``, ``--grpc-port``, ``--metrics-port``, each with a QMD_* variable."""
    options = [
        click.option("--host", envvar="QMD_HOST", show_envvar=True, default=None,
                     help="Address the server binds to. [default: 127.0.0.1]"),
        click.option("--http-port", envvar="QMD_HTTP_PORT", show_envvar=True, type=int, default=None,
                     help=f"HTTP port. [default: {TRITON_HTTP_PORT}]"),
        click.option("--grpc-port", envvar="QMD_GRPC_PORT", show_envvar=True, type=int, default=None,
                     help=f"gRPC port. [default: {TRITON_GRPC_PORT}]"),
        click.option("--metrics-port", envvar="QMD_METRICS_PORT", show_envvar=True, type=int, default=None,
                     help=f"Metrics port. [default: {TRITON_METRICS_PORT}]"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def protocol_option(f: Callable, default: str = "http") -> Callable:
    return click.option(
        "--protocol",
        envvar="QMD_PROTOCOL", show_envvar=True,
        type=click.Choice(["http", "grpc"]),
        default=None,
        help=f"Triton protocol. [default: {default}]",
    )(f)


def grpc_protocol_option(f: Callable) -> Callable:
    """``--protocol`` for perf_analyzer runs, whose gRPC client costs the cores least."""
    return protocol_option(f, default="grpc")


def server_settings(state: State, kwargs: dict[str, Any]) -> Settings:
    keys = ("host", "http_port", "grpc_port", "metrics_port", "protocol")
    return state.settings(**{k: kwargs.pop(k, None) for k in keys})


def emit_json(data: Any, indent: int | None = 2) -> None:
    click.echo(json.dumps(data, indent=indent, ensure_ascii=False, default=str))
