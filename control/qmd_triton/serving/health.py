"""Whether a server's models really answer: Triton's readiness does not see a dead backend process.

Triton 2.51's python backend notices that a stub process died (``kill -9``, the OOM killer, a segfault) only
when a request reaches it, and from then on answers that model instance with HTTP 500 "Stub process ... is not
healthy" for good, while ``/v2/health/ready``, the model's ready endpoint and the repository index all still
say READY. Two checks see it:

- **backend processes** (whoever can see the server's processes: ``qmdctl status`` and the supervisor of the
  local server, the supervisor inside the container): every model served through a python stub must have one
  live stub per instance its config asks for;
- **a probe** (any client): a real, small request to each search pipeline; the model answering it with a
  result or with its own request error (HTTP 400) counts as answering, anything else does not, nor does an
  answer that the index is damaged or unreadable (a model that cannot trust its index is not healthy).

Example:
    >>> expected = expected_backends("http://127.0.0.1:8000", {}, {"python", "onnxruntime"})
    >>> backend_gaps(expected, state.stubs())
    {'qmd_search': '1 of 2 backend processes are gone'}
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from qmd_triton.contracts import OPTIONS, QUERY, QUERY_PIPELINE, SEARCH, VSEARCH
from qmd_triton.errors import ServerUnavailable, says_index_is_damaged

# The pipelines a probe asks, and what it asks them: no expansion or reranking (no LLM run), one hit.
PROBE_MODELS = (SEARCH.name, VSEARCH.name, QUERY_PIPELINE.name)
PROBE_QUERY = "qmd health probe"
PROBE_OPTIONS = {"n": 1, "expand": False, "rerank": False}


def stub_backends(backend_dir: Path | str) -> set[str]:
    """Backends whose model instances run in python stub processes: ``python``, and each Python-based backend
    (``<dir>/<name>/model.py`` without Triton's native ``libtriton_<name>.so``)."""
    out = {"python"}
    root = Path(backend_dir)
    try:
        entries = list(root.iterdir())
    except OSError:
        return out
    for d in entries:
        if (d / "model.py").is_file() and not (d / f"libtriton_{d.name}.so").exists():
            out.add(d.name)
    return out


def instance_count(config: dict) -> int:
    """Instances a model config asks for (a GPU group has ``count`` per listed GPU)."""
    groups = config.get("instance_group") or [{"count": 1}]
    return sum(max(1, int(g.get("count", 1))) * max(1, len(g.get("gpus") or [])) for g in groups)


def _get_json(url: str, headers: dict[str, str], timeout: float, data: bytes | None = None) -> object:
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServerUnavailable(f"cannot read {url}: {e}") from None


def expected_backends(base_url: str, headers: dict[str, str], backends: set[str],
                      timeout: float = 5.0) -> dict[str, int]:
    """Live stub processes each READY model of the server should have, for models served through stubs."""
    index = _get_json(f"{base_url}/v2/repository/index", headers, timeout, data=b"{}")
    out = {}
    for entry in index if isinstance(index, list) else []:
        name = entry.get("name", "")
        if entry.get("state") != "READY" or not name:
            continue
        config = _get_json(f"{base_url}/v2/models/{name}/config", headers, timeout)
        if isinstance(config, dict) and config.get("backend") in backends:
            out[name] = instance_count(config)
    return out


def backend_gaps(expected: dict[str, int], stubs: dict[int, str]) -> dict[str, str]:
    """Models with fewer live stubs than instances, each with one line saying so."""
    live = Counter(stubs.values())
    out = {}
    for model, want in sorted(expected.items()):
        have = live.get(model, 0)
        if have < want:
            out[model] = f"{want - have} of {want} backend process{'es' if want > 1 else ''} gone"
    return out


def probe(base_url: str, model: str, attempts: int = 2, timeout: float = 10.0) -> str | None:
    """None when ``model`` answers a small search ``attempts`` times in a row (with hits or with its own
    request error), else why not, in one line ("answers HTTP 500: ..."). Several attempts reach several
    instances."""
    body = json.dumps({"inputs": [
        {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [PROBE_QUERY]},
        {"name": OPTIONS, "shape": [1], "datatype": "BYTES", "data": [json.dumps(PROBE_OPTIONS)]},
    ]}).encode()
    for _ in range(attempts):
        req = urllib.request.Request(f"{base_url}/v2/models/{model}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                continue
        except urllib.error.HTTPError as e:
            text = error_text(e)
            if e.code == 400 and says_index_is_damaged(text):
                return f"answers that the index cannot be trusted: {text}"
            if e.code == 400:  # the model itself refused the request (no index yet, ...): it answers
                continue
            return f"answers HTTP {e.code}: {text}"
        except (urllib.error.URLError, OSError) as e:
            return f"does not answer: {getattr(e, 'reason', e)}"
    return None


def error_text(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read()
        return str(json.loads(raw).get("error", raw.decode(errors="replace")))[:300].rstrip(".")
    except (ValueError, OSError, AttributeError):
        return e.reason if isinstance(e.reason, str) else str(e.reason)


def probe_all(base_url: str, models: tuple[str, ...] = PROBE_MODELS, timeout: float = 10.0) -> dict[str, str]:
    """The pipelines that do not answer, each with why."""
    out = {}
    for model in models:
        problem = probe(base_url, model, timeout=timeout)
        if problem:
            out[model] = problem
    return out
