"""The control plane's own metrics for Prometheus, read fresh at every scrape.

    qmd_index_documents{collection}          documents in the index
    qmd_index_chunks{collection}             chunks (content shared between documents counts once each)
    qmd_index_chunks_embedded{collection}    chunks with a vector
    qmd_index_chunks_pending                 chunks, and chunks of documents not yet chunked, without a vector
    qmd_index_seconds_since_update{collection}  since the last `qmdctl update`
    qmd_eval_score{set, mode, metric}        the last `qmdctl eval` scores
    qmd_triton_model_ready{model, state}     1 when Triton says READY: from its repository index, or, where
                                             that API is restricted and no admin key is given, from each
                                             pipeline model's /v2/models/NAME/ready (state READY or NOT_READY)
    qmd_exporter_scrape_errors_total{source} scrapes that could not read the index or Triton

Example:
    >>> serve(Settings.load(), port=9108)   # blocks; Prometheus scrapes http://HOST:9108/metrics
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterator

from .errors import QmdError
from .settings import Settings
from .store import IndexStore

log = logging.getLogger(__name__)
EVAL_RESULTS = "last.json"
ADMIN_HEADER = "admin-key"  # the header name the compose file and the Kubernetes manifests restrict APIs with


def eval_results_path(settings: Settings) -> Path:
    return settings.home / "eval" / EVAL_RESULTS


def record_eval(settings: Settings, result: dict) -> None:
    """Keeps the latest eval of each set for the exporter (``$QMD_HOME/eval/last.json``)."""
    path = eval_results_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[result["set"]] = {"at": time.time(), "rows": result["rows"]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


class QmdCollector:
    """A prometheus_client collector over the index file, the eval record and Triton's model index."""

    def __init__(self, settings: Settings, triton_url: str | None, admin_key: str | None = None) -> None:
        self.settings = settings
        self.triton_url = triton_url
        self.headers = {ADMIN_HEADER: admin_key} if admin_key else {}
        self.errors = {"index": 0, "triton": 0}

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        docs = GaugeMetricFamily("qmd_index_documents", "Documents in the index", labels=["collection"])
        chunks = GaugeMetricFamily("qmd_index_chunks", "Chunks in the index", labels=["collection"])
        embedded = GaugeMetricFamily("qmd_index_chunks_embedded", "Chunks with a vector", labels=["collection"])
        pending = GaugeMetricFamily("qmd_index_chunks_pending",
                                    "Chunks without a vector, plus documents not chunked yet")
        since = GaugeMetricFamily("qmd_index_seconds_since_update", "Seconds since the last qmdctl update",
                                  labels=["collection"])
        if self.settings.index_path.exists():
            try:
                with IndexStore.open(self.settings.index_path) as store:
                    counts = store.counts()
                    last = float(store.meta("last_update") or 0)
                age = time.time() - last if last else float("inf")
                for name, c in sorted(counts["collections"].items()):
                    docs.add_metric([name], c["documents"])
                    chunks.add_metric([name], c["chunks"])
                    embedded.add_metric([name], c["embedded"])
                    since.add_metric([name], age)
                pending.add_metric([], counts["chunks"] - counts["embedded"] + counts["unchunked_documents"])
            except QmdError as e:
                self.errors["index"] += 1
                log.warning("cannot read the index: %s", e)
        yield from (docs, chunks, embedded, pending, since)
        yield self._eval()
        yield self._models()
        errors = CounterMetricFamily("qmd_exporter_scrape_errors", "Scrapes that could not read a source",
                                     labels=["source"])
        for source, n in self.errors.items():
            errors.add_metric([source], n)
        yield errors

    def _eval(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("qmd_eval_score", "Scores of the last qmdctl eval", labels=["set", "mode", "metric"])
        try:
            data = json.loads(eval_results_path(self.settings).read_text())
        except (OSError, ValueError):
            return family
        for set_name, run in sorted(data.items()):
            for row in run.get("rows", []):
                for metric in ("ndcg@10", "recall@10", "recall@100", "mrr@10"):
                    if metric in row:
                        family.add_metric([set_name, row["mode"], metric], float(row[metric]))
        return family

    def _models(self):
        from prometheus_client.core import GaugeMetricFamily

        from .server import repository_index

        family = GaugeMetricFamily("qmd_triton_model_ready", "1 when Triton reports the model READY",
                                   labels=["model", "state"])
        if not self.triton_url:
            return family
        base = f"http://{self.triton_url}"
        try:
            for m in repository_index(base, timeout=3.0, headers=self.headers):
                family.add_metric([m["name"], m["state"]], 1.0 if m["state"] == "READY" else 0.0)
            return family
        except QmdError as e:
            index_error = e
        # The index API is restricted (production servers) or refused: ask each pipeline model instead.
        # The health API is never restricted, and a server that does not answer it is down, not "not ready".
        if not _ready(f"{base}/v2/health/live"):
            self.errors["triton"] += 1
            log.warning("cannot read Triton's model states: %s", index_error)
            return family
        from .contracts import MODELS

        for spec in MODELS:
            ok = _ready(f"{base}/v2/models/{spec.name}/ready")
            family.add_metric([spec.name, "READY" if ok else "NOT_READY"], 1.0 if ok else 0.0)
        return family


def _ready(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 9108, triton_url: str | None = None,
          admin_key: str | None = None) -> None:
    """Serves /metrics until the process is stopped."""
    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    REGISTRY.register(QmdCollector(settings, triton_url, admin_key))
    start_http_server(port, addr=host)
    while True:
        time.sleep(3600)
