"""What the HTTP gateway costs: ``POST /vsearch`` through ``qmdctl api`` against the same query sent straight to
Triton's ``qmd_vsearch``, measured side by side in one run.

The triton-docs set (60 real markdown pages, 857 chunks) is indexed into its own home (once; reused after),
a fresh tritonserver and ``qmdctl api`` start on free loopback ports, and every known-item query is sent each
way, one request at a time, in a rotating order, for ``--rounds`` rounds after a warm-up:

  direct          tritonclient.http (what docs/clients.md shows): ``qmd_vsearch`` with ``{"n": 10, "full": true}``
                  (each hit with its document's body, as the gateway's /vsearch answers QMD-Python by default)
  gateway         ``POST /vsearch {"query", "top_k": 10}`` with geventhttpclient, the HTTP client under
                  tritonclient.http: the same client library on both sides, so the difference is the gateway's
  gateway-httpx   the same request with httpx (what QMD-Python's clients use), which costs more per request
                  on the client's side

All return the same hits (checked). Reports p50 / p95 / mean per way and the ratios of the p50s to the direct
call, with the machine and its load named.

Usage:
    .venv/bin/python perf/gateway_overhead.py [--rounds 5] [--home .qmd/bench/gateway]

Writes ``perf/results/gateway_overhead.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from qmd_triton.bench.reports import machine, machine_line
from qmd_triton.serving import server
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings, checkout_path, default_datasets
from qmd_triton.system.net import free_ports, wait_until

QMDCTL = str(Path(sys.executable).parent / "qmdctl")


def qmdctl(settings: Settings, *args: str) -> None:
    env = {**os.environ, "QMD_HOME": str(settings.home), "QMD_HTTP_PORT": str(settings.http_port),
           "QMD_GRPC_PORT": str(settings.grpc_port), "QMD_METRICS_PORT": str(settings.metrics_port)}
    subprocess.run([QMDCTL, "-q", *args], env=env, check=True)


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--home", type=Path, default=checkout_path(".qmd", "bench", "gateway"))
    ap.add_argument("--out", type=Path, default=checkout_path("perf", "results", "gateway_overhead.json"))
    ap.add_argument("--no-body", action="store_true",
                    help="Hits without their documents' bodies on both sides (`full: false`).")
    args = ap.parse_args()
    docs = default_datasets() / "triton-docs"
    queries = [line.split("\t")[0] for line in (docs / "queries.tsv").read_text().splitlines()[1:] if line.strip()]
    http, grpc, metrics, api_port = free_ports(4)
    settings = Settings.load(args.home, http_port=http, grpc_port=grpc, metrics_port=metrics)
    print(f"starting tritonserver on {settings.http_url} (home {settings.home})", file=sys.stderr)
    server.start(settings)
    api = None
    try:
        if not settings.index_path.exists():
            qmdctl(settings, "collection", "add", str(docs / "corpus"), "--name", "triton-docs")
        qmdctl(settings, "update")
        qmdctl(settings, "embed")
        env = {k: v for k, v in os.environ.items() if k != "QMD_API_TOKEN"}
        env.update({"QMD_HOME": str(settings.home), "QMD_HTTP_PORT": str(http), "QMD_GRPC_PORT": str(grpc),
                    "QMD_METRICS_PORT": str(metrics)})
        api = subprocess.Popen([QMDCTL, "-q", "api", "--port", str(api_port)], env=env, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: _healthy(base), 60, give_up=lambda: None if api.poll() is None else "qmdctl api exited")
        before = machine()
        from geventhttpclient import HTTPClient
        from geventhttpclient.url import URL

        times: dict[str, list[float]] = {"direct": [], "gateway": [], "gateway-httpx": []}
        gevent_client = HTTPClient.from_url(URL(base), concurrency=1, connection_timeout=60, network_timeout=60)
        with QmdClient(settings.http_url, "http") as direct, httpx.Client(base_url=base, timeout=60) as hx:
            def via_direct(q: str) -> list[dict]:
                return direct.search("qmd_vsearch", q, json.dumps({"n": 10, "full": not args.no_body}))

            def via_gateway(q: str) -> list[dict]:
                r = gevent_client.post("/vsearch", body=json.dumps({"query": q, "top_k": 10,
                                                                   "full": not args.no_body}),
                                       headers={"Content-Type": "application/json"})
                assert r.status_code == 200, r.status_code
                return json.loads(r.read())["results"]

            def via_httpx(q: str) -> list[dict]:
                r = hx.post("/vsearch", json={"query": q, "top_k": 10, "full": not args.no_body})
                r.raise_for_status()
                return r.json()["results"]

            ways = {"direct": via_direct, "gateway": via_gateway, "gateway-httpx": via_httpx}
            for q in queries[:10]:  # warm-up: connections, caches, the models' first runs
                assert via_direct(q) == via_gateway(q) == via_httpx(q), q
            names = list(ways)
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
                for i, q in enumerate(queries):
                    shift = (i + r) % len(names)
                    order = names[shift:] + names[:shift]
                    for way in order:
                        started = time.perf_counter()
                        ways[way](q)
                        times[way].append((time.perf_counter() - started) * 1000)
        gevent_client.close()
        after = machine()
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        server.stop(settings)
    result = {
        "machine": before, "load_avg_1m_after": after["load_avg_1m"], "queries": len(queries),
        "rounds": args.rounds,
        "ways": {w: {"p50_ms": pct(t, 50), "p95_ms": pct(t, 95), "mean_ms": float(np.mean(t)), "n": len(t)}
                 for w, t in times.items()},
    }
    direct_p50 = result["ways"]["direct"]["p50_ms"]
    result["ratio_p50"] = {w: v["p50_ms"] / direct_p50 for w, v in result["ways"].items() if w != "direct"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nMeasured on {machine_line(before)} (load average {after['load_avg_1m']:.1f} at the end); "
          f"{len(queries)} queries x {args.rounds} rounds per way, one at a time.\n")
    print("| way | p50 ms | p95 ms | mean ms | p50 ÷ direct |\n|---|---|---|---|---|")
    for way, w in result["ways"].items():
        ratio = f"**{result['ratio_p50'][way]:.2f}**" if way in result["ratio_p50"] else "1"
        print(f"| {way} | {w['p50_ms']:.1f} | {w['p95_ms']:.1f} | {w['mean_ms']:.1f} | {ratio} |")


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
