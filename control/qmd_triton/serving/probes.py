"""What ``qmdctl status`` and the supervisor read from a running server: liveness and readiness, each model's
state from the repository index (behind the admin key), the backend processes a model is short of, a small
query through each search pipeline, and the query stages' counts from Triton's ``/metrics``.

Example:
    >>> st = status(Settings.load())
    >>> st.ready, st.healthy, st.problems
    (True, True, {})
    >>> [m["name"] for m in repository_index("http://127.0.0.1:8000", headers=admin_headers(settings))][:2]
    ['qmd_embed', 'qmd_embed_model']
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from qmd_triton.errors import ServerUnavailable
from qmd_triton.serving import health
from qmd_triton.serving.server import admin_headers, read_state
from qmd_triton.serving.supervisor_daemon import supervisor_state
from qmd_triton.settings import Settings
from qmd_triton.system import procs
from qmd_triton.system.net import http_ok


@dataclass
class ServerStatus:
    """Liveness and per-model state, as ``qmdctl status`` shows it."""

    url: str
    live: bool
    ready: bool
    managed: bool
    pid: int | None = None
    log: str | None = None
    models: list[dict] = field(default_factory=list)
    # stage -> outcome -> count since the server started (qmd_stages_total, qmd_expansions_total)
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    # models that Triton calls READY but that do not answer (a dead backend process), each with why
    problems: dict[str, str] = field(default_factory=dict)
    supervisor: int | None = None  # pid of the running supervisor

    @property
    def healthy(self) -> bool:
        return self.ready and not self.problems


def status(settings: Settings) -> ServerStatus:
    """Liveness, readiness and each model's state from the server's HTTP API."""
    state = read_state(settings)
    managed = bool(state and procs.is_running(state.owned))
    host, port = (state.host, state.http_port) if managed and state else (settings.host, settings.http_port)
    base = f"http://{host}:{port}"
    result = ServerStatus(
        url=f"{host}:{port}",
        live=http_ok(f"{base}/v2/health/live"),
        ready=http_ok(f"{base}/v2/health/ready"),
        managed=managed,
        pid=state.pid if managed and state else None,
        log=state.log if managed and state else None,
    )
    if result.live:
        headers = admin_headers(settings)
        try:
            result.models = repository_index(base, headers=headers)
        except ModelListRefused:
            # Another home's server (or one started with another admin key) holds these ports: its searches
            # still answer, so they are probed; its model list is not this home's to read.
            result.problems["server"] = (
                f"the server at {host}:{port} refuses its model list to {settings.home} (HTTP 403): it was started "
                "from another home or with another admin key, and searches that home's index; set QMD_ADMIN_KEY "
                "to its key, or give this home other ports (--http-port, --grpc-port, --metrics-port)")
            result.models = [{"name": m, "version": "", "state": "READY" if result.ready else "UNKNOWN",
                              "reason": "not listed (HTTP 403)"} for m in health.PROBE_MODELS]
            headers = {}
        if managed and state is not None and state.backends:
            try:
                expected = health.expected_backends(base, headers, health.stub_backends(state.backends))
                result.problems.update(health.backend_gaps(expected, state.stubs()))
            except ServerUnavailable:
                pass  # the index was just read: a server going away is shown by live/ready
        ready = tuple(m["name"] for m in result.models if m["state"] == "READY" and m["name"] in health.PROBE_MODELS)
        for model, why in health.probe_all(base, ready).items():
            result.problems.setdefault(model, why)
        metrics_port = state.metrics_port if managed and state else settings.metrics_port
        result.stages = stage_counts(f"http://{host}:{metrics_port}/metrics")
    sup = supervisor_state(settings)
    result.supervisor = sup.pid if sup else None
    return result

_STAGE_LINE = re.compile(r'^qmd_stages_total\{(?=[^}]*stage="([^"]+)")(?=[^}]*outcome="([^"]+)")[^}]*\}\s+([0-9.e+]+)',
                         re.MULTILINE)
_EXPANSION_LINE = re.compile(r'^qmd_expansions_total\{[^}]*status="([^"]+)"[^}]*\}\s+([0-9.e+]+)', re.MULTILINE)


def stage_counts(metrics_url: str, timeout: float = 5.0) -> dict[str, dict[str, int]]:
    """How often each stage of ``qmd_query`` ran or was bypassed since the server started, from Triton's /metrics
    (``qmd_expansions_total{status}``, ``qmd_stages_total{stage,outcome}``); empty when they cannot be read."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    out: dict[str, dict[str, int]] = {}
    for status, value in _EXPANSION_LINE.findall(text):
        out.setdefault("expansion", {})[status] = int(float(value))
    for stage, outcome, value in _STAGE_LINE.findall(text):
        out.setdefault(stage, {})[outcome] = int(float(value))
    return out


class ModelListRefused(ServerUnavailable):
    """The server's model-repository API is restricted to another admin key (HTTP 403)."""


def repository_index(base_url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> list[dict]:
    """``POST /v2/repository/index``: name, version, state and reason of every model.

    ``headers`` carries the key of a server started with ``--http-restricted-api=model-repository:KEY=VALUE``.
    """
    req = urllib.request.Request(f"{base_url}/v2/repository/index", data=b"{}", method="POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            entries = json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 403:
            raise ModelListRefused(f"{base_url} refuses its model index to this key (HTTP 403)") from None
        raise ServerUnavailable(f"cannot read the model index from {base_url}: {e}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServerUnavailable(f"cannot read the model index from {base_url}: {e}") from None
    return [
        {
            "name": e.get("name", ""),
            "version": e.get("version", ""),
            "state": e.get("state", "UNKNOWN"),
            "reason": e.get("reason", ""),
        }
        for e in sorted(entries, key=lambda e: e.get("name", ""))
    ]
