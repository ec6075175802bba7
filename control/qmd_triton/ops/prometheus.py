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
    qmd_triton_model_answering{model}        1 when the search pipeline (qmd_search, qmd_vsearch, qmd_query)
                                             answers a small real query; 0 when Triton says READY but a
                                             request fails (a dead backend process)
    qmd_exporter_scrape_errors_total{source} scrapes that could not read the index or Triton

Example:
    >>> serve(Settings.load(), port=9108)   # blocks; Prometheus scrapes http://HOST:9108/metrics
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

from qmd_triton.contracts import MODEL_SPECS
from qmd_triton.errors import QmdError
from qmd_triton.index.collections import CollectionConfig
from qmd_triton.index.config import index_config
from qmd_triton.index.factory import exists, open_index
from qmd_triton.index.interface import Index
from qmd_triton.serving.health import PROBE_MODELS, probe
from qmd_triton.serving.server import ADMIN_HEADER
from qmd_triton.settings import Settings
from qmd_triton.system.net import http_ok

log = logging.getLogger(__name__)


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
        try:
            configured = [c.name for c in CollectionConfig(self.settings.config_file).list()]
        except QmdError as e:
            configured = []
            self.errors["index"] += 1
            log.warning("cannot read the collections: %s", e)
        updated: dict[str, float] = {}
        config = index_config(self.settings.home)
        try:
            present = exists(config)
        except QmdError as e:
            present = False
            self.errors["index"] += 1
            log.warning("cannot reach the index: %s", e)
        if present:
            try:
                with open_index(config, readonly=True) as index:
                    counts = self._counts(index)
                    updated = index.last_updates()
                for name, c in sorted(counts["collections"].items()):
                    docs.add_metric([name], c["documents"])
                    chunks.add_metric([name], c["chunks"])
                    embedded.add_metric([name], c["embedded"])
                pending.add_metric([], counts["chunks"] - counts["embedded"] + counts["unchunked_documents"])
            except QmdError as e:
                self.errors["index"] += 1
                log.warning("cannot read the index: %s", e)
        # Every configured collection has a series: one never updated is infinitely stale, so the
        # stale-index alert fires for it too.
        now = time.time()
        for name in sorted(set(configured) | set(updated)):
            since.add_metric([name], now - updated[name] if name in updated else float("inf"))
        yield from (docs, chunks, embedded, pending, since)
        yield self._eval()
        models, answering = self._models()
        yield models
        yield answering
        errors = CounterMetricFamily("qmd_exporter_scrape_errors", "Scrapes that could not read a source",
                                     labels=["source"])
        for source, n in self.errors.items():
            errors.add_metric([source], n)
        yield errors

    COUNTS_TTL_S = 60.0

    def _counts(self, index: Index) -> dict:
        """The index's counts: every scrape where counting is cheap (SQLite); else at most once a minute
        (Milvus, where counting reads every chunk row: seconds at a million chunks)."""
        if index.cheap_counts:
            return index.counts()
        cached = getattr(self, "_cached_counts", None)
        if cached is not None and time.monotonic() - cached[0] < self.COUNTS_TTL_S:
            return cached[1]
        counts = index.counts()
        self._cached_counts = (time.monotonic(), counts)
        return counts

    def _eval(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("qmd_eval_score", "Scores of the last qmdctl eval", labels=["set", "mode", "metric"])
        try:
            data = json.loads(self.settings.eval_results.read_text())
        except (OSError, ValueError):
            return family
        for set_name, run in sorted(data.items()):
            for row in run.get("rows", []):
                for metric in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "hit@1", "hit@3"):
                    if row.get(metric) is not None:  # None: not measured by that mode (a query's Recall@100)
                        family.add_metric([set_name, row["mode"], metric], float(row[metric]))
        return family

    def _models(self):
        from prometheus_client.core import GaugeMetricFamily

        from qmd_triton.serving.probes import repository_index

        family = GaugeMetricFamily("qmd_triton_model_ready", "1 when Triton reports the model READY",
                                   labels=["model", "state"])
        answering = GaugeMetricFamily("qmd_triton_model_answering",
                                      "1 when the search pipeline answers a small real query", labels=["model"])
        if not self.triton_url:
            return family, answering
        base = f"http://{self.triton_url}"
        ready: set[str] = set()
        try:
            for m in repository_index(base, timeout=3.0, headers=self.headers):
                family.add_metric([m["name"], m["state"]], 1.0 if m["state"] == "READY" else 0.0)
                if m["state"] == "READY":
                    ready.add(m["name"])
        except QmdError as e:
            # The index API is restricted (production servers) or refused: ask each pipeline model instead.
            # The health API is never restricted, and a server that does not answer it is down, not "not ready".
            if not http_ok(f"{base}/v2/health/live"):
                self.errors["triton"] += 1
                log.warning("cannot read Triton's model states: %s", e)
                return family, answering
            for spec in MODEL_SPECS:
                ok = http_ok(f"{base}/v2/models/{spec.name}/ready")
                family.add_metric([spec.name, "READY" if ok else "NOT_READY"], 1.0 if ok else 0.0)
                if ok:
                    ready.add(spec.name)
        # READY is not enough: a model whose backend process died stays READY and fails every request.
        for model in PROBE_MODELS:
            if model in ready:
                problem = probe(base, model, attempts=1, timeout=5.0)
                if problem:
                    log.warning("%s", problem)
                answering.add_metric([model], 0.0 if problem else 1.0)
        return family, answering


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 9108, triton_url: str | None = None,
          admin_key: str | None = None) -> None:
    """Serves /metrics until the process is stopped."""
    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    REGISTRY.register(QmdCollector(settings, triton_url, admin_key))
    start_http_server(port, addr=host)
    while True:
        time.sleep(3600)
