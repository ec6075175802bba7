"""What both HTTP doors (the gateway, ``qmdctl api``, and the MCP endpoint, ``qmdctl mcp --http``) share: the
guard in front of every route (bearer token, Host and Origin), JSON errors with the right status, and their
Prometheus metrics.

One token scheme everywhere: callers send ``Authorization: Bearer <token>``; the token comes from the
``QMD_API_TOKEN`` environment variable (a Secret in Kubernetes, an env file with compose), the same one nginx
checks in front of Triton. A door bound to anything but loopback refuses to start without one.

Example:
    >>> guard = Guard.for_bind("0.0.0.0", 18765, token=os.environ.get("QMD_API_TOKEN"))
    >>> app = GuardMiddleware(app, guard, door="api")
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from qmd_triton.errors import (
    ConfigError,
    IndexMissing,
    InputError,
    NotFound,
    QmdError,
    RequestTimeout,
    ServerUnavailable,
)

TOKEN_ENV = "QMD_API_TOKEN"
MIN_TOKEN_CHARS = 16
# Characters a token may hold: it travels in a header and in nginx's configuration (openssl rand -hex 32 fits).
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
# Routes that answer without a token: probes and Prometheus on the private network. nginx routes neither.
OPEN_PATHS = frozenset({"/health", "/metrics"})
LOOPBACK_NAMES = ("localhost",)

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("qmd_http_requests", "HTTP requests answered by the qmd doors, by route and status",
                   ["door", "route", "status"], registry=REGISTRY)
LATENCY = Histogram("qmd_http_request_duration_seconds", "Time to answer an HTTP request of a qmd door",
                    ["door", "route"], registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
REFUSED = Counter("qmd_http_refused", "Requests refused by the guard, by reason",
                  ["door", "reason"], registry=REGISTRY)
TRITON_CALLS = Histogram("qmd_triton_call_duration_seconds", "Triton requests made by the qmd doors, by model",
                         ["model", "outcome"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ITEMS = Counter("qmd_gateway_items", "Texts embedded and pairs reranked through the doors", ["kind"],
                registry=REGISTRY)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> str | None:
    """A usable token (stripped), None when unset; one clear error for a token too short or with odd characters."""
    token = (token or "").strip()
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{TOKEN_ENV} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                          "(openssl rand -hex 32)")
    if not TOKEN_CHARS.match(token):
        raise ConfigError(f"{TOKEN_ENV} may hold only letters, digits and . _ ~ + / = - (openssl rand -hex 32)")
    return token


def _matches(value: str, patterns: Iterable[str]) -> bool:
    """Exact match, or ``base:*`` for any port of ``base``."""
    for p in patterns:
        if value == p or (p.endswith(":*") and value.startswith(p[:-1]) and value[len(p) - 1:].isdigit()):
            return True
    return False


@dataclass(frozen=True)
class Guard:
    """Who may call a door: a bearer token (when set), the Host header and the Origin header of browsers."""

    token: str | None
    allowed_hosts: tuple[str, ...]  # empty: any Host (a door behind a proxy that names it)
    allowed_origins: tuple[str, ...]

    @classmethod
    def for_bind(cls, host: str, port: int, token: str | None, hosts: Iterable[str] = (),
                 origins: Iterable[str] = ()) -> Guard:
        """The guard of a door bound to ``host:port``.

        On loopback the Host must be a loopback name (DNS rebinding) and a browser's Origin a loopback page;
        the token is optional there, and checked when set. Bound elsewhere the door refuses to start without a
        token; Host and Origin are checked against ``hosts`` and ``origins`` (a missing Origin, as from any
        non-browser client, always passes).
        """
        token = check_token(token)
        hosts, origins = tuple(hosts), tuple(origins)
        if is_loopback(host):
            hosts += ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
            origins += ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*",
                        "http://127.0.0.1", "http://localhost", "http://[::1]")
        elif token is None:
            raise ConfigError(f"refusing to serve on {host}:{port} without a token: set {TOKEN_ENV} (callers send "
                              f"'Authorization: Bearer <token>'; make one with: openssl rand -hex 32)")
        return cls(token, hosts, origins)

    def refuse(self, path: str, headers: dict[str, str]) -> tuple[int, str, str] | None:
        """``(status, reason, message)`` when the request may not pass, else None."""
        host = headers.get("host", "")
        if self.allowed_hosts and not _matches(host, self.allowed_hosts):
            return 403, "host", f"Host {host!r} is not allowed here"
        origin = headers.get("origin")
        if origin is not None and not _matches(origin, self.allowed_origins):
            return 403, "origin", f"Origin {origin!r} is not allowed here"
        if self.token is None or path in OPEN_PATHS:
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if not given:
            return 401, "no_token", "this endpoint needs 'Authorization: Bearer <token>'"
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return 401, "wrong_token", "the bearer token is not valid"
        return None


ERROR_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 500: "internal", 502: "triton_error",
               503: "unavailable", 504: "timeout"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON of every error: ``{"error": {"message", "type", "code"}, "detail"}`` (OpenAI's shape, with
    QMD-Python's ``detail``)."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "code": status},
            "detail": message}


def jsonrpc_error_body(status: int, message: str) -> dict[str, Any]:
    """A refusal as a JSON-RPC error (the MCP door): MCP clients show ``error.message`` (an SDK reading a REST
    body shows only "Server returned an error response")."""
    code = {401: -32001, 403: -32003}.get(status, -32000)
    word = {401: "Unauthorized", 403: "Forbidden"}.get(status, "Refused")
    return {"jsonrpc": "2.0", "error": {"code": code, "message": f"{word}: {message}"}, "id": None}


def status_of(e: BaseException) -> int:
    """The HTTP status of a known failure."""
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, InputError):
        return 400
    if isinstance(e, RequestTimeout):
        return 504
    if isinstance(e, (ServerUnavailable, IndexMissing)):
        return 503
    if isinstance(e, QmdError):
        return 502 if type(e).__name__ == "InferenceError" else 500
    return 500


async def send_json(send: Any, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """ASGI middleware: the guard first (401/403 as JSON), then the app; every answer counted and timed."""

    def __init__(self, app: Any, guard: Guard, door: str, routes: Iterable[str] = (),
                 refusal: Callable[[int, str], Any] = error_body) -> None:
        self.app, self.guard, self.door, self.refusal = app, guard, door, refusal
        self.routes = frozenset(routes) | OPEN_PATHS

    def _route(self, path: str) -> str:
        return path if path in self.routes else "other"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        route = self._route(path)
        refused = self.guard.refuse(path, headers)
        if refused is not None:
            status, reason, message = refused
            REFUSED.labels(self.door, reason).inc()
            REQUESTS.labels(self.door, route, str(status)).inc()
            extra = [(b"www-authenticate", b'Bearer realm="qmd"')] if status == 401 else []
            await send_json(send, status, self.refusal(status, message), extra)
            return
        started = time.perf_counter()
        seen: dict[str, int] = {}

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            REQUESTS.labels(self.door, route, str(seen.get("status", 500))).inc()
            LATENCY.labels(self.door, route).observe(time.perf_counter() - started)
