"""``qmdctl api`` (the HTTP gateway) and ``qmdctl mcp`` (the MCP server): the doors for programs and agents."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from qmd_triton.cli.common import State, pass_state
from qmd_triton.serving.http import TOKEN_ENV, Guard
from qmd_triton.settings import Settings


def door_options(default_port: int, env: str) -> Callable:
    """The door's own address, the Triton server behind it, and who may call it."""

    def wrap(f: Callable) -> Callable:
        options = [
            click.option("--host", envvar=f"QMD_{env}_HOST", show_envvar=True, default="127.0.0.1", show_default=True,
                         help=f"Address to listen on. Anything but loopback needs {TOKEN_ENV}."),
            click.option("--port", envvar=f"QMD_{env}_PORT", show_envvar=True, type=int, default=default_port,
                         show_default=True, help="Port to listen on."),
            click.option("--triton-url", envvar="QMD_TRITON_URL", show_envvar=True, default=None,
                         help="Triton server (host:port of its HTTP, or gRPC with --protocol grpc) to use; it is "
                              "not started. [default: the local server, started when none answers]"),
            click.option("--protocol", envvar="QMD_PROTOCOL", show_envvar=True, type=click.Choice(["http", "grpc"]),
                         default=None, help="Protocol to Triton. [default: http]"),
            click.option("--http-port", envvar="QMD_HTTP_PORT", show_envvar=True, type=int, default=None,
                         help="The local server's HTTP port. [default: 8000]"),
            click.option("--grpc-port", envvar="QMD_GRPC_PORT", show_envvar=True, type=int, default=None,
                         help="The local server's gRPC port. [default: 8001]"),
            click.option("--metrics-port", envvar="QMD_METRICS_PORT", show_envvar=True, type=int, default=None,
                         help="The local server's metrics port. [default: 8002]"),
            click.option("--allowed-host", "allowed_hosts", multiple=True, envvar=f"QMD_{env}_ALLOWED_HOSTS",
                         show_envvar=True, help="A Host header to accept (repeatable; host:* for any port). "
                                                "[default: loopback names on loopback, any elsewhere]"),
            click.option("--allowed-origin", "allowed_origins", multiple=True, envvar=f"QMD_{env}_ALLOWED_ORIGINS",
                         show_envvar=True, help="A browser Origin to accept (repeatable). [default: loopback "
                                                "pages on loopback, none elsewhere]"),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _setup(state: State, kwargs: dict[str, Any]) -> tuple[Settings, Guard, Any]:
    """Settings, the guard (refusing a non-loopback bind without a token) and the service."""
    from qmd_triton.serving.service import QmdService

    settings = state.settings(**{k: kwargs.pop(k) for k in ("http_port", "grpc_port", "metrics_port", "protocol")})
    guard = Guard.for_bind(kwargs["host"], kwargs["port"], os.environ.get(TOKEN_ENV), kwargs.pop("allowed_hosts"),
                           kwargs.pop("allowed_origins"))
    service = QmdService(settings, triton_url=kwargs.pop("triton_url"), progress=state.progress, warn=state.warn)
    return settings, guard, service


def _serve(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                  timeout_graceful_shutdown=10)).run()


@click.command()
@door_options(18765, "API")
@click.option("--max-texts", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Texts one /embed, /v1/embeddings or /rerank request may carry (413 beyond).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="Largest request body in MiB (413 beyond).")
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
    if service.autostart:
        ensure_running(settings, progress=state.progress, warn=state.warn)
    app = create_app(service, guard, max_body_bytes=int(max_body_mb * 1024 * 1024), max_texts=max_texts)
    state.progress(f"qmd gateway on http://{kwargs['host']}:{kwargs['port']} (Triton {service.url}, "
                   f"{'token required' if guard.token else 'no token'}); docs at /docs")
    _serve(app, kwargs["host"], kwargs["port"])


@click.command()
@click.option("--http", "over_http", is_flag=True,
              help="Serve streamable HTTP at /mcp (and /health, /metrics) instead of stdio.")
@door_options(8181, "MCP")
@pass_state
def mcp(state: State, over_http: bool, **kwargs: Any) -> None:
    """Serve qmd to agents over MCP: tools query, search, vsearch, get, multi_get, status; documents as resources.

    Over stdio by default (an agent starts `qmdctl mcp` itself); with --http, streamable HTTP at
    http://HOST:PORT/mcp, Host and Origin checked, and 'Authorization: Bearer $QMD_API_TOKEN' required when the
    token is set (it must be set to listen beyond loopback). Starts the local Triton server at the first search
    when none answers.
    """
    import anyio

    from qmd_triton.mcp.server import MCP_PATH, http_app, serve_stdio

    _, guard, service = _setup(state, kwargs)
    if not over_http:
        anyio.run(serve_stdio, service)
        return
    app = http_app(service, guard, kwargs["host"])
    state.progress(f"qmd MCP server on http://{kwargs['host']}:{kwargs['port']}{MCP_PATH} (Triton {service.url}, "
                   f"{'token required' if guard.token else 'no token'})")
    _serve(app, kwargs["host"], kwargs["port"])
