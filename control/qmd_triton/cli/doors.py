"""``qmdctl api`` (the HTTP gateway) and ``qmdctl mcp`` (the MCP server): the doors for programs and agents."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from qmd_triton.cli.common import State, pass_state
from qmd_triton.errors import ServerError
from qmd_triton.serving.http import TOKEN_ENV, Guard
from qmd_triton.settings import (
    API_MAX_BODY_BYTES,
    API_MAX_TEXTS,
    API_PORT,
    MCP_HTTP_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    Settings,
)
from qmd_triton.system.net import url_host


def door_options(default_port: int, env: str, aliases: tuple[str, ...] = ()) -> Callable:
    """The door's own address, the Triton server behind it, and who may call it. ``aliases``: other clients'
    names for the host and allow-list variables (tobi/qmd's ``QMD_HOST``, ``QMD_ALLOWED_ORIGINS``,
    ``QMD_ALLOWED_HOSTS``), read after this project's own."""

    def names(suffix: str) -> list[str]:
        return [f"QMD_{env}_{suffix}", *(a for a in aliases if a == f"QMD_{suffix}")]

    def wrap(f: Callable) -> Callable:
        options = [
            click.option("--host", envvar=names("HOST"), show_envvar=True, default="127.0.0.1", show_default=True,
                         help=f"Address to listen on. Anything but loopback needs {TOKEN_ENV}."),
            click.option("--port", envvar=f"QMD_{env}_PORT", show_envvar=True, type=int, default=default_port,
                         show_default=True, help="Port to listen on."),
            click.option("--triton-url", envvar="QMD_TRITON_URL", show_envvar=True, default=None,
                         help="Triton server (host:port of its HTTP, or gRPC with --protocol grpc) to use; it is "
                              "not started. [default: the local server, started when none answers]"),
            click.option("--protocol", envvar="QMD_PROTOCOL", show_envvar=True, type=click.Choice(["http", "grpc"]),
                         default=None, help="Protocol to Triton. [default: http]"),
            click.option("--http-port", envvar="QMD_HTTP_PORT", show_envvar=True, type=int, default=None,
                         help=f"The local server's HTTP port. [default: {TRITON_HTTP_PORT}]"),
            click.option("--grpc-port", envvar="QMD_GRPC_PORT", show_envvar=True, type=int, default=None,
                         help=f"The local server's gRPC port. [default: {TRITON_GRPC_PORT}]"),
            click.option("--metrics-port", envvar="QMD_METRICS_PORT", show_envvar=True, type=int, default=None,
                         help=f"The local server's metrics port. [default: {TRITON_METRICS_PORT}]"),
            click.option("--allowed-host", "allowed_hosts", multiple=True, envvar=names("ALLOWED_HOSTS"),
                         show_envvar=True, help="A Host header to accept (repeatable; host:* for any port; the "
                                                "variable: comma- or space-separated). [default: loopback names on "
                                                "loopback, any elsewhere]"),
            click.option("--allowed-origin", "allowed_origins", multiple=True, envvar=names("ALLOWED_ORIGINS"),
                         show_envvar=True, help="A browser Origin to accept (repeatable; the variable: comma- or "
                                                "space-separated). [default: loopback pages on loopback, none "
                                                "elsewhere]"),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _setup(state: State, kwargs: dict[str, Any]) -> tuple[Settings, Guard, Any]:
    """Settings, the guard (refusing a non-loopback bind without a token) and the service."""
    from qmd_triton.serving.service import QmdService

    settings = state.settings(**{k: kwargs.pop(k) for k in ("http_port", "grpc_port", "metrics_port", "protocol")})
    guard = Guard.for_bind(kwargs["host"], kwargs["port"], os.environ.get(TOKEN_ENV),
                           _split(kwargs.pop("allowed_hosts")), _split(kwargs.pop("allowed_origins")))
    service = QmdService(settings, triton_url=kwargs.pop("triton_url"), progress=state.progress, warn=state.warn)
    return settings, guard, service


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated options, or a variable's comma-separated list (tobi/qmd's form)."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _check_port(host: str, port: int) -> None:
    """A busy port is one error line before anything claims to be serving."""
    from qmd_triton.system.net import port_in_use

    if port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use; pick another with --port")


def _serve(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                  timeout_graceful_shutdown=10)).run()


@click.command()
@door_options(API_PORT, "API")
@click.option("--max-texts", type=click.IntRange(min=1), default=API_MAX_TEXTS, show_default=True,
              help="Texts one /embed, /v1/embeddings or /rerank request may carry (413 beyond).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=API_MAX_BODY_BYTES / (1024 * 1024),
              show_default=True, help="Largest request body in MiB (413 beyond).")
@pass_state
def api(state: State, max_texts: int, max_body_mb: float, **kwargs: Any) -> None:
    """Serve the HTTP gateway: QMD-Python's JSON endpoints over the Triton models.

    POST /embed /search /vsearch /query /get /multi_get, TEI's /rerank, OpenAI's /v1/embeddings; GET /health
    /status /metrics, OpenAPI docs at /docs. Callers send 'Authorization: Bearer $QMD_API_TOKEN' when the
    token is set; it must be set to listen beyond loopback. Starts the local Triton server when none answers.
    """
    from qmd_triton.api.app import create_app
    from qmd_triton.serving.server import ensure_running

    settings, guard, service = _setup(state, kwargs)
    _check_port(kwargs["host"], kwargs["port"])
    if service.autostart:
        ensure_running(settings, progress=state.progress, warn=state.warn)
    app = create_app(service, guard, max_body_bytes=int(max_body_mb * 1024 * 1024), max_texts=max_texts)
    state.progress(f"qmd gateway on http://{url_host(kwargs['host'])}:{kwargs['port']} (Triton {service.url}, "
                   f"{'token required' if guard.token else 'no token'}); docs at /docs")
    _serve(app, kwargs["host"], kwargs["port"])


@click.command()
@click.argument("action", required=False, type=click.Choice(["stop"]))
@click.option("--http", "over_http", is_flag=True,
              help="Serve streamable HTTP at /mcp (and /query, /health, /metrics) instead of stdio.")
@click.option("--daemon", is_flag=True,
              help="With --http: run in the background (log in $QMD_HOME/run/mcp.log); `qmdctl mcp stop` stops it.")
@door_options(MCP_HTTP_PORT, "MCP", aliases=("QMD_HOST", "QMD_ALLOWED_ORIGINS", "QMD_ALLOWED_HOSTS"))
@pass_state
def mcp(state: State, action: str | None, over_http: bool, daemon: bool, **kwargs: Any) -> None:
    """Serve qmd to agents over MCP: tools query, get, multi_get, status (tobi/qmd's), search, vsearch;
    documents as resources. `qmdctl mcp stop` stops a server started with --daemon.

    Over stdio by default (an agent starts `qmdctl mcp` itself); with --http, streamable HTTP at
    http://HOST:PORT/mcp, Host and Origin checked, and 'Authorization: Bearer $QMD_API_TOKEN' required when the
    token is set (it must be set to listen beyond loopback). tobi/qmd's QMD_HOST, QMD_ALLOWED_ORIGINS and
    QMD_ALLOWED_HOSTS are read too. Starts the local Triton server at the first search when none answers.
    """
    from qmd_triton.serving import daemon as detached

    if action == "stop":
        if detached.stop_detached(state.settings(), "mcp", progress=state.progress) is None:
            state.progress("no MCP server started with --daemon runs for this home")
        return
    if daemon and not over_http:
        raise click.UsageError("--daemon runs the HTTP server: add --http")
    import anyio

    from qmd_triton.mcp.server import MCP_PATH, http_app, serve_stdio

    child = _daemon_args(kwargs) if daemon else []
    _, guard, service = _setup(state, kwargs)
    if not over_http:
        anyio.run(serve_stdio, service)
        return
    host, port = kwargs["host"], kwargs["port"]
    _check_port(host, port)
    url = f"http://{url_host(host)}:{port}{MCP_PATH}"
    if daemon:
        from qmd_triton.system.net import http_ok

        owned = detached.start_detached(state.settings(), "mcp", child,
                                        ready=lambda: http_ok(f"http://{url_host(host)}:{port}/health"))
        click.echo(f"qmd MCP server on {url} (pid {owned.pid}); log {detached.log_path(state.settings(), 'mcp')}")
        return
    app = http_app(service, guard, host)
    state.progress(f"qmd MCP server on {url} (Triton {service.url}, "
                   f"{'token required' if guard.token else 'no token'})")
    _serve(app, host, port)


def _daemon_args(kwargs: dict[str, Any]) -> list[str]:
    """The foreground command a ``--daemon`` start runs in the background, with the same options."""
    args = ["mcp", "--http", "--host", kwargs["host"], "--port", str(kwargs["port"])]
    for name in ("triton_url", "protocol", "http_port", "grpc_port", "metrics_port"):
        if kwargs.get(name) is not None:
            args += [f"--{name.replace('_', '-')}", str(kwargs[name])]
    for value in _split(kwargs.get("allowed_hosts") or ()):
        args += ["--allowed-host", value]
    for value in _split(kwargs.get("allowed_origins") or ()):
        args += ["--allowed-origin", value]
    return args
