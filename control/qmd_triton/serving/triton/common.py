"""Helpers shared by the Python models that run inside Triton's python backend.

``triton_python_backend_utils`` exists only inside the backend's stub process,
so it is imported lazily; the rest of this module is plain Python and unit-tested.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def pb() -> Any:
    """The ``triton_python_backend_utils`` module (only importable inside Triton)."""
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    return pb_utils


def parse_model_config(args: dict[str, str]) -> dict[str, Any]:
    return json.loads(args["model_config"])


def load(args: dict[str, str]) -> tuple[dict[str, Any], Path]:
    """What every model's ``initialize`` starts with: text files read as UTF-8, logging routed to Triton's log,
    the model's config, and its version folder."""
    utf8_locale()
    route_logging()
    return parse_model_config(args), Path(args["model_repository"]) / args["model_version"]


def utf8_locale() -> str:
    """Makes files opened without an encoding read as UTF-8 in this process; returns the encoding in force.

    The backend's stub embeds Python without setting the locale (LC_CTYPE stays "C", the environment's
    PYTHONUTF8 and LANG are not read), so libraries that open text files without an encoding read ASCII: vLLM's
    import of torch's inductor (UTF-8 kernel templates) failed the model's load with UnicodeDecodeError.
    """
    import locale

    for name in ("", "C.UTF-8", "en_US.UTF-8"):  # the environment's locale first, when it is a UTF-8 one
        if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
            break
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
    return locale.getpreferredencoding(False)


def parameter(config: dict[str, Any], key: str, default: str) -> str:
    """A ``parameters { key: ... value: { string_value: ... } }`` entry, or the default."""
    entry = config.get("parameters", {}).get(key)
    if not entry:
        return default
    value = entry.get("string_value", default)
    return default if value in ("", None) else str(value)


def int_parameter(config: dict[str, Any], key: str, default: int) -> int:
    raw = parameter(config, key, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"parameter {key} must be an integer, got {raw!r}") from None


def served_index(config: dict[str, Any]) -> Any:
    """The index a search model reads: the ``index_path`` parameter's SQLite file when it names one, else the
    index of ``$QMD_HOME`` on the backend its ``[index]`` table (or ``QMD_INDEX_BACKEND``, ``QMD_MILVUS_URI``)
    chooses; a :class:`qmd_triton.index.factory.ServedIndex`."""
    from qmd_triton.index.config import IndexConfig, index_config
    from qmd_triton.index.factory import ServedIndex
    from qmd_triton.settings import default_home

    if parameter(config, "index_path", ""):
        path = index_path(config)
        return ServedIndex(IndexConfig(home=path.parent, backend="sqlite", file=path))
    return ServedIndex(index_config(default_home()))


def index_path(config: dict[str, Any]) -> Path:
    """The ``index_path`` parameter with ``$VARS`` expanded; empty means the user's default index.

    The default follows ``QMD_HOME`` like the CLI does, so ``qmdctl up --home X``
    (which exports ``QMD_HOME=X`` to the server) serves the index of X.
    """
    raw = parameter(config, "index_path", "")
    if raw:
        return Path(os.path.expandvars(raw)).expanduser()
    from qmd_triton.settings import default_home

    return default_home() / "index.sqlite"


def output_dtype(config: dict[str, Any], name: str) -> type:
    """The numpy dtype the config declares for an output (not hard-coded in models)."""
    utils = pb()
    out = utils.get_output_config_by_name(config, name)
    if out is None:
        raise ValueError(f"config declares no output {name!r}")
    return utils.triton_string_to_numpy(out["data_type"])


class TritonLogHandler(logging.Handler):
    """Routes the core library's ``logging`` records into Triton's server log."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = pb().Logger
        msg = self.format(record)
        if record.levelno >= logging.ERROR:
            logger.log_error(msg)
        elif record.levelno >= logging.WARNING:
            logger.log_warn(msg)
        elif record.levelno >= logging.INFO:
            logger.log_info(msg)
        else:
            logger.log_verbose(msg)


def route_logging() -> None:
    root = logging.getLogger("qmd_triton")
    if not any(isinstance(h, TritonLogHandler) for h in root.handlers):
        root.addHandler(TritonLogHandler())
        root.setLevel(logging.INFO)


def error_response(message: str, internal: bool = False) -> Any:
    """An error response for one request: INVALID_ARG (HTTP 400) for what the request got wrong, INTERNAL
    (HTTP 500) for a fault of ours. Always one line."""
    utils = pb()
    code = utils.TritonError.INTERNAL if internal else utils.TritonError.INVALID_ARG
    return utils.InferenceResponse(output_tensors=[], error=utils.TritonError(one_line(message), code))


def one_line(message: str, limit: int = 1000) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def respond_each(requests: list, handle: Callable[[Any], Any], expected: tuple[type, ...]) -> list:
    """Runs ``handle`` per request; an expected error fails only its own request (HTTP 400, its message).

    Anything else is a bug: it too fails only its own request, with one line naming the exception (HTTP 500);
    the traceback goes to the server log, never to the client (it holds install paths).
    """
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except expected as e:
            responses.append(error_response(str(e)))
        except RecursionError:
            responses.append(error_response("the request is nested too deeply"))
        except Exception as e:  # noqa: BLE001 - a bug must not take the traceback to the client
            logging.getLogger(__name__).exception("request failed")
            responses.append(error_response(f"internal error ({type(e).__name__}: {one_line(str(e), 200)}); "
                                            "see the server log", internal=True))
    return responses


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_bytes(value: Any) -> bytes:
    """Strict JSON (no ``NaN`` or ``Infinity`` literal: a non-finite number becomes null) as UTF-8."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def bytes_column(array: np.ndarray) -> list[bytes]:
    """A ``[batch, 1]`` BYTES tensor -> one bytes value per row."""
    return [v if isinstance(v, (bytes, str)) else bytes(v) for v in array.reshape(-1)]


class Counter:
    """A Prometheus counter on Triton's own /metrics (the python backend's custom metrics), by one label (or a
    tuple of labels, incremented with a tuple of values).

    Where the backend has no custom metrics the counter does nothing: a metric must never fail a request.
    """

    def __init__(self, name: str, description: str, label: str | tuple[str, ...]) -> None:
        self.labels = (label,) if isinstance(label, str) else tuple(label)
        self._metrics: dict[Any, Any] = {}
        try:
            utils = pb()
            self._family = utils.MetricFamily(name=name, description=description, kind=utils.MetricFamily.COUNTER)
        except Exception:  # noqa: BLE001 - no custom metrics in this backend
            self._family = None

    def close(self) -> None:
        """Drops the metrics before their family (the backend requires that order)."""
        self._metrics.clear()
        self._family = None

    def increment(self, value: str | tuple[str, ...], by: float = 1.0) -> None:
        if self._family is None:
            return
        try:
            metric = self._metrics.get(value)
            if metric is None:
                values = (value,) if isinstance(value, str) else value
                metric = self._metrics[value] = self._family.Metric(labels=dict(zip(self.labels, values)))
            metric.increment(by)
        except Exception:  # noqa: BLE001
            pass
